"""`dkt simulate --engine flower`'s parts that need no Ray run: the options it refuses,
Ray's backend config, and virtual SuperNode N as agent N."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, RecordDict

from dkt.cli import main
from dkt.cli.fleet import agent_context
from dkt.client.agent_runtime import AgentPlacement
from dkt.flower.simulation import GCS_PORT_ENV, FleetResources, choose_local_gcs_port


def test_engine_flower_refuses_the_in_process_engines_relay_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "fleet"
    code = main(["simulate", "--engine", "flower", "--relay", "127.0.0.1:1", "--out", str(out)])
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--engine flower does not take --relay" in err
    assert "--engine in-process" in err
    assert not out.exists()


def test_engine_flower_refuses_gpus_for_agents_on_the_cpu(tmp_path, capsys):
    code = main(["simulate", "--engine", "flower", "--num-gpus", "0.5",
                 "--out", str(tmp_path / "fleet")])  # fmt: skip
    assert code == 2
    assert "add --device cuda" in " ".join(capsys.readouterr().err.split())


def test_fleet_resources_are_rays_client_resources_and_address():
    assert FleetResources(0.25, 0.5, "10.0.0.5:6379").backend_config() == {
        "client_resources": {"num_cpus": 0.25, "num_gpus": 0.5},
        "init_args": {"address": "10.0.0.5:6379"},
    }
    assert FleetResources().backend_config()["init_args"] == {}  # a local Ray


def test_a_local_ray_gets_its_gcs_port_chosen_up_front_a_joined_cluster_never():
    local: dict[str, str] = {}
    choose_local_gcs_port(FleetResources(), local)
    assert 0 < int(local[GCS_PORT_ENV]) < 65536
    # Joining a cluster (by --ray-address or $RAY_ADDRESS, as ray.init) sets nothing: the
    # cluster's ports are its own. A port already chosen is kept.
    given: dict[str, str] = {}
    choose_local_gcs_port(FleetResources(ray_address="127.0.0.1:6379"), given)
    from_env = {"RAY_ADDRESS": "10.0.0.5:6379"}
    choose_local_gcs_port(FleetResources(), from_env)
    chosen = {GCS_PORT_ENV: "7000"}
    choose_local_gcs_port(FleetResources(), chosen)
    assert (given, from_env, chosen) == (
        {},
        {"RAY_ADDRESS": "10.0.0.5:6379"},
        {GCS_PORT_ENV: "7000"},
    )


def test_virtual_supernode_n_is_agent_n_with_its_own_data_dir():
    node = Context(
        run_id=7, node_id=99, node_config={"partition-id": 3, "num-partitions": 8},
        state=RecordDict(), run_config={"seed": 1},
    )  # fmt: skip
    agent = agent_context(node, Path("/fleet/ckpt"), "127.0.0.1:5000", "cpu", 2)
    placement = AgentPlacement.from_node_config(dict(agent.node_config))
    assert (placement.agent_id, placement.data_dir) == (3, Path("/fleet/ckpt/agent-3"))
    assert (placement.relay, placement.device, placement.threads) == ("127.0.0.1:5000", "cpu", 2)
    assert agent.run_config == {"seed": 1} and agent.state is node.state
    assert node.node_config == {"partition-id": 3, "num-partitions": 8}  # left as it was


def test_without_ray_address_the_run_joins_the_cluster_of_ray_address_env(
    tmp_path, capsys, monkeypatch
):
    given = []

    def run_fleet(values, agents, data_root, relay_dir, resources, **kwargs):
        given.append(resources)
        raise RuntimeError("no Ray here")

    monkeypatch.setattr("dkt.cli.fleet.run_fleet", run_fleet)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    code = main(["simulate", "--engine", "flower", "--dataset", "synthetic",
                 "--out", str(tmp_path / "fleet")])  # fmt: skip

    assert code == 1  # the failed run, reported
    assert given[0].ray_address == "10.0.0.5:6379"
    assert "on Ray cluster 10.0.0.5:6379" in " ".join(capsys.readouterr().err.split())
