"""Where results go: back to the MLflow run, or to a local path.

Results are first written completely into a private staging folder. A :class:`Sink`
then publishes finished files only: a local copy is renamed into place
(:class:`LocalSink`), and a run gets its files with ``MlflowClient.log_artifacts``, which
leaves a FINISHED run FINISHED (:class:`RunSink`). Wrappers add checks around any sink,
e.g. the claim guard of :mod:`mlflow_weightviz.automation.claims`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mlflow_weightviz import _tracking
from mlflow_weightviz._files import atomic_file
from mlflow_weightviz.tags import PENDING_TAGS, TAG_VALUE_LIMIT

if TYPE_CHECKING:
    import numpy as np
    from mlflow.tracking import MlflowClient

__all__ = ["METRICS_PER_BATCH", "PENDING_TAGS", "LocalSink", "RunSink", "Sink", "image_key", "safe_name",
           "unique_names"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: The most metrics MLflow's ``log_batch`` takes in one call.
METRICS_PER_BATCH = 1000
_MAX_NAME = 100


def safe_name(layer: str) -> str:
    """A file name for ``layer`` that cannot leave its folder: ``../a/b`` → ``a_b``."""
    text = unicodedata.normalize("NFKD", layer).encode("ascii", "ignore").decode()
    text = _UNSAFE.sub("_", text.replace("/", "_").replace("\\", "_")).strip("._-")
    if text != layer or len(text) > _MAX_NAME:
        if len(text) > _MAX_NAME or not text:
            digest = hashlib.sha256(layer.encode()).hexdigest()[:8]
            text = f"{text[:_MAX_NAME - 9]}-{digest}" if text else f"layer-{digest}"
    return text


def image_key(stem: str, prefix: str = "weightviz") -> str:
    """The MLflow image key of a layer's step images, e.g. ``weightviz/fc1.weight``.

    ``MlflowClient.log_image`` accepts only letters, digits, ``_ - . /`` and spaces in a
    key; :func:`safe_name` stems already qualify, anything else is replaced.
    """
    return f"{prefix}/{_UNSAFE.sub('_', stem)}"


def unique_names(layers: Iterable[str]) -> dict[str, str]:
    """Safe, distinct file stems for ``layers``, distinct also when compared case-insensitively.

    A layer whose name is already a safe name keeps it (``fc1`` is always ``fc1.gif``);
    the others get :func:`safe_name`, and where that is taken (``.fc1`` and ``fc1``, or
    ``FC1`` and ``fc1`` on a case-insensitive file system) a hash suffix, itself checked
    against every name taken so far, so no two layers ever share a file.
    """
    order = list(layers)
    stems = {layer: safe_name(layer) for layer in order}
    out: dict[str, str] = {}
    taken: set[str] = set()
    for layer in order:
        if stems[layer] == layer and layer.lower() not in taken:
            out[layer] = layer
            taken.add(layer.lower())
    for layer in order:
        if layer in out:
            continue
        stem = stems[layer]
        salt = 0
        while stem.lower() in taken:
            digest = hashlib.sha256(f"{layer}\0{salt}".encode() if salt else layer.encode()).hexdigest()[:8]
            stem = f"{stems[layer][:_MAX_NAME - 9]}-{digest}"
            salt += 1
        out[layer] = stem
        taken.add(stem.lower())
    return {layer: out[layer] for layer in order}


class Sink(Protocol):
    """Publishes finished files from a staging folder."""

    def deliver(self, staged: Mapping[str, Path], tags: Mapping[str, str] | None = None,
                then: Callable[[], object] | None = None) -> Mapping[str, str | Path]:
        """Publish ``staged`` (key → finished file), run ``then``, then record ``tags``.

        Args:
            staged: The files to publish, by a key of the caller's choice (a layer, a file name).
            tags: What was published, for sinks that can record it (a run's tags).
            then: More publishing to do after the files and before the tags (e.g. step
                images), so the tags are written last.

        Returns:
            key → where each file went.
        """
        ...


@dataclass(frozen=True)
class LocalSink:
    """Copies finished files to ``out`` (one file) or into ``output_dir``."""

    out: Path | None = None
    output_dir: Path | None = None

    def deliver(self, staged: Mapping[str, Path], tags: Mapping[str, str] | None = None,
                then: Callable[[], object] | None = None) -> dict[str, Path]:
        """Publish the staged files and run ``then``; returns key → local path.

        A local file has no tags, so ``tags`` is not recorded anywhere.
        """
        written: dict[str, Path] = {}
        for layer, src in staged.items():
            if self.out is not None:
                # --out names the file; its extension follows the format written (fc1.gif → fc1.html).
                target = self.out if self.out.suffix == src.suffix else self.out.with_suffix(src.suffix)
            elif self.output_dir is not None:
                target = self.output_dir / src.name
            else:
                continue
            _copy_atomic(src, target)
            written[layer] = target
        if then is not None:
            then()
        return written


@contextlib.contextmanager
def _one_folder(files: Iterable[Path]) -> Iterator[Path]:
    """A folder holding exactly ``files``: their own when it holds nothing else, else a linked copy."""
    paths = list(files)
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        msg = f"two staged files share a name: {sorted(names)}"
        raise ValueError(msg)
    parents = {p.parent for p in paths}
    if len(parents) == 1:
        parent = parents.pop()
        if sorted(names) == sorted(p.name for p in parent.iterdir() if p.is_file()):
            yield parent
            return
    with tempfile.TemporaryDirectory(prefix="weightviz-publish-") as tmp:
        for p in paths:
            try:
                os.link(p, Path(tmp) / p.name)
            except OSError:  # another file system, or no hard links there
                shutil.copyfile(p, Path(tmp) / p.name)
        yield Path(tmp)


def _copy_atomic(src: Path, target: Path) -> None:
    with atomic_file(target) as dst, src.open("rb") as fh:
        shutil.copyfileobj(fh, dst, 1 << 20)


@dataclass(frozen=True)
class RunSink:
    """Logs finished files to a run under ``artifact_path`` and records what was done in tags."""

    client: MlflowClient
    run_id: str
    artifact_path: str = "weightviz"
    #: Mark the run as being logged to first: ``False`` for files that are not the run's own
    #: render (a comparison logged to it), which must leave its render tags alone.
    pending: bool = True

    def deliver(self, staged: Mapping[str, Path], tags: Mapping[str, str] | None = None,
                then: Callable[[], object] | None = None) -> dict[str, str]:
        """Log every staged file in one call, run ``then``, then set ``tags``; returns key → artifact path.

        Files keep their names under ``artifact_path``. The run is marked as being logged
        to (:data:`~mlflow_weightviz.tags.PENDING_TAGS`) first, and ``tags`` (with the new
        fingerprint) are set only after every file is logged and ``then`` (more logging,
        such as step images) has run, so an interrupted delivery never leaves the run
        looking up to date.
        """
        if self.pending:
            self.set_tags(PENDING_TAGS)
        with _tracking.translate(f"logging results to run {self.run_id}", writing=True), \
                _one_folder(staged.values()) as folder:
            self.client.log_artifacts(self.run_id, os.fspath(folder), self.artifact_path)
        if then is not None:
            then()
        if tags:
            self.set_tags(tags)
        return {key: f"{self.artifact_path}/{p.name}" if self.artifact_path else p.name for key, p in staged.items()}

    def log_step_images(self, key: str, frames: Iterable[tuple[int, np.ndarray]]) -> int:
        """Log (step, RGB frame) pairs as MLflow step images under ``key``; returns how many.

        ``MlflowClient.log_image`` writes the images as artifacts under ``images/`` and sets
        the ``mlflow.loggedImages`` tag, leaving a FINISHED run FINISHED. The run's image
        view then scrubs through the steps.
        """
        from PIL import Image

        count = 0
        with _tracking.translate(f"logging step images to run {self.run_id}", writing=True):
            for step, rgb in frames:
                self.client.log_image(self.run_id, Image.fromarray(rgb), key=key, step=int(step), synchronous=True)
                count += 1
        return count

    def log_metrics(self, rows: Iterable[tuple[str, float, int]], batch: int = METRICS_PER_BATCH) -> int:
        """Log ``(key, value, step)`` rows as run metrics with ``log_batch``, ``batch`` at a time; returns how many.

        ``log_batch`` leaves a FINISHED run FINISHED; MLflow takes at most 1000 metrics a call.
        """
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, int(step)) for key, value, step in rows]
        with _tracking.translate(f"logging metrics to run {self.run_id}", writing=True):
            for start in range(0, len(metrics), batch):
                self.client.log_batch(self.run_id, metrics=metrics[start:start + batch])
        return len(metrics)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set run tags in one request, truncating values to what MLflow accepts."""
        from mlflow.entities import RunTag

        batch = [RunTag(key, text if len(text) <= TAG_VALUE_LIMIT else text[:TAG_VALUE_LIMIT - 3] + "...")
                 for key, text in ((k, str(v)) for k, v in tags.items())]
        with _tracking.translate(f"tagging run {self.run_id}", writing=True):
            self.client.log_batch(self.run_id, tags=batch)
