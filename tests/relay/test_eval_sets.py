"""A run's labeled eval set: the conductor (admin) stores it once with PutEvalSet, agents
fetch it with GetEvalSet; a malformed set is refused with its own status code and leaves
nothing in the store; a stored one is durable and checked on every read."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from dkt.common.data.eval_set import EvalSet, eval_fingerprint
from dkt.common.data.probe import ProbeSet
from dkt.proto.dkt.v1 import relay_pb2, relay_pb2_grpc
from dkt.proto.relay_client import (
    AlreadyExistsError,
    DataLossError,
    EvalSetNotPublishedError,
    FailedPreconditionError,
    NotFoundError,
    NotPublishedError,
    RelayClient,
    ResourceExhaustedError,
)
from dkt.proto.relay_connection import MISSING_EVAL_SET, MISSING_KEY, authorization_metadata
from tests.support.relay import (
    EXPERIENCES,
    NUM_CLASSES,
    RelayProcess,
    Tokens,
    client_for,
    eval_set_chunks,
    eval_set_meta,
    eval_set_payload,
    make_eval_set,
    new_run_id,
    put_eval_set_refused,
)

Code = grpc.StatusCode


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.numpy().tobytes() == b.numpy().tobytes()


def _arrays(seed: int = 0, rows: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal((rows, 1, 4, 4)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, rows).astype(np.int64)
    return inputs, labels


def _status_of_run(relay: RelayProcess, run_id: str) -> dict:
    with urllib.request.urlopen(f"{relay.status_url}/status", timeout=10) as response:
        status = json.loads(response.read())
    (run,) = [r for r in status["runs"] if r["run_id"] == run_id]
    return run


# -- the common type -------------------------------------------------------------------


def test_an_eval_set_fingerprints_its_inputs_and_labels() -> None:
    inputs, labels = torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 3, 4])

    eval_set = EvalSet.from_tensors(inputs, labels, source="s")
    relabeled = EvalSet.from_tensors(inputs, labels.flip(0), source="s")

    assert len(eval_set) == 5
    assert eval_set.fingerprint == eval_fingerprint(inputs, labels)
    assert relabeled.fingerprint != eval_set.fingerprint
    eval_set.verify()
    tampered = EvalSet(inputs, labels.flip(0), "s", eval_set.fingerprint)
    with pytest.raises(ValueError, match="eval set fingerprint mismatch"):
        tampered.verify()


@pytest.mark.parametrize(
    ("inputs", "labels", "message"),
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), "N×C×H×W"),
        (torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long), "N×C×H×W"),
        (torch.zeros(4, 1, 2, 2), torch.zeros(3, dtype=torch.long), "one per input row"),
        (torch.zeros(4, 1, 2, 2), torch.zeros(4, 1, dtype=torch.long), "one per input row"),
        (torch.zeros(4, 1, 2, 2), torch.zeros(4), "class indices"),
    ],
)
def test_an_eval_set_needs_rows_of_inputs_and_one_label_each(
    inputs: torch.Tensor, labels: torch.Tensor, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        EvalSet.from_tensors(inputs, labels, source="s")


# -- storing and serving ---------------------------------------------------------------


def test_an_eval_set_round_trips_bit_exact_to_an_agent(
    run_id: str,
    relay: RelayProcess,
    relay_tokens: Tokens,
    agent_client: Callable[[int, str], RelayClient],
) -> None:
    eval_set = make_eval_set(seed=1, size=40)  # 2880 bytes: six chunks of 512

    with client_for(relay, relay_tokens.admin, chunk_bytes=512) as uploader:
        stored = uploader.put_eval_set(run_id, eval_set)
    fetched = agent_client(3, run_id).get_eval_set(run_id)

    assert stored is True
    assert _same_bits(fetched.inputs, eval_set.inputs)
    assert _same_bits(fetched.labels, eval_set.labels)
    assert (fetched.source, fetched.fingerprint) == ("test-eval", eval_set.fingerprint)


def test_the_status_shows_a_runs_eval_set(
    run_id: str, admin: RelayClient, relay: RelayProcess
) -> None:
    before = _status_of_run(relay, run_id)
    eval_set = make_eval_set(seed=2, size=7)
    admin.put_eval_set(run_id, eval_set)

    (grpc_run,) = [r for r in admin.status()["runs"] if r["run_id"] == run_id]
    http_run = _status_of_run(relay, run_id)

    assert (before["eval_size"], before["eval_fingerprint"]) == (0, "")
    assert (grpc_run["eval_size"], grpc_run["eval_fingerprint"]) == (7, eval_set.fingerprint)
    assert (http_run["eval_size"], http_run["eval_fingerprint"]) == (7, eval_set.fingerprint)


def test_dkt_status_names_a_runs_eval_set_in_its_title(
    run_id: str, admin: RelayClient, relay: RelayProcess, relay_tokens, capsys
) -> None:
    from tests.support.relay import dkt_parser

    admin.put_eval_set(run_id, make_eval_set(seed=3, size=5))
    args = dkt_parser().parse_args(
        ["status", "--server", relay.address, "--token", relay_tokens.admin]
    )

    assert args.func(args) == 0
    section = capsys.readouterr().out.split(f"run {run_id}:")[1].split("┏")[0]
    assert " ".join(section.split()).endswith("agents expected, evaluation set of 5")


def test_putting_the_same_eval_set_again_is_idempotent(
    run_id: str, admin: RelayClient, relay: RelayProcess
) -> None:
    eval_set = make_eval_set(seed=3)
    assert admin.put_eval_set(run_id, eval_set) is True
    before = relay.store_snapshot()

    again = admin.put_eval_set(run_id, EvalSet.from_tensors(eval_set.inputs, eval_set.labels, "x"))

    assert again is False
    assert relay.store_snapshot() == before
    assert admin.get_eval_set(run_id).source == "test-eval"  # the source first stored


def test_a_different_eval_set_already_exists_and_the_first_is_still_served(
    run_id: str, admin: RelayClient, relay: RelayProcess
) -> None:
    first = make_eval_set(seed=4)
    admin.put_eval_set(run_id, first)
    before = relay.store_snapshot()

    with pytest.raises(AlreadyExistsError) as failure:
        admin.put_eval_set(run_id, make_eval_set(seed=5))

    assert failure.value.code == Code.ALREADY_EXISTS
    assert f"run {run_id!r} already has a different eval set" in failure.value.details
    assert relay.store_snapshot() == before
    assert admin.get_eval_set(run_id).fingerprint == first.fingerprint


def test_a_run_without_an_eval_set_is_not_found_saying_eval_set_is_missing(
    run_id: str,
    agent_client: Callable[[int, str], RelayClient],
    relay: RelayProcess,
    relay_tokens: Tokens,
) -> None:
    with pytest.raises(EvalSetNotPublishedError) as typed:
        agent_client(0, run_id).get_eval_set(run_id)
    with grpc.insecure_channel(relay.address) as channel, pytest.raises(grpc.RpcError) as raw:
        list(
            relay_pb2_grpc.RelayStub(channel).GetEvalSet(
                relay_pb2.GetEvalSetRequest(run_id=run_id),
                timeout=10,
                metadata=authorization_metadata(relay_tokens.credential(0, run_id)),
            )
        )

    assert isinstance(typed.value, NotPublishedError) and typed.value.code == Code.NOT_FOUND
    assert f"run {run_id!r} has no eval set" in typed.value.details
    assert raw.value.code() == Code.NOT_FOUND
    assert dict(raw.value.trailing_metadata())[MISSING_KEY] == MISSING_EVAL_SET == "eval-set"


def test_the_eval_set_of_an_unknown_run_is_not_found_saying_run(admin: RelayClient) -> None:
    with pytest.raises(NotFoundError) as failure:
        admin.get_eval_set("no-such-run")

    assert not isinstance(failure.value, NotPublishedError)
    assert "run 'no-such-run' does not exist" in failure.value.details


# -- refused requests store nothing ----------------------------------------------------


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("one dimension", "EvalSetMeta.shape must have at least 2 positive dimensions"),
        ("a zero dimension", "EvalSetMeta.shape must have at least 2 positive dimensions"),
        ("num_rows", "EvalSetMeta.num_rows is 5 but EvalSetMeta.shape"),
        ("payload_bytes", "EvalSetMeta.payload_bytes is"),
        ("sha256 of other bytes", "not the declared EvalSetMeta.sha256"),
        ("sha256 not hex", "EvalSetMeta.sha256 must be the 64 lowercase hex digits"),
        ("fingerprint", "EvalSetMeta.fingerprint"),
        ("label out of range", "row 2 has label 10"),
        ("negative label", "row 0 has label -1"),
        ("non-finite input", "contain 1 non-finite values"),
        ("chunks out of order", "EvalSetChunk.offset"),
        ("run_id in a later chunk", "only the first chunk may carry metadata"),
        ("no run_id", "EvalSetChunk.run_id is empty"),
        ("no meta", "must start with a chunk that carries EvalSetChunk.run_id"),
    ],
)
def test_a_malformed_eval_set_is_invalid_names_its_field_and_stores_nothing(
    case: str, field: str, run_id: str, relay: RelayProcess, relay_tokens: Tokens
) -> None:
    inputs, labels = _arrays()
    meta_changes: dict[str, object] = {}
    if case == "label out of range":
        labels[2] = NUM_CLASSES
    elif case == "negative label":
        labels[0] = -1
    elif case == "non-finite input":
        inputs[1, 0, 2, 3] = np.inf
    payload = eval_set_payload(inputs, labels)
    if case == "one dimension":
        meta_changes = dict(shape=[inputs.size], num_rows=inputs.size)
    elif case == "a zero dimension":
        meta_changes = dict(shape=[6, 0, 4, 4])
    elif case == "num_rows":
        meta_changes = dict(num_rows=5)
    elif case == "payload_bytes":
        meta_changes = dict(payload_bytes=len(payload) - 8 * len(labels))  # no labels
    elif case == "sha256 of other bytes":
        meta_changes = dict(sha256=hashlib.sha256(b"other").hexdigest())
    elif case == "sha256 not hex":
        meta_changes = dict(sha256="Z" * 64)
    elif case == "fingerprint":
        meta_changes = dict(fingerprint=eval_set_meta(inputs, labels[::-1]).fingerprint)
    meta = eval_set_meta(inputs, labels, **meta_changes)
    chunks = eval_set_chunks(run_id, meta, payload, size=128)
    if case == "chunks out of order":
        chunks[1].offset, chunks[2].offset = chunks[2].offset, chunks[1].offset
    elif case == "run_id in a later chunk":
        chunks[1].run_id = run_id
    elif case == "no run_id":
        chunks[0].run_id = ""
    elif case == "no meta":
        chunks[0].ClearField("meta")
    before = relay.store_snapshot()

    error = put_eval_set_refused(relay, relay_tokens.admin, chunks)

    assert error.code() == Code.INVALID_ARGUMENT, error.details()
    assert field in error.details()
    assert relay.store_snapshot() == before


def test_a_label_outside_the_run_says_which_row_and_value(
    run_id: str, relay: RelayProcess, relay_tokens: Tokens
) -> None:
    inputs, labels = _arrays(seed=9)
    labels[[3, 5]] = [12, -4]

    error = put_eval_set_refused(
        relay,
        relay_tokens.admin,
        eval_set_chunks(run_id, eval_set_meta(inputs, labels), eval_set_payload(inputs, labels)),
    )

    assert error.code() == Code.INVALID_ARGUMENT
    assert error.details() == (
        "eval labels (EvalSetChunk.data) must be classes 0..9 of RunSpec.num_classes = 10: "
        "row 3 has label 12 (2 of 6 labels are out of range)"
    )


@pytest.mark.parametrize(
    ("token", "code", "message"),
    [
        (
            "agent",
            Code.PERMISSION_DENIED,
            "storing a run's eval set needs the admin or the conductor token",
        ),
        ("unknown", Code.UNAUTHENTICATED, "invalid token"),
        ("none", Code.UNAUTHENTICATED, "missing token"),
    ],
)
def test_only_the_admin_stores_an_eval_set(
    token: str,
    code: grpc.StatusCode,
    message: str,
    run_id: str,
    relay: RelayProcess,
    relay_tokens: Tokens,
) -> None:
    tokens = {"agent": relay_tokens.credential(0, run_id), "unknown": "u" * 32, "none": ""}
    inputs, labels = _arrays()
    chunks = eval_set_chunks(
        run_id, eval_set_meta(inputs, labels), eval_set_payload(inputs, labels)
    )
    before = relay.store_snapshot()

    error = put_eval_set_refused(relay, tokens[token], chunks)

    assert error.code() == code
    assert message in error.details()
    assert relay.store_snapshot() == before


def test_an_eval_set_for_an_unknown_run_is_not_found(
    relay: RelayProcess, admin: RelayClient
) -> None:
    before = relay.store_snapshot()

    with pytest.raises(NotFoundError) as failure:
        admin.put_eval_set(new_run_id(), make_eval_set())

    assert failure.value.code == Code.NOT_FOUND
    assert "does not exist on this relay" in failure.value.details
    assert relay.store_snapshot() == before


@pytest.mark.parametrize("state", ["finished", "failed"])
def test_a_closed_run_takes_no_eval_set(
    state: str, run_id: str, admin: RelayClient, relay: RelayProcess
) -> None:
    admin.set_run_state(run_id, state)
    before = relay.store_snapshot()

    with pytest.raises(FailedPreconditionError) as failure:
        admin.put_eval_set(run_id, make_eval_set())

    assert failure.value.details == f"run {run_id!r} is {state}; it accepts no eval set"
    assert relay.store_snapshot() == before


# -- a relay of the test's own: limits, restarts, damage -------------------------------


@pytest.fixture
def own_relay(tmp_path: Path) -> Iterator[tuple[RelayProcess, Tokens]]:
    """A started relay that the test may kill and restart (eval sets up to 4 KiB)."""
    tokens = Tokens.generate(2)
    token_file = str(tokens.write(tmp_path / "tokens.toml"))
    args = ["--token-file", token_file, "--insecure", "--max-payload-mb", str(4096 / 2**20)]
    relay = RelayProcess(tmp_path / "data", args).start()
    yield relay, tokens
    relay.kill()


def test_an_eval_set_survives_kill_9_and_restart_and_is_refused_over_the_size_limit(
    own_relay: tuple[RelayProcess, Tokens], probe: ProbeSet
) -> None:
    relay, tokens = own_relay
    eval_set = make_eval_set(seed=6, size=40)  # 40 x 64 + 40 x 8 = 2880 bytes
    with client_for(relay, tokens.admin) as admin:
        admin.create_run("kept", probe, NUM_CLASSES, EXPERIENCES)
        admin.put_eval_set("kept", eval_set)
        before = relay.store_snapshot()
        with pytest.raises(ResourceExhaustedError) as too_big:
            admin.put_eval_set("kept", make_eval_set(seed=7, size=60))  # 4320 bytes
        assert relay.store_snapshot() == before

    relay.kill()  # right after the answer: no shutdown code runs
    relay.start()

    with client_for(relay, tokens.credential(1, "kept")) as agent:
        fetched = agent.get_eval_set("kept")
        (run,) = agent.status()["runs"]
    assert too_big.value.code == Code.RESOURCE_EXHAUSTED
    assert "eval set of 4320 bytes exceeds this relay's limit of 4096 bytes" in (
        too_big.value.details
    )
    assert _same_bits(fetched.inputs, eval_set.inputs)
    assert _same_bits(fetched.labels, eval_set.labels)
    assert (run["eval_size"], run["eval_fingerprint"]) == (40, eval_set.fingerprint)


def test_an_eval_set_corrupted_on_disk_is_data_loss_and_not_served(
    own_relay: tuple[RelayProcess, Tokens], probe: ProbeSet
) -> None:
    relay, tokens = own_relay
    eval_set = make_eval_set(seed=8)
    payload = eval_set_payload(eval_set.inputs.numpy(), eval_set.labels.numpy())
    sha = hashlib.sha256(payload).hexdigest()
    path = relay.data_dir / "payloads" / sha[:2] / sha
    with client_for(relay, tokens.admin) as admin:
        admin.create_run("damaged", probe, NUM_CLASSES, EXPERIENCES)
        admin.put_eval_set("damaged", eval_set)
        damaged = bytearray(path.read_bytes())
        damaged[-3] ^= 0xFF  # a label
        path.write_bytes(bytes(damaged))

        with pytest.raises(DataLossError) as failure:
            admin.get_eval_set("damaged")

    assert failure.value.code == Code.DATA_LOSS
    assert failure.value.details.startswith(
        f"eval set of run 'damaged' (SHA-256 {sha}) is corrupt on the relay's disk"
    )
    assert str(relay.data_dir) not in failure.value.details
    relay.stop()
    assert f"(file {path})" in relay.log()
