"""The original research code's three experiments as presets (`--preset NAME`).

A preset is a run config: run-wide options (at a `--scale`) plus per-agent overrides
(`[agents.N]`) that say who is the teacher, with which strategy, distilled by whom.
`small` runs on a CPU in minutes (digits by default; any data set with `--dataset`);
`full` is the original's scale: Split CIFAR-100 in 10 experiences, slim_resnet18,
replay of 2000 samples, batch 256, Adam, gradient-norm clipping at 5, on a GPU.

Every option a preset relies on is pinned here, so a change of a default elsewhere
does not change what a preset reproduces. Pure and torch-free (the CLI imports it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dkt.common.run.config import ExperimentConfig

SCALES = ("small", "full")

# Run-wide options of each scale. `batch` replay mixing is Avalanche's ReplayPlugin, which
# the original used; MSE on raw logits with λ = 1 is the original code's distillation.
_SCALE_OPTIONS: dict[str, dict[str, Any]] = {
    "small": {
        "dataset": "digits",
        "experiences": 5,
        "backbone": "mlp",
        "epochs": 8,
        "batch_size": 64,
        "probe_batch_size": 64,
        "probe_size": 200,
        "replay_size": 200,
    },
    "full": {
        "dataset": "cifar100",
        "experiences": 10,
        "backbone": "slim_resnet18",
        # Not recorded in the original's README; --epochs changes it.
        "epochs": 30,
        "batch_size": 256,
        "probe_batch_size": 256,
        "probe_size": 5000,
        "replay_size": 2000,
    },
}
_COMMON_OPTIONS: dict[str, Any] = {
    "agents": 2,
    "assignment": "shuffled",
    "probe_source": "holdout",
    "strategy": "replay",
    "replay_mixing": "batch",
    "lr": 1e-3,
    "clip_grad_norm": 5.0,
    "kd_weight": 1.0,
    "kd_loss": "mse",
    "aggregation": "coverage",
    "peer_policy": "all",
    "schedule": "sequential",
}
# seed-exp1's teacher: the original pre-trained a ResNet-34 on all of CIFAR-100; the
# deepest backbone here is resnet18. At small scale it is the student's backbone.
_JOINT_TEACHER_BACKBONE = {"small": "mlp", "full": "resnet18"}


@dataclass(frozen=True)
class Preset:
    """One of the original's experiments as a run config."""

    name: str
    reproduces: str  # the original's experiment and figure, one line
    # Agents trained alone as the run's first stage, whose checkpoints and published
    # predictions `dkt simulate` keeps in its teacher cache and reuses when present.
    cached_teachers: tuple[int, ...]

    def overrides(self, scale: str) -> dict[int, dict[str, Any]]:
        """The per-agent overrides ([agents.N] tables) at `scale`."""
        if self.name == "seed-exp1":
            teacher = {
                "strategy": "joint",
                "backbone": _JOINT_TEACHER_BACKBONE[scale],
                "kd_weight": 0.0,
                "teachers": [],
            }
            return {0: teacher, 1: {"teachers": [0]}}
        if self.name == "seed-exp2":
            return {0: {"strategy": "lwf", "kd_weight": 0.0, "teachers": []}, 1: {"teachers": [0]}}
        return {0: {"teachers": [1]}, 1: {"teachers": [0]}}


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "seed-exp1",
            "experiment 1 (cifar100_training.py): a teacher trained jointly on all classes, "
            "a continual student distilling it from its first experience",
            cached_teachers=(0,),
        ),
        Preset(
            "seed-exp2",
            "experiment 2 (splitcifar100_pretrained.py): a continual LwF teacher; the "
            "student distils, at experience e, the teacher after experience e",
            cached_teachers=(0,),
        ),
        Preset(
            "seed-exp3",
            "experiment 3 (step_training.py): two continual peers on differently ordered "
            "streams, each distilling the other (A at e uses B after e-1, B at e uses A after e)",
            cached_teachers=(),
        ),
    )
}


def preset(name: str) -> Preset:
    """The preset called `name`; an unknown name is one line listing the presets."""
    found = PRESETS.get(name)
    if found is None:
        raise ValueError(f"unknown preset {name!r}; the presets are {', '.join(PRESETS)}")
    return found


def preset_config(name: str, scale: str = "small") -> ExperimentConfig:
    """The run config of preset `name` at `scale`: run-wide options and per-agent overrides."""
    found = preset(name)
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    return ExperimentConfig(
        **_COMMON_OPTIONS,
        **_SCALE_OPTIONS[scale],
        agent_overrides=found.overrides(scale),
    )
