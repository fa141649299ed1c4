"""Specification of the class-balanced replay buffer."""

from __future__ import annotations

import io

import torch

from dkt.common.data.labeled_data import LabeledData
from dkt.common.training.replay import ReplayBuffer, epoch_batches, shuffled_batches

ROWS_PER_CLASS = 12


def experience(label: int) -> LabeledData:
    """12 rows of one class; x = 100·label + row, so every row is recognisable."""
    x = (100 * label + torch.arange(ROWS_PER_CLASS, dtype=torch.float32)).view(-1, 1, 1, 1)
    return LabeledData(x, torch.full((ROWS_PER_CLASS,), label))


# Classes arrive out of sorted order: 5, then 2, then 7.
EXPERIENCES = [experience(5), experience(2), experience(7)]


def rows(data: LabeledData | None) -> list[tuple[int, int]]:
    """(label, x value) pairs in buffer order."""
    assert data is not None
    return [
        (int(y), int(x)) for x, y in zip(data.x.flatten().tolist(), data.y.tolist(), strict=True)
    ]


def test_the_buffer_never_holds_more_than_its_capacity() -> None:
    buffer = ReplayBuffer(capacity=10, seed=0)

    for data in EXPERIENCES:
        buffer.update(data)
        assert len(buffer) <= 10
        assert len(buffer.data()) == len(buffer)


def test_classes_share_the_capacity_evenly_with_the_remainder_to_the_lowest_classes() -> None:
    buffer = ReplayBuffer(capacity=10, seed=0)

    buffer.update(EXPERIENCES[0])
    # one class: 10 // 1 = 10 of its 12 rows
    assert buffer.class_counts() == {5: 10}

    buffer.update(EXPERIENCES[1])
    # two classes: 10 = 5 + 5
    assert buffer.class_counts() == {2: 5, 5: 5}

    buffer.update(EXPERIENCES[2])
    # three classes: divmod(10, 3) = (3, 1), the extra one to class 2 (first in sorted order)
    assert buffer.class_counts() == {2: 4, 5: 3, 7: 3}
    assert len(buffer) == 10


def test_a_class_with_fewer_rows_than_its_share_keeps_all_of_them() -> None:
    buffer = ReplayBuffer(capacity=100, seed=0)

    buffer.update(EXPERIENCES[0])

    assert buffer.class_counts() == {5: ROWS_PER_CLASS}


def test_buffered_samples_come_from_the_given_data_with_their_labels() -> None:
    buffer = ReplayBuffer(capacity=10, seed=0)
    given = {(label, 100 * label + i) for label in (5, 2, 7) for i in range(ROWS_PER_CLASS)}

    for data in EXPERIENCES:
        buffer.update(data)

    contents = rows(buffer.data())
    assert len(contents) == 10
    assert len(set(contents)) == 10  # no sample twice
    assert set(contents) <= given
    # data() is ordered by class
    assert [label for label, _ in contents] == [2] * 4 + [5] * 3 + [7] * 3


def test_a_shrinking_class_keeps_a_prefix_of_its_earlier_samples() -> None:
    buffer = ReplayBuffer(capacity=10, seed=0)
    buffer.update(EXPERIENCES[0])
    before = rows(buffer.data())

    buffer.update(EXPERIENCES[1])
    buffer.update(EXPERIENCES[2])

    after = [row for row in rows(buffer.data()) if row[0] == 5]
    assert after == before[:3]


def test_the_sample_is_random_not_the_first_rows() -> None:
    buffer = ReplayBuffer(capacity=10, seed=0)

    buffer.update(EXPERIENCES[0])

    assert [x for _, x in rows(buffer.data())] != list(range(500, 510))


def test_a_class_seen_again_is_not_resampled() -> None:
    buffer = ReplayBuffer(capacity=10, seed=0)
    buffer.update(EXPERIENCES[0])
    before = rows(buffer.data())

    buffer.update(EXPERIENCES[0])

    assert rows(buffer.data()) == before


def test_the_same_seed_gives_the_same_contents_and_another_seed_different_ones() -> None:
    first, second, other = (ReplayBuffer(10, seed=s) for s in (4, 4, 5))

    for data in EXPERIENCES:
        for buffer in (first, second, other):
            buffer.update(data)

    assert rows(first.data()) == rows(second.data())
    assert rows(first.data()) != rows(other.data())


def test_state_dict_round_trip_restores_contents_and_future_updates() -> None:
    original = ReplayBuffer(capacity=10, seed=0)
    original.update(EXPERIENCES[0])
    # Through torch.save / torch.load, as a checkpoint does.
    blob = io.BytesIO()
    torch.save(original.state_dict(), blob)
    blob.seek(0)

    restored = ReplayBuffer(capacity=3, seed=99)
    restored.load_state_dict(torch.load(blob, weights_only=False))

    assert restored.capacity == 10
    assert rows(restored.data()) == rows(original.data())
    for data in EXPERIENCES[1:]:
        original.update(data)
        restored.update(data)
        assert rows(restored.data()) == rows(original.data())


def test_capacity_zero_keeps_nothing() -> None:
    buffer = ReplayBuffer(capacity=0, seed=0)

    for data in EXPERIENCES:
        buffer.update(data)

    assert len(buffer) == 0
    assert buffer.class_counts() == {}
    assert buffer.data() is None


def test_a_new_buffer_is_empty() -> None:
    buffer = ReplayBuffer(capacity=10, seed=0)

    assert len(buffer) == 0
    assert buffer.data() is None


# Mixing replay rows into an epoch -----------------------------------------------------


def test_concat_mixing_shuffles_data_and_memory_into_one_pool() -> None:
    batches = epoch_batches(10, 3, 4, "concat", torch.Generator().manual_seed(0))

    # 13 rows in batches of 4: 4, 4, 4 and a trailing single row, dropped (batch norm).
    assert [len(b) for b in batches] == [4, 4, 4]
    rows = torch.cat(batches).tolist()
    assert len(set(rows)) == 12 and set(rows) <= set(range(13))
    assert len({10, 11, 12} & set(rows)) >= 2  # memory rows ride in the same batches


def test_concat_mixing_is_the_plain_shuffled_split_of_data_plus_memory() -> None:
    mixed = epoch_batches(10, 3, 4, "concat", torch.Generator().manual_seed(5))
    plain = shuffled_batches(13, 4, torch.Generator().manual_seed(5))

    assert [b.tolist() for b in mixed] == [b.tolist() for b in plain]


def test_batch_mixing_puts_one_memory_batch_beside_each_data_batch() -> None:
    # 10 data rows (0..9), 6 memory rows (10..15), batch size 4.
    batches = epoch_batches(10, 6, 4, "batch", torch.Generator().manual_seed(0))

    # Data in batches of 4, 4, 2: each followed by 4 memory rows.
    assert [len(b) for b in batches] == [8, 8, 6]
    data = [b[: len(b) - 4].tolist() for b in batches]
    memory = [b[len(b) - 4 :].tolist() for b in batches]
    assert sorted(sum(data, [])) == list(range(10))
    assert all(10 <= r < 16 for m in memory for r in m)
    # Drawn without replacement until the memory runs out, then reshuffled.
    assert len(set(memory[0])) == 4
    assert len(set(memory[1])) == 4


def test_batch_mixing_takes_the_whole_memory_when_it_is_smaller_than_a_batch() -> None:
    batches = epoch_batches(8, 3, 4, "batch", torch.Generator().manual_seed(0))

    assert [len(b) for b in batches] == [7, 7]
    assert all(sorted(b[4:].tolist()) == [8, 9, 10] for b in batches)


def test_batch_mixing_without_memory_is_the_data_alone() -> None:
    batches = epoch_batches(10, 0, 4, "batch", torch.Generator().manual_seed(0))

    assert [len(b) for b in batches] == [4, 4, 2]


def test_a_saved_buffer_holds_only_its_own_rows_not_the_experience_they_came_from() -> None:
    big = LabeledData(torch.randn(2000, 1, 8, 8), torch.arange(2).repeat_interleave(1000))
    buffer = ReplayBuffer(capacity=20, seed=0)
    buffer.update(big)

    blob = io.BytesIO()
    torch.save(buffer.state_dict(), blob)

    # 20 rows of 64 float32 values (5 KB), labels, the generator's state (5 KB) and
    # pickling overhead; a view into the experience's data would drag all 2000 rows
    # (512 KB) along.
    assert len(blob.getvalue()) < 64 * 1024
