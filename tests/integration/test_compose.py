"""docker-compose.yml (the multi-node demo) and docker-compose.gpu.yml (its GPU override):
both files follow the Compose Specification (checked by the `compose-spec` package, so no
Docker engine or docker-compose binary is needed), every command parses with the real
`dkt` parser, and the demo works out of the box: a `keys` service writes fresh
startup kits, one volume per party, and each service mounts only its own. Where the
docker-compose binary exists, it must accept both files and their merge too."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_spec import PyCompose

from dkt.cli import build_parser
from dkt.cli.keys import provision

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
GPU = ROOT / "docker-compose.gpu.yml"
OWN_DATA = ROOT / "docker-compose.own-data.yml"
AGENTS = ("agent-0", "agent-1", "agent-2")
# ${VAR}, ${VAR:-default}, ${VAR-default}, $VAR, and $$ (a literal $).
VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>\w+)(?::?-(?P<default>[^}]*))?\}|(?P<bare>\w+))")


def load(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return yaml.safe_load(f)


def interpolate(value: Any, variables: list[tuple[str, str | None]] | None = None) -> Any:
    """`value` with every compose variable replaced by its default, as `docker compose`
    sees it with none of them set; (name, default or None) of each is appended to
    `variables`."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def default(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if variables is not None:
            name = match.group("braced") or match.group("bare")
            variables.append((name, match.group("default")))
        return match.group("default") or ""

    return VARIABLE.sub(default, value)


@pytest.fixture(scope="module")
def demo() -> dict[str, Any]:
    return interpolate(load(COMPOSE))


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return interpolate(load(GPU))


def parse(command: list[str]) -> Any:
    """`command` as `dkt` (the image's entrypoint) parses it; a bad flag fails the test."""
    assert isinstance(command, list), f"use the exec form (a list) for commands, got {command!r}"
    assert all(isinstance(arg, str) for arg in command), f"quote numbers in {command}"
    try:
        return build_parser().parse_args(command)
    except SystemExit:
        pytest.fail(f"`dkt {' '.join(command)}` does not parse (see stderr)")


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> volume name, for `NAME:/path` entries."""
    return {
        target: source for source, target, *_ in (v.split(":") for v in service.get("volumes", []))
    }


def test_the_demo_is_a_server_three_agents_and_a_launcher(demo: dict[str, Any]) -> None:
    assert set(demo["services"]) == {"keys", "server", *AGENTS, "launcher"}
    data = {"server-data", "agent-0-data", "agent-1-data", "agent-2-data"}
    kits = {"server-kit", "operator-kit", "ca-kit", "agent-0-kit", "agent-1-kit", "agent-2-kit"}
    assert set(demo["volumes"]) == data | kits


def test_every_service_runs_the_one_image_built_from_this_folder(demo: dict[str, Any]) -> None:
    images = {name: service["image"] for name, service in demo["services"].items()}
    assert set(images.values()) == {"dkt:latest"}
    assert demo["services"]["keys"]["build"] == "."
    assert demo["services"]["keys"]["pull_policy"] == "build"  # never looked up in a registry
    others = [s for name, s in demo["services"].items() if name != "keys"]
    assert all("build" not in s and s["pull_policy"] == "never" for s in others)


def test_the_image_runs_dkt_and_installs_torch_before_the_code() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    assert 'ENTRYPOINT ["dkt"]' in lines  # so a service's command is `dkt`'s arguments
    assert "EXPOSE 8000 7470 7471" in lines
    torch = lines.index("RUN pip install torch==2.14.1 torchvision==0.29.1")
    assert torch < lines.index("COPY . .")  # a code change does not reinstall torch
    assert any(line.startswith("USER ") and line != "USER root" for line in lines)


@pytest.mark.parametrize("path", [COMPOSE, GPU, OWN_DATA], ids=lambda p: p.name)
def test_every_command_parses_with_the_dkt_command_line(path: Path) -> None:
    subcommands = {"keys": "keys", "server": "server", "launcher": "launch"}
    subcommands |= {a: "agent" for a in AGENTS}
    services = interpolate(load(path))["services"]
    for name, service in services.items():
        if "command" in service or path == COMPOSE:  # an override may keep a service's
            assert parse(service["command"]).command == subcommands[name], name


def test_the_server_listens_on_the_network_and_keeps_its_data_in_a_volume(
    demo: dict[str, Any],
) -> None:
    server = demo["services"]["server"]
    args = parse(server["command"])
    assert args.host == "0.0.0.0"
    assert not args.insecure and not args.trusted_network  # TLS, nginx, SuperNode keys
    assert str(args.keys) == "/kits/server"
    assert mounts(server) == {
        str(args.data_dir): "server-data",
        "/kits/server": "server-kit",
        "/kits/operator": "operator-kit",  # `docker compose exec server dkt status --keys`
    }
    assert all(
        v.endswith(":ro") for v in server["volumes"] if v.startswith(("server-kit", "operator-kit"))
    )
    assert server["depends_on"] == {"keys": {"condition": "service_healthy"}}
    assert (args.port, args.status_port, args.superlink_port) == (7470, 7471, 8000)
    assert server["restart"] == "unless-stopped"


def test_the_server_publishes_its_status_port_and_is_healthy_once_it_answers(
    demo: dict[str, Any],
) -> None:
    server = demo["services"]["server"]
    assert "127.0.0.1:7471:7471" in server["ports"]
    check = server["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"]  # the slim image has no curl
    assert "urllib.request" in check[3]
    assert "https://127.0.0.1:7471/healthz" in check[3]
    assert "https://127.0.0.1:8000/health" in check[3]
    assert "cafile='/kits/server/ca.pem'" in check[3]


def test_each_agent_has_its_own_id_and_volume_and_waits_for_a_healthy_server(
    demo: dict[str, Any],
) -> None:
    ids = []
    for name in AGENTS:
        agent = demo["services"][name]
        args = parse(agent["command"])
        ids.append(args.agent_id)
        assert args.server == "server"
        assert args.device == "cpu"
        assert args.threads == 1  # three agents share one host: no oversubscribed cores
        assert mounts(agent) == {str(args.data_dir): f"{name}-data", str(args.keys): f"{name}-kit"}
        assert str(args.keys) == f"/kits/{name}"
        assert all(v.endswith(":ro") for v in agent["volumes"] if "-kit:" in v)
        assert agent["depends_on"] == {"server": {"condition": "service_healthy"}}
        assert name == f"agent-{args.agent_id}"
    assert ids == [0, 1, 2]


def test_the_launcher_runs_once_for_every_agent_after_they_start(demo: dict[str, Any]) -> None:
    launcher = demo["services"]["launcher"]
    args = parse(launcher["command"])
    assert args.server == "server"
    assert args.agents == len(AGENTS)
    assert launcher["restart"] == "no"
    assert launcher["depends_on"] == {a: {"condition": "service_started"} for a in AGENTS}
    assert str(args.keys) == "/kits/operator"
    # Only its kit: results are written on the server.
    assert mounts(launcher) == {"/kits/operator": "operator-kit"}


def test_the_keys_service_writes_each_kit_into_its_own_volume_once(
    demo: dict[str, Any], tmp_path: Path
) -> None:
    keys = demo["services"]["keys"]
    args = parse(keys["command"])
    assert args.keys_command == "init" and args.keep_existing
    assert args.agents == len(AGENTS) and args.server_name == ["server"]
    assert keys["restart"] == "no"
    # It stays up (`up --exit-code-from launcher` stops everything when any service
    # exits), healthy once the file written last exists.
    assert args.wait
    assert keys["healthcheck"]["test"] == ["CMD", "test", "-f", "/kits/server/tokens.toml"]
    # One volume per kit, mounted where `dkt keys init` writes that kit.
    kits = tmp_path / "kits"
    provision(kits, len(AGENTS), ["server"])
    assert mounts(keys) == {f"/kits/{p.name}": f"{p.name}-kit" for p in kits.iterdir()}
    # No service but `keys` sees another party's kit, and no secret is an env variable.
    for name, service in demo["services"].items():
        operator = {"DKT_KEYS": "/kits/operator"}  # a path: `dkt launch`, `dkt status`
        want = operator if name in ("launcher", "server") else {}
        assert service.get("environment", {}) == want, name
        if name in AGENTS:
            assert [t for t in mounts(service) if t.startswith("/kits/")] == [f"/kits/{name}"]


def test_a_second_up_keeps_the_kits_and_mount_points_are_filled(tmp_path: Path) -> None:
    from dkt.cli import main

    root = tmp_path / "kits"
    for name in ("server", "operator", "ca", *AGENTS):
        (root / name).mkdir(parents=True)  # the image's empty mount points
    command = ["keys", "init", str(root), "--agents", "3", "--server-name", "server",
               "--keep-existing"]  # fmt: skip
    assert main(command) == 0
    tokens = (root / "server" / "tokens.toml").read_bytes()
    assert main(command) == 0
    assert (root / "server" / "tokens.toml").read_bytes() == tokens


@pytest.mark.parametrize("path", [COMPOSE, GPU, OWN_DATA], ids=lambda p: p.name)
def test_no_variables_and_no_public_secrets(path: Path) -> None:
    # The demo needs no .env: there is nothing to set, and no token has a public default.
    variables: list[tuple[str, str | None]] = []
    interpolate(load(path), variables)
    assert variables == []
    assert "DKT_RELAY" not in path.read_text()  # no token variables at all


def test_the_gpu_override_reserves_a_gpu_for_each_agent_and_trains_on_it(
    demo: dict[str, Any], gpu: dict[str, Any]
) -> None:
    assert set(gpu["services"]) == set(AGENTS)
    for name in AGENTS:
        agent = gpu["services"][name]
        assert agent["deploy"]["resources"]["reservations"]["devices"] == [
            {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
        ]
        # `command` replaces the base file's: the same one, plus the device.
        assert agent["command"] == demo["services"][name]["command"] + ["--device", "cuda:0"]
        assert parse(agent["command"]).device == "cuda:0"


def validate(document: dict[str, Any]) -> None:
    """Raise ValueError, naming the key, unless `document` follows the Compose Specification."""
    PyCompose.from_yaml(yaml.safe_dump(document))


@pytest.mark.parametrize("path", [COMPOSE, GPU, OWN_DATA], ids=lambda p: p.name)
def test_each_file_follows_the_compose_specification(path: Path) -> None:
    validate(interpolate(load(path)))


def test_the_demo_merged_with_the_gpu_override_follows_the_compose_specification(
    demo: dict[str, Any], gpu: dict[str, Any]
) -> None:
    merged = {**demo, "services": dict(demo["services"])}
    for name, override in gpu["services"].items():
        merged["services"][name] = {**demo["services"][name], **override}
    validate(merged)
    assert merged["services"]["agent-0"]["command"][-2:] == ["--device", "cuda:0"]


def test_the_own_data_override_mounts_each_site_read_only_into_its_own_agent_only(
    demo: dict[str, Any],
) -> None:
    own = yaml.safe_load(OWN_DATA.read_text())
    merged = {**demo, "services": dict(demo["services"])}
    for name, override in own["services"].items():
        merged["services"][name] = {**demo["services"][name], **override}
    validate(merged)
    for n in range(3):
        agent = merged["services"][f"agent-{n}"]
        assert agent["command"][-2:] == ["--data", "/site"]
        assert f"./site{n}:/site:ro" in agent["volumes"]
    sites = [v for s in merged["services"].values() for v in s.get("volumes", [])
             if str(v).startswith("./site")]  # fmt: skip
    assert sorted(sites) == [f"./site{n}:/site:ro" for n in range(3)]  # nowhere else


@pytest.mark.parametrize(
    ("service", "key", "value", "complaint"),
    [
        ("server", "depend_on", {}, "depend_on"),  # a typo of depends_on
        ("server", "ports", ["not-a-port"], "ports"),
        ("agent-0", "depends_on", {"server": {"condition": "healthy"}}, "condition"),
        ("server", "restart", "sometimes", "restart"),
    ],
)
def test_the_specification_check_rejects_a_broken_service(
    demo: dict[str, Any], service: str, key: str, value: Any, complaint: str
) -> None:
    broken = {**demo, "services": {**demo["services"]}}
    broken["services"][service] = {**demo["services"][service], key: value}
    with pytest.raises(ValueError, match=complaint):
        validate(broken)


def compose_config(*files: Path) -> dict[str, Any]:
    """`docker-compose -f ... config` as parsed YAML; fails the test if it rejects them."""
    executable = shutil.which("docker-compose")
    assert executable is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("DKT_")}
    command = [executable]
    for path in files:
        command += ["-f", str(path)]
    done = subprocess.run(
        [*command, "config"], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, f"{' '.join(command)} config: {done.stderr}"
    return yaml.safe_load(done.stdout)


# An extra check on top of the specification tests above; .ci/run installs Debian's
# docker-compose (v1) so CI always runs it.
@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (the Compose Specification tests still ran)",
)
def test_docker_compose_accepts_the_demo_and_its_gpu_merge() -> None:
    demo = compose_config(COMPOSE)
    assert set(demo["services"]) == {"keys", "server", *AGENTS, "launcher"}
    assert "deploy" not in demo["services"]["agent-0"]
    merged = compose_config(COMPOSE, GPU)
    for name in AGENTS:
        agent = merged["services"][name]
        assert agent["command"][-2:] == ["--device", "cuda:0"]
        assert agent["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1
        assert agent["depends_on"] == {"server": {"condition": "service_healthy"}}
    # docker-compose 1.29 drops `pull_policy` when it merges files (Compose v2 keeps it).
    without_policy = {k: v for k, v in demo["services"]["keys"].items() if k != "pull_policy"}
    assert merged["services"]["keys"] == without_policy
