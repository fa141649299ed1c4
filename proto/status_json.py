"""The JSON form of `dkt.v1.RelayStatus`, shared by `GET /status`, the client library
and `dkt status --json` so all three print the same document."""

from __future__ import annotations

from typing import Any, cast

from dkt.proto.dkt.v1 import relay_pb2

_RUN_STATE_PREFIX = "RUN_STATE_"

# The states of an agent in a progress report, as documented on ReportProgressRequest
# in relay.proto (the relay refuses any other).
AGENT_STATES = (
    "training",
    "publishing",
    "trained",
    "done",
    "failed",
    "retrying",
    "rejoined",
    "missing",
)
# Longest ReportProgressRequest.reason the relay stores.
MAX_REASON_CHARS = 2000
# Most ReportProgressRequest.metrics entries, and the longest metric name, it stores.
MAX_METRICS = 64
MAX_METRIC_NAME_CHARS = 64
# The most runs (the newest) and agents per run (the lowest ids) the status document
# shows; the rest are counted (`runs_not_shown`, `agents_not_shown`), so that its size is
# bounded however many runs and agents the store holds.
MAX_STATUS_RUNS = 50
MAX_STATUS_AGENTS = 256
# The metrics the relay keeps per experience of each agent (the curves of the dashboard
# at `GET /` and the training series of `/metrics`), and how many of an agent's newest
# experiences the status document shows: the rest of a report's metrics are only
# kept as the agent's latest.
HISTORY_METRICS = (
    "acc_all_cl",
    "acc_all_st",
    "avg_acc_cl",
    "transfer_cl",
    "transfer_st",
    "loss_ce",
    "loss_kd",
    "bytes_published",
    "bytes_fetched",
)
MAX_STATUS_HISTORY = 50
# Only the newest runs carry their agents' history in the status document (older runs
# show an empty one), which keeps its size near that of the latest metrics alone.
MAX_STATUS_HISTORY_RUNS = 5
# The default bound on |logit| of a published prediction set (`dkt relay --max-logit`).
DEFAULT_MAX_ABS_LOGIT = 1000.0


def run_state_name(state: int) -> str:
    """`RUN_STATE_RUNNING` -> "running"."""
    return relay_pb2.RunState.Name(state).removeprefix(_RUN_STATE_PREFIX).lower()


def run_state_value(name: str) -> relay_pb2.RunState:
    """ "running" -> `RUN_STATE_RUNNING`; raises ValueError for an unknown name."""
    try:
        value = relay_pb2.RunState.Value(_RUN_STATE_PREFIX + name.upper())
        # The stubs type an EnumTypeWrapper's Value() as a plain int; it is a RunState.
        return cast(relay_pb2.RunState, value)
    except ValueError:
        raise ValueError(
            f"unknown run state {name!r}; use created, running, finished or failed"
        ) from None


def status_to_dict(status: relay_pb2.RelayStatus) -> dict[str, Any]:
    """A plain, JSON-serialisable dict with the fields of the status message: the newest
    `MAX_STATUS_RUNS` runs, each with its first `MAX_STATUS_AGENTS` agents (totals count
    everything); the agents of the newest `MAX_STATUS_HISTORY_RUNS` runs with their newest
    `MAX_STATUS_HISTORY` experiences of history."""
    shown = status.runs[-MAX_STATUS_RUNS:]  # the newest: the store lists runs oldest first
    with_history = len(shown) - MAX_STATUS_HISTORY_RUNS
    return {
        "version": status.version,
        "uptime_seconds": status.uptime_seconds,
        "totals": {
            "runs": status.totals.runs,
            "prediction_sets": status.totals.prediction_sets,
            "payload_bytes": status.totals.payload_bytes,
        },
        "runs_not_shown": len(status.runs) - len(shown),
        "runs": [
            {
                "run_id": run.run_id,
                "state": run_state_name(run.state),
                "current_experience": run.current_experience,
                "experiences": run.experiences,
                "num_classes": run.num_classes,
                "probe_size": run.probe_size,
                "probe_fingerprint": run.probe_fingerprint,
                "eval_size": run.eval_size,
                "eval_fingerprint": run.eval_fingerprint,
                "expected_agents": run.expected_agents,
                "created_at": run.created_at,
                "prediction_sets": run.prediction_sets,
                "payload_bytes": run.payload_bytes,
                "agents_not_shown": max(0, len(run.agents) - MAX_STATUS_AGENTS),
                "agents": [
                    {
                        "agent_id": agent.agent_id,
                        "last_seen": agent.last_seen,
                        "experiences_published": list(agent.experiences_published),
                        "payload_bytes": agent.payload_bytes,
                        "experience": agent.experience,
                        "state": agent.state,
                        "reason": agent.reason,
                        "metrics": dict(sorted(agent.metrics.items())),
                        "reported_at": agent.reported_at,
                        "history": [
                            {"experience": h.experience, "metrics": dict(sorted(h.metrics.items()))}
                            for h in (
                                agent.history[-MAX_STATUS_HISTORY:] if i >= with_history else []
                            )
                        ],
                    }
                    for agent in run.agents[:MAX_STATUS_AGENTS]
                ],
            }
            for i, run in enumerate(shown)
        ],
    }
