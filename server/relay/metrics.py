"""Prometheus metrics of one relay, in a registry of its own (several relays can run in
one process, e.g. in tests)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dkt.proto.dkt.v1 import relay_pb2

# Caps on the label sets of the training series (run x agent x experience x head): the
# newest runs, the lowest agent ids of each, the newest experiences of each agent, so
# that a relay with many runs and agents exports a bounded number of series.
MAX_TRAINING_RUNS = 5
MAX_TRAINING_AGENTS = 32
MAX_TRAINING_EXPERIENCES = 20
# The training series: (metric name, help, extra label, {label value: reported metric}).
TRAINING_SERIES = (
    (
        "dkt_agent_accuracy",
        "Accuracy of an agent's head on the test data of all classes after an experience.",
        "head",
        {"cl": "acc_all_cl", "st": "acc_all_st"},
    ),
    (
        "dkt_agent_average_accuracy",
        "Mean accuracy of the cl head over the experiences trained so far.",
        "head",
        {"cl": "avg_acc_cl"},
    ),
    (
        "dkt_agent_transfer",
        "Accuracy of an agent's head on classes it never trained on but a teacher had.",
        "head",
        {"cl": "transfer_cl", "st": "transfer_st"},
    ),
    (
        "dkt_agent_loss",
        "Mean training loss of an experience, by term (ce: own labels, kd: distillation).",
        "term",
        {"ce": "loss_ce", "kd": "loss_kd"},
    ),
    (
        "dkt_agent_bytes",
        "Bytes an agent moved for an experience, by direction.",
        "direction",
        {"published": "bytes_published", "fetched": "bytes_fetched"},
    ),
)

# Seconds; a 2 MB prediction set takes milliseconds on loopback and seconds over a WAN.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RelayMetrics:
    """Counters and latencies of publishes, fetches and every other RPC."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dkt_relay_requests",
            "RPCs handled, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dkt_relay_request_seconds",
            "Time to handle an RPC, by method.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.published_bytes = Counter(
            "dkt_relay_published_bytes",
            "Payload bytes of newly stored prediction sets.",
            registry=self.registry,
        )
        self.fetched_bytes = Counter(
            "dkt_relay_fetched_bytes",
            "Payload bytes of prediction sets served.",
            registry=self.registry,
        )
        self.publishes = Counter(
            "dkt_relay_publishes",
            "Publish attempts, by outcome (stored, duplicate, or the rejection status code).",
            ["outcome"],
            registry=self.registry,
        )
        self.fetches = Counter(
            "dkt_relay_fetches",
            "Fetch attempts, by outcome (served, or the error status code).",
            ["outcome"],
            registry=self.registry,
        )
        self.corrupt_payloads = Counter(
            "dkt_relay_corrupt_payloads",
            "Payload files found missing or not matching their SHA-256 on read.",
            registry=self.registry,
        )
        self.orphan_payloads_removed = Counter(
            "dkt_relay_orphan_payloads_removed",
            "Payload files without a row (written before a crash, never acknowledged), "
            "removed when the store was opened.",
            registry=self.registry,
        )
        self.stored_sets = Gauge(
            "dkt_relay_stored_prediction_sets",
            "Prediction sets in the store.",
            registry=self.registry,
        )
        self.stored_bytes = Gauge(
            "dkt_relay_stored_payload_bytes",
            "Payload bytes of the prediction sets in the store.",
            registry=self.registry,
        )
        self.uptime = Gauge(
            "dkt_relay_uptime_seconds", "Seconds since the relay started.", registry=self.registry
        )
        self.training = TrainingCollector()
        self.registry.register(self.training)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)


class TrainingCollector(Collector):
    """The training numbers agents reported (per run, agent, experience): gauges taken
    from the last status snapshot given to `update`, within the MAX_TRAINING_* caps."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (run, agent, experience) -> that experience's reported metrics
        self._points: list[tuple[str, str, str, dict[str, float]]] = []

    def update(self, status: relay_pb2.RelayStatus) -> None:
        """Take the per-experience metrics of `status` (the store's order: oldest run first)."""
        points = []
        for run in status.runs[-MAX_TRAINING_RUNS:]:
            agents = sorted(run.agents, key=lambda a: a.agent_id)[:MAX_TRAINING_AGENTS]
            for agent in agents:
                for entry in agent.history[-MAX_TRAINING_EXPERIENCES:]:
                    key = (run.run_id, str(agent.agent_id), str(entry.experience))
                    points.append((*key, dict(entry.metrics)))
        with self._lock:
            self._points = points

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            points = list(self._points)
        for name, help_text, label, sources in TRAINING_SERIES:
            family = GaugeMetricFamily(
                name, help_text, labels=["run", "agent", "experience", label]
            )
            for run_id, agent, experience, metrics in points:
                for value_label, metric in sources.items():
                    if metric in metrics:
                        family.add_metric([run_id, agent, experience, value_label], metrics[metric])
            yield family
