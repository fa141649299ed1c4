"""Where a site's own data lives on its host (torch-free, so the command line can name
it without importing torch). Read by common/data/agent_data.py, on that host only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalSource:
    """A folder of class-named subfolders or an .npz file, and optionally the manifest
    of its experiences (default: `experiences.toml` beside it)."""

    path: Path
    manifest: Path | None = None

    @classmethod
    def of(cls, path: str | Path, manifest: str | Path | None = None) -> LocalSource:
        return cls(Path(path).expanduser(), Path(manifest).expanduser() if manifest else None)
