"""The run tags this package writes, the statuses it reports and the render fingerprint.

Tags (all under ``weightviz.``) are how a run remembers what was rendered for it:

- ``weightviz.fingerprint``: :func:`fingerprint` of the snapshot files' contents and the
  options of the GIFs logged; a render with the same fingerprint has nothing to do (*up to date*).
- ``weightviz.listing``: the same without contents (artifact paths and sizes only), so a dry
  run can tell a changed listing without downloading anything.
- ``weightviz.status``: ``logging`` while files are being logged, ``rendered`` after.
- ``weightviz.source``, ``weightviz.layers``, ``weightviz.frames``,
  ``weightviz.artifact_path``, ``weightviz.version``: what the last render did.
  ``weightviz.layers`` is a JSON list of the layer names, or, when that is longer than a
  tag holds, a JSON object (see :func:`layers_tag`) with the full list in ``layers.json``.
- ``weightviz.claim``: ``<owner>:<expires-at>`` while a renderer holds the run (see
  :mod:`mlflow_weightviz.automation.claims`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from mlflow_weightviz.options import RenderOptions
    from mlflow_weightviz.sources import SnapshotSource

__all__ = ["LAYERS_FILE", "PENDING_TAGS", "TAG_ARTIFACT_PATH", "TAG_CLAIM", "TAG_FINGERPRINT", "TAG_FRAMES",
           "TAG_LAYERS", "TAG_LISTING", "TAG_PREFIX", "TAG_SOURCE", "TAG_STATUS", "TAG_VALUE_LIMIT", "TAG_VERSION",
           "Status", "fingerprint", "layers_tag"]

TAG_PREFIX = "weightviz."
TAG_FINGERPRINT = TAG_PREFIX + "fingerprint"
TAG_STATUS = TAG_PREFIX + "status"
TAG_SOURCE = TAG_PREFIX + "source"
TAG_LAYERS = TAG_PREFIX + "layers"
TAG_FRAMES = TAG_PREFIX + "frames"
TAG_ARTIFACT_PATH = TAG_PREFIX + "artifact_path"
TAG_VERSION = TAG_PREFIX + "version"
TAG_CLAIM = TAG_PREFIX + "claim"
TAG_LISTING = TAG_PREFIX + "listing"

#: Longest tag value written: MLflow 3 accepts 8000 characters, servers before 2.x's raise 5000.
TAG_VALUE_LIMIT = 5000
#: Beside the results, the full layer list of a render whose ``weightviz.layers`` tag is cut short.
LAYERS_FILE = "layers.json"


class Status(str, Enum):
    """What happened to a run, as a render result, a batch/watch outcome or the status tag.

    The values are the strings written to tags and reports; members compare equal to them.
    """

    RENDERED = "rendered"
    """GIFs were drawn (and logged)."""
    WOULD_RENDER = "would_render"
    """Dry run: a render would draw it."""
    UP_TO_DATE = "up_to_date"
    """The run's fingerprint tag matches: nothing to do."""
    NO_SNAPSHOTS = "no_snapshots"
    """Nothing at the snapshot source."""
    RUNNING = "running"
    """Skipped: the run is still active."""
    CLAIMED = "claimed"
    """Another renderer holds the run's claim."""
    FAILED = "failed"
    """The render raised an error."""
    ABANDONED = "abandoned"
    """Stopped before anything was published."""
    CANCELLED = "cancelled"
    """Never started: the batch was interrupted."""
    LOGGING = "logging"
    """Status tag while files are being logged; a run left so was interrupted mid-delivery."""

    def __str__(self) -> str:
        return self.value


#: Tags set before any file is logged. If logging fails half way, the run may hold some
#: new GIFs beside old ones, so it must not keep claiming the old fingerprint: a rerun
#: then renders again instead of reporting "up to date".
PENDING_TAGS = {TAG_STATUS: Status.LOGGING.value, TAG_FINGERPRINT: ""}


def fingerprint(src: SnapshotSource, options: RenderOptions, *, local: Path | None = None, **where: str) -> str:
    """A short hash of the snapshot files, the options that change the output, and ``where``.

    Args:
        src: The snapshots; their :meth:`~mlflow_weightviz.sources.SnapshotSource.fingerprint`
            lists files and sizes (nothing is downloaded).
        options: The render options; only those that change the files count.
        local: The snapshot files as fetched (:meth:`~mlflow_weightviz.sources.SnapshotSource.fetch`):
            when given, the hash covers every file's bytes
            (:func:`~mlflow_weightviz.sources.content_digest`) instead of the listing, so a
            snapshot logged again with new values of the same size changes it.
        **where: Further keys, e.g. ``source`` and ``artifact_path``.

    Returns:
        32 hex digits; equal for a run and options whose files would be the same.
    """
    if local is None:
        files = src.fingerprint()
    else:
        from mlflow_weightviz.sources import content_digest

        files = "content:" + content_digest(local)
    payload = {"files": files, "options": options.fingerprint_fields(), **where}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def layers_tag(names: Sequence[str], limit: int = TAG_VALUE_LIMIT) -> tuple[str, bool]:
    """The ``weightviz.layers`` tag value for ``names``, and whether it is cut short.

    The value is always valid JSON: the list of names when it fits in ``limit`` characters,
    else ``{"count": N, "layers": [the first names that fit], "truncated": true,
    "file": "layers.json"}``, the full list then being logged as :data:`LAYERS_FILE` beside the
    results.
    """
    full = json.dumps(list(names))
    if len(full) <= limit:
        return full, False

    def cut(k: int) -> str:
        return json.dumps({"count": len(names), "layers": list(names[:k]), "truncated": True, "file": LAYERS_FILE})

    lo, hi = 0, len(names)  # the most names that fit: cut(lo) fits, cut(hi + 1) does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(cut(mid)) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return cut(lo), True
