"""Keras 3 callback: record the model's weights every N epochs or batches, render the GIFs at train end.

Importing this module imports Keras; install it with ``pip install 'mlflow-weightviz[keras]'``.
Any Keras 3 backend works (set ``KERAS_BACKEND`` before importing Keras).
"""

from __future__ import annotations

from typing import Any

from mlflow_weightviz.capture._callback import RecordingCallback, missing, pick_every

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
        **settings: The recording keywords shared by every callback (``layers``, ``artifact_path``,
            ``render``, ``run_id``, ``dtype``, ...) and the render options (``max_frames=50``, ...);
            see :class:`~mlflow_weightviz.capture.RecordingCallback`.

    Raises:
        UsageError: A bad argument or render option (when the callback is made).
    """

    def __init__(self, *, every_n_epochs: int | None = None, every_n_batches: int | None = None,
                 **settings: Any) -> None:
        unit, every = pick_every("epochs", every_n_epochs, "batches", every_n_batches, ("epochs", 1))
        super().__init__(unit, every, **settings)
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
