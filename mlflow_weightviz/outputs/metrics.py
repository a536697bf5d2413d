"""Training diagnostics as MLflow metrics: a frame writer that stages them, logged with the results.

:class:`MetricsWriter` is fed by the same frame loop as the GIF writers
(:func:`mlflow_weightviz.pipeline.write_frames`), one per layer (or one for the ``--grid``
montage). The statistics themselves are computed once per render, from every snapshot of
the layer, not only the frames ``--max-frames`` samples (:func:`mlflow_weightviz.stats.collect`),
and handed to the writer; when the layer's outputs are finished the writer stages the
layer's metrics in a shared :class:`MetricsBatch`, and an aborted layer stages none.

The batch is logged by the run sink after the GIFs and before the final tags
(:meth:`mlflow_weightviz.sinks.RunSink.log_metrics`), with ``log_batch`` (which leaves a
FINISHED run FINISHED). A (key, step) the run already has is never logged again, so a
forced re-render, or a render of a run ``record()`` already logged metrics to, adds nothing twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mlflow_weightviz.stats import StepStats, metric_key

if TYPE_CHECKING:
    from mlflow_weightviz.encoders import Animation, Frame

__all__ = ["MetricsBatch", "MetricsWriter", "metric_rows"]


def metric_rows(layer: str, stats: Sequence[StepStats]) -> list[tuple[str, float, int]]:
    """``(key, value, step)`` of every statistic of ``layer`` that has a value, in step order."""
    return [(metric_key(layer, name), value, s.step) for s in stats for name, value in s.values().items()]


@dataclass
class MetricsBatch:
    """The metrics of one render, staged layer by layer, minus what the run already has.

    Attributes:
        stats: Every layer's statistics, one per snapshot (from :func:`~mlflow_weightviz.stats.collect`).
        logged: The (key → steps) the run already has; those are skipped.
        staged: ``(key, value, step)`` rows waiting to be logged.
    """

    stats: Mapping[str, Sequence[StepStats]]
    logged: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    staged: list[tuple[str, float, int]] = field(default_factory=list)

    def stage(self, layer: str) -> int:
        """Stage ``layer``'s metrics that the run does not have yet; returns how many."""
        rows = [r for r in metric_rows(layer, self.stats.get(layer, ())) if r[2] not in self.logged.get(r[0], {})]
        self.staged.extend(rows)
        return len(rows)


class MetricsWriter:
    """Stages the metrics of ``layers`` in ``batch`` once their outputs are finished.

    A :class:`~mlflow_weightviz.encoders.FrameWriter` that needs no pixels: the frames only
    say the layer is being rendered; the statistics cover all its snapshots.
    """

    pixels = ""

    def __init__(self, batch: MetricsBatch, layers: Sequence[str]) -> None:
        self.batch = batch
        self.layers = tuple(layers)
        self._frames = 0

    def setup(self, animation: Animation) -> None:
        """Nothing to open: the statistics were computed before the frame loop."""
        self._frames = 0

    def add_frame(self, frame: Frame) -> None:
        """Count the frame; the statistics do not depend on which frames are drawn."""
        self._frames += 1

    def finish(self) -> None:
        """The layer's outputs are complete: stage its metrics."""
        for layer in self.layers:
            self.batch.stage(layer)

    def abort(self) -> None:
        """Stage nothing for a layer whose outputs failed."""
