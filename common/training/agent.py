"""The agent: one model, its stream, its replay buffer, and the per-experience training
(train with teacher targets, evaluate both heads, predict on the probe set). What it is
built and trained with is its `AgentSpec` (the run's config with its own overrides).

The Flower ClientApp and the in-process driver both run this code.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from dkt.common.choices import LR_SCHEDULES, OPTIMIZERS, PRECISIONS
from dkt.common.data.labeled_data import LabeledData
from dkt.common.data.probe import ProbeSet
from dkt.common.data.streams import AgentStream
from dkt.common.evaluation.metrics import accuracy
from dkt.common.evaluation.results import ExperienceRecord
from dkt.common.run.agent_spec import AgentSpec
from dkt.common.run.config import ExperimentConfig
from dkt.common.run.exchange_kinds import exchange_kind
from dkt.common.seeding import derive_seed
from dkt.common.training.checkpoints import (
    CHECKPOINT_FORMAT,
    checkpoint_path,
    read_checkpoint,
    write_checkpoint,
)
from dkt.common.training.loss import LossParts, dkt_loss, lwf_loss
from dkt.common.training.model import CONV_BACKBONES, build_model
from dkt.common.training.predictions import Predictions, published_logits
from dkt.common.training.replay import ReplayBuffer, epoch_batches
from dkt.common.training.strategies import Strategy, build_strategy, stream_for
from dkt.common.training.teacher import Teacher

EVAL_BATCH = 512
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_DEFAULTS = {"precision": "fp32", "compile": False}
# Checkpoints from before the optimizer, its schedule and ewc were options: the defaults.
_BASE = ExperimentConfig()
EXTENSION_DEFAULTS = {
    k: getattr(_BASE, k)
    for k in (
        "optimizer",
        "momentum",
        "weight_decay",
        "lr_schedule",
        "lr_step_epochs",
        "lr_gamma",
        "ewc_lambda",
    )
}


EpochCallback = Callable[[int, int], None]  # (epoch done, epochs)


@dataclass
class Fit:
    """What training one experience did, before the model is evaluated (`Agent.fit`)."""

    experience: int
    teacher: Teacher | None
    rows: int  # training rows: the experience's plus the replay memory's (FedAvg's n_k)
    steps: int
    loss_ce: float
    loss_kd: float
    loss_lwf: float
    seconds: float
    # Per epoch, the mean CE and KD losses (empty in fits saved before they were kept).
    epoch_loss_ce: list[float] = field(default_factory=list)
    epoch_loss_kd: list[float] = field(default_factory=list)


class Agent:
    """One DKT learner. State lives here; `train_experience` is the whole step.

    It is built from `config.agent_spec(agent_id)`: its backbone, strategy, training
    options and device (when the spec names one; else `device`). With the joint strategy
    its stream is one experience of all its classes. The run's exchange says which head
    teachers are distilled into (dkt: st, fedmd: cl) and, for fedavg, that every agent
    starts from the same initial weights, as FedAvg's clients start from the server's.
    """

    def __init__(
        self,
        agent_id: int,
        config: ExperimentConfig,
        stream: AgentStream,
        probe: ProbeSet,
        test_all: LabeledData,
        num_classes: int,
        device: str | torch.device = "cpu",
        transfer_data: LabeledData | None | str = "test_all",
    ) -> None:
        """`transfer_data`: the labeled data transfer accuracy is measured on: by default
        `test_all` (the shared test set of every class); an agent with its own data has
        only its own classes there, so it gets the run's public evaluation set, or None
        when the run has none (transfer is then not measured: None in every record)."""
        self.agent_id = agent_id
        self.config = config
        self.spec: AgentSpec = config.agent_spec(agent_id)
        spec = self.spec
        self.stream = stream_for(spec.strategy, stream)
        self.probe = probe
        self.test_all = test_all
        self.transfer_data = test_all if isinstance(transfer_data, str) else transfer_data
        self.num_classes = num_classes
        self.device = torch.device(spec.device or device)
        if spec.precision == "fp16" and self.device.type == "cpu":
            raise ValueError(
                f"precision fp16 needs a CUDA device, but agent {agent_id} runs on the CPU: "
                "use precision bf16 or fp32 there"
            )
        self.exchange = exchange_kind(config.exchange)
        # C×H×W of the N×C×H×W probe inputs; build_model checks that there are three.
        input_shape = cast("tuple[int, int, int]", tuple(int(d) for d in probe.inputs.shape[1:]))
        init = "fedavg" if self.exchange.averages_weights else agent_id
        torch.manual_seed(derive_seed(config.seed, "model", init))
        self.model = build_model(spec.backbone, input_shape, num_classes).to(self.device)
        # NHWC convolutions are faster on CUDA; on the CPU they would change the numbers.
        self.channels_last = self.device.type == "cuda" and spec.backbone in CONV_BACKBONES
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._compiled: torch.nn.Module | None = None
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler(self.device.type) if spec.precision == "fp16" else None
        self._probe_inputs: tuple[torch.Tensor, torch.Tensor] | None = None  # (host, device)
        self.optimizer = make_optimizer(self.model.parameters(), spec)
        self.strategy: Strategy = build_strategy(spec)
        self.buffer = ReplayBuffer(
            self.strategy.buffer_capacity(spec.replay_size),
            derive_seed(config.seed, "replay", agent_id),
        )
        self.generator = torch.Generator().manual_seed(
            derive_seed(config.seed, "batches", agent_id)
        )
        self.history: list[ExperienceRecord] = []
        self.teacher_classes: set[int] = set()

    @property
    def next_experience(self) -> int:
        return len(self.history)

    def train_experience(
        self, experience: int, teacher: Teacher | None, on_epoch: EpochCallback | None = None
    ) -> tuple[ExperienceRecord, Predictions]:
        """Train one experience by the agent's strategy (its data, plus replay or its own
        previous model), distilling `teacher` into the exchange's head (dkt: st); then
        evaluate and predict on the probe set."""
        return self.conclude(self.fit(experience, teacher, on_epoch))

    def fit(
        self, experience: int, teacher: Teacher | None, on_epoch: EpochCallback | None = None
    ) -> Fit:
        """The training half of `train_experience`: train, then update the replay buffer."""
        if experience != self.next_experience:
            raise ValueError(
                f"agent {self.agent_id} must train experience {self.next_experience} next, "
                f"not {experience}"
            )
        spec, cfg = self.spec, self.config
        exp = self.stream.experiences[experience]
        # The experience's rows, then the replay memory's (empty but under replay).
        data, memory_rows = exp.train, 0
        replay = self.buffer.data()
        if replay is not None:
            data = LabeledData(torch.cat([data.x, replay.x]), torch.cat([data.y, replay.y]))
            memory_rows = len(replay)
        # The experience's rows, its replay memory's and the probe inputs go to the device
        # once; minibatches are indexed there.
        data_x, data_y = self.on_device(data.x), on_device(data.y, self.device)
        probe_x = self.probe_on_device()
        targets = None
        if teacher is not None:
            # Counted even at λ = 0, so transfer accuracy has a no-distillation baseline.
            self.teacher_classes.update(teacher.classes)
            if self.exchange.kd_weight(spec.kd_weight) > 0:
                targets = on_device(teacher.logits.to(torch.float32), self.device)
        previous: torch.nn.Module | None = None
        old_classes: tuple[int, ...] = ()
        if spec.strategy == "lwf" and experience > 0:
            # This model as it was after the previous experience (in a disk-backed step,
            # as restored from that experience's checkpoint), frozen.
            previous = copy.deepcopy(self.model).eval().requires_grad_(False)
            old_classes = self.stream.classes_seen(experience - 1)
        model = self.training_model()
        self.strategy.before_experience(self.model, experience)

        start = time.perf_counter()
        self.model.train()
        steps = 0
        # Loss sums stay on the device (no sync per step), in float64 as Python's floats.
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        epoch_sums: list[torch.Tensor] = []  # per epoch: its CE and KD sums, its steps
        probe_order = torch.empty(0, dtype=torch.long)
        probe_pos = 0
        for epoch in range(spec.epochs):
            if spec.lr_schedule != "none":
                for group in self.optimizer.param_groups:
                    group["lr"] = scheduled_lr(spec, epoch)
            batches = epoch_batches(
                len(exp.train), memory_rows, spec.batch_size, spec.replay_mixing, self.generator
            )
            probe_batches = []
            if targets is not None:
                for _ in batches:
                    # Probe rows are drawn without replacement, cycling through a
                    # fresh permutation, so every probe input is used equally often.
                    if probe_pos + cfg.probe_batch_size > len(probe_order):
                        probe_order = torch.randperm(len(self.probe), generator=self.generator)
                        probe_pos = 0
                    probe_batches.append(probe_order[probe_pos : probe_pos + cfg.probe_batch_size])
                    probe_pos += cfg.probe_batch_size
            # The epoch's row indices, drawn on the CPU generator, cross in one copy each.
            batches = indices_on_device(batches, self.device)
            probe_batches = indices_on_device(probe_batches, self.device)
            epoch_sum = torch.zeros(3, dtype=torch.float64, device=self.device)
            for i, rows in enumerate(batches):
                p = t = None
                if targets is not None:
                    p, t = probe_x[probe_batches[i]], targets[probe_batches[i]]
                parts = training_step(
                    model,
                    self.optimizer,
                    data_x[rows],
                    data_y[rows],
                    p,
                    t,
                    spec,
                    previous,
                    old_classes,
                    self.exchange.kd_head or "st",
                    self.scaler,
                    self.strategy,
                )
                steps += 1
                lwf = parts.lwf if parts.lwf is not None else parts.kd.new_zeros(())
                step_sums = torch.stack([v.detach().double() for v in (parts.ce, parts.kd, lwf)])
                sums += step_sums
                epoch_sum[:2] += step_sums[:2]
                epoch_sum[2] += 1
            epoch_sums.append(epoch_sum)
            if on_epoch is not None:
                on_epoch(epoch + 1, spec.epochs)
        sum_ce, sum_kd, sum_lwf = sums.tolist()
        per_epoch = torch.stack(epoch_sums).tolist() if epoch_sums else []
        seconds = time.perf_counter() - start
        self.strategy.after_experience(self.model, exp.train, experience)
        self.buffer.update(exp.train)
        return Fit(
            experience=experience,
            teacher=teacher,
            rows=len(data),
            steps=steps,
            loss_ce=sum_ce / max(steps, 1),
            loss_kd=sum_kd / max(steps, 1),
            loss_lwf=sum_lwf / max(steps, 1),
            seconds=seconds,
            epoch_loss_ce=[ce / max(n, 1) for ce, _, n in per_epoch],
            epoch_loss_kd=[kd / max(n, 1) for _, kd, n in per_epoch],
        )

    def conclude(self, fit: Fit) -> tuple[ExperienceRecord, Predictions]:
        """The other half: evaluate the model as it is now (with fedavg: the average),
        record the experience and predict on the probe set."""
        record = self._evaluate(fit.experience, fit.teacher)
        record.loss_ce = fit.loss_ce
        record.loss_kd = fit.loss_kd
        record.loss_lwf = fit.loss_lwf
        record.epoch_loss_ce = list(fit.epoch_loss_ce)
        record.epoch_loss_kd = list(fit.epoch_loss_kd)
        record.steps = fit.steps
        record.train_seconds = fit.seconds
        record.kd_weight = self.exchange.kd_weight(self.spec.kd_weight)
        self.history.append(record)
        return record, self.predict_probe(fit.experience)

    def adopt_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Continue from `weights` (FedAvg's average; entries it lacks stay as they are)
        with a fresh optimizer, as a FedAvg client starts each round's local optimizer anew:
        moments gathered on its own weights do not describe the average."""
        state = self.model.state_dict()
        state.update(weights)
        self.model.load_state_dict(state)
        self.optimizer = make_optimizer(self.model.parameters(), self.spec)

    def on_device(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs `x` on the agent's device, in the model's memory format."""
        x = on_device(x, self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def probe_on_device(self) -> torch.Tensor:
        """The probe inputs on the agent's device, copied there once."""
        if self._probe_inputs is None or self._probe_inputs[0] is not self.probe.inputs:
            self._probe_inputs = (self.probe.inputs, self.on_device(self.probe.inputs))
        return self._probe_inputs[1]

    def training_model(self) -> torch.nn.Module:
        """The model training calls: compiled (once per agent) when the spec says so."""
        if not self.spec.compile:
            return self.model
        if self._compiled is None:
            # torch.compile's stubs give a module's callable; a module gives an OptimizedModule.
            self._compiled = cast(torch.nn.Module, torch.compile(self.model))
        return self._compiled

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads' logits on `x` in eval mode, batched on the device, on the CPU."""
        self.model.eval()
        if len(x) == 0:
            empty = torch.empty(0, self.num_classes)
            return empty, empty
        x = self.probe_on_device() if x is self.probe.inputs else self.on_device(x)
        cl, st = [], []
        with autocast(self.device, self.spec.precision):
            for i in range(0, len(x), EVAL_BATCH):
                a, b = self.model(x[i : i + EVAL_BATCH])
                cl.append(a.float())
                st.append(b.float())
        # One copy back to the host, not one per batch.
        return torch.cat(cl).cpu(), torch.cat(st).cpu()

    def predict_probe(self, experience: int) -> Predictions:
        """The cl-head logits on the whole probe set: what this agent publishes, in the
        run's exchange dtype (float16: rounded before any peer sees them)."""
        cl, _ = self.logits(self.probe.inputs)
        return Predictions(
            agent_id=self.agent_id,
            experience=experience,
            classes_seen=self.stream.classes_seen(experience),
            probe_fingerprint=self.probe.fingerprint,
            logits=published_logits(cl, self.config.exchange_dtype),
        )

    def _evaluate(self, experience: int, teacher: Teacher | None) -> ExperienceRecord:
        acc_cl, acc_st = [], []
        for exp in self.stream.experiences:
            cl, st = self.logits(exp.test.x)
            acc_cl.append(accuracy(cl, exp.test.y))
            acc_st.append(accuracy(st, exp.test.y))
        cl, st = self.logits(self.test_all.x)
        own = set(self.stream.classes_seen(experience))
        transfer = sorted(self.teacher_classes - own)
        transfer_st = transfer_cl = None
        public = self.transfer_data
        if transfer and public is not None:
            p_cl, p_st = (cl, st) if public is self.test_all else self.logits(public.x)
            mask = torch.isin(public.y, torch.tensor(transfer))
            if bool(mask.any()):
                transfer_st = accuracy(p_st[mask], public.y[mask])
                transfer_cl = accuracy(p_cl[mask], public.y[mask])
        return ExperienceRecord(
            experience=experience,
            classes=list(self.stream.experiences[experience].classes),
            teachers=[list(s) for s in teacher.sources] if teacher is not None else [],
            acc_cl=acc_cl,
            acc_st=acc_st,
            acc_all_cl=accuracy(cl, self.test_all.y),
            acc_all_st=accuracy(st, self.test_all.y),
            transfer_classes=transfer,
            transfer_st=transfer_st,
            transfer_cl=transfer_cl,
            loss_ce=0.0,
            loss_kd=0.0,
            steps=0,
            train_seconds=0.0,
        )

    # Checkpoints -----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "agent_id": self.agent_id,
            "config": self.config.to_dict(),
            "spec": self.spec.to_dict(),
            "probe_fingerprint": self.probe.fingerprint,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "buffer": self.buffer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
            **({"strategy": strategy} if (strategy := self.strategy.state_dict()) else {}),
            "history": [r.to_dict() for r in self.history],
            "teacher_classes": sorted(self.teacher_classes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"unsupported checkpoint format {state.get('format')!r}")
        if state["agent_id"] != self.agent_id:
            raise ValueError(f"checkpoint is agent {state['agent_id']}'s, not {self.agent_id}'s")
        own = self.spec.to_dict()
        # Checkpoints from before precision and compile were options trained in fp32.
        saved_spec = {**PRECISION_DEFAULTS, **EXTENSION_DEFAULTS, **state["spec"]}
        changed = sorted(k for k in own if saved_spec.get(k) != own[k])
        if changed:
            raise ValueError(
                f"checkpoint was written with a different experiment config (agent "
                f"{self.agent_id}'s spec changed: {', '.join(changed)})"
            )
        # Checkpoints from before the exchange was a choice were all dkt in float32.
        saved = {
            "exchange": "dkt",
            "exchange_dtype": "float32",
            **PRECISION_DEFAULTS,
            **EXTENSION_DEFAULTS,
        }
        saved.update(state["config"])
        if saved != self.config.to_dict():
            raise ValueError("checkpoint was written with a different experiment config")
        if state["probe_fingerprint"] != self.probe.fingerprint:
            raise ValueError("checkpoint was written with a different probe set")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if "strategy" in state:
            self.strategy.load_state_dict(state["strategy"])
        self.history = [ExperienceRecord(**r) for r in state["history"]]
        self.teacher_classes = set(state["teacher_classes"])

    def save_checkpoint(self, directory: str | Path, predictions: Predictions) -> Path:
        """Write this agent's state after its latest experience, atomically."""
        state = self.state_dict()
        state["predictions"] = {
            "experience": predictions.experience,
            "classes_seen": list(predictions.classes_seen),
            "logits": predictions.logits,
        }
        return write_checkpoint(
            checkpoint_path(directory, self.agent_id, predictions.experience), state
        )

    def load_checkpoint(self, path: str | Path) -> Predictions:
        """Restore the state saved by `save_checkpoint`; returns the predictions
        published after that experience."""
        state = read_checkpoint(path)
        self.load_state_dict(state)
        saved = state["predictions"]
        return Predictions(
            agent_id=self.agent_id,
            experience=saved["experience"],
            classes_seen=tuple(saved["classes_seen"]),
            probe_fingerprint=self.probe.fingerprint,
            logits=saved["logits"].cpu(),
        )


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    probe: torch.Tensor | None,
    teacher: torch.Tensor | None,
    spec: AgentSpec | ExperimentConfig,
    previous: torch.nn.Module | None = None,
    old_classes: tuple[int, ...] = (),
    kd_head: str = "st",
    scaler: torch.amp.GradScaler | None = None,
    strategy: Strategy | None = None,
) -> LossParts:
    """One optimisation step of `CE(cl(x), y) + λ·KD(st(p), t(p))` (with `kd_head` "cl",
    FedMD's `CE(cl(x), y) + λ·KD(cl(p), t(p))`), plus `α·LwF(cl(x), previous_cl(x))` on
    `old_classes` when a `previous` model is given; plain cross-entropy when there is no
    probe minibatch. The forward passes run in `spec.precision` (autocast); with a
    `scaler` (fp16) the loss is scaled for backward and the gradients are unscaled before
    clipping. A `strategy`'s penalty on the step's minibatch, if any, joins the total."""
    if kd_head not in ("st", "cl"):
        raise ValueError(f"kd_head must be st or cl, got {kd_head!r}")
    with autocast(x.device, spec.precision):
        if probe is None or teacher is None:
            cl, _ = model(x)
            student = None
        else:
            # One forward pass over data and probe inputs together.
            cl_all, st_all = model(torch.cat([x, probe]))
            cl = cl_all[: len(x)]
            student = (cl_all if kd_head == "cl" else st_all)[len(x) :]
        parts = dkt_loss(cl, y, student, teacher, spec.kd_weight, spec.kd_loss, spec.temperature)
        if previous is not None:
            with torch.no_grad():
                old, _ = previous(x)
            lwf = lwf_loss(cl, old, old_classes, spec.lwf_temperature)
            parts = parts._replace(total=parts.total + spec.lwf_alpha * lwf, lwf=lwf)
    if strategy is not None:
        extra = strategy.penalty(model, x, y)
        if extra is not None:
            parts = parts._replace(total=parts.total + extra)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        parts.total.backward()
    else:
        scaler.scale(parts.total).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if spec.clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip_grad_norm)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        scaler.update()
    return parts


def make_optimizer(params: Any, spec: AgentSpec | ExperimentConfig) -> torch.optim.Optimizer:
    """The spec's optimizer over `params`: Adam (the default), SGD with momentum, AdamW."""
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
        )
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    raise ValueError(f"unknown optimizer {spec.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


def scheduled_lr(spec: AgentSpec | ExperimentConfig, epoch: int) -> float:
    """The learning rate of `epoch` (0-based) of an experience under `spec.lr_schedule`:
    cosine goes from lr at epoch 0 towards 0 (lr·(1 + cos(π·epoch/epochs))/2); step
    multiplies lr by lr_gamma every lr_step_epochs epochs."""
    if spec.lr_schedule == "none":
        return spec.lr
    if spec.lr_schedule == "cosine":
        return spec.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / spec.epochs))
    if spec.lr_schedule == "step":
        return spec.lr * spec.lr_gamma ** (epoch // spec.lr_step_epochs)
    raise ValueError(
        f"unknown lr_schedule {spec.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}"
    )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """Autocast to `precision` on `device`'s type; no context at all for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def on_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`; from the host to CUDA through pinned memory, asynchronously."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def indices_on_device(batches: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Minibatches of row indices on `device`, moved in one copy (views of one tensor)."""
    if not batches or device.type == "cpu":
        return batches
    moved = on_device(torch.cat(batches), device)
    return list(moved.split([len(b) for b in batches]))
