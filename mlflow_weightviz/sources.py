"""Where snapshots come from: an MLflow run's artifacts, or a local file or folder.

Both sources end in a local path that :func:`mlflow_weightviz.snapshots.read_snapshots`
reads. A run's artifacts are fetched with MLflow's own artifact API, so every tracking
backend and artifact store MLflow supports works, with its parallel downloads.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mlflow_weightviz import _tracking
from mlflow_weightviz.errors import SnapshotsNotFoundError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["LocalSource", "RunSource", "SnapshotSource"]


class SnapshotSource(Protocol):
    """Something that can put snapshot files on local disk."""

    @property
    def name(self) -> str:
        """Short name used for loose single-array files (the folder or file name)."""

    def fingerprint(self) -> str:
        """A digest that changes whenever the snapshot files change."""

    def fetch(self, workdir: Path) -> Path:
        """Make the snapshot files available locally and return their path."""


@dataclass(frozen=True)
class LocalSource:
    """Snapshot files already on local disk."""

    path: Path

    @property
    def name(self) -> str:
        """The file's stem or the folder's name."""
        return self.path.stem if self.path.is_file() else self.path.name

    def fingerprint(self) -> str:
        """Digest of every file's relative path, size and modification time."""
        if not self.path.exists():
            msg = f"no snapshot file or folder at {self.path}"
            raise SnapshotsNotFoundError(msg)
        files = [self.path] if self.path.is_file() else sorted(p for p in self.path.rglob("*") if p.is_file())
        listing = [(p.relative_to(self.path).as_posix() if p != self.path else p.name, p.stat().st_size,
                    p.stat().st_mtime_ns) for p in files]
        return _digest(listing)

    def fetch(self, workdir: Path) -> Path:
        """The path itself: nothing to fetch."""
        if not self.path.exists():
            msg = f"no snapshot file or folder at {self.path}"
            raise SnapshotsNotFoundError(msg)
        return self.path


@dataclass(frozen=True)
class RunSource:
    """Snapshot artifacts of an MLflow run under ``artifact_path`` (a file or a folder)."""

    client: MlflowClient
    run_id: str
    artifact_path: str = "weights"

    @property
    def name(self) -> str:
        """The last part of the artifact path."""
        return posixpath.basename(self.artifact_path.strip("/")) or "weights"

    def files(self) -> list[tuple[str, int]]:
        """The artifact files under the source path, as (path, size).

        Raises:
            SnapshotsNotFoundError: There is nothing at the path.
        """
        files = _tracking.list_files(self.client, self.run_id, self.artifact_path)
        if not files:
            msg = f"run {self.run_id} has no snapshot artifacts at {self.artifact_path!r} (see --source)"
            raise SnapshotsNotFoundError(msg)
        return files

    def fingerprint(self) -> str:
        """Digest of the artifact listing (paths and sizes), without downloading anything."""
        return _digest(self.files())

    def fetch(self, workdir: Path) -> Path:
        """Download the artifacts into ``workdir`` with MLflow's artifact repository API.

        Files are fetched in parallel; the first failure cancels the rest, so a dead
        server costs one round of retries rather than one per file.
        """
        files = self.files()  # a clear error when there is nothing to download
        dst = workdir / "source"
        _tracking.download_files(self.client, self.run_id, [p for p, _ in files], dst,
                                 action=f"downloading {self.artifact_path!r} of run {self.run_id}")
        return dst / self.artifact_path.strip("/")


def _digest(listing: object) -> str:
    return hashlib.sha256(json.dumps(listing, sort_keys=True, default=str).encode()).hexdigest()[:32]
