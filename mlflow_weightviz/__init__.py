"""mlflow-weightviz: watch a network's weights move during training, in MLflow.

Capture weight snapshots into an MLflow run, render them as annotated-heatmap GIFs and
log the GIFs back to the run. Heavy dependencies (mlflow, matplotlib, training
frameworks) are imported only when a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mlflow_weightviz.automation import BatchReport, RunOutcome, WatchReport, render_experiment, watch_experiment
    from mlflow_weightviz.capture import Recorder, log_snapshot, record
    from mlflow_weightviz.capture.hf import TransformersCallback
    from mlflow_weightviz.capture.keras import KerasCallback
    from mlflow_weightviz.capture.lightning import LightningCallback
    from mlflow_weightviz.encoders import GifEncoder, frames_to_gif
    from mlflow_weightviz.errors import (
        ClaimLostError,
        MissingDependencyError,
        OutputError,
        PickleNotAllowedError,
        RunNotFoundError,
        ShapeMismatchError,
        SnapshotError,
        SnapshotFormatError,
        SnapshotsNotFoundError,
        TrackingServerError,
        UsageError,
        WeightvizError,
    )
    from mlflow_weightviz.frames import HeatmapRenderer
    from mlflow_weightviz.loading import LayerSnapshots, load_snapshots
    from mlflow_weightviz.options import (
        Format,
        GifOptions,
        LookOptions,
        OutputOptions,
        OverviewStat,
        Pool,
        RenderOptions,
        Scale,
        View,
        WeightvizWarning,
    )
    from mlflow_weightviz.pipeline import (
        CompareResult,
        LayerResult,
        LayerSummary,
        RenderResult,
        compare_runs,
        inspect_file,
        inspect_run,
        render_file,
        render_run,
    )
    from mlflow_weightviz.snapshots import Snapshot, read_snapshots

__all__ = [
    "BatchReport",
    "ClaimLostError",
    "CompareResult",
    "Format",
    "GifEncoder",
    "GifOptions",
    "HeatmapRenderer",
    "KerasCallback",
    "LayerResult",
    "LayerSnapshots",
    "LayerSummary",
    "LightningCallback",
    "LookOptions",
    "MissingDependencyError",
    "OutputError",
    "OutputOptions",
    "OverviewStat",
    "PickleNotAllowedError",
    "Pool",
    "Recorder",
    "RenderOptions",
    "RenderResult",
    "RunNotFoundError",
    "RunOutcome",
    "Scale",
    "ShapeMismatchError",
    "Snapshot",
    "SnapshotError",
    "SnapshotFormatError",
    "SnapshotsNotFoundError",
    "TrackingServerError",
    "TransformersCallback",
    "UsageError",
    "View",
    "WatchReport",
    "WeightvizError",
    "WeightvizWarning",
    "__version__",
    "compare_runs",
    "frames_to_gif",
    "inspect_file",
    "inspect_run",
    "load_snapshots",
    "log_snapshot",
    "read_snapshots",
    "record",
    "render_experiment",
    "render_file",
    "render_run",
    "watch_experiment",
]

# Where each public name lives; resolved on first use (PEP 562) to keep imports light.
_LOCATIONS = {
    "BatchReport": "automation",
    "RunOutcome": "automation",
    "WatchReport": "automation",
    "render_experiment": "automation",
    "watch_experiment": "automation",
    "log_snapshot": "capture",
    "record": "capture",
    "Recorder": "capture",
    "KerasCallback": "capture.keras",
    "LightningCallback": "capture.lightning",
    "TransformersCallback": "capture.hf",
    "GifEncoder": "encoders",
    "frames_to_gif": "encoders",
    "HeatmapRenderer": "frames",
    "LayerSnapshots": "loading",
    "load_snapshots": "loading",
    "Format": "options",
    "GifOptions": "options",
    "LookOptions": "options",
    "OutputOptions": "options",
    "OverviewStat": "options",
    "Pool": "options",
    "RenderOptions": "options",
    "Scale": "options",
    "View": "options",
    "WeightvizWarning": "options",
    "CompareResult": "pipeline",
    "compare_runs": "pipeline",
    "LayerResult": "pipeline",
    "LayerSummary": "pipeline",
    "RenderResult": "pipeline",
    "inspect_file": "pipeline",
    "inspect_run": "pipeline",
    "render_file": "pipeline",
    "render_run": "pipeline",
    "Snapshot": "snapshots",
    "read_snapshots": "snapshots",
}
_LOCATIONS.update(dict.fromkeys(
    ["ClaimLostError", "MissingDependencyError", "OutputError", "PickleNotAllowedError", "RunNotFoundError",
     "ShapeMismatchError", "SnapshotError", "SnapshotFormatError", "SnapshotsNotFoundError", "TrackingServerError",
     "UsageError", "WeightvizError"], "errors"))


def __getattr__(name: str) -> Any:
    module = _LOCATIONS.get(name)
    if module is None:
        msg = f"module 'mlflow_weightviz' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(f"mlflow_weightviz.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
