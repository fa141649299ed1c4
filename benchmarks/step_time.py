"""Time one DKT training step against one plain cross-entropy step on the same model
and batch, and print the ratio.

    python benchmarks/step_time.py                       # mlp on digits-sized inputs
    python benchmarks/step_time.py --backbone slim_resnet18 --input 3,32,32 --classes 100

The DKT step does one forward pass over the data and probe minibatches together,
the CE + λ·KD loss, backward, clipping and an Adam step; the CE step the same on
the data minibatch alone.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dkt.common.choices import BACKBONES, KD_LOSSES
from dkt.common.run.config import ExperimentConfig
from dkt.common.training.agent import training_step
from dkt.common.training.model import build_model


def time_steps(step, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mlp", choices=BACKBONES)
    parser.add_argument("--input", default="1,8,8", help="C,H,W")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--probe-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kd-loss", default="mse", choices=KD_LOSSES)
    args = parser.parse_args()

    shape = tuple(int(d) for d in args.input.split(","))
    torch.manual_seed(0)
    config = ExperimentConfig(kd_loss=args.kd_loss)
    device = torch.device(args.device)
    model = build_model(args.backbone, shape, args.classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    x = torch.randn(args.batch, *shape, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    p = torch.randn(args.probe_batch, *shape, device=device)
    t = torch.randn(args.probe_batch, args.classes, device=device)

    # Interleave the two kinds in rounds so machine noise hits both alike.
    ce_times: list[float] = []
    dkt_times: list[float] = []
    rounds = 5
    for _ in range(rounds):
        ce_times += time_steps(
            lambda: training_step(model, optimizer, x, y, None, None, config),
            args.repeats // rounds,
            args.warmup,
        )
        dkt_times += time_steps(
            lambda: training_step(model, optimizer, x, y, p, t, config),
            args.repeats // rounds,
            args.warmup,
        )
    ce, dkt = statistics.median(ce_times), statistics.median(dkt_times)
    print(
        f"backbone={args.backbone} input={shape} classes={args.classes} batch={args.batch} "
        f"probe_batch={args.probe_batch} device={args.device} threads={torch.get_num_threads()}"
    )
    print(f"CE step   median {1000 * ce:8.2f} ms")
    print(f"DKT step  median {1000 * dkt:8.2f} ms")
    print(f"ratio DKT/CE      {dkt / ce:8.2f}x")


if __name__ == "__main__":
    main()
