"""Images/s of one agent's training (`Agent.fit`, the training half of
`train_experience`) against a plain PyTorch loop on the same backbone, in one process.

    python benchmarks/throughput.py                   # CPU, slim_resnet18, ~1 minute
    python benchmarks/throughput.py --device cuda --rows 10000 --epochs 2 --repeats 5 \\
        --backbone resnet18 --precision bf16          # a GPU (add --compile to try it)

Synthetic data: C×H×W inputs (default 3×32×32), 100 classes. The plain loop is what a
user would write: the same backbone with one linear head, the same batch size, Adam,
cross-entropy only, its data already on the device, minibatches from a device-side
permutation, the same autocast (and GradScaler for fp16), channels_last on CUDA and
torch.compile as the agent. The agent's fit is timed whole: its data goes to the device,
its minibatch indices come from its CPU generator, it clips gradients (norm 5) and sums
its losses.

Two DKT modes (`--modes`):
  ce  the agent without a teacher (its first experience): the same work as the plain
      loop plus the engine's overhead. Goal: ratio >= 0.9.
  kd  the agent with a teacher: each step also forwards a probe minibatch of
      --probe-batch rows and adds the KD loss. Images/s still counts training rows
      only, so this ratio also prices the method (about B / (B + P) where compute-bound).
Each repeat runs the plain loop and every mode once, interleaved, so machine noise hits
all alike; the table shows medians over repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dkt.common.choices import BACKBONES, PRECISIONS
from dkt.common.data.labeled_data import LabeledData
from dkt.common.data.probe import ProbeSet, fingerprint
from dkt.common.data.streams import AgentStream, Experience
from dkt.common.run.config import ExperimentConfig
from dkt.common.training.agent import AUTOCAST_DTYPES, Agent
from dkt.common.training.model import CONV_BACKBONES, build_backbone
from dkt.common.training.teacher import Teacher

CLASSES = 100


def synthetic(rows: int, shape: tuple[int, ...], seed: int) -> LabeledData:
    gen = torch.Generator().manual_seed(seed)
    return LabeledData(torch.randn(rows, *shape, generator=gen), torch.arange(rows) % CLASSES)


def make_agent(args: argparse.Namespace, shape: tuple[int, ...]) -> tuple[Agent, Teacher]:
    """One agent whose single experience holds `--rows` rows of all 100 classes."""
    config = ExperimentConfig(
        dataset="synthetic",
        agents=2,
        experiences=1,
        backbone=args.backbone,
        epochs=args.epochs,
        batch_size=args.batch,
        probe_batch_size=args.probe_batch,
        probe_size=args.probe_rows,
        replay_size=0,  # the same rows every fit: no replay memory grows between repeats
        strategy="naive",
        precision=args.precision,
        compile=args.compile,
    )
    train = synthetic(args.rows, shape, 1)
    test = synthetic(2, shape, 2)
    experience = Experience(0, tuple(range(CLASSES)), train, test)
    stream = AgentStream(0, (experience,))
    inputs = synthetic(args.probe_rows, shape, 3).x
    probe = ProbeSet(inputs, "synthetic", fingerprint(inputs))
    agent = Agent(0, config, stream, probe, test, CLASSES, device=args.device)
    gen = torch.Generator().manual_seed(4)
    teacher = Teacher(
        torch.randn(args.probe_rows, CLASSES, generator=gen), tuple(range(CLASSES)), ((1, 0),)
    )
    return agent, teacher


def plain_loop(args: argparse.Namespace, shape: tuple[int, ...]) -> Callable[[], int]:
    """A plain PyTorch training loop; returns a function that runs --epochs epochs and
    returns the images it trained on."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    backbone = build_backbone(args.backbone, shape)
    model: nn.Module = nn.Sequential(backbone, nn.Linear(backbone.out_features, CLASSES))
    model = model.to(device)
    channels_last = device.type == "cuda" and args.backbone in CONV_BACKBONES
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if args.compile else model
    scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None
    data = synthetic(args.rows, shape, 1)
    x = data.x.to(device).contiguous(memory_format=memory_format)
    y = data.y.to(device)

    def run() -> int:
        model.train()
        images = 0
        for _ in range(args.epochs):
            for rows in torch.randperm(len(x), device=device).split(args.batch):
                if len(rows) < 2:  # as the agent: batch norm cannot train on one row
                    continue
                with torch.autocast(
                    device.type,
                    dtype=AUTOCAST_DTYPES.get(args.precision, torch.float32),
                    enabled=args.precision != "fp32",
                ):
                    loss = F.cross_entropy(forward(x[rows]), y[rows])
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                images += len(rows)
        return images

    return run


def timed(run: Callable[[], int], device: str) -> float:
    """Images/s of one call of `run`."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    images = run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="GPU defaults to use: --device cuda --rows 10000 --epochs 2 --repeats 5 "
        "(about 5,000 images is one CIFAR-100 experience); try --precision bf16 and "
        "--compile, and --backbone resnet18.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--backbone", default="slim_resnet18", choices=BACKBONES)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--input", default="3,32,32", help="C,H,W")
    parser.add_argument("--rows", type=int, default=512, help="training rows per fit")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per fit")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--probe-batch", type=int, default=64, help="kd mode's probe rows")
    parser.add_argument("--probe-rows", type=int, default=1000, help="probe set size")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (plus a warm-up)")
    parser.add_argument("--modes", default="ce,kd", help="dkt modes to time: ce, kd or both")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    shape = tuple(int(d) for d in args.input.split(","))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(modes) <= {"ce", "kd"}:
        parser.error(f"--modes takes ce, kd or ce,kd; got {args.modes!r}")
    agent, teacher = make_agent(args, shape)

    def dkt(mode: str) -> Callable[[], int]:
        def run() -> int:
            fit = agent.fit(0, teacher if mode == "kd" else None)  # history stays empty
            return fit.rows * args.epochs

        return run

    runs = {"plain": plain_loop(args, shape), **{m: dkt(m) for m in modes}}
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(args.repeats + 1):  # the first round warms up (and compiles)
        for name, run in runs.items():
            rate = timed(run, args.device)
            if repeat > 0:
                rates[name].append(rate)

    plain = statistics.median(rates["plain"])
    print(
        f"{args.rows} rows x {args.epochs} epoch(s), batch {args.batch}, input {args.input}, "
        f"{CLASSES} classes, {args.repeats} repeats, {torch.get_num_threads()} CPU thread(s)"
        f"{', compiled' if args.compile else ''}; images/s count training rows only"
    )
    header = ("backbone", "device", "precision", "dkt mode", "dkt img/s", "plain img/s", "ratio")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for mode in modes:
        rate = statistics.median(rates[mode])
        label = "ce (no teacher)" if mode == "ce" else f"kd (probe batch {args.probe_batch})"
        row = (args.backbone, args.device, args.precision, label)
        print(f"| {' | '.join(row)} | {rate:,.0f} | {plain:,.0f} | {rate / plain:.2f}x |")


if __name__ == "__main__":
    main()
