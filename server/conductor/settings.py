"""The conductor's deployment settings, read once from the Flower run config (and the
environment `dkt server` sets), and the server host's defaults for a run's public data."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dkt.common.choices import PLOT_SETS
from dkt.common.run.config import ExperimentConfig, FailurePolicy
from dkt.proto.relay_connection import ADDRESS_ENV as RELAY_ADDRESS_ENV

RESULTS_ROOT_ENV = "DKT_RESULTS_ROOT"
# `dkt server --classes/--probe-from/...`: JSON of experiment fields the server host
# supplies to every run that leaves them empty (its public data lives there).
SERVER_DEFAULTS_ENV = "DKT_SERVER_DEFAULTS"
SERVER_DEFAULT_FIELDS = (
    "class_names", "input_shape", "input_mean", "input_std", "probe_from", "eval_from",
)  # fmt: skip

__all__ = [
    "RELAY_ADDRESS_ENV",
    "RESULTS_ROOT_ENV",
    "SERVER_DEFAULTS_ENV",
    "ConductorSettings",
    "with_server_defaults",
]


@dataclass(frozen=True, kw_only=True)
class ConductorSettings(FailurePolicy):
    """Deployment settings from the run config (next to the experiment's fields): where
    the run lives, and its failure policy (the fields of `FailurePolicy`)."""

    run_id: str
    results_dir: Path
    relay: str
    log: str = ""  # trackers, as `--log` (common/evaluation/tracking.py)
    mlflow_uri: str = ""
    plots: str = "auto"  # the results folder's plots, as `--plots` (PLOT_SETS)

    @classmethod
    def from_run_config(
        cls, values: dict[str, Any], environ: dict[str, str] | None = None
    ) -> ConductorSettings:
        """Read the deployment keys; `dkt server` supplies the relay address and the
        results folder through the environment when a run leaves them empty."""
        env = dict(os.environ if environ is None else environ)
        run_id = str(values.get("run-id") or "")
        relay = str(values.get("relay") or env.get(RELAY_ADDRESS_ENV, ""))
        results = str(values.get("results-dir") or "")
        if not results and env.get(RESULTS_ROOT_ENV) and run_id:
            results = str(Path(env[RESULTS_ROOT_ENV]) / run_id)
        missing = [k for k, v in (("run-id", run_id), ("relay", relay), ("results-dir", results))
                   if not v]  # fmt: skip
        if missing:
            raise ValueError(
                f"the run config lacks {', '.join(missing)}: submit runs with `dkt launch` "
                "to a SuperLink started by `dkt server`"
            )
        plots = str(values.get("plots") or cls.plots)
        if plots not in PLOT_SETS:  # refused before training, not after it
            raise ValueError(f"the run config's plots is {plots!r}; use one of "
                             f"{', '.join(PLOT_SETS)} (`--plots`)")  # fmt: skip
        return cls(
            run_id=run_id,
            results_dir=Path(results),
            relay=relay,
            agent_timeout=float(values.get("agent-timeout", cls.agent_timeout)),
            retries=int(values.get("retries", cls.retries)),
            wait_agents=float(values.get("wait-agents", cls.wait_agents)),
            rejoin_wait=float(values.get("rejoin-wait", cls.rejoin_wait)),
            log=str(values.get("log") or ""),
            mlflow_uri=str(values.get("mlflow-uri") or ""),
            plots=plots,
        )


def with_server_defaults(
    config: ExperimentConfig, environ: dict[str, str] | None = None
) -> ExperimentConfig:
    """`config` with the server host's defaults (`dkt server --classes ...`) filled in
    where the run left a field empty; the run's own values win."""
    text = (os.environ if environ is None else environ).get(SERVER_DEFAULTS_ENV, "")
    if not text:
        return config
    defaults = json.loads(text)
    changes = {
        k: v
        for k, v in defaults.items()
        if k in SERVER_DEFAULT_FIELDS and v and not getattr(config, k)
    }
    return config.replace(**changes) if changes else config
