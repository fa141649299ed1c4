"""Teachers trained as a run's first stage, kept across runs (a preset's `cached_teachers`,
e.g. seed-exp1's jointly trained teacher).

A teacher can be kept only if it learns alone (its spec's `teachers` is `[]`): then its
numbers depend on its own spec, the data, the probe set, its stream and the seed, and
on nothing the other agents do. Those make the cache key; an entry holds the teacher's
checkpoint after each of its experiences (model, records, published predictions). A run
whose key matches gets the entry's checkpoints rebased onto its own config and written
into its checkpoint folder, and `simulate(..., pretrained=...)` restores the teacher from
them instead of training it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dkt.common.engine.setup import Setup
from dkt.common.training.checkpoints import checkpoint_path, read_checkpoint, write_checkpoint

CACHE_FORMAT = 1
KEY_FILE = "key.json"
# Run options that decide a lone teacher's numbers besides its own spec: which data, which
# probe set, which stream (class order and split) and which seed.
_RUN_KEYS = (
    "dataset",
    "data_root",
    "agents",
    "experiences",
    "assignment",
    "probe_size",
    "probe_source",
    "seed",
)
# Spec keys that do nothing for an agent without teachers (it never distils) or that do
# not change what it learns (where it runs).
_IDLE_SPEC_KEYS = ("kd_weight", "kd_loss", "temperature", "device", "teachers")


def learns_alone(setup: Setup, agent_id: int) -> bool:
    """Whether agent `agent_id` distils from nobody, so it can be kept across runs."""
    return setup.config.agent_spec(agent_id).teachers == ()


def teacher_key(setup: Setup, agent_id: int) -> dict[str, Any]:
    """What decides a lone teacher's numbers: its spec, the run's data, probe and streams."""
    spec = setup.config.agent_spec(agent_id).to_dict()
    return {
        "format": CACHE_FORMAT,
        "spec": {k: v for k, v in spec.items() if k not in _IDLE_SPEC_KEYS},
        "run": {k: getattr(setup.config, k) for k in _RUN_KEYS},
        "probe_fingerprint": setup.probe.fingerprint,
        "classes": [list(e.classes) for e in setup.stream_of(agent_id).experiences],
    }


def entry_dir(cache_dir: str | Path, setup: Setup, agent_id: int) -> Path:
    """The cache folder of agent `agent_id`'s teacher stage: agent-N-HASH."""
    text = json.dumps(teacher_key(setup, agent_id), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"agent-{agent_id}-{digest}"


def restore_teachers(
    setup: Setup, agent_ids: tuple[int, ...], cache_dir: str | Path, checkpoint_dir: str | Path
) -> dict[int, list[Path]]:
    """For each lone agent of `agent_ids` with a cache entry: its checkpoints, rebased onto
    this run's config and written into `checkpoint_dir`, in experience order (what
    `simulate`'s `pretrained` takes). Agents without an entry are left out."""
    found: dict[int, list[Path]] = {}
    for agent_id in agent_ids:
        entry = entry_dir(cache_dir, setup, agent_id)
        if not learns_alone(setup, agent_id) or not (entry / KEY_FILE).is_file():
            continue
        config = setup.config
        paths = []
        for experience in range(len(setup.stream_of(agent_id))):
            state = read_checkpoint(entry / f"experience-{experience:03d}.pt")
            # The key says that what differs (other agents, idle spec keys) does not
            # change this agent's numbers; its checkpoint must name this run's config.
            state["config"] = config.to_dict()
            state["spec"] = config.agent_spec(agent_id).to_dict()
            target = checkpoint_path(checkpoint_dir, agent_id, experience)
            paths.append(write_checkpoint(target, state))
        found[agent_id] = paths
    return found


def store_teachers(
    setup: Setup, agent_ids: tuple[int, ...], cache_dir: str | Path, checkpoint_dir: str | Path
) -> dict[int, Path]:
    """Copy each lone agent's checkpoints of its whole stream from `checkpoint_dir` into
    its cache entry, unless the entry exists; returns the entries written."""
    written: dict[int, Path] = {}
    for agent_id in agent_ids:
        entry = entry_dir(cache_dir, setup, agent_id)
        if not learns_alone(setup, agent_id) or (entry / KEY_FILE).is_file():
            continue
        experiences = range(len(setup.stream_of(agent_id)))
        sources = [checkpoint_path(checkpoint_dir, agent_id, e) for e in experiences]
        if not all(p.is_file() for p in sources):
            continue
        entry.parent.mkdir(parents=True, exist_ok=True)
        # Built beside the entry and renamed into place: a reader sees a whole entry or none.
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
        try:
            for e, source in zip(experiences, sources, strict=True):
                shutil.copyfile(source, tmp / f"experience-{e:03d}.pt")
            key = json.dumps(teacher_key(setup, agent_id), indent=2, sort_keys=True)
            (tmp / KEY_FILE).write_text(key + "\n")
            os.replace(tmp, entry)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (entry / KEY_FILE).is_file():
                raise
            continue  # another run stored the same entry first
        written[agent_id] = entry
    return written
