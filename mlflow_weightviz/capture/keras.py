"""Keras 3 callback: record the model's weights every N epochs or batches, render the GIFs at train end.

Importing this module imports Keras; install it with ``pip install 'mlflow-weightviz[keras]'``.
Any Keras 3 backend works (set ``KERAS_BACKEND`` before importing Keras).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from mlflow_weightviz.capture._callback import (
    DEFAULT_CHUNK_STEPS,
    DEFAULT_MAX_UPLOADS,
    RecordingCallback,
    missing,
    pick_every,
)

try:
    import keras
except ImportError as exc:
    error = missing("Keras 3", "keras")
    raise error from exc

__all__ = ["KerasCallback"]


class KerasCallback(RecordingCallback, keras.callbacks.Callback):  # type: ignore[misc]  # keras is untyped
    """Record a Keras model's weights into the active MLflow run while it trains.

    Step ``k`` is the weights after ``k`` epochs (or batches): step 0, the weights before
    training, is always recorded, then every ``every_n_epochs`` epochs, or every
    ``every_n_batches`` batches. Layers are named by their variable path
    (``sequential/dense/kernel``). When training ends the snapshots are flushed and the
    GIFs rendered and logged to the run; ``fit`` has no exception hook, so wrap it in
    ``with callback:`` to render after a failure too (otherwise that happens when Python exits).

    ::

        with mlflow.start_run():
            model.fit(x, y, epochs=20, callbacks=[mlflow_weightviz.KerasCallback(every_n_epochs=1)])

    Args:
        every_n_epochs: Record after every N epochs (the default, with N = 1).
        every_n_batches: Record after every N batches instead.
        layers: Name globs of the variables to record; by default those with 2 or more dims.
        artifact_path: Folder of the snapshots in the run.
        render: Render and log the GIFs when training ends.
        render_artifact_path: Folder of the GIFs in the run.
        run_id: The run; defaults to the run active when training starts.
        tracking_uri: Defaults to the current tracking URI.
        dtype: Store snapshots as this dtype, e.g. ``"float16"``.
        chunk_steps: Snapshots in the first chunk file uploaded.
        max_uploads: Most chunk uploads per training run.
        buffer_dir: Where the local snapshot buffer goes.
        **render_options: Fields of :class:`~mlflow_weightviz.RenderOptions` for the GIFs.

    Raises:
        UsageError: A bad argument or render option (when the callback is made).
    """

    def __init__(self, *, every_n_epochs: int | None = None, every_n_batches: int | None = None,
                 layers: str | Sequence[str] | None = None, artifact_path: str = "weights", render: bool = True,
                 render_artifact_path: str = "weightviz", run_id: str | None = None,
                 tracking_uri: str | None = None, dtype: Any = None, chunk_steps: int = DEFAULT_CHUNK_STEPS,
                 max_uploads: int = DEFAULT_MAX_UPLOADS, buffer_dir: str | os.PathLike[str] | None = None,
                 **render_options: Any) -> None:
        super().__init__()
        self.unit, every = pick_every("epochs", every_n_epochs, "batches", every_n_batches, ("epochs", 1))
        self._init_recording(every=every, layers=layers, artifact_path=artifact_path, render=render,
                             render_artifact_path=render_artifact_path, run_id=run_id, tracking_uri=tracking_uri,
                             dtype=dtype, chunk_steps=chunk_steps, max_uploads=max_uploads, buffer_dir=buffer_dir,
                             render_options=render_options)
        self._done = 0  # epochs or batches trained while this callback watched, over every fit()

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Open a recorder on the current run and record the starting weights."""
        self._start(self.model)
        if self._done == 0:  # a second fit() goes on from the last step recorded
            self._step(0)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Count the batch; record when it completes ``every_n_batches``."""
        if self.unit == "batches":
            self._done += 1
            self._step(self._done)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Count the epoch; record when it completes ``every_n_epochs``."""
        if self.unit == "epochs":
            self._done += 1
            self._step(self._done)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        """Flush the snapshots, then render and log the GIFs."""
        self.close()
