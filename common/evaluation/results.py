"""The results folder: resolved config, metrics JSON, accuracy matrices, plots and a
markdown summary. Written the same way by `dkt simulate` and `dkt run`."""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dkt.common.byte_sizes import format_bytes
from dkt.common.choices import ALL_PLOTS_UP_TO, PLOT_SETS
from dkt.common.data.probe import ProbeSet
from dkt.common.evaluation.metrics import Matrix, average_accuracy, backward_transfer, forgetting
from dkt.common.evaluation.provenance import provenance, provenance_toml
from dkt.common.run.config import ExperimentConfig
from dkt.common.run.exchange_kinds import exchange_kind

if TYPE_CHECKING:
    from dkt.common.evaluation.tables import RunTable

# The keys of metrics.json that RunResult.read maps to its fields; the rest is `extra`.
_METRICS_KEYS = (
    "dkt_version", "driver", "seconds", "config", "probe", "missing_agents",
    "mean_over_agents", "agents",
)  # fmt: skip
HEADS = ("cl", "st")
# A record's numbers of the st head, reported as None where it learns nothing.
ST_FIELDS = ("acc_st", "acc_all_st", "transfer_st")


class RunSetup(Protocol):
    """What a result needs of the run it came from (the engine's `Setup` has it)."""

    @property
    def config(self) -> ExperimentConfig: ...

    @property
    def probe(self) -> ProbeSet: ...

    def class_orders(self) -> list[list[list[int]]]: ...


@dataclass
class ExperienceRecord:
    """What an agent measured after training one experience."""

    experience: int
    classes: list[int]
    teachers: list[list[int]]  # [agent id, experience] of each teacher used
    acc_cl: list[float]  # accuracy of the cl head on every experience of the stream
    acc_st: list[float]
    acc_all_cl: float  # accuracy over the test data of all classes
    acc_all_st: float
    transfer_classes: list[int]  # never trained on, but a teacher has
    transfer_st: float | None  # st-head accuracy on transfer_classes: the point of DKT
    transfer_cl: float | None  # cl-head accuracy on the same data, for contrast
    loss_ce: float
    loss_kd: float
    steps: int
    train_seconds: float
    loss_lwf: float = 0.0  # the lwf strategy's distillation term (mean over steps)
    # Bytes this agent moved for this experience: what it published (its logits; with
    # fedavg its weights, uploaded) and fetched (its teachers' logits; the average).
    bytes_published: int = 0
    bytes_fetched: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # The λ that weighted the KD term: the spec's, or 0 where the exchange distils nothing
    # (none, fedavg). None in records written before it was recorded.
    kd_weight: float | None = None
    # The mean CE and KD losses of each epoch (in order; their step-weighted mean is
    # loss_ce and loss_kd). Empty in records written before they were recorded.
    epoch_loss_ce: list[float] = field(default_factory=list)
    epoch_loss_kd: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reported_heads(config: ExperimentConfig) -> tuple[str, ...]:
    """The heads whose numbers mean something: both under dkt; only cl where the st
    head learns nothing (none, fedavg: no distillation; fedmd distils into cl)."""
    return HEADS if exchange_kind(config.exchange).reports_st_head else ("cl",)


@dataclass
class RunResult:
    """Everything a results folder is written from."""

    config: ExperimentConfig
    probe_fingerprint: str
    probe_source: str
    class_orders: list[list[list[int]]]  # per agent, per experience, its classes
    histories: dict[int, list[ExperienceRecord]]
    seconds: float
    driver: str = "simulate"
    missing_agents: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_run(
        cls,
        setup: RunSetup,
        histories: dict[int, list[ExperienceRecord]],
        *,
        seconds: float,
        driver: str,
        missing_agents: Iterable[int] = (),
        extra: dict[str, Any] | None = None,
        class_orders: list[list[list[int]]] | None = None,
    ) -> RunResult:
        """The result of a run on `setup`: how every driver (simulate, the Flower
        conductor) builds one, so their results folders cannot drift apart.
        `class_orders` defaults to the setup's (the conductor passes the plans its
        agents reported: those with their own data know theirs)."""
        return cls(
            config=setup.config,
            probe_fingerprint=setup.probe.fingerprint,
            probe_source=setup.probe.source,
            class_orders=class_orders if class_orders is not None else setup.class_orders(),
            histories=histories,
            seconds=seconds,
            driver=driver,
            missing_agents=sorted(missing_agents),
            extra=dict(extra or {}),
        )

    @classmethod
    def read(cls, folder: str | Path) -> RunResult:
        """The result a results folder was written from, read back from its metrics.json
        (`dkt.load_results`); keys this version does not know stay in `extra`."""
        path = Path(folder) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: give a results folder written by dkt simulate, "
                "dkt run or dkt compare (runs/CELL/seed-S)"
            )
        doc = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(ExperienceRecord)}
        config = ExperimentConfig.from_dict(doc["config"])
        agents = {int(a): v for a, v in doc["agents"].items()}
        return cls(
            config=config,
            probe_fingerprint=doc["probe"]["fingerprint"],
            probe_source=doc["probe"]["source"],
            class_orders=[agents.get(a, {}).get("class_order", []) for a in range(config.agents)],
            histories={
                a: [
                    ExperienceRecord(**{k: v for k, v in r.items() if k in known})
                    for r in agent["experiences"]
                ]
                for a, agent in sorted(agents.items())
            },
            seconds=doc["seconds"],
            driver=doc["driver"],
            missing_agents=list(doc.get("missing_agents", [])),
            extra={k: v for k, v in doc.items() if k not in _METRICS_KEYS},
        )

    def to_records(self, by: RunTable = "experience") -> list[dict[str, Any]]:
        """The run as rows of plain values; `by`: experience (one row per agent ×
        experience), metric (agent × experience × metric), matrix (the accuracy matrices,
        long) or agent (each agent's summary). See common/evaluation/tables.py."""
        from dkt.common.evaluation.tables import run_records

        return run_records(self, by)

    def to_frame(self, by: RunTable = "experience") -> Any:
        """`to_records(by)` as a pandas DataFrame; an ImportError says how to get pandas."""
        from dkt.common.evaluation.tables import run_columns, run_records, to_frame

        return to_frame(run_records(self, by), run_columns(by))

    def write(self, folder: str | Path, plots: str = "auto") -> Path:
        """Write the results folder (as the drivers do); returns its summary's path."""
        return write_results(self, folder, plots)

    def write_plots(self, folder: str | Path, plots: str = "all") -> list[Path]:
        """Draw (or redraw) the plots of the results folder `folder`, e.g. every agent's
        heatmap of a large run written with the summary set:
        `dkt.load_results(folder).write_plots(folder)`; returns the files written."""
        return write_plots(self, folder, plots)


def accuracy_matrix(history: list[ExperienceRecord], head: str) -> Matrix:
    """R[e][j] for one head: accuracy on experience j's test data after training e."""
    return [list(getattr(r, f"acc_{head}")) for r in history]


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def agent_summary(
    history: list[ExperienceRecord], heads: tuple[str, ...] = HEADS
) -> dict[str, Any]:
    """The headline numbers of one agent after its last experience; those of a head not
    in `heads` are None (not applicable)."""
    if not history:
        return {"experiences_done": 0}
    out: dict[str, Any] = {"experiences_done": len(history)}
    for head in HEADS:
        if head not in heads:
            for key in ("avg_acc", "forgetting", "bwt", "acc_all", "transfer"):
                out[f"{key}_{head}" + ("_mean" if key == "transfer" else "")] = None
            continue
        r = accuracy_matrix(history, head)
        out[f"avg_acc_{head}"] = average_accuracy(r)
        out[f"forgetting_{head}"] = forgetting(r)
        out[f"bwt_{head}"] = backward_transfer(r)
        out[f"acc_all_{head}"] = getattr(history[-1], f"acc_all_{head}")
        out[f"transfer_{head}_mean"] = _mean([getattr(x, f"transfer_{head}") for x in history])
    defined = [x for x in history if x.transfer_st is not None]
    out["transfer_st_last"] = defined[-1].transfer_st if defined and "st" in heads else None
    out["transfer_experiences"] = len(defined)
    out["kd_weight"] = history[-1].kd_weight  # the effective λ (0 under none and fedavg)
    out["bytes_published"] = sum(x.bytes_published for x in history)
    out["bytes_fetched"] = sum(x.bytes_fetched for x in history)
    out["train_seconds"] = sum(x.train_seconds for x in history)
    return out


def build_metrics(result: RunResult) -> dict[str, Any]:
    """The whole run as one JSON-serialisable document."""
    from dkt import __version__

    heads = reported_heads(result.config)
    agents: dict[str, Any] = {}
    for agent_id, history in sorted(result.histories.items()):
        agents[str(agent_id)] = {
            "spec": result.config.agent_spec(agent_id).to_dict(),
            "class_order": result.class_orders[agent_id],
            "summary": agent_summary(history, heads),
            "accuracy_matrix": {
                h: accuracy_matrix(history, h) if h in heads else None for h in HEADS
            },
            "experiences": [_record_dict(r, heads) for r in history],
        }
    summaries = [a["summary"] for a in agents.values() if a["summary"]["experiences_done"]]
    keys = [k for k in (summaries[0] if summaries else {}) if k != "experiences_done"]
    overall = {k: _mean([s[k] for s in summaries]) for k in keys}
    return {
        "dkt_version": __version__,
        "provenance": provenance(),  # the driver's own, in result.extra, wins
        "driver": result.driver,
        "seconds": result.seconds,
        "config": result.config.to_dict(),
        "probe": {
            "fingerprint": result.probe_fingerprint,
            "source": result.probe_source,
            "size": result.config.probe_size,
        },
        "missing_agents": result.missing_agents,
        "mean_over_agents": overall,
        "agents": agents,
        **result.extra,
    }


def _record_dict(record: ExperienceRecord, heads: tuple[str, ...]) -> dict[str, Any]:
    out = record.to_dict()
    if "st" not in heads:
        out.update(dict.fromkeys(ST_FIELDS))
    return out


def plot_set(plots: str, agents: int) -> str:
    """The plot set `plots` (one of PLOT_SETS) stands for in a run of `agents` agents:
    auto resolves to all or summary."""
    if plots not in PLOT_SETS:
        raise ValueError(f"plots must be one of {', '.join(PLOT_SETS)}, not {plots!r}")
    if plots == "auto":
        return "all" if agents <= ALL_PLOTS_UP_TO else "summary"
    return plots


def write_results(result: RunResult, folder: str | Path, plots: str = "auto") -> Path:
    """Write the results folder and return the path of its summary; `plots` picks which
    plots (PLOT_SETS), nothing else in the folder depends on it."""
    plots = plot_set(plots, result.config.agents)  # a wrong name fails before any writing
    folder = Path(folder)
    (folder / "matrices").mkdir(parents=True, exist_ok=True)
    metrics = build_metrics(result)
    (folder / "config.toml").write_text(
        result.config.to_toml() + provenance_toml(metrics["provenance"])
    )
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for agent_id, history in sorted(result.histories.items()):
        for head in reported_heads(result.config):
            _write_matrix(folder / "matrices" / f"agent-{agent_id}-{head}.csv", history, head)
    write_plots(result, folder, plots)
    summary = folder / "summary.md"
    summary.write_text(render_summary(metrics))
    return summary


def _write_matrix(path: Path, history: list[ExperienceRecord], head: str) -> None:
    r = accuracy_matrix(history, head)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["after_experience", *(f"exp_{j}" for j in range(len(r[0]) if r else 0))])
        for e, row in enumerate(r):
            writer.writerow([e, *(f"{v:.4f}" for v in row)])


def _fmt(value: float | None, pct: bool = True) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}" if pct else f"{value:.3f}"


def render_summary(metrics: dict[str, Any]) -> str:
    """The markdown summary: the run, then one row per agent."""
    cfg = metrics["config"]
    own = [a for a, kind in (metrics.get("agent_data") or {}).items() if kind == "own"]
    lines = [
        "# DKT run summary",
        "",
        f"- {data_description(cfg['dataset'], own, cfg['agents'])}, {cfg['agents']} agents, "
        f"{cfg['experiences']} experiences each, assignment `{cfg['assignment']}`",
        f"- backbone `{cfg['backbone']}`, strategy `{cfg.get('strategy', 'replay')}`, "
        f"λ = {cfg['kd_weight']}, KD `{cfg['kd_loss']}`, "
        f"aggregation `{cfg['aggregation']}`, peers `{cfg['peer_policy']}`, "
        f"schedule `{cfg['schedule']}`, seed {cfg['seed']}",
        _exchange_line(cfg),
        f"- probe set: {metrics['probe']['size']} inputs from `{metrics['probe']['source']}`, "
        f"fingerprint `{metrics['probe']['fingerprint'][:16]}…`",
        f"- driver `{metrics['driver']}`, {metrics['seconds']:.1f} s",
    ]
    overrides = json.loads(cfg.get("agent_overrides") or "{}")
    for agent_id, table in overrides.items():
        changes = ", ".join(f"{k} = {v}" for k, v in table.items())
        lines.append(f"- agent {agent_id} overrides: {changes}")
    if metrics["missing_agents"]:
        lines.append(f"- **missing agents**: {', '.join(map(str, metrics['missing_agents']))}")
    if own:
        lines.append(
            f"- agents {', '.join(own)} learned their own data (only the plan left their "
            "host); their `acc` columns are on their own test split"
        )
        if not cfg.get("eval_from"):
            lines.append(
                f"- **transfer not measured** for agents {', '.join(own)}: their test data "
                "holds only their own classes and the run has no public evaluation set "
                "(give --eval-from)"
            )
    lines += [
        "",
        "**Transfer accuracy** is the `st` head's accuracy on classes the agent never "
        "trained on but its teachers did (mean over the experiences where such classes "
        "exist); the `cl` head's accuracy on the same data is shown for contrast.",
        "",
        "| agent | transfer st | transfer cl | avg acc cl | avg acc st | acc all cl "
        "| acc all st | forgetting cl | BWT cl | published | fetched |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name: str, s: dict[str, Any]) -> str:
        return (
            f"| {name} | **{_fmt(s.get('transfer_st_mean'))}** | {_fmt(s.get('transfer_cl_mean'))} "
            f"| {_fmt(s.get('avg_acc_cl'))} | {_fmt(s.get('avg_acc_st'))} "
            f"| {_fmt(s.get('acc_all_cl'))} | {_fmt(s.get('acc_all_st'))} "
            f"| {_fmt(s.get('forgetting_cl'))} | {_fmt(s.get('bwt_cl'))} "
            f"| {format_bytes(s.get('bytes_published'))} | {format_bytes(s.get('bytes_fetched'))} |"
        )

    for agent_id, agent in metrics["agents"].items():
        lines.append(row(agent_id, agent["summary"]))
    if len(metrics["agents"]) > 1:
        lines.append(row("mean", metrics["mean_over_agents"]))
    lines += [
        "",
        "Accuracies in %. Files: `metrics.json` (everything), `matrices/agent-N-HEAD.csv` "
        "(R[e][j]), `plots/`.",
        "",
    ]
    return "\n".join(lines)


def data_description(dataset: str, own: list[str], agents: int) -> str:
    """What the agents learned: the shared data set, or the sites' own data (an own-data
    run's `dataset` is only the default it never used)."""
    if not own:
        return f"data set: **{dataset}**"
    if len(own) >= agents:
        return f"data: **own data** at every site (agents {', '.join(own)})"
    return f"data set: **{dataset}**, own data at agents {', '.join(own)}"


def _exchange_line(cfg: dict[str, Any]) -> str:
    """What the agents exchanged, and what that leaves out of the table."""
    name, dtype = cfg.get("exchange", "dkt"), cfg.get("exchange_dtype", "float32")
    return {
        "dkt": f"- exchange `dkt`: cl-head logits on the probe set ({dtype}), distilled into "
        "the st head",
        "none": "- exchange `none`: isolated agents, nothing moved, effective λ = 0; the st "
        "head learns nothing (n/a)",
        "fedavg": "- exchange `fedavg`: weights averaged after every experience (weighted by "
        "training rows), effective λ = 0; the st head learns nothing (n/a)",
        "fedmd": f"- exchange `fedmd`: cl-head logits on the probe set ({dtype}), their "
        "consensus distilled into the cl head; no st head (n/a), transfer shows in "
        "`transfer cl`",
    }.get(name, f"- exchange `{name}`")


def class_name_of(config: ExperimentConfig, index: int) -> str:
    """A class's name: the run's class space (--classes), else the data set's names,
    else its number."""
    from dkt.common.data.datasets import CLASS_NAMES

    names = config.class_space() or CLASS_NAMES.get(config.dataset, ())
    return names[index] if 0 <= index < len(names) else str(index)


def experience_labels(result: RunResult, agent_id: int, most: int = 3) -> list[str]:
    """The accuracy-matrix column labels of one agent: each experience with its classes
    in that agent's own order ("0: cat, dog"; more than `most` classes end in "+N")."""
    labels = []
    orders = result.class_orders[agent_id] if agent_id < len(result.class_orders) else []
    for j, classes in enumerate(orders):
        names = [class_name_of(result.config, c) for c in classes]
        shown = ", ".join(names[:most]) + (f" +{len(names) - most}" if len(names) > most else "")
        labels.append(f"{j}: {shown}")
    return labels


def write_plots(result: RunResult, folder: str | Path, plots: str = "all") -> list[Path]:
    """Draw the plot set `plots` into FOLDER/plots; returns the files written (none for
    `none`, and then no plots/ folder)."""
    plots = plot_set(plots, result.config.agents)
    if plots == "none":
        return []
    out = Path(folder) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    return _plot(result, out, per_agent=plots == "all")


def _plot(result: RunResult, folder: Path, per_agent: bool) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    histories = sorted((a, h) for a, h in result.histories.items() if h)
    # Beyond ALL_PLOTS_UP_TO agents a legend entry per agent would crowd out the axes:
    # the lines stay, unlabelled, and the legend names the line styles only.
    few = len(histories) <= ALL_PLOTS_UP_TO
    heads = reported_heads(result.config)
    written = []
    for agent_id, history in histories if per_agent else []:
        fig, axes = plt.subplots(
            1, len(heads), figsize=(4.5 * len(heads), 4), constrained_layout=True, squeeze=False
        )
        axes = axes[0]
        for ax, head in zip(axes, heads, strict=True):
            r = accuracy_matrix(history, head)
            im = ax.imshow(r, vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"agent {agent_id} · {head} head")
            ax.set_xlabel("test experience j: its classes")
            labels = experience_labels(result, agent_id)[: len(r[0]) if r else 0]
            ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=30, ha="right")
            ax.set_yticks(range(len(r)))
            ax.set_ylabel("after training experience e")
            for e, row in enumerate(r):
                for j, v in enumerate(row):
                    ax.text(
                        j,
                        e,
                        f"{100 * v:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if v < 0.6 else "black",
                    )
        fig.colorbar(im, ax=axes, shrink=0.8, label="accuracy")
        written.append(folder / f"accuracy-matrix-agent-{agent_id}.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    fig, axes = plt.subplots(
        1,
        len(heads),
        figsize=(5 * len(heads), 4),
        sharey=True,
        squeeze=False,
    )
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.92, wspace=0.08)
    axes = axes[0]
    for agent_id, history in histories:
        xs = [r.experience for r in history]
        for ax, head in zip(axes, heads, strict=True):
            r = accuracy_matrix(history, head)
            ax.plot(
                xs,
                [average_accuracy(r, e) for e in range(len(r))],
                marker="o",
                label=f"agent {agent_id}" if few else None,
            )
    for ax, head in zip(axes, heads, strict=True):
        ax.set_title(f"{head} head: average accuracy on experiences seen")
        ax.set_xlabel("experience")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        if few:
            ax.legend()
        else:
            ax.set_title(f"{head} head: average accuracy, {len(histories)} agents", fontsize=10)
    axes[0].set_ylabel("accuracy")
    written.append(folder / "accuracy.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    # Fixed margins, not a layout engine: its extra pass over every artist is most of the
    # cost of these plots at many agents.
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.12, top=0.92)
    first = histories[0][0] if histories else None
    for agent_id, history in histories:
        xs = [r.experience for r in history if r.transfer_st is not None]
        color = None
        if "st" in heads:
            line = ax.plot(
                xs,
                [r.transfer_st for r in history if r.transfer_st is not None],
                marker="o",
                label=f"agent {agent_id} st" if few else ("st head" if agent_id == first else None),
            )
            color = line[0].get_color()
        ax.plot(
            xs,
            [r.transfer_cl for r in history if r.transfer_cl is not None],
            marker="x",
            linestyle="--",
            color=color,
            alpha=0.6 if color else 1.0,
            label=f"agent {agent_id} cl" if few else ("cl head" if agent_id == first else None),
        )
    ax.set_title("transfer accuracy: classes only the teachers trained on")
    ax.set_xlabel("experience")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(folder / "transfer.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written
