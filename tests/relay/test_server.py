"""A relay embedded in the calling process (as `dkt run` will start it), and its limits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
import torch

from dkt.client.relay_exchange import RelayExchange
from dkt.common.data.probe import ProbeSet
from dkt.common.training.predictions import Predictions
from dkt.proto.relay_client import RelayClient, ResourceExhaustedError, UnavailableError
from dkt.server.relay.server import RelayConfig, RelayConfigError, RelayServer
from dkt.server.relay.server import main as relay_main
from tests.support.relay import EXPERIENCES, NUM_CLASSES, make_predictions, make_probe


def test_an_embedded_relay_serves_a_relay_exchange(tmp_path: Path) -> None:
    probe = make_probe()
    config = RelayConfig(data_dir=tmp_path, port=0, status_port=None, insecure=True)
    with RelayServer(config) as relay, RelayClient(relay.address, timeout=20) as client:
        client.create_run("embedded", probe, NUM_CLASSES, EXPERIENCES)
        exchange = RelayExchange(client, "embedded")
        published = make_predictions("embedded", probe, agent_id=1, experience=0)
        exchange.publish(published)
        fetched = exchange.fetch(1, 0)

    assert torch.equal(fetched.logits, published.logits)
    assert relay.status_port is None


def test_a_prediction_set_over_the_configured_payload_limit_is_refused(tmp_path: Path) -> None:
    probe = make_probe()
    config = RelayConfig(
        data_dir=tmp_path, port=0, status_port=None, insecure=True, max_payload_bytes=1000
    )
    with RelayServer(config) as relay, RelayClient(relay.address, timeout=20) as client:
        client.create_run("limited", make_probe(size=4), NUM_CLASSES, EXPERIENCES)
        predictions = make_predictions("limited", make_probe(size=4), num_classes=NUM_CLASSES)
        client.publish(predictions)  # 4 x 10 float32 = 160 bytes: fine
        with pytest.raises(ResourceExhaustedError) as failure:
            client.create_run(
                "too-big", probe, NUM_CLASSES, EXPERIENCES
            )  # 32 x 16 float32 = 2048 bytes

    assert failure.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "probe set of 2048 bytes exceeds this relay's limit of 1000 bytes" in (
        failure.value.details
    )


def test_an_embedded_relay_refuses_to_run_unprotected_unless_told(tmp_path: Path) -> None:
    with pytest.raises(RelayConfigError, match="pass --insecure"):
        RelayServer(RelayConfig(data_dir=tmp_path, port=0, status_port=None))


def test_sets_larger_than_one_chunk_travel_intact_both_ways(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    probe = ProbeSet.from_inputs(torch.randn(3000, 1, 16, 16, generator=gen), "big")  # 3 MB
    logits = torch.randn(3000, 300, generator=gen)  # 3.6 MB
    predictions = Predictions(0, 0, (0, 1), probe.fingerprint, logits, "big")
    config = RelayConfig(data_dir=tmp_path, port=0, status_port=None, insecure=True)
    with RelayServer(config) as relay, RelayClient(relay.address, timeout=30) as client:
        client.create_run("big", probe, 300, EXPERIENCES)
        client.publish(predictions)
        fetched_probe = client.get_probe("big")
        fetched = client.fetch("big", 0, 0)

    assert torch.equal(fetched_probe.inputs, probe.inputs)
    assert torch.equal(fetched.logits, logits)


def _relay_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("relay")]


def _wait_for_no_relay_threads(timeout: float = 5.0) -> list[threading.Thread]:
    deadline = time.monotonic() + timeout
    while _relay_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    return _relay_threads()


def test_a_stopped_relay_leaves_no_threads_behind(tmp_path: Path) -> None:
    config = RelayConfig(data_dir=tmp_path, port=0, status_port=0, insecure=True)
    with RelayServer(config) as relay, RelayClient(relay.address, timeout=20) as client:
        client.create_run("threads", make_probe(), NUM_CLASSES, EXPERIENCES)
        client.status()

    assert _wait_for_no_relay_threads() == []
    assert relay.store.open_connections() == 0


def test_a_port_in_use_is_a_config_error_that_holds_nothing_open(tmp_path: Path) -> None:
    first = RelayConfig(data_dir=tmp_path / "a", port=0, status_port=None, insecure=True)
    with RelayServer(first) as running:
        second = RelayServer(
            RelayConfig(data_dir=tmp_path / "b", port=running.port, status_port=None, insecure=True)
        )
        with pytest.raises(RelayConfigError, match=f"cannot listen on 127.0.0.1:{running.port}"):
            second.start()

    assert second.store.open_connections() == 0
    assert _wait_for_no_relay_threads() == []


def test_dkt_relay_reports_startup_problems_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    base = ["--port", "0", "--status-port", "-1", "--data-dir", str(tmp_path / "d"), "--insecure"]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")

    codes = [
        relay_main([*base, "--tls-cert", str(junk), "--tls-key", str(junk)]),
        relay_main([*base, "--workers", "0"]),
        relay_main([*base, "--max-payload-mb", "0"]),
        relay_main([*base, "--data-dir", str(a_file)]),
    ]

    err = capsys.readouterr().err
    assert codes == [2, 2, 2, 2]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("dkt relay: ")]
    assert len(lines) == 4
    assert "cannot use the TLS files" in lines[0] and "pass PEM files" in lines[0]
    assert "workers must be at least 2, got 0" in lines[1]
    assert "max payload size must be positive" in lines[2]
    assert "pass a writable directory as --data-dir" in lines[3]


def test_watches_beyond_half_the_workers_are_refused_and_calls_still_get_through(
    tmp_path: Path,
) -> None:
    config = RelayConfig(data_dir=tmp_path, port=0, status_port=None, insecure=True, max_workers=4)
    with (
        RelayServer(config) as relay,
        RelayClient(relay.address, timeout=10) as client,
        client.watch(),
        client.watch(),
    ):
        with pytest.raises(ResourceExhaustedError) as failure:
            client.watch()
        status = client.status()

    assert "at most 2 watches at once" in failure.value.details
    assert status["totals"]["runs"] == 0


def test_a_watch_ends_unavailable_when_the_relay_shuts_down(tmp_path: Path) -> None:
    config = RelayConfig(data_dir=tmp_path, port=0, status_port=None, insecure=True)
    relay = RelayServer(config).start()
    with RelayClient(relay.address, timeout=10) as client, client.watch(timeout=10) as events:
        relay.stop()
        with pytest.raises(UnavailableError) as failure:
            next(events)

    assert "the relay is shutting down; watch again" in failure.value.details
