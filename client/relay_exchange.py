"""`RelayExchange`: the `PredictionExchange` of common/training/exchange.py backed by a relay."""

from __future__ import annotations

import dataclasses

from dkt.common.data.probe import ProbeSet
from dkt.common.evaluation.results import ExperienceRecord
from dkt.common.run.config import ExperimentConfig
from dkt.common.training.peers import PeerSet
from dkt.common.training.predictions import Predictions
from dkt.common.training.teacher import Teacher
from dkt.proto.logits_encoding import encoding_value
from dkt.proto.relay_client import NotPublishedError, RelayClient, tensor_bytes


class RelayExchange:
    """Publishes and fetches the prediction sets of one run through a `RelayClient`.

    Fetched logits are float32 tensors; with encoding "float16" they carry float16
    rounding. Publishing different predictions for an (agent, experience) already
    stored raises `AlreadyExistsError` (a ValueError, as with InMemoryExchange).
    """

    def __init__(self, client: RelayClient, run_id: str, encoding: str = "float32") -> None:
        encoding_value(encoding)  # fail now on an unknown encoding
        self.client = client
        self.run_id = run_id
        self.encoding = encoding

    def publish(self, predictions: Predictions) -> None:
        if predictions.run_id and predictions.run_id != self.run_id:
            raise ValueError(
                f"predictions of run {predictions.run_id!r} cannot be published to the "
                f"exchange of run {self.run_id!r}"
            )
        if not predictions.run_id:
            predictions = dataclasses.replace(predictions, run_id=self.run_id)
        self.client.publish(predictions, encoding=self.encoding)

    def fetch(self, agent_id: int, experience: int) -> Predictions | None:
        try:
            return self.client.fetch(self.run_id, agent_id, experience)
        except NotPublishedError:
            return None

    def latest(self, agent_id: int, max_experience: int | None = None) -> Predictions | None:
        return self.client.fetch_latest(self.run_id, agent_id, max_experience)

    def encoded_size(self, predictions: Predictions) -> int:
        return tensor_bytes(predictions.logits, self.encoding)

    def teacher_targets(
        self, agent_id: int, experience: int, peers: list[PeerSet], aggregation: str
    ) -> tuple[Teacher | None, int]:
        """The teachers' sets combined at the relay: one set fetched, not one per peer."""
        got = self.client.fetch_teacher_targets(
            self.run_id, agent_id, experience, peers, aggregation
        )
        return got.teacher, got.payload_bytes


def open_relay_exchange(
    client: RelayClient,
    run_id: str,
    probe: ProbeSet,
    num_classes: int,
    config: ExperimentConfig,
    encoding: str = "float32",
) -> RelayExchange:
    """Register the run and its probe set with the relay (an identical repeat, as on
    resume, is accepted) and return the run's exchange."""
    client.create_run(
        run_id,
        probe,
        num_classes,
        config.experiences,
        config=config.to_dict(),
        expected_agents=config.agents,
    )
    return RelayExchange(client, run_id, encoding)


class RelayProgress:
    """A run listener that reports every agent's progress and latest metrics to the
    relay, so `dkt status` and `GET /status` show the run."""

    def __init__(self, client: RelayClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def experience_started(self, agent_id: int, experience: int, teachers: list[int]) -> None:
        self.client.report_progress(self.run_id, agent_id, experience, "training")

    def epoch_done(self, agent_id: int, experience: int, epoch: int, epochs: int) -> None:
        pass

    def experience_done(self, agent_id: int, record: ExperienceRecord) -> None:
        self.client.report_progress(
            self.run_id, agent_id, record.experience, "trained", headline_metrics(record)
        )


def headline_metrics(record: ExperienceRecord) -> dict[str, float]:
    """The numbers worth showing in a status table after one experience."""
    metrics = {
        "acc_all_cl": record.acc_all_cl,
        "acc_all_st": record.acc_all_st,
        "avg_acc_cl": sum(record.acc_cl[: record.experience + 1]) / (record.experience + 1),
        "loss_ce": record.loss_ce,
        "loss_kd": record.loss_kd,
        "bytes_published": float(record.bytes_published),
        "bytes_fetched": float(record.bytes_fetched),
    }
    if record.transfer_st is not None:
        metrics["transfer_st"] = record.transfer_st
    if record.transfer_cl is not None:
        metrics["transfer_cl"] = record.transfer_cl
    return metrics
