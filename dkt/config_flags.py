"""Command-line flags generated from `ExperimentConfig`, so a config field is defined
once and every command that takes an experiment gets the same flags."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from dkt.common.agent_spec import OVERRIDABLE_KEYS, parse_agent_flag
from dkt.common.config import ExperimentConfig, config_fields

_TYPES = {"int": int, "float": float, "str": str}
_METAVARS = {"int": "N", "float": "X", "str": "TEXT"}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Add `--config FILE` and one flag per config field (defaults shown in help)."""
    group = parser.add_argument_group(
        "experiment",
        "override the defaults or the --config file; the resolved config "
        "is saved in the results folder",
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
    defaults = ExperimentConfig()
    for f in config_fields():
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
    """Defaults, then `base` or the --config file, then the flags given on the command
    line, then each `--agent N:...` merged key by key into agent N's overrides."""
    config = base or ExperimentConfig()
    if getattr(args, "config", None) is not None:
        config = ExperimentConfig.from_toml(args.config)
    given: dict = {f.name: getattr(args, f.name) for f in config_fields() if hasattr(args, f.name)}
    flags = getattr(args, "agent_flags", None) or []
    if flags:
        overrides = {a: dict(table) for a, table in config.agent_overrides.items()}
        for text in flags:
            agent, values = parse_agent_flag(text)
            overrides.setdefault(agent, {}).update(values)
        given["agent_overrides"] = overrides
    return dataclasses.replace(config, **given) if given else config
