"""`dkt keys init`: provisioning, the way NVIDIA FLARE's `provision` makes startup kits —
one folder per party with exactly the secrets that party needs, nothing more.

    DIR/ca/          ca.pem, ca.key        the CA (keep ca.key offline)
    DIR/server/      ca.pem, server.pem, server.key   TLS of the SuperLink (behind nginx)
                                                        and the relay
                     tokens.toml           the relay's admin, conductor and agent tokens
                     superexec.secret      the SuperExec secret of the ServerApp runtime
                     supernodes/agent-N.pub  the agents' SuperNode public keys, registered
                                           with Flower's SuperNode authentication
    DIR/operator/    ca.pem, operator.pem, operator.key   the client certificate that
                                           reaches the Control API (`dkt launch`)
                     admin.token           the relay admin token (`dkt status`)
    DIR/agent-N/     ca.pem, token         agent N's relay token
                     supernode.key, supernode.pub   its SuperNode key pair (Flower's
                                           SuperNode authentication; ECDSA P-384, OpenSSH)

Files holding secrets are written owner-only (0600) in owner-only folders (0700).
`dkt server --keys DIR/server`, `dkt agent --keys DIR/agent-N` and
`dkt launch --keys DIR/operator` read a kit; each kit is copied to its host alone.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from dkt.flower.processes import write_private

CA_DIR, SERVER_DIR, OPERATOR_DIR = "ca", "server", "operator"
CA_CERT = "ca.pem"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
OPERATOR_CERT, OPERATOR_KEY = "operator.pem", "operator.key"
TOKENS_FILE, SUPEREXEC_SECRET = "tokens.toml", "superexec.secret"
SUPERNODES_DIR = "supernodes"
ADMIN_TOKEN_FILE, AGENT_TOKEN_FILE = "admin.token", "token"
SUPERNODE_KEY, SUPERNODE_PUB = "supernode.key", "supernode.pub"
VALID_DAYS = 365


def agent_dir_name(agent_id: int) -> str:
    return f"agent-{agent_id}"


def add_keys_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "keys",
        help="provision certificates, tokens and keys (startup kits) for a deployment",
        description="Create the startup kits of a multi-host deployment: one folder for "
        "the server host, one for the operators who launch runs, one per agent host. "
        "Copy each folder to its host only.",
    )
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    init = sub.add_parser(
        "init",
        help="create a CA and the startup kits of the server, the operators and N agents",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument("dir", type=Path, metavar="DIR", help="where to write the kits (new)")
    init.add_argument("--agents", type=int, required=True, help="number of agents")
    init.add_argument(
        "--server-name",
        action="append",
        required=True,
        metavar="NAME",
        help="a DNS name or IP address the agents and operators use to reach the server "
        "host (repeat for several); localhost and 127.0.0.1 are always included",
    )
    init.add_argument(
        "--keep-existing",
        action="store_true",
        help="if DIR already holds kits, keep them and exit 0; DIR may also hold empty "
        "folders named like the kits (mount points, as in docker-compose.yml)",
    )
    init.add_argument(
        "--wait",
        action="store_true",
        help="then stay up until SIGTERM or SIGINT (exit 0): a Compose service that "
        "provisions must not exit, or `docker compose up --exit-code-from` stops everything",
    )
    init.set_defaults(func=run_keys)
    return parser


def run_keys(args: argparse.Namespace) -> int:
    code = _init(args)
    if code == 0 and args.wait:
        from dkt.cli.signals import wait_for_signal

        sys.stdout.flush()
        wait_for_signal()
    return code


def _init(args: argparse.Namespace) -> int:
    if args.agents < 1:
        print("dkt keys init: --agents must be 1 or more", file=sys.stderr)
        return 2
    if args.keep_existing and (args.dir / SERVER_DIR / TOKENS_FILE).exists():
        print(f"startup kits in {args.dir} exist: kept")
        return 0
    if args.dir.exists() and any(
        _holds_something(p, args.keep_existing) for p in args.dir.iterdir()
    ):
        print(f"dkt keys init: {args.dir} exists and is not empty; choose a new folder "
              "(kits are never overwritten)", file=sys.stderr)  # fmt: skip
        return 2
    try:
        kits = provision(args.dir, args.agents, args.server_name)
    except ValueError as err:
        print(f"dkt keys init: {err}", file=sys.stderr)
        return 2
    print(f"startup kits in {args.dir}:")
    print(f"  {kits.server}   -> the server host:  dkt server --keys {kits.server} ...")
    print(f"  {kits.operator} -> operators:         dkt launch --keys {kits.operator} ...")
    for agent_id, folder in kits.agents.items():
        print(f"  {folder}  -> agent host {agent_id}: dkt agent --keys {folder} ...")
    print(f"  {kits.ca} holds the CA key: keep it offline")
    return 0


def _holds_something(path: Path, mount_points_allowed: bool) -> bool:
    """Whether `path` (an entry of the kits folder) is more than an empty folder that
    `--keep-existing` lets us fill."""
    return not (mount_points_allowed and path.is_dir() and not any(path.iterdir()))


@dataclass(frozen=True)
class Kits:
    ca: Path
    server: Path
    operator: Path
    agents: dict[int, Path]


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def provision(root: Path, agents: int, server_names: list[str]) -> Kits:
    """Write every kit under `root` (see the module doc)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_cert, ca_key = _make_ca()
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    names = [*server_names, "localhost", "127.0.0.1"]
    server_cert, server_key = _leaf(ca_cert, ca_key, "dkt server", names,
                                    ExtendedKeyUsageOID.SERVER_AUTH)  # fmt: skip
    operator_cert, operator_key = _leaf(ca_cert, ca_key, "dkt operator", [],
                                        ExtendedKeyUsageOID.CLIENT_AUTH)  # fmt: skip

    _private_dir(root)
    ca = _private_dir(root / CA_DIR)
    (ca / CA_CERT).write_bytes(ca_pem)
    write_private(ca / "ca.key", _pem_key(ca_key))

    server = _private_dir(root / SERVER_DIR)
    (server / CA_CERT).write_bytes(ca_pem)
    (server / SERVER_CERT).write_bytes(server_cert)
    write_private(server / SERVER_KEY, server_key)
    write_private(server / SUPEREXEC_SECRET, secrets.token_hex(32).encode())
    supernodes = _private_dir(server / SUPERNODES_DIR)

    admin = secrets.token_urlsafe(32)
    tokens = {"admin": admin, "conductor": secrets.token_urlsafe(32), "agents": {}}
    agent_dirs: dict[int, Path] = {}
    for agent_id in range(agents):
        folder = _private_dir(root / agent_dir_name(agent_id))
        token = secrets.token_urlsafe(32)
        tokens["agents"][str(agent_id)] = token  # type: ignore[index]
        (folder / CA_CERT).write_bytes(ca_pem)
        write_private(folder / AGENT_TOKEN_FILE, token.encode())
        key = ec.generate_private_key(ec.SECP384R1())
        write_private(
            folder / SUPERNODE_KEY,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
        )
        pub = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        (folder / SUPERNODE_PUB).write_bytes(pub + f" dkt-agent-{agent_id}\n".encode())
        (supernodes / f"{agent_dir_name(agent_id)}.pub").write_bytes(
            pub + f" dkt-agent-{agent_id}\n".encode()
        )
        agent_dirs[agent_id] = folder
    operator = _private_dir(root / OPERATOR_DIR)
    (operator / CA_CERT).write_bytes(ca_pem)
    (operator / OPERATOR_CERT).write_bytes(operator_cert)
    write_private(operator / OPERATOR_KEY, operator_key)
    write_private(operator / ADMIN_TOKEN_FILE, admin.encode())
    # Last: its presence means every kit is complete (--keep-existing, Compose's check).
    write_private(server / TOKENS_FILE, tomli_w.dumps(tokens).encode())
    return Kits(ca, server, operator, agent_dirs)


def _pem_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_ca() -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("dkt deployment CA"))
        .issuer_name(_name("dkt deployment CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(ca_cert: Any, ca_key: Any, common_name: str, names: list[str], usage: Any) -> tuple[
    bytes, bytes
]:  # fmt: skip
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if names:
        alt: list[x509.GeneralName] = []
        for name in dict.fromkeys(names):
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                if not name or any(c in name for c in " /:"):
                    raise ValueError(f"--server-name {name!r} is neither a DNS name nor an "
                                     "IP address") from None  # fmt: skip
                alt.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def read_token(path: Path) -> str:
    """A token file of a kit: one line."""
    return path.read_text().strip()
