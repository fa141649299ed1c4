"""The open extension points: user backbones (`module:callable`), the optimizer and its
schedule, and the strategy registry with EWC, checked against hand-computed numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from dkt.common.data.labeled_data import LabeledData
from dkt.common.engine.setup import prepare
from dkt.common.engine.simulation import simulate
from dkt.common.extensions import register_strategy
from dkt.common.run.config import ExperimentConfig
from dkt.common.training.agent import (
    EXTENSION_DEFAULTS,
    make_optimizer,
    scheduled_lr,
    training_step,
)
from dkt.common.training.checkpoints import latest_checkpoint, read_checkpoint, write_checkpoint
from dkt.common.training.model import build_backbone, build_model
from dkt.common.training.strategies import (
    EWC,
    Strategy,
    build_strategy,
    ewc_penalty,
    fisher_diagonal,
)
from tests.support.experiments import SMALL, InterruptAt, StopAfter, numbers

NETS = """
import torch
from torch import nn

def tiny(input_shape):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 7))

def sized(input_shape):
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    net.out_features = 3
    return net

def not_a_module(input_shape):
    return "a string"

def images(input_shape):
    return nn.Conv2d(input_shape[0], 2, 3)
"""


@pytest.fixture
def user_nets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "user_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_nets"


# Backbones ----------------------------------------------------------------------


def test_a_user_backbone_gets_the_input_shape_and_its_feature_size_is_measured(user_nets):
    net = build_backbone(f"{user_nets}:tiny", (1, 8, 8))

    assert net.out_features == 7
    assert net.training  # measured in eval mode, handed back in train mode
    model = build_model(f"{user_nets}:tiny", (1, 8, 8), 10)
    cl, st = model(torch.zeros(4, 1, 8, 8))
    assert cl.shape == st.shape == (4, 10)
    assert model.cl.in_features == 7


def test_a_user_backbones_own_out_features_is_kept(user_nets):
    assert build_backbone(f"{user_nets}:sized", (1, 2, 4)).out_features == 3


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("no_such_module_xyz:f", "backbone no_such_module_xyz:f: cannot import module "),
        ("user_nets:missing", "backbone user_nets:missing: module 'user_nets' has no attribute "),
        ("user_nets:not_a_module", "backbone user_nets:not_a_module returned str, not a torch"),
        ("user_nets:images", "backbone user_nets:images must map N×C×H×W inputs to N×D"),
    ],
)
def test_a_bad_user_backbone_is_one_clear_line(user_nets, reference, message):
    with pytest.raises(ValueError) as info:
        build_backbone(reference, (1, 8, 8))

    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_the_config_takes_a_backbone_reference_but_not_an_unknown_name():
    assert ExperimentConfig(backbone="pkg.nets:make").backbone == "pkg.nets:make"
    with pytest.raises(ValueError) as info:
        ExperimentConfig(backbone="vgg")
    assert str(info.value) == (
        "backbone must be one of mlp, cnn, slim_resnet18, resnet32, resnet18, or "
        "module:callable; got 'vgg'"
    )


def test_simulate_trains_a_user_backbone(user_nets):
    config = SMALL.replace(agents=2, experiences=2, epochs=1, backbone=f"{user_nets}:tiny")

    result = simulate(config)

    assert [len(result.histories[a]) for a in range(2)] == [2, 2]


# Optimizer and schedule ------------------------------------------------------------


def test_the_default_optimizer_is_todays_adam():
    params = [nn.Parameter(torch.ones(2))]

    optimizer = make_optimizer(params, ExperimentConfig())

    assert type(optimizer) is torch.optim.Adam
    reference = torch.optim.Adam([nn.Parameter(torch.ones(2))], lr=1e-3)
    assert optimizer.state_dict()["param_groups"] == reference.state_dict()["param_groups"]


def test_sgd_takes_momentum_and_adamw_weight_decay():
    params = [nn.Parameter(torch.ones(2))]
    sgd = make_optimizer(params, ExperimentConfig(optimizer="sgd", lr=0.1, momentum=0.5))
    adamw = make_optimizer(params, ExperimentConfig(optimizer="adamw", weight_decay=0.01))

    assert type(sgd) is torch.optim.SGD
    assert (sgd.param_groups[0]["lr"], sgd.param_groups[0]["momentum"]) == (0.1, 0.5)
    assert type(adamw) is torch.optim.AdamW
    assert adamw.param_groups[0]["weight_decay"] == 0.01


def test_cosine_and_step_schedules_by_hand():
    cosine = ExperimentConfig(lr=0.1, epochs=4, lr_schedule="cosine")
    step = ExperimentConfig(lr=0.1, epochs=4, lr_schedule="step", lr_step_epochs=2, lr_gamma=0.5)

    assert [scheduled_lr(cosine, e) for e in range(4)] == [
        0.1 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)
    ]
    assert scheduled_lr(cosine, 2) == pytest.approx(0.05)
    assert [scheduled_lr(step, e) for e in range(4)] == [0.1, 0.1, 0.05, 0.05]
    assert scheduled_lr(ExperimentConfig(lr=0.1), 3) == 0.1


def test_a_schedule_sets_each_epochs_lr_and_changes_the_numbers():
    base = SMALL.replace(agents=2, experiences=2, epochs=2)
    plain = simulate(base)
    cosine = simulate(base.replace(lr_schedule="cosine"))

    assert numbers(plain.histories[0]) != numbers(cosine.histories[0])


def test_an_agent_may_override_the_optimizer():
    config = ExperimentConfig(agent_overrides={1: {"optimizer": "sgd", "lr_schedule": "step"}})

    assert (config.agent_spec(0).optimizer, config.agent_spec(1).optimizer) == ("adam", "sgd")
    assert config.agent_spec(1).lr_schedule == "step"


# EWC, by hand ------------------------------------------------------------------------


class TwoWeights(nn.Module):
    """Two parameters a, b; the logits of input x (N×1×1×1) are (a·x, b·x) on both heads."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = x.flatten(1) * self.w
        return logits, logits


# x = 1 with label 0 and x = 2 with label 1; at a = b = 0 the softmax is (1/2, 1/2), so
# CE's gradient is (p − onehot)·x: (−1/2, 1/2) and (1, −1); squared (1/4, 1/4), (1, 1).
TWO_ROWS = LabeledData(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1), torch.tensor([0, 1]))


def test_ewc_penalty_and_its_gradient_by_hand():
    theta = torch.tensor([1.0, 2.0], requires_grad=True)
    fisher, anchor = [torch.tensor([2.0, 3.0])], [torch.tensor([0.5, 1.0])]

    penalty = ewc_penalty([theta], fisher, anchor, weight=4.0)
    penalty.backward()

    # 4/2 · (2·0.5² + 3·1²) = 2 · 3.5
    assert penalty.item() == 7.0
    # λ·F·(θ − θ*) = (4·2·0.5, 4·3·1)
    assert theta.grad is not None and theta.grad.tolist() == [4.0, 12.0]


def test_fisher_is_the_mean_of_squared_minibatch_gradients():
    fisher = fisher_diagonal(TwoWeights(), TWO_ROWS, batch_size=1, device=torch.device("cpu"))

    assert fisher[0].tolist() == [0.625, 0.625]  # ((1/4 + 1), (1/4 + 1)) / 2


def test_ewc_anchors_after_an_experience_and_penalises_moving_away():
    model = TwoWeights()
    ewc = EWC(weight=4.0, batch_size=1)
    assert ewc.penalty(model, TWO_ROWS.x, TWO_ROWS.y) is None  # nothing learnt yet

    ewc.after_experience(model, TWO_ROWS, 0)
    with torch.no_grad():
        model.w.copy_(torch.tensor([1.0, -2.0]))
    penalty = ewc.penalty(model, TWO_ROWS.x, TWO_ROWS.y)

    assert penalty is not None
    assert penalty.item() == 6.25  # 4/2 · 0.625 · (1² + 2²)
    penalty.backward()
    assert model.w.grad is not None and model.w.grad.tolist() == [2.5, -5.0]


def test_ewc_sums_fisher_over_experiences_and_survives_a_checkpoint():
    model, ewc = TwoWeights(), EWC(weight=1.0, batch_size=2)
    ewc.after_experience(model, TWO_ROWS, 0)
    ewc.after_experience(model, TWO_ROWS, 1)
    # One minibatch of both rows: mean CE gradient ((−1/2 + 1)/2, (1/2 − 1)/2) = (1/4, −1/4).
    assert ewc.fisher[0].tolist() == [0.125, 0.125]  # 2 · (1/4)²

    restored = EWC(weight=1.0, batch_size=2)
    restored.load_state_dict(ewc.state_dict())
    assert restored.fisher[0].tolist() == [0.125, 0.125]
    assert restored.anchor[0].tolist() == [0.0, 0.0]


def test_a_training_step_adds_the_strategys_penalty_to_the_loss():
    model, ewc = TwoWeights(), EWC(weight=4.0, batch_size=1)
    ewc.after_experience(model, TWO_ROWS, 0)
    with torch.no_grad():
        model.w.copy_(torch.tensor([1.0, -2.0]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    spec = ExperimentConfig(clip_grad_norm=0.0)

    without = training_step(model, optimizer, TWO_ROWS.x, TWO_ROWS.y, None, None, spec)
    with_ewc = training_step(
        model, optimizer, TWO_ROWS.x, TWO_ROWS.y, None, None, spec, strategy=ewc
    )

    assert with_ewc.total.item() == pytest.approx(without.total.item() + 6.25)


def test_ewc_at_lambda_0_gives_exactly_the_naive_numbers():
    config = SMALL.replace(agents=2, experiences=2, epochs=1, replay_size=0)

    naive = simulate(config.replace(strategy="naive"))
    ewc0 = simulate(config.replace(strategy="ewc", ewc_lambda=0.0))
    ewc = simulate(config.replace(strategy="ewc", ewc_lambda=1000.0))

    assert numbers(ewc0.histories[0]) == numbers(naive.histories[0])
    assert numbers(ewc.histories[0])[0] == numbers(naive.histories[0])[0]  # no anchor yet
    assert numbers(ewc.histories[0])[1] != numbers(naive.histories[0])[1]


def test_an_interrupted_ewc_run_resumes_to_the_same_numbers(tmp_path):
    config = SMALL.replace(agents=2, experiences=3, epochs=1, strategy="ewc", ewc_lambda=1000.0)
    uninterrupted = simulate(config, checkpoint_dir=tmp_path / "a")

    with pytest.raises(StopAfter):
        simulate(config, checkpoint_dir=tmp_path / "b", listener=InterruptAt(0, 1))
    found = latest_checkpoint(tmp_path / "b", 0)
    assert found is not None
    state = read_checkpoint(found[1])
    # The strategy's state is in the checkpoint: one Fisher tensor per weight (mlp: the
    # state dict holds only parameters), shaped like it.
    fisher = state["strategy"]["fisher"]
    assert [f.shape for f in fisher] == [p.shape for p in state["model"].values()]
    resumed = simulate(config, checkpoint_dir=tmp_path / "b", resume=True)

    for a in range(config.agents):
        assert numbers(resumed.histories[a]) == numbers(uninterrupted.histories[a])


def test_a_checkpoint_from_before_the_optimizer_options_resumes_with_adam(tmp_path):
    config = SMALL.replace(experiences=2, epochs=1)
    setup = prepare(config)
    agent = setup.make_agent(0)
    _, predictions = agent.train_experience(0, None)
    path = agent.save_checkpoint(tmp_path, predictions)
    state = read_checkpoint(path)
    for table in (state["spec"], state["config"]):
        for key in EXTENSION_DEFAULTS:
            del table[key]
    write_checkpoint(path, state)

    restored = setup.make_agent(0)
    restored.load_checkpoint(path)

    assert restored.next_experience == 1
    assert type(restored.optimizer) is torch.optim.Adam


# The registry --------------------------------------------------------------------------


class Counting(Strategy):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def before_experience(self, model: nn.Module, experience: int) -> None:
        self.calls.append(f"before {experience}")

    def after_experience(self, model: nn.Module, data: LabeledData, experience: int) -> None:
        self.calls.append(f"after {experience}")


def test_a_registered_strategy_is_a_config_choice_and_gets_its_hooks_called():
    made: list[Counting] = []

    @register_strategy("counting-test")
    def counting(spec):
        made.append(Counting())
        return made[-1]

    config = SMALL.replace(agents=2, experiences=2, epochs=1, strategy="counting-test")
    simulate(config)

    assert [s.calls for s in made] == [["before 0", "after 0", "before 1", "after 1"]] * 2


def test_an_unknown_strategy_names_the_ways_to_give_one():
    with pytest.raises(ValueError) as info:
        ExperimentConfig(strategy="der")
    assert str(info.value) == (
        "strategy must be one of naive, replay, lwf, joint, ewc, a name given to "
        "register_strategy, or module:callable; got 'der'"
    )


def test_a_strategy_factory_must_return_a_strategy(tmp_path, monkeypatch):
    (tmp_path / "user_strategies.py").write_text("def bad(spec):\n    return 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ExperimentConfig(strategy="user_strategies:bad").agent_spec(0)

    with pytest.raises(ValueError) as info:
        build_strategy(spec)
    assert str(info.value).startswith(
        "strategy user_strategies:bad: the factory returned int, not a dkt Strategy"
    )
