"""Prometheus metrics of one relay, in a registry of its own (several relays can run in
one process, e.g. in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
