"""`dkt keys init`: the startup kits, their permissions, and keys Flower and TLS accept."""

from __future__ import annotations

import ipaddress
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from dkt.cli import main
from dkt.cli.keys import provision


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kits") / "deployment"
    provision(root, 3, ["server.example.org", "10.0.0.5"])
    return root


def test_every_party_gets_a_kit_of_its_own(kits: Path) -> None:
    assert sorted(p.name for p in kits.iterdir()) == [
        "agent-0", "agent-1", "agent-2", "ca", "operator", "server",
    ]  # fmt: skip
    assert sorted(p.name for p in (kits / "agent-1").iterdir()) == [
        "ca.pem", "supernode.key", "supernode.pub", "token",
    ]  # fmt: skip
    assert sorted(p.name for p in (kits / "operator").iterdir()) == [
        "admin.token", "ca.pem", "operator.key", "operator.pem",
    ]  # fmt: skip
    assert sorted(p.name for p in (kits / "server" / "supernodes").iterdir()) == [
        "agent-0.pub", "agent-1.pub", "agent-2.pub",
    ]  # fmt: skip


def test_secrets_are_owner_only(kits: Path) -> None:
    private = [
        kits / "ca" / "ca.key", kits / "server" / "server.key", kits / "server" / "tokens.toml",
        kits / "server" / "superexec.secret", kits / "operator" / "operator.key",
        kits / "operator" / "admin.token", kits / "agent-0" / "token",
        kits / "agent-0" / "supernode.key",
    ]  # fmt: skip
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for folder in [kits, *[p for p in kits.iterdir() if p.is_dir()]]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_tokens_are_unique_and_match_the_agent_and_operator_kits(kits: Path) -> None:
    tokens = tomllib.loads((kits / "server" / "tokens.toml").read_text())
    agents = tokens["agents"]
    assert sorted(agents) == ["0", "1", "2"]
    everything = [tokens["admin"], tokens["conductor"], *agents.values()]
    assert len(set(everything)) == len(everything)
    assert all(len(t) >= 32 for t in everything)
    assert (kits / "agent-2" / "token").read_text() == agents["2"]
    assert (kits / "operator" / "admin.token").read_text() == tokens["admin"]


def test_certificates_chain_to_the_ca_with_the_right_names_and_usages(kits: Path) -> None:
    ca = x509.load_pem_x509_certificate((kits / "ca" / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((kits / "server" / "server.pem").read_bytes())
    operator = x509.load_pem_x509_certificate((kits / "operator" / "operator.pem").read_bytes())
    for cert in (server, operator):
        cert.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["server.example.org", "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("127.0.0.1"),
    ]  # fmt: skip
    usage = x509.ExtendedKeyUsage
    assert list(server.extensions.get_extension_for_class(usage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert list(operator.extensions.get_extension_for_class(usage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert (kits / "agent-0" / "ca.pem").read_bytes() == (kits / "ca" / "ca.pem").read_bytes()


def test_supernode_keys_are_what_flower_registers_and_loads(kits: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    public = try_load_public_key(kits / "server" / "supernodes" / "agent-1.pub")
    private = serialization.load_ssh_private_key(
        (kits / "agent-1" / "supernode.key").read_bytes(), password=None
    )
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    assert public_key_to_bytes(private.public_key()) == public  # type: ignore[arg-type]
    other = try_load_public_key(kits / "server" / "supernodes" / "agent-0.pub")
    assert other != public


def test_init_refuses_a_folder_that_is_not_empty_and_bad_names(tmp_path: Path, capsys) -> None:
    (tmp_path / "kits").mkdir()
    (tmp_path / "kits" / "something").write_text("x")
    assert main(["keys", "init", str(tmp_path / "kits"), "--agents", "1",
                 "--server-name", "h"]) == 2  # fmt: skip
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "kits").iterdir()) == ["something"]
    assert main(["keys", "init", str(tmp_path / "new"), "--agents", "1",
                 "--server-name", "bad name"]) == 2  # fmt: skip
    assert "neither a DNS name nor an IP address" in capsys.readouterr().err
    assert main(["keys", "init", str(tmp_path / "new2"), "--agents", "0",
                 "--server-name", "h"]) == 2  # fmt: skip
    assert not (tmp_path / "new2").exists()


def test_every_kit_option_defaults_to_dkt_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from dkt.cli import build_parser

    monkeypatch.setenv("DKT_KEYS", "/kits/operator")
    parser = build_parser()
    assert parser.parse_args(["launch"]).keys == Path("/kits/operator")
    assert parser.parse_args(["status"]).keys == Path("/kits/operator")
    assert parser.parse_args(["agent", "--server", "h", "--agent-id", "0"]).keys == Path(
        "/kits/operator"
    )
    monkeypatch.delenv("DKT_KEYS")
    assert build_parser().parse_args(["launch"]).keys is None


def test_init_wait_stays_up_after_writing_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    import signal
    import subprocess
    import time

    from tests.support.processes import dkt_command

    kits = tmp_path / "kits"
    proc = subprocess.Popen(
        dkt_command("keys", "init", str(kits), "--agents", "1", "--server-name", "s",
                    "--keep-existing", "--wait"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (kits / "server" / "tokens.toml").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        # tokens.toml is written last: once it exists, every kit is complete.
        assert (kits / "operator" / "admin.token").exists()
        time.sleep(1.5)
        assert proc.poll() is None  # still up
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
