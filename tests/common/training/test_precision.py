"""Specification of the training loop's precision and device options: fp32 numbers on the
CPU are those of the loop before it was made GPU-ready, bf16 autocast trains on the CPU,
fp16 is refused there, and `precision` and `compile` travel like every other agent key."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dkt.cli import build_parser, main
from dkt.cli.flags import config_from_args
from dkt.common.engine.setup import prepare
from dkt.common.engine.simulation import simulate
from dkt.common.run.config import ExperimentConfig
from dkt.common.training.checkpoints import checkpoint_path, read_checkpoint, write_checkpoint
from tests.support.experiments import SMALL

# Recorded with the loop before it moved data to the device once per experience (commit
# 8ab1155), one CPU thread: per agent, the last experience's
# [loss_ce, loss_kd, loss_lwf, acc_all_cl, acc_all_st]. On the recording machine the new
# loop gives every number of every history equal to the last bit; other CPUs may round
# differently, hence the 1e-6 tolerance.
RECORDED = {
    "mlp": (
        SMALL,
        {
            0: [
                2.4104227821032205, 1.9516898492972057, 0.0,
                1.0, 0.8083333373069763,
            ],
            1: [
                2.105198863479826, 1.7840654601653416, 0.0,
                0.9916666746139526, 0.7333333492279053,
            ],
            2: [
                2.7098337743017407, 1.657051091392835, 0.0,
                0.9166666865348816, 0.8083333373069763,
            ],
        },
    ),
    "cnn-fedmd-batch-kl": (
        SMALL.replace(backbone="cnn", replay_mixing="batch", kd_loss="kl", exchange="fedmd"),
        {
            0: [
                1.0534442109721047, 0.25789888948202133, 0.0,
                0.8083333373069763, 0.14166666567325592,
            ],
            1: [
                0.9602020084857941, 0.28642013136829647, 0.0,
                0.9666666388511658, 0.3333333432674408,
            ],
            2: [
                0.9561460827078138, 0.17122113651462964, 0.0,
                1.0, 0.23333333432674408,
            ],
        },
    ),
    "slim_resnet18-lwf": (
        SMALL.replace(backbone="slim_resnet18", strategy="lwf", epochs=1),
        {
            0: [
                1.800342423575265, 0.10791125042097909, 0.08728278428316116,
                0.6416666507720947, 0.1666666716337204,
            ],
            1: [
                1.9271723798343114, 0.10047487967780658, 0.07520482689142227,
                0.6499999761581421, 0.1666666716337204,
            ],
            2: [
                2.614498291696821, 0.13108118091310775, 0.1218389623931476,
                0.5, 0.1666666716337204,
            ],
        },
    ),
}  # fmt: skip

CONV_LOSS_REL = 0.1
CONV_ACCURACY_ABS = 0.025  # 3 of 120 test rows

FP16_ON_CPU = (
    "precision fp16 needs a CUDA device, but agent 0 runs on the CPU: "
    "use precision bf16 or fp32 there"
)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The recorded numbers were taken on one thread; restore the count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def last_numbers(config: ExperimentConfig) -> dict[int, list[float]]:
    result = simulate(config)
    return {
        a: [r.loss_ce, r.loss_kd, r.loss_lwf, r.acc_all_cl, r.acc_all_st]
        for a, h in result.histories.items()
        for r in h[-1:]
    }


@pytest.mark.parametrize("case", sorted(RECORDED))
def test_fp32_numbers_on_the_cpu_are_those_of_the_loop_before(case: str, one_thread) -> None:
    config, recorded = RECORDED[case]

    assert config.precision == "fp32"
    numbers = last_numbers(config)

    # Convolutions use CPU-specific kernels (oneDNN picks them by instruction set), whose
    # rounding grows over three experiences of training: on an AMD EPYC the cnn's numbers
    # moved by 2e-6 relative, the slim ResNet's losses by up to 4.8e-2 and one accuracy
    # by 2 of 120 test rows. Matrix products (mlp) agree to 1e-6 everywhere this ran.
    mlp = config.backbone == "mlp"
    rel, acc_abs = (1e-6, 1e-9) if mlp else (CONV_LOSS_REL, CONV_ACCURACY_ABS)
    assert set(numbers) == set(recorded)
    for agent, values in recorded.items():
        losses, accuracies = numbers[agent][:3], numbers[agent][3:]
        assert losses == pytest.approx(values[:3], rel=rel, abs=1e-9), agent
        assert accuracies == pytest.approx(values[3:], rel=1e-6, abs=acc_abs), agent


def test_bf16_autocast_trains_on_the_cpu_with_finite_losses_and_sane_accuracies() -> None:
    config = SMALL.replace(backbone="cnn", precision="bf16")

    bf16 = simulate(config)
    fp32 = simulate(config.replace(precision="fp32"))

    for a, history in bf16.histories.items():
        for record in history:
            assert math.isfinite(record.loss_ce) and math.isfinite(record.loss_kd)
            assert all(0.0 <= acc <= 1.0 for acc in [*record.acc_cl, *record.acc_st])
        # Six classes: chance is 1/6; both precisions learn the seen classes well.
        assert history[-1].acc_all_cl > 0.5
        assert abs(history[-1].acc_all_cl - fp32.histories[a][-1].acc_all_cl) < 0.25
        # Autocast did run: bf16 rounds differently from fp32.
        assert history[0].loss_ce != fp32.histories[a][0].loss_ce


def test_fp16_on_the_cpu_is_refused_with_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(FP16_ON_CPU)}$"):
        prepare(SMALL.replace(precision="fp16")).make_agent(0)

    code = main(
        ["simulate", "--dataset", "synthetic", "--agents", "2", "--experiences", "2",
         "--epochs", "1", "--precision", "fp16", "--out", str(tmp_path / "r"), "--quiet"]
    )  # fmt: skip
    stderr = capsys.readouterr().err

    assert code == 2
    assert stderr.strip().splitlines()[-1] == f"dkt simulate: error: {FP16_ON_CPU}"


def test_precision_and_compile_come_from_toml_with_per_agent_overrides(tmp_path: Path) -> None:
    path = tmp_path / "experiment.toml"
    path.write_text(
        '[experiment]\nagents = 3\nprecision = "bf16"\ncompile = true\n\n'
        '[agents.1]\nprecision = "fp32"\ncompile = false\n'
    )

    config = ExperimentConfig.from_toml(path)

    assert (config.precision, config.compile) == ("bf16", True)
    assert [(config.agent_spec(a).precision, config.agent_spec(a).compile) for a in range(3)] == [
        ("bf16", True),
        ("fp32", False),
        ("bf16", True),
    ]
    assert ExperimentConfig.from_toml(_written(tmp_path, config)) == config


def _written(tmp_path: Path, config: ExperimentConfig) -> Path:
    path = tmp_path / "again.toml"
    path.write_text(config.to_toml())
    return path


def test_precision_and_compile_flags_and_agent_flags() -> None:
    args = build_parser().parse_args(
        ["simulate", "--precision", "bf16", "--compile", "--agent", "1:precision=fp32,compile=no"]
    )

    config = config_from_args(args)

    assert (config.precision, config.compile) == ("bf16", True)
    assert config.agent_overrides == {1: {"precision": "fp32", "compile": False}}
    assert config.agent_spec(1).precision == "fp32" and not config.agent_spec(1).compile


@pytest.mark.parametrize(
    "table, message",
    [
        ({"precision": "fp8"}, "[agents.1]: precision must be one of fp32, bf16, fp16; got 'fp8'"),
        ({"compile": "maybe"}, "[agents.1] compile must be true or false, got 'maybe'"),
    ],
)
def test_a_bad_per_agent_precision_or_compile_is_refused(table: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ExperimentConfig(agents=2, agent_overrides={1: table})


def test_the_checkpoint_records_each_agents_precision_and_compile(tmp_path: Path) -> None:
    config = SMALL.replace(
        experiences=2, epochs=1, precision="bf16", agent_overrides={1: {"precision": "fp32"}}
    )

    simulate(config, checkpoint_dir=tmp_path)

    for agent, precision in [(0, "bf16"), (1, "fp32"), (2, "bf16")]:
        state = read_checkpoint(checkpoint_path(tmp_path, agent, 1))
        assert (state["spec"]["precision"], state["spec"]["compile"]) == (precision, False)
        assert (state["config"]["precision"], state["config"]["compile"]) == ("bf16", False)
    with pytest.raises(ValueError, match="different experiment config"):
        simulate(config.replace(agent_overrides={}), checkpoint_dir=tmp_path, resume=True)


def test_a_checkpoint_from_before_precision_existed_resumes_as_fp32(tmp_path: Path) -> None:
    config = SMALL.replace(experiences=2, epochs=1)
    setup = prepare(config)
    agent = setup.make_agent(0)
    _, predictions = agent.train_experience(0, None)
    path = agent.save_checkpoint(tmp_path, predictions)
    state = read_checkpoint(path)
    for table in (state["spec"], state["config"]):
        del table["precision"], table["compile"]
    write_checkpoint(path, state)

    restored = setup.make_agent(0)
    restored.load_checkpoint(path)

    assert restored.next_experience == 1


def test_compile_wraps_the_training_forward_and_leaves_evaluation_eager() -> None:
    agent = prepare(SMALL.replace(compile=True)).make_agent(0)

    compiled = agent.training_model()

    # torch.compile is lazy: nothing compiles until a training step calls it.
    assert compiled is not agent.model
    assert getattr(compiled, "_orig_mod", None) is agent.model
    assert agent.training_model() is compiled
    eager = prepare(SMALL).make_agent(0)
    assert eager.training_model() is eager.model


def test_conv_backbones_keep_the_default_memory_format_on_the_cpu() -> None:
    # channels_last changes convolution results on the CPU (by ~1e-6), so it is CUDA-only.
    agent = prepare(SMALL.replace(backbone="cnn")).make_agent(0)

    assert not agent.channels_last
    assert agent.model.backbone.conv1.weight.is_contiguous()
