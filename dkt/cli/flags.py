"""Command-line flags generated from `ExperimentConfig`, so a config field is defined
once and every command that takes an experiment gets the same flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from dkt.common.run.agent_spec import OVERRIDABLE_KEYS, parse_agent_flag
from dkt.common.run.config import ExperimentConfig, config_fields
from dkt.common.run.presets import PRESETS, SCALES, preset_config

_TYPES = {"int": int, "float": float, "str": str}
_METAVARS = {"int": "N", "float": "X", "str": "TEXT"}


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Add `--config FILE` and one flag per config field (defaults shown in help)."""
    group = parser.add_argument_group(
        "experiment",
        "later beats earlier: the defaults < --preset < the --config file < these flags "
        "(--agent merges key by key into agent N's overrides); the resolved config is "
        "saved in the results folder",
    )
    group.add_argument(
        "--preset",
        metavar="NAME",
        help="start from one of the original's experiments: "
        + "; ".join(f"{p.name}: {p.reproduces}" for p in PRESETS.values()),
    )
    group.add_argument(
        "--scale",
        choices=SCALES,
        help="the --preset's scale: small (default; digits on a CPU in minutes, or any "
        "--dataset) or full (the original's: Split CIFAR-100 in 10 experiences, "
        "slim_resnet18, replay 2000, batch 256, Adam; for a GPU)",
    )
    group.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML file with an [experiment] table and optional [agents.N] tables",
    )
    group.add_argument(
        "--agent",
        dest="agent_flags",
        action="append",
        default=[],
        metavar="N:KEY=VALUE,...",
        help="override options for agent N only (repeatable), e.g. 1:backbone=cnn,kd_weight=0 "
        "or 2:teachers=[0]; keys: " + ", ".join(OVERRIDABLE_KEYS),
    )
    group.add_argument(
        "--classes",
        type=Path,
        metavar="FILE",
        help="the run's class space: a text file with one class name per line (blank lines "
        "and # comments ignored); agents with their own data map their class names onto it "
        "(default: the data set's classes)",
    )
    defaults = ExperimentConfig()
    for f in config_fields():
        if f.metadata.get("flag") is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default: {getattr(defaults, f.name)!r})"
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if kind == "bool":
            group.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif f.metadata.get("open"):
            # Built-in names or module:callable: argparse cannot list every choice.
            group.add_argument(
                flag,
                dest=f.name,
                default=argparse.SUPPRESS,
                help=f"{help_text}; built-in: {', '.join(f.metadata['choices'])}",
                metavar="NAME",
            )
        else:
            group.add_argument(
                flag,
                dest=f.name,
                type=_TYPES[kind],
                choices=f.metadata.get("choices"),
                default=argparse.SUPPRESS,
                help=help_text,
                metavar=None if f.metadata.get("choices") else _METAVARS[kind],
            )


def config_from_args(
    args: argparse.Namespace, base: ExperimentConfig | None = None
) -> ExperimentConfig:
    """The defaults (or `base`, which replaces them and the preset), then `--preset` at
    `--scale`, then the --config file over them, then the flags given on the command line,
    then each `--agent N:...` merged key by key into agent N's overrides."""
    config = base or preset_base(args)
    if getattr(args, "config", None) is not None:
        config = ExperimentConfig.from_toml(args.config, base=config)
    given: dict = {f.name: getattr(args, f.name) for f in config_fields() if hasattr(args, f.name)}
    if getattr(args, "classes", None) is not None:
        from dkt.common.data.local_data import read_class_names

        given["class_names"] = json.dumps(list(read_class_names(args.classes)))
    flags = getattr(args, "agent_flags", None) or []
    if flags:
        overrides = {a: dict(table) for a, table in config.agent_overrides.items()}
        for text in flags:
            agent, values = parse_agent_flag(text)
            overrides.setdefault(agent, {}).update(values)
        given["agent_overrides"] = overrides
    return dataclasses.replace(config, **given) if given else config


def preset_base(args: argparse.Namespace) -> ExperimentConfig:
    """The defaults, or the run config of `--preset` at `--scale` (small by default)."""
    name, scale = getattr(args, "preset", None), getattr(args, "scale", None)
    if name is None:
        if scale is not None:
            raise ValueError(
                f"--scale picks the scale of a preset: add --preset NAME ({', '.join(PRESETS)})"
            )
        return ExperimentConfig()
    return preset_config(name, scale or "small")


def add_deployment_flags(parser: argparse.ArgumentParser) -> None:
    """How the conductor treats slow, failing and absent agents (from `FailurePolicy`)."""
    from dkt.common.run.config import FailurePolicy

    group = parser.add_argument_group("failures")
    for f in dataclasses.fields(FailurePolicy):
        default = getattr(FailurePolicy, f.name)
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(default),
            default=default,
            metavar="S" if isinstance(default, float) else "N",
            help=f"{f.metadata['help']} (default: {default:g})",
        )


def add_tracking_flags(parser: argparse.ArgumentParser) -> None:
    """`--log tensorboard,mlflow` and `--mlflow-uri` (from `Tracking`)."""
    from dkt.common.evaluation.tracking import Tracking, parse_log

    def trackers(text: str) -> str:
        try:
            return ",".join(parse_log(text))
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    group = parser.add_argument_group("tracking")
    for f in dataclasses.fields(Tracking):
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            type=trackers if f.name == "log" else str,
            default="",
            metavar="LIST" if f.name == "log" else "URI",
            help=f.metadata["help"],
        )


def tracking(args: argparse.Namespace) -> Any:  # -> Tracking
    """The tracking flags as a `Tracking`."""
    from dkt.common.evaluation.tracking import Tracking

    return Tracking(**{f.name: getattr(args, f.name, "") for f in dataclasses.fields(Tracking)})


FRESH_PROCESS_HELP = (
    "run each Flower message in a fresh process of the installed dkt (as Flower's subprocess "
    "isolation, but never code from the run's app bundle: Python, torch and dkt are loaded "
    "again for every experience; slower). Default: one long-lived process per agent runs "
    "the ClientApp for all its messages"
)


def add_threads_flag(parser: argparse.ArgumentParser, per: str) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help=f"torch CPU threads of each agent (default: $DKT_THREADS, else this host's "
        f"usable cores // {per}, at least 1)",
    )


def failure_policy(args: argparse.Namespace) -> dict[str, Any]:
    """The failure-policy flags as run-config keyword arguments."""
    from dkt.common.run.config import FailurePolicy

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(FailurePolicy)}


SUPERLINK_PORT = 8000  # Flower's default: Fleet, Control and ServerAppIo APIs over HTTP


SUPERNODE_PORT = 9094  # Flower's default ClientAppIo port of a SuperNode


def with_port(address: str, port: int) -> str:
    """HOST or HOST:PORT -> HOST:PORT."""
    host, sep, given = address.rpartition(":")
    if sep and given.isdigit() and not address.endswith("]"):
        return address
    return f"{address}:{port}"


def host_of(address: str) -> str:
    host, sep, given = address.rpartition(":")
    return host if sep and given.isdigit() else address


# The startup kit a `dkt server`, `dkt agent`, `dkt launch` or `dkt status` reads when
# given no --keys: a path, not a secret (docker-compose.yml sets it per service, so that
# `docker compose run launcher launch ...` finds the operator kit).
KEYS_ENV = "DKT_KEYS"


def keys_default() -> Path | None:
    import os

    value = os.environ.get(KEYS_ENV)
    return Path(value) if value else None
