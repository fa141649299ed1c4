"""The run's exchange: dkt (logits into the st head), none (isolated agents), fedavg
(weights averaged after every experience) and fedmd (consensus into the cl head), and
the float16 exchange dtype. Values are computed by hand or from first principles."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dkt.common.engine.setup import prepare
from dkt.common.engine.simulation import simulate
from dkt.common.engine.step import (
    fedavg_conclude_from_checkpoint,
    fedavg_fit_from_checkpoint,
    fedavg_step,
    step_from_checkpoint,
)
from dkt.common.evaluation.results import RunResult, build_metrics
from dkt.common.run.config import ExperimentConfig
from dkt.common.training.agent import training_step
from dkt.common.training.checkpoints import checkpoint_path, latest_checkpoint, read_checkpoint
from dkt.common.training.exchange import InMemoryExchange
from dkt.common.training.predictions import Predictions
from dkt.common.training.weight_averaging import average_states, state_nbytes
from dkt.proto.logits_encoding import decode_tensor, encode_tensor, encoding_value
from tests.support.experiments import SMALL, InterruptAt, StopAfter, numbers

CL_FIELDS = ("acc_cl", "acc_all_cl", "loss_ce", "loss_lwf", "steps", "classes")


class RecordingExchange(InMemoryExchange):
    """An in-memory exchange that remembers every prediction set it handed out."""

    def __init__(self) -> None:
        super().__init__()
        self.fetched: list[Predictions] = []

    def fetch(self, agent_id: int, experience: int) -> Predictions | None:
        found = super().fetch(agent_id, experience)
        if found is not None:
            self.fetched.append(found)
        return found


# Weight averaging ----------------------------------------------------------------


def test_the_average_of_two_state_dicts_is_weighted_by_training_rows() -> None:
    a = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.0, 0.0])}
    b = {"w": torch.tensor([[5.0, 6.0], [7.0, 8.0]]), "b": torch.tensor([4.0, 8.0])}
    a["n"], b["n"] = torch.tensor(2), torch.tensor(5)  # batch norm's num_batches_tracked

    average = average_states([a, b], [100, 300])  # (1·a + 3·b) / 4

    assert torch.equal(average["w"], torch.tensor([[4.0, 5.0], [6.0, 7.0]]))
    assert torch.equal(average["b"], torch.tensor([3.0, 6.0]))
    assert torch.equal(average["n"], torch.tensor(4))  # 17/4 = 4.25, rounded
    assert average["w"].dtype == torch.float32 and average["n"].dtype == torch.int64


def test_the_average_of_two_tiny_models_with_equal_rows_is_their_midpoint() -> None:
    torch.manual_seed(0)
    first, second = nn.Linear(3, 2), nn.Linear(3, 2)
    midpoint = {
        k: ((first.state_dict()[k].double() + second.state_dict()[k].double()) / 2).float()
        for k in ("weight", "bias")
    }

    average = average_states([first.state_dict(), second.state_dict()], [7, 7])
    second.load_state_dict(average)

    assert torch.equal(second.weight.detach(), midpoint["weight"])
    assert torch.equal(second.bias.detach(), midpoint["bias"])
    assert state_nbytes(average) == (3 * 2 + 2) * 4  # float32: 4 bytes a value


def test_averaging_models_with_other_entries_is_refused() -> None:
    with pytest.raises(ValueError, match="same backbone"):
        average_states([nn.Linear(3, 2).state_dict(), nn.Linear(4, 2).state_dict()], [1, 1])


# fedmd: the consensus is distilled into the cl head ----------------------------------


class TwoHeads(nn.Module):
    """Identity features and two bias-free linear heads, so logits are easy by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.cl = nn.Linear(2, 2, bias=False)
        self.st = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.cl.weight.copy_(torch.eye(2))
            self.st.weight.zero_()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cl(x), self.st(x)


@pytest.mark.parametrize(("kd_head", "kd"), [("cl", 0.5), ("st", 0.0)])
def test_fedmd_distils_the_teachers_into_the_cl_head_and_dkt_into_the_st_head(
    kd_head: str, kd: float
) -> None:
    model = TwoHeads()
    x, y = torch.tensor([[0.0, 0.0]]), torch.tensor([0])  # cl(x) = [0, 0]: CE = ln 2
    probe, teacher = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    # fedmd: KD(cl(p) = [1, 0], t = [0, 0]) = mean((1, 0)²) = 0.5; dkt: st(p) = [0, 0]: 0.
    spec = ExperimentConfig(kd_weight=2.0, kd_loss="mse", clip_grad_norm=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    parts = training_step(model, optimizer, x, y, probe, teacher, spec, kd_head=kd_head)

    assert parts.ce.item() == pytest.approx(math.log(2))
    assert parts.kd.item() == pytest.approx(kd)
    assert parts.total.item() == pytest.approx(math.log(2) + 2.0 * kd)
    # Under fedmd nothing reaches the st head.
    assert (model.st.weight.grad is None) == (kd_head == "cl")


def test_fedmd_reports_the_st_head_as_not_applicable() -> None:
    config = SMALL.replace(exchange="fedmd")
    exchange = InMemoryExchange()

    result = simulate(config, exchange=exchange)
    metrics = build_metrics(result)

    for a in range(config.agents):
        summary = metrics["agents"][str(a)]["summary"]
        assert summary["avg_acc_st"] is None and summary["acc_all_st"] is None
        assert summary["transfer_st_mean"] is None and summary["avg_acc_cl"] is not None
        assert metrics["agents"][str(a)]["accuracy_matrix"]["st"] is None
        assert all(r["acc_st"] is None for r in metrics["agents"][str(a)]["experiences"])
        assert [r.kd_weight for r in result.histories[a]] == [1.0] * config.experiences
        assert exchange.fetch(a, config.experiences - 1) is not None
    assert metrics["mean_over_agents"]["acc_all_st"] is None


def test_fedmd_st_head_weights_never_change(tmp_path) -> None:
    config = SMALL.replace(exchange="fedmd", experiences=2)
    setup = prepare(config)
    untrained = setup.make_agent(1).model.st.weight.detach().clone()

    simulate(config, checkpoint_dir=tmp_path, setup=setup)

    saved = read_checkpoint(checkpoint_path(tmp_path, 1, 1))["model"]
    assert torch.equal(saved["st.weight"], untrained)
    assert not torch.equal(saved["cl.weight"], setup.make_agent(1).model.cl.weight)


# none: isolated agents -----------------------------------------------------------


def test_none_publishes_and_fetches_nothing_and_equals_lambda_zero_on_the_cl_head() -> None:
    exchange = RecordingExchange()
    alone = simulate(SMALL.replace(exchange="none"), exchange=exchange)
    no_distillation = simulate(SMALL.replace(kd_weight=0.0))

    assert exchange.fetched == []
    for a in range(SMALL.agents):
        assert exchange.latest(a) is None
        for isolated, dkt in zip(alone.histories[a], no_distillation.histories[a], strict=True):
            assert (isolated.bytes_published, isolated.bytes_fetched) == (0, 0)
            assert isolated.teachers == [] and isolated.loss_kd == 0.0
            assert isolated.kd_weight == 0.0  # λ = 1 configured, 0 effective
            assert {k: getattr(isolated, k) for k in CL_FIELDS} == {
                k: getattr(dkt, k) for k in CL_FIELDS
            }


def test_disk_backed_none_agents_give_the_in_memory_numbers(tmp_path) -> None:
    config = SMALL.replace(exchange="none", experiences=2)
    in_memory = simulate(config)
    setup = prepare(config)
    exchange = InMemoryExchange()
    for experience in range(config.experiences):
        for a in range(config.agents):
            step_from_checkpoint(setup, a, experience, exchange, tmp_path)
    # A repeated step republishes nothing either.
    outcome = step_from_checkpoint(setup, 0, 1, exchange, tmp_path)

    assert not outcome.retrained and exchange.latest(0) is None
    for a in range(config.agents):
        agent = setup.make_agent(a)
        agent.load_checkpoint(latest_checkpoint(tmp_path, a)[1])
        assert numbers(agent.history) == numbers(in_memory.histories[a])


# fedavg: weights averaged after every experience -----------------------------------


def _mlp_parameters_without_st(config: ExperimentConfig) -> int:
    model = prepare(config).make_agent(0).model
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("st."))


def test_fedavg_averages_weighted_by_training_rows_and_every_agent_continues_from_it() -> None:
    # Agent 1 keeps no replay memory, so at experience 1 it trains on fewer rows.
    config = SMALL.replace(exchange="fedavg", agents=2, agent_overrides={1: {"replay_size": 0}})
    setup = prepare(config)
    agents = [setup.make_agent(a) for a in range(config.agents)]
    fedavg_step(agents, 0)
    fits, local = [], []
    for agent in agents:  # note what each agent fits and sends before it adopts the average
        agent.fit = _spy(agent.fit, after=fits.append)
        agent.adopt_weights = _spy(
            agent.adopt_weights,
            before=lambda model=agent.model: local.append(
                {k: v.clone() for k, v in model.state_dict().items()}
            ),
        )

    fedavg_step(agents, 1)

    n0 = len(agents[0].stream.experiences[1].train) + config.replay_size
    n1 = len(agents[1].stream.experiences[1].train)
    assert [fit.rows for fit in fits] == [n0, n1]
    for name, value in agents[0].model.state_dict().items():
        assert torch.equal(value, agents[1].model.state_dict()[name])  # one model for all
        if not name.startswith("st."):
            # Σ_k (n_k / Σn) · weights_k in float64, then back to float32
            share0, share1 = n0 / (n0 + n1), n1 / (n0 + n1)
            by_hand = share0 * local[0][name].double() + share1 * local[1][name].double()
            assert torch.equal(value, by_hand.float())
    for agent in agents:
        assert agent.optimizer.state_dict()["state"] == {}  # a fresh Adam every round
        assert agent.history[1].kd_weight == 0.0
        size = 4 * _mlp_parameters_without_st(config)
        assert (agent.history[1].bytes_published, agent.history[1].bytes_fetched) == (size, size)


def _spy(method, before=lambda: None, after=lambda result: None):
    def call(*args):
        before()
        result = method(*args)
        after(result)
        return result

    return call


def test_fedavg_agents_start_from_one_model_and_end_as_one_model(tmp_path) -> None:
    config = SMALL.replace(exchange="fedavg")
    setup = prepare(config)
    first = [setup.make_agent(a).model.state_dict() for a in range(config.agents)]

    result = simulate(config, checkpoint_dir=tmp_path, setup=setup)

    models = [read_checkpoint(latest_checkpoint(tmp_path, a)[1])["model"] for a in range(3)]
    for name in first[0]:
        assert all(torch.equal(first[a][name], first[0][name]) for a in range(3))
        assert all(torch.equal(models[a][name], models[0][name]) for a in range(3))
    assert len({h[-1].acc_all_cl for h in result.histories.values()}) == 1
    assert build_metrics(result)["mean_over_agents"]["acc_all_st"] is None


def test_a_resumed_fedavg_run_equals_an_uninterrupted_one(tmp_path) -> None:
    config = SMALL.replace(exchange="fedavg")
    uninterrupted = simulate(config, checkpoint_dir=tmp_path / "a")

    # Crash in the middle of the averaging of experience 1: only agent 0 has saved it.
    with pytest.raises(StopAfter):
        simulate(config, checkpoint_dir=tmp_path / "b", listener=InterruptAt(0, 1))
    assert [latest_checkpoint(tmp_path / "b", a)[0] for a in range(3)] == [1, 0, 0]
    resumed = simulate(config, checkpoint_dir=tmp_path / "b", resume=True)

    for a in range(config.agents):
        assert numbers(resumed.histories[a]) == numbers(uninterrupted.histories[a])


def test_fedavg_with_mixed_backbones_is_one_clear_error_line() -> None:
    with pytest.raises(ValueError) as info:
        SMALL.replace(exchange="fedavg", agent_overrides={1: {"backbone": "cnn"}})

    assert str(info.value) == (
        "exchange fedavg averages weights, so every agent needs the same backbone, but this "
        "run has mlp (agents 0, 2); cnn (agent 1): drop the backbone overrides or use "
        "exchange dkt or fedmd"
    )


def test_fedavg_with_a_joint_agent_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^exchange fedavg .* agent 2 uses the joint strategy"):
        SMALL.replace(exchange="fedavg", agent_overrides={2: {"strategy": "joint"}})


def test_disk_backed_fedavg_rounds_give_the_numbers_of_the_in_memory_run(tmp_path) -> None:
    # What `dkt run` does for each round: every agent fits from its checkpoint (a train
    # message), the conductor averages, every agent adopts it (an evaluate message).
    config = SMALL.replace(exchange="fedavg")
    setup = prepare(config)
    expected = simulate(config, setup=setup)
    for e in range(config.experiences):
        fits = [fedavg_fit_from_checkpoint(setup, a, e, tmp_path) for a in range(3)]
        resent = fedavg_fit_from_checkpoint(setup, 1, e, tmp_path)  # a re-sent train message
        assert [f.retrained for f in fits] == [True] * 3 and not resent.retrained
        assert resent.rows == fits[1].rows
        assert all(torch.equal(resent.weights[k], v) for k, v in fits[1].weights.items())
        assert not any(k.startswith("st.") for k in fits[0].weights)
        average = average_states([f.weights for f in fits], [f.rows for f in fits])
        done = [fedavg_conclude_from_checkpoint(setup, a, e, average, tmp_path) for a in range(3)]
        assert [d.retrained for d in done] == [True] * 3

    for a in range(config.agents):
        agent = setup.make_agent(a)
        agent.load_checkpoint(latest_checkpoint(tmp_path, a)[1])
        assert numbers(agent.history) == numbers(expected.histories[a])
    # Only the newest round's trained state is kept; a re-sent evaluate is answered
    # from the checkpoint without training again.
    assert [p.name for p in (tmp_path / "agent-0").glob("fitted-*.pt")] == ["fitted-002.pt"]
    again = fedavg_conclude_from_checkpoint(setup, 0, 2, average, tmp_path)
    assert not again.retrained
    assert numbers([again.record]) == numbers([expected.histories[0][2]])


def test_disk_backed_fedavg_steps_refuse_the_wrong_order_in_one_line(tmp_path) -> None:
    config = SMALL.replace(exchange="fedavg")
    setup = prepare(config)
    with pytest.raises(ValueError, match=r"^agent 0 has not trained experience 0 of this FedAvg"):
        fedavg_conclude_from_checkpoint(setup, 0, 0, {}, tmp_path)
    with pytest.raises(ValueError, match=r"^agent 0 cannot train experience 1: its newest"):
        fedavg_fit_from_checkpoint(setup, 0, 1, tmp_path)
    with pytest.raises(ValueError, match=r"^exchange fedavg trains an experience in two steps"):
        step_from_checkpoint(setup, 0, 0, InMemoryExchange(), tmp_path)


def test_fedavg_with_the_async_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^exchange fedavg .* rounds are synchronous"):
        SMALL.replace(exchange="fedavg", schedule="async")


# The exchange dtype -----------------------------------------------------------------


def test_float16_peers_fetch_exactly_the_float16_rounded_logits_at_two_bytes_each(
    tmp_path,
) -> None:
    config = SMALL.replace(exchange_dtype="float16")
    setup = prepare(config)
    exchange = RecordingExchange()

    result = simulate(config, exchange=exchange, checkpoint_dir=tmp_path, setup=setup)

    assert exchange.fetched
    for fetched in exchange.fetched:
        teacher = setup.make_agent(fetched.agent_id)
        teacher.load_checkpoint(checkpoint_path(tmp_path, fetched.agent_id, fetched.experience))
        full, _ = teacher.logits(setup.probe.inputs)  # float32, as the model computes them
        assert fetched.logits.dtype == torch.float16
        assert torch.equal(fetched.logits, full.half())
        assert not torch.equal(fetched.logits.float(), full)  # the rounding is real
    values = config.probe_size * setup.data.num_classes
    for history in result.histories.values():
        assert all(r.bytes_published == 2 * values for r in history)
        teachers = [len(r.teachers) for r in history]
        assert [r.bytes_fetched for r in history] == [2 * values * t for t in teachers]


def test_float16_logits_cross_the_relay_encoding_unchanged() -> None:
    published = torch.randn(5, 3).half()  # what an agent with float16 publishes
    encoding = encoding_value("float16")

    fetched = decode_tensor(encode_tensor(published, encoding), encoding, (5, 3))

    assert torch.equal(fetched, published.float())  # simulate and --relay see the same


def test_the_exchange_dtype_is_refused_where_no_logits_are_published() -> None:
    for exchange in ("none", "fedavg"):
        with pytest.raises(ValueError, match=f"^exchange_dtype float16 .* exchange {exchange}"):
            SMALL.replace(exchange=exchange, exchange_dtype="float16")


def test_default_runs_record_both_heads_and_the_configured_lambda() -> None:
    result = simulate(SMALL.replace(experiences=2))
    metrics = build_metrics(result)

    assert all(r.kd_weight == 1.0 for h in result.histories.values() for r in h)
    assert metrics["mean_over_agents"]["acc_all_st"] is not None
    assert isinstance(result, RunResult)


def test_a_checkpoint_from_before_exchanges_counts_as_dkt_in_float32(tmp_path) -> None:
    config = SMALL.replace(experiences=1)
    simulate(config, checkpoint_dir=tmp_path)
    path = checkpoint_path(tmp_path, 0, 0)
    state = read_checkpoint(path)
    del state["config"]["exchange"], state["config"]["exchange_dtype"]
    torch.save(state, path)

    prepare(config).make_agent(0).load_checkpoint(path)  # accepted
    with pytest.raises(ValueError, match="different experiment config"):
        prepare(config.replace(exchange="none")).make_agent(0).load_checkpoint(path)
