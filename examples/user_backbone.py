"""Your own backbone: a tiny `nn.Module` of yours under DKT's two heads.

DKT builds each agent's model as backbone + two linear heads (`cl` and `st`). Name a
function `module:callable` as the backbone; DKT calls it with the input shape (C, H, W)
and puts the heads on the N×D features it returns (D: its `out_features`, or measured).
The same from the command line, with this folder on PYTHONPATH:

    PYTHONPATH=examples dkt simulate --backbone user_backbone:make_net --agents 2 \\
        --experiences 2 --epochs 1

Runs in seconds on a CPU:

    python examples/user_backbone.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import dkt


class TinyNet(nn.Module):
    """A 3×3 convolution with ReLU, then one hidden layer: N×C×H×W → N×64."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, kernel_size=3, padding=1)
        self.hidden = nn.Linear(8 * height * width, 64)
        self.out_features = 64  # the feature size D the cl and st heads are built on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x)).flatten(1)
        return torch.relu(self.hidden(x))


def make_net(input_shape: tuple[int, int, int]) -> nn.Module:
    """The backbone for C×H×W inputs (digits: 1×8×8)."""
    return TinyNet(*input_shape)


def main() -> None:
    # The backbone is imported by name, as every agent process would: this file's folder
    # on the path, this file's module name.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    config = dkt.ExperimentConfig(
        agents=2, experiences=2, epochs=3, backbone=f"{Path(__file__).stem}:make_net"
    )
    result = dkt.simulate(config, threads=1)  # digits are tiny: one torch thread is fastest
    for row in result.to_records("agent"):
        print(
            f"agent {row['agent']}: backbone {config.backbone}, average accuracy "
            f"cl {100 * row['avg_acc_cl']:.1f}%"
        )


if __name__ == "__main__":
    main()
