"""The run tags this package writes, the statuses it reports and the render fingerprint.

Tags (all under ``weightviz.``) are how a run remembers what was rendered for it:

- ``weightviz.fingerprint``: :func:`fingerprint` of the snapshots and options of the
  GIFs logged; a render with the same fingerprint has nothing to do (*up to date*).
- ``weightviz.status``: ``logging`` while files are being logged, ``rendered`` after.
- ``weightviz.source``, ``weightviz.layers``, ``weightviz.frames``,
  ``weightviz.artifact_path``, ``weightviz.version``: what the last render did.
- ``weightviz.claim``: ``<owner>:<expires-at>`` while a renderer holds the run (see
  :mod:`mlflow_weightviz.automation.claims`).
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow_weightviz.options import RenderOptions
    from mlflow_weightviz.sources import SnapshotSource

__all__ = ["PENDING_TAGS", "TAG_ARTIFACT_PATH", "TAG_CLAIM", "TAG_FINGERPRINT", "TAG_FRAMES", "TAG_LAYERS",
           "TAG_PREFIX", "TAG_SOURCE", "TAG_STATUS", "TAG_VERSION", "Status", "fingerprint"]

TAG_PREFIX = "weightviz."
TAG_FINGERPRINT = TAG_PREFIX + "fingerprint"
TAG_STATUS = TAG_PREFIX + "status"
TAG_SOURCE = TAG_PREFIX + "source"
TAG_LAYERS = TAG_PREFIX + "layers"
TAG_FRAMES = TAG_PREFIX + "frames"
TAG_ARTIFACT_PATH = TAG_PREFIX + "artifact_path"
TAG_VERSION = TAG_PREFIX + "version"
TAG_CLAIM = TAG_PREFIX + "claim"


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


def fingerprint(src: SnapshotSource, options: RenderOptions, **where: str) -> str:
    """A short hash of the snapshot files, the options that change the output, and ``where``.

    Args:
        src: The snapshots; their :meth:`~mlflow_weightviz.sources.SnapshotSource.fingerprint`
            lists files and sizes (nothing is downloaded).
        options: The render options; only those that change the files count.
        **where: Further keys, e.g. ``source`` and ``artifact_path``.

    Returns:
        32 hex digits; equal for a run and options whose files would be the same.
    """
    payload = {"files": src.fingerprint(), "options": options.fingerprint_fields(), **where}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]
