"""Specification of the shared probe set: a stratified, seeded holdout with a fingerprint."""

from __future__ import annotations

import pytest
import torch

from dkt.common.data.labeled_data import LabeledData
from dkt.common.data.probe import ProbeSet, fingerprint, sample_probe, split_holdout
from dkt.common.data.streams import build_streams

# 100 rows of 3 classes with 47, 31 and 22 rows, labels interleaved; x[i] == i, so a
# row can be recognised by its value wherever it ends up.
COUNTS = {0: 47, 1: 31, 2: 22}
N = sum(COUNTS.values())


def indexed_data() -> LabeledData:
    labels = torch.tensor([c for c, n in COUNTS.items() for _ in range(n)])
    labels = labels[torch.randperm(N, generator=torch.Generator().manual_seed(1))]
    x = torch.arange(N, dtype=torch.float32).view(N, 1, 1, 1)
    return LabeledData(x, labels)


def row_ids(x: torch.Tensor) -> list[int]:
    return [int(v) for v in x.flatten().tolist()]


def test_holdout_probe_has_exactly_the_requested_size() -> None:
    probe, held_out, rest = split_holdout(indexed_data(), 13, seed=0)

    assert len(probe) == 13
    assert probe.inputs.shape == (13, 1, 1, 1)
    assert len(held_out) == 13
    assert len(rest) == N - 13 == 87


def test_holdout_is_stratified_by_class() -> None:
    _, held_out, _ = split_holdout(indexed_data(), 13, seed=0)

    counts = torch.bincount(held_out.y, minlength=3).tolist()
    # proportional shares: 13·47/100 = 6.11, 13·31/100 = 4.03, 13·22/100 = 2.86;
    # floors 6 + 4 + 2 = 12, the one remaining row goes to the first class: 7, 4, 2
    assert counts == [7, 4, 2]
    for c, n in COUNTS.items():
        assert abs(counts[c] - 13 * n / N) <= 1


def test_holdout_covers_every_class_when_classes_are_balanced() -> None:
    # 4 classes of 25 rows, probe of 6: 6·25/100 = 1.5 each; floors 1·4 = 4,
    # the 2 remaining rows go to classes 0 and 1: 2, 2, 1, 1
    y = torch.arange(4).repeat(25)
    data = LabeledData(torch.arange(100, dtype=torch.float32).view(100, 1, 1, 1), y)

    _, held_out, _ = split_holdout(data, 6, seed=0)

    assert torch.bincount(held_out.y, minlength=4).tolist() == [2, 2, 1, 1]


def test_held_out_rows_keep_their_labels_and_match_the_probe_inputs() -> None:
    data = indexed_data()

    probe, held_out, rest = split_holdout(data, 13, seed=0)

    assert torch.equal(probe.inputs, held_out.x)
    ids = row_ids(held_out.x)
    assert ids == sorted(ids)
    assert held_out.y.tolist() == [int(data.y[i]) for i in ids]
    assert rest.y.tolist() == [int(data.y[i]) for i in row_ids(rest.x)]


def test_probe_rows_are_disjoint_from_the_remaining_training_data() -> None:
    probe, _, rest = split_holdout(indexed_data(), 13, seed=0)

    probe_ids = set(row_ids(probe.inputs))
    rest_ids = set(row_ids(rest.x))
    assert len(probe_ids) == 13
    assert len(rest_ids) == 87
    assert probe_ids.isdisjoint(rest_ids)
    assert probe_ids | rest_ids == set(range(N))


@pytest.mark.parametrize("assignment", ["shuffled", "disjoint", "same"])
def test_no_stream_built_from_the_remaining_data_contains_a_probe_row(assignment: str) -> None:
    probe, _, rest = split_holdout(indexed_data(), 13, seed=0)
    probe_ids = set(row_ids(probe.inputs))

    streams = build_streams(3, 3, 1, assignment, 0, rest, rest)

    for stream in streams:
        for exp in stream.experiences:
            assert probe_ids.isdisjoint(row_ids(exp.train.x))
    seen = {i for s in streams for e in s.experiences for i in row_ids(e.train.x)}
    assert seen == set(range(N)) - probe_ids


def test_the_same_seed_gives_the_same_probe_and_another_seed_a_different_one() -> None:
    first, _, _ = split_holdout(indexed_data(), 13, seed=3)
    second, _, _ = split_holdout(indexed_data(), 13, seed=3)
    other, _, _ = split_holdout(indexed_data(), 13, seed=4)

    assert row_ids(first.inputs) == row_ids(second.inputs)
    assert first.fingerprint == second.fingerprint
    assert row_ids(first.inputs) != row_ids(other.inputs)
    assert first.fingerprint != other.fingerprint


@pytest.mark.parametrize("size", [0, -1, N, N + 1])
def test_holdout_size_outside_1_to_n_minus_1_is_an_error(size: int) -> None:
    with pytest.raises(ValueError, match=f"probe size must be between 1 and 99, got {size}"):
        split_holdout(indexed_data(), size, seed=0)


def test_probe_source_is_recorded() -> None:
    probe, _, _ = split_holdout(indexed_data(), 13, seed=0)

    assert probe.source == "holdout"


# Fingerprints -----------------------------------------------------------------------

VALUES = torch.linspace(-2.0, 2.0, 24).view(2, 3, 2, 2)


def test_probe_inputs_are_stored_as_contiguous_float32() -> None:
    probe = ProbeSet.from_inputs(VALUES.double().transpose(2, 3), "test")

    assert probe.inputs.dtype == torch.float32
    assert probe.inputs.is_contiguous()


def test_equal_inputs_give_equal_fingerprints_whatever_their_dtype_or_layout() -> None:
    as_float32 = ProbeSet.from_inputs(VALUES.clone(), "a")
    as_float64 = ProbeSet.from_inputs(VALUES.double(), "b")
    # Same values through a transposed view: not contiguous in memory.
    strided = VALUES.transpose(2, 3).contiguous().transpose(2, 3)
    assert not strided.is_contiguous()
    as_strided = ProbeSet.from_inputs(strided, "c")

    assert as_float32.fingerprint == as_float64.fingerprint == as_strided.fingerprint
    assert fingerprint(strided) == fingerprint(VALUES) == as_float32.fingerprint
    assert len(as_float32.fingerprint) == 64  # hex SHA-256


def test_changing_one_value_changes_the_fingerprint() -> None:
    changed = VALUES.clone()
    changed[1, 2, 0, 1] += 1e-3

    assert fingerprint(changed) != fingerprint(VALUES)


def test_the_same_values_in_another_shape_have_another_fingerprint() -> None:
    assert fingerprint(VALUES.reshape(4, 3, 1, 2)) != fingerprint(VALUES)
    assert fingerprint(VALUES.reshape(2, 3, 4, 1)) != fingerprint(VALUES)


def test_verify_passes_on_untouched_inputs_and_raises_after_tampering() -> None:
    probe = ProbeSet.from_inputs(VALUES.clone(), "test")
    probe.verify()
    expected = probe.fingerprint

    probe.inputs[0, 0, 0, 0] += 1.0

    with pytest.raises(ValueError, match=f"probe set fingerprint mismatch: expected {expected}"):
        probe.verify()


# Sampling a probe from another data set ---------------------------------------------


def test_sample_probe_draws_distinct_rows_seeded() -> None:
    data = indexed_data()

    first = sample_probe(data, 10, seed=0, source="other")
    second = sample_probe(data, 10, seed=0, source="other")
    other = sample_probe(data, 10, seed=1, source="other")

    ids = row_ids(first.inputs)
    assert len(set(ids)) == 10
    assert ids == sorted(ids)
    assert ids == row_ids(second.inputs)
    assert ids != row_ids(other.inputs)
    assert first.source == "other"


def test_sample_probe_may_take_every_row() -> None:
    probe = sample_probe(indexed_data(), N, seed=0, source="other")

    assert row_ids(probe.inputs) == list(range(N))


@pytest.mark.parametrize("size", [0, N + 1])
def test_sample_probe_size_outside_1_to_n_is_an_error(size: int) -> None:
    with pytest.raises(ValueError, match=f"probe size must be between 1 and 100, got {size}"):
        sample_probe(indexed_data(), size, seed=0, source="other")


def test_rows_left_by_rounding_go_first_to_classes_whose_share_rounded_to_zero() -> None:
    # 47, 31, 22 rows of classes 0, 1, 2; probe of 3: shares 1.41, 0.93, 0.66 round
    # down to 1, 0, 0, so the two rows left go to classes 1 and 2: [1, 1, 1].
    y = torch.tensor([0] * 47 + [1] * 31 + [2] * 22)
    data = LabeledData(torch.arange(100, dtype=torch.float32).view(100, 1, 1, 1), y)

    _, held_out, _ = split_holdout(data, 3, seed=0)

    assert torch.bincount(held_out.y, minlength=3).tolist() == [1, 1, 1]
