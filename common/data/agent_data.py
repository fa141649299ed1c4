"""An agent's own data: a site's folder or .npz, read on its host into the agent's
experiences. Nothing here leaves the host; what the rest of the run learns of it is
the plan (class indices per experience), from `LocalAgentData.plan`.

The experiences come from a manifest (`experiences.toml` next to the data, or the one
given) naming the classes of each experience, or else from a seeded split of the
site's classes into the run's `experiences` parts. The test split is the data's own
(a `test/` folder, `x_test`/`y_test`) or a stratified, seeded share of it
(`local_test_fraction`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dkt.common.data.labeled_data import LabeledData
from dkt.common.data.local_source import LocalSource
from dkt.common.data.streams import AgentStream, Experience
from dkt.common.run.config import ExperimentConfig
from dkt.common.seeding import derive_seed

if TYPE_CHECKING:
    from dkt.common.data.input_spec import InputSpec


@dataclass(frozen=True)
class LocalAgentData:
    """One agent's own data, read: its raw stream (before its strategy) and test split
    over all the classes it learns."""

    stream: AgentStream
    test: LabeledData
    plan: list[list[int]]  # class indices per experience, in order
    rows: int  # training rows read


def input_spec(config: ExperimentConfig, fallback: tuple[int, int, int] | None = None) -> InputSpec:
    """The run's `InputSpec`: `input_shape` (else `fallback`, the shared data set's),
    `input_mean` and `input_std` (one value for every channel, or one per channel;
    default 0.5)."""
    from dkt.common.data.input_spec import InputSpec

    shape = config.input_shape or (",".join(str(d) for d in fallback) if fallback else "")
    if not shape:
        raise ValueError(
            "this run has no shared data set to take its input shape from: give "
            "--input-shape C,H,W (e.g. 3,32,32)"
        )
    channels = shape.split(",")[0].strip()
    count = int(channels) if channels.isdigit() else 1

    def per_channel(value: str) -> str:
        return ",".join([value] * count) if value and "," not in value else value

    return InputSpec.parse(shape, per_channel(config.input_mean), per_channel(config.input_std))


def load_local_agent(
    config: ExperimentConfig,
    agent_id: int,
    source: LocalSource,
    class_names: tuple[str, ...],
    spec: object,
) -> LocalAgentData:
    """Read agent `agent_id`'s own data and cut it into its experiences."""
    from dkt.common.data.local_data import (
        default_manifest,
        load_labeled,
        read_manifest,
        seeded_plan,
        split_test,
    )

    found = load_labeled(source.path, class_names, spec)  # type: ignore[arg-type]
    if found.test is not None:
        train, test = found.train, found.test
    else:
        train, test = split_test(
            found.train, config.local_test_fraction, derive_seed(config.seed, "site", agent_id)
        )
    manifest = source.manifest or default_manifest(source.path)
    if source.manifest is not None and not manifest.is_file():
        raise FileNotFoundError(f"agent {agent_id}'s manifest {manifest} does not exist")
    if manifest.is_file():
        index = {name: i for i, name in enumerate(class_names)}
        present = {class_names[c]: c for c in found.classes}
        plan = [[index[n] for n in part] for part in read_manifest(manifest, present)]
        where = f"its manifest {manifest}"
    else:
        plan = seeded_plan(found.classes, config.experiences, config.seed, agent_id)
        where = "its seeded split"
    if len(plan) > config.experiences:
        raise ValueError(
            f"agent {agent_id} has {len(plan)} experiences ({where}), but the run has "
            f"{config.experiences} (--experiences): raise --experiences or merge experiences"
        )
    experiences = tuple(
        Experience(i, tuple(classes), train.of_classes(classes), test.of_classes(classes))
        for i, classes in enumerate(plan)
    )
    learned = [c for part in plan for c in part]
    return LocalAgentData(
        stream=AgentStream(agent_id, experiences),
        test=test.of_classes(learned),
        plan=plan,
        rows=len(train),
    )
