"""The in-process driver: determinism, resume, and that DKT actually transfers knowledge."""

from __future__ import annotations

import pytest
import torch

from dkt.common.engine.setup import prepare
from dkt.common.engine.simulation import simulate
from dkt.common.engine.step import step_from_checkpoint
from dkt.common.evaluation.results import RunResult, build_metrics
from dkt.common.run.config import ExperimentConfig
from dkt.common.training.checkpoints import latest_checkpoint, read_checkpoint
from dkt.common.training.exchange import InMemoryExchange
from tests.support.experiments import SMALL, InterruptAt, StopAfter, numbers


def test_same_config_gives_identical_metrics():
    first = simulate(SMALL)
    second = simulate(SMALL)
    for a in range(SMALL.agents):
        assert numbers(first.histories[a]) == numbers(second.histories[a])


def test_different_seed_gives_different_metrics():
    first = simulate(SMALL)
    other = simulate(SMALL.replace(seed=1))
    assert numbers(first.histories[0]) != numbers(other.histories[0])


@pytest.mark.parametrize("schedule", ["sync", "sequential"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, schedule):
    config = SMALL.replace(schedule=schedule)
    uninterrupted = simulate(config, checkpoint_dir=tmp_path / "a")

    # Crash in the middle of experience 1: agent 0 has finished it, agents 1 and 2 not.
    with pytest.raises(StopAfter):
        simulate(config, checkpoint_dir=tmp_path / "b", listener=InterruptAt(0, 1))
    assert latest_checkpoint(tmp_path / "b", 0)[0] == 1
    assert latest_checkpoint(tmp_path / "b", 1)[0] == 0
    resumed = simulate(config, checkpoint_dir=tmp_path / "b", resume=True)

    for a in range(config.agents):
        assert numbers(resumed.histories[a]) == numbers(uninterrupted.histories[a])


def test_resume_rejects_checkpoints_of_another_config(tmp_path):
    simulate(SMALL, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different experiment config"):
        simulate(SMALL.replace(kd_weight=2.0), checkpoint_dir=tmp_path, resume=True)


def test_every_agent_publishes_probe_logits_after_every_experience():
    exchange = InMemoryExchange()
    setup = prepare(SMALL)
    result = simulate(SMALL, exchange=exchange, setup=setup)
    for a in range(SMALL.agents):
        for e in range(SMALL.experiences):
            p = exchange.fetch(a, e)
            assert p is not None
            assert p.shape == (SMALL.probe_size, setup.data.num_classes)
            assert p.probe_fingerprint == setup.probe.fingerprint
            assert p.classes_seen == setup.streams[a].classes_seen(e)
        # 36 probe inputs x 6 classes x 4 bytes per experience.
        assert [r.bytes_published for r in result.histories[a]] == [36 * 6 * 4] * 3
        # sync, all peers: nothing at experience 0, two peers' sets afterwards.
        assert [r.bytes_fetched for r in result.histories[a]] == [0, 2 * 864, 2 * 864]


def test_no_teacher_at_first_experience_and_zero_kd_without_lambda():
    result = simulate(SMALL.replace(kd_weight=0.0))
    for history in result.histories.values():
        assert history[0].teachers == []
        assert all(r.loss_kd == 0.0 for r in history)
        assert [len(r.teachers) for r in history[1:]] == [2, 2]


def test_published_logits_are_the_cl_head_in_eval_mode():
    setup = prepare(SMALL)
    agent = setup.make_agent(0)
    _, predictions = agent.train_experience(0, None)
    agent.model.eval()
    with torch.no_grad():
        expected, _ = agent.model(setup.probe.inputs)
    assert torch.equal(predictions.logits, expected)


# The learning test: two agents on the digits with disjoint classes, 2 experiences
# each, sync schedule. At experience 1 each agent distills its peer's predictions
# after experience 0, so its st head sees the 3 classes only the peer trained on.
# Measured (seeds 0, 1, 2): transfer accuracy of the st head 0.97-1.00 with λ=1,
# 0.00-0.16 with λ=0 (chance over 10 classes is 0.10); the cl head scores 0 there.
LEARNING = ExperimentConfig(agents=2, experiences=2, assignment="disjoint", kd_weight=1.0)


@pytest.mark.slow
def test_distillation_transfers_the_peers_classes_to_the_student_head():
    result = simulate(LEARNING)
    for a, history in result.histories.items():
        final = history[-1]
        peer_classes = set(result.class_orders[1 - a][0])
        assert set(final.transfer_classes) == peer_classes
        assert final.transfer_st >= 0.85, f"agent {a}: transfer {final.transfer_st}"
        assert final.transfer_cl == 0.0


def test_without_distillation_the_student_head_stays_near_chance():
    result = simulate(LEARNING.replace(kd_weight=0.0))
    for a, history in result.histories.items():
        final = history[-1]
        assert len(final.transfer_classes) == 3
        assert final.transfer_st <= 0.3, f"agent {a}: transfer {final.transfer_st}"


def test_metrics_document_reports_transfer_per_agent():
    metrics = build_metrics(simulate(LEARNING))
    for a in ("0", "1"):
        summary = metrics["agents"][a]["summary"]
        assert summary["transfer_st_mean"] >= 0.85
        assert summary["transfer_experiences"] == 1
        assert len(metrics["agents"][a]["accuracy_matrix"]["cl"]) == 2
    assert metrics["mean_over_agents"]["transfer_st_mean"] >= 0.85


def test_disk_backed_agents_give_the_same_numbers_as_in_memory_agents(tmp_path):
    # Every step a fresh Agent object restored from disk, as a Flower ClientApp does.
    config = SMALL.replace(schedule="sequential")
    setup = prepare(config)
    expected = simulate(config, setup=setup)
    exchange = InMemoryExchange()
    for e in range(config.experiences):
        for a in range(config.agents):
            outcome = step_from_checkpoint(setup, a, e, exchange, tmp_path)
            assert outcome.retrained
    for a in range(config.agents):
        restored = setup.make_agent(a)
        restored.load_checkpoint(tmp_path / f"agent-{a}" / "experience-002.pt")
        assert numbers(restored.history) == numbers(expected.histories[a])


def test_a_step_already_done_is_republished_not_retrained(tmp_path):
    setup = prepare(SMALL)
    first = InMemoryExchange()
    trained = step_from_checkpoint(setup, 0, 0, first, tmp_path)
    again = InMemoryExchange()
    repeat = step_from_checkpoint(setup, 0, 0, again, tmp_path)
    assert not repeat.retrained
    assert repeat.record == trained.record
    assert torch.equal(again.fetch(0, 0).logits, first.fetch(0, 0).logits)


def test_a_step_that_skips_an_experience_is_refused(tmp_path):
    setup = prepare(SMALL)
    with pytest.raises(ValueError, match="train experience 0 first"):
        step_from_checkpoint(setup, 0, 1, InMemoryExchange(), tmp_path)


def test_simulate_refuses_the_async_schedule():
    with pytest.raises(ValueError, match="use dkt run"):
        simulate(SMALL.replace(schedule="async"))


def test_probe_set_can_come_from_another_data_set_of_the_same_shape():
    config = ExperimentConfig(agents=2, experiences=2, epochs=1, probe_source="synthetic")
    setup = prepare(config)
    assert setup.probe.source == "synthetic"
    assert len(setup.probe) == config.probe_size
    # Nothing is held out of the digits when the probe comes from elsewhere.
    assert len(setup.train) == len(setup.data.train)
    result = simulate(config, setup=setup)
    assert result.probe_source == "synthetic"


def test_a_run_result_is_built_the_same_way_by_every_driver():
    setup = prepare(SMALL)

    result = RunResult.of_run(
        setup, {0: [], 1: []}, seconds=2.5, driver="flower", missing_agents={1}, extra={"a": 1}
    )

    assert result.config == SMALL
    assert (result.probe_fingerprint, result.probe_source) == (setup.probe.fingerprint, "holdout")
    assert result.class_orders == [[list(e.classes) for e in s.experiences] for s in setup.streams]
    assert (result.seconds, result.driver, result.missing_agents) == (2.5, "flower", [1])
    assert result.extra == {"a": 1}


# Per-agent specs ----------------------------------------------------------------------

MIXED = SMALL.replace(
    agents=2, agent_overrides={0: {"backbone": "cnn"}, 1: {"backbone": "mlp", "epochs": 1}}
)


def test_agents_with_different_backbones_learn_from_each_others_logits():
    setup = prepare(MIXED)
    result = simulate(MIXED, setup=setup)

    assert [type(setup.make_agent(a).model.backbone).__name__ for a in (0, 1)] == [
        "SmallCNN",
        "MLP",
    ]
    for a in (0, 1):
        history = result.histories[a]
        assert len(history) == MIXED.experiences
        assert [r.teachers for r in history[1:]] == [[[1 - a, 0]], [[1 - a, 1]]]
        assert all(r.loss_kd > 0 for r in history[1:])
    # Agent 1's own epochs: one per experience.
    assert result.histories[1][0].steps * 2 == result.histories[0][0].steps


def test_checkpoints_record_the_agents_own_resolved_spec(tmp_path):
    simulate(MIXED, checkpoint_dir=tmp_path)

    for a in (0, 1):
        state = read_checkpoint(tmp_path / f"agent-{a}" / "experience-002.pt")
        assert state["spec"] == MIXED.agent_spec(a).to_dict()
    assert state["spec"]["backbone"] == "mlp" and state["spec"]["epochs"] == 1


def test_a_checkpoint_is_refused_by_an_agent_with_another_spec(tmp_path):
    simulate(MIXED, checkpoint_dir=tmp_path)
    other = MIXED.replace(agent_overrides={0: {"backbone": "cnn", "lr": 0.01}, 1: {"epochs": 1}})

    with pytest.raises(
        ValueError, match=r"different experiment config \(agent 0's spec changed: lr\)"
    ):
        prepare(other).make_agent(0).load_checkpoint(tmp_path / "agent-0" / "experience-000.pt")
    # Agent 1's own spec is unchanged, but the run is not the same run.
    with pytest.raises(ValueError, match="different experiment config"):
        prepare(other).make_agent(1).load_checkpoint(tmp_path / "agent-1" / "experience-000.pt")


def test_directed_teachers_replace_the_peer_policy_for_their_agent_only():
    config = SMALL.replace(agent_overrides={0: {"teachers": []}, 2: {"teachers": [1]}})

    result = simulate(config)

    assert all(r.teachers == [] and r.bytes_fetched == 0 for r in result.histories[0])
    assert [r.teachers for r in result.histories[2][1:]] == [[[1, 0]], [[1, 1]]]
    assert [r.teachers for r in result.histories[1][1:]] == [[[0, 0], [2, 0]], [[0, 1], [2, 1]]]


def test_a_disk_backed_step_beyond_a_joint_agents_one_experience_is_refused(tmp_path):
    setup = prepare(SMALL.replace(agent_overrides={1: {"strategy": "joint"}}))

    with pytest.raises(ValueError, match="agent 1 has 1 experience"):
        step_from_checkpoint(setup, 1, 1, InMemoryExchange(), tmp_path)


def test_a_run_with_a_joint_agent_resumes_to_the_same_numbers(tmp_path):
    config = SMALL.replace(agent_overrides={1: {"strategy": "joint"}})
    uninterrupted = simulate(config, checkpoint_dir=tmp_path / "a")

    with pytest.raises(StopAfter):
        simulate(config, checkpoint_dir=tmp_path / "b", listener=InterruptAt(2, 1))
    resumed = simulate(config, checkpoint_dir=tmp_path / "b", resume=True)

    for a in range(config.agents):
        assert numbers(resumed.histories[a]) == numbers(uninterrupted.histories[a])
