"""Where snapshots come from: an MLflow run's artifacts, or a local file or folder.

Both sources end in a local path that :func:`mlflow_weightviz.snapshots.read_snapshots`
reads. A run's artifacts are fetched with MLflow's own artifact API, so every tracking
backend and artifact store MLflow supports works, with its parallel downloads.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mlflow_weightviz import _tracking
from mlflow_weightviz.errors import SnapshotsNotFoundError, UsageError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["LocalSource", "MetricHistory", "RunSource", "SnapshotSource", "content_digest"]


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

    def metric_history(self, key: str) -> MetricHistory:
        """The run's values of metric ``key`` by step, for frame captions.

        Raises:
            UsageError: The run has no metric ``key``.
        """
        with _tracking.translate(f"reading metric {key!r} of run {self.run_id}"):
            history = self.client.get_metric_history(self.run_id, key)
            if not history:
                known = sorted(self.client.get_run(self.run_id).data.metrics)
        if not history:
            listing = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "") if known else "none"
            msg = f"run {self.run_id} has no metric {key!r} for --caption-metric; its metrics: {listing}"
            raise UsageError(msg)
        return MetricHistory.from_points(key, [(m.step, m.timestamp, m.value) for m in history])

    def fetch(self, workdir: Path) -> Path:
        """Download the artifacts into ``workdir`` with MLflow's artifact repository API.

        One folder download (MLflow lists each folder once and fetches the files in
        parallel); the first failure cancels the files not yet started, so a dead server
        costs one round of retries rather than one per file.
        """
        self.files()  # a clear error when there is nothing to download
        dst = workdir / "source"
        return _tracking.download_folder(self.client, self.run_id, self.artifact_path.strip("/"), dst,
                                         action=f"downloading {self.artifact_path!r} of run {self.run_id}")


@dataclass(frozen=True)
class MetricHistory:
    """One metric's values by step; :meth:`caption` gives the text written under a frame's title."""

    key: str
    steps: tuple[int, ...]
    values: tuple[float, ...]

    @classmethod
    def from_points(cls, key: str, points: list[tuple[int, int, float]]) -> MetricHistory:
        """Build from (step, timestamp, value) points; at a repeated step the latest value counts."""
        by_step: dict[int, float] = {}
        for step, _, value in sorted(points, key=lambda p: (p[0], p[1])):
            by_step[int(step)] = float(value)
        return cls(key, tuple(by_step), tuple(by_step.values()))

    def at(self, step: int) -> tuple[int, float] | None:
        """The (step, value) logged at or before ``step``, or ``None`` when there is none yet."""
        i = bisect.bisect_right(self.steps, step) - 1
        return None if i < 0 else (self.steps[i], self.values[i])

    def caption(self, step: int) -> str:
        """``loss = 0.1234`` for the value at or before ``step`` (naming its step when earlier)."""
        point = self.at(step)
        if point is None:
            return f"{self.key}: not logged before step {step}"
        at, value = point
        text = f"{self.key} = {value:.6g}"
        return text if at == step else f"{text} (step {at})"


def content_digest(path: Path) -> str:
    """Digest of the regular files at ``path`` (a file or a folder): relative paths, sizes and SHA-256 of the bytes.

    Used on downloaded snapshots: an artifact listing has paths and sizes only, so values
    logged again with the same size would otherwise look unchanged.
    """
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    listing = []
    for p in files:
        with p.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        listing.append((p.relative_to(path).as_posix() if p != path else p.name, p.stat().st_size, digest))
    return _digest(listing)


def _digest(listing: object) -> str:
    return hashlib.sha256(json.dumps(listing, sort_keys=True, default=str).encode()).hexdigest()[:32]
