"""Specification of the cl head's strategies (naive, replay, lwf, joint) and replay mixing,
as an agent trains: what it trains on, what it keeps, and what its results look like."""

from __future__ import annotations

import json
import math

from dkt.common.engine.setup import prepare
from dkt.common.engine.simulation import simulate
from dkt.common.engine.step import step_from_checkpoint
from dkt.common.evaluation.results import accuracy_matrix, build_metrics, write_results
from dkt.common.run.config import ExperimentConfig
from dkt.common.training import agent as agent_module
from dkt.common.training.exchange import InMemoryExchange
from tests.support.experiments import SMALL

# Synthetic data: 6 classes, 60 training rows each; 2 agents, 3 experiences of 2 classes.
BASE = SMALL.replace(agents=2)


def steps_per_epoch(rows: int, batch_size: int) -> int:
    """Minibatches of `rows` rows; a trailing batch of one row is dropped."""
    return rows // batch_size + (1 if rows % batch_size > 1 else 0)


def trained(config: ExperimentConfig, experiences: int, agent_id: int = 0):
    setup = prepare(config)
    agent = setup.make_agent(agent_id)
    for e in range(experiences):
        agent.train_experience(e, None)
    return setup, agent


def test_naive_keeps_no_buffer_and_trains_on_the_current_experience_only() -> None:
    setup, agent = trained(BASE.replace(strategy="naive"), 2)

    assert agent.buffer.capacity == 0 and len(agent.buffer) == 0
    rows = len(agent.stream.experiences[1].train)
    assert agent.history[1].steps == BASE.epochs * steps_per_epoch(rows, BASE.batch_size)


def test_replay_concat_trains_on_the_experience_and_the_buffer_as_one_pool() -> None:
    _, agent = trained(BASE, 2)

    rows = len(agent.stream.experiences[1].train) + BASE.replay_size
    assert agent.history[1].steps == BASE.epochs * steps_per_epoch(rows, BASE.batch_size)
    assert len(agent.buffer) == BASE.replay_size


def test_replay_batch_mixing_takes_one_step_per_data_batch() -> None:
    _, agent = trained(BASE.replace(replay_mixing="batch"), 2)

    rows = len(agent.stream.experiences[1].train)
    assert agent.history[1].steps == BASE.epochs * steps_per_epoch(rows, BASE.batch_size)


def test_replay_batch_mixing_feeds_a_memory_batch_beside_each_data_batch(monkeypatch) -> None:
    config = BASE.replace(replay_mixing="batch")
    setup = prepare(config)
    agent = setup.make_agent(0)
    agent.train_experience(0, None)
    labels: list[list[int]] = []
    real_step = agent_module.training_step

    def recording_step(model, optimizer, x, y, *rest):
        labels.append(y.tolist())
        return real_step(model, optimizer, x, y, *rest)

    monkeypatch.setattr(agent_module, "training_step", recording_step)
    agent.train_experience(1, None)

    new, old = set(agent.stream.experiences[1].classes), set(agent.stream.experiences[0].classes)
    rows = len(agent.stream.experiences[1].train)
    assert len(labels) == config.epochs * steps_per_epoch(rows, config.batch_size)
    for y in labels:
        data, memory = y[: len(y) - config.batch_size], y[len(y) - config.batch_size :]
        # 16 memory rows (the buffer holds 24) after each data batch of up to 16.
        assert 2 <= len(data) <= config.batch_size
        assert set(data) <= new and set(memory) <= old


def test_lwf_keeps_no_buffer_and_distils_only_from_the_second_experience_on() -> None:
    _, agent = trained(BASE.replace(strategy="lwf"), 2)

    assert len(agent.buffer) == 0
    assert agent.history[0].loss_lwf == 0.0
    assert agent.history[1].loss_lwf > 0.0


def test_lwf_alpha_zero_is_naive() -> None:
    _, lwf = trained(BASE.replace(strategy="lwf", lwf_alpha=0.0), 2)
    _, naive = trained(BASE.replace(strategy="naive"), 2)

    assert lwf.history[1].acc_cl == naive.history[1].acc_cl
    assert lwf.history[1].loss_ce == naive.history[1].loss_ce


def test_lwf_restores_its_previous_model_from_the_checkpoint_in_a_disk_backed_step(
    tmp_path,
) -> None:
    config = BASE.replace(strategy="lwf", kd_weight=0.0)
    setup = prepare(config)
    expected = simulate(config, setup=setup)
    exchange = InMemoryExchange()

    for e in range(config.experiences):
        for a in range(config.agents):
            step_from_checkpoint(setup, a, e, exchange, tmp_path)

    restored = setup.make_agent(0)
    restored.load_checkpoint(tmp_path / "agent-0" / "experience-002.pt")
    ours = [(r.loss_lwf, r.loss_ce, r.acc_cl) for r in restored.history]
    assert ours == [(r.loss_lwf, r.loss_ce, r.acc_cl) for r in expected.histories[0]]
    assert ours[2][0] > 0.0


def test_joint_learns_all_its_classes_as_one_experience() -> None:
    config = BASE.replace(agent_overrides={1: {"strategy": "joint"}})
    setup = prepare(config)

    joint = setup.make_agent(1)

    original = setup.streams[1]
    assert len(joint.stream) == 1
    assert joint.stream.experiences[0].classes == original.classes
    assert len(joint.stream.experiences[0].train) == sum(len(e.train) for e in original.experiences)
    assert len(joint.stream.experiences[0].test) == sum(len(e.test) for e in original.experiences)
    assert setup.class_orders()[1] == [list(original.classes)]
    assert len(setup.make_agent(0).stream) == 3


def test_a_joint_agent_beside_continual_ones_has_a_one_by_one_accuracy_matrix(tmp_path) -> None:
    config = BASE.replace(agent_overrides={1: {"strategy": "joint"}})

    result = simulate(config)
    summary = write_results(result, tmp_path)

    assert [len(result.histories[a]) for a in (0, 1)] == [3, 1]
    assert len(accuracy_matrix(result.histories[1], "cl")) == 1
    assert len(accuracy_matrix(result.histories[1], "cl")[0]) == 1
    # The joint agent's predictions after its one experience teach agent 0 from then on.
    assert [r.teachers for r in result.histories[0]] == [[], [[1, 0]], [[1, 0]]]
    metrics = build_metrics(result)
    assert metrics["agents"]["1"]["summary"]["forgetting_cl"] == 0.0
    assert metrics["agents"]["1"]["spec"]["strategy"] == "joint"
    saved = json.loads((tmp_path / "metrics.json").read_text())["agents"]["1"]
    assert saved["class_order"] == [list(prepare(config).streams[1].classes)]
    rows = (tmp_path / "matrices" / "agent-1-cl.csv").read_text().splitlines()
    assert rows[0] == "after_experience,exp_0" and len(rows) == 2
    assert "agent 1 overrides: strategy = joint" in summary.read_text()


def test_joint_accuracy_is_measured_on_all_of_the_agents_classes() -> None:
    config = BASE.replace(strategy="joint", agents=1, peer_policy="all")
    result = simulate(config)

    record = result.histories[0][0]
    assert len(record.acc_cl) == 1
    assert math.isclose(record.acc_cl[0], record.acc_all_cl)  # shuffled: all 6 classes are its
