"""PyTorch Lightning callback: record the module's weights every N steps or epochs, render at train end.

Importing this module imports Lightning; install it with ``pip install 'mlflow-weightviz[lightning]'``.
It works with ``lightning.pytorch`` (the ``lightning`` package).
"""

from __future__ import annotations

from typing import Any

from mlflow_weightviz.capture._callback import RecordingCallback, missing, pick_every, sharded

try:
    import lightning.pytorch as pl
except ImportError as exc:
    error = missing("PyTorch Lightning", "lightning")
    raise error from exc

__all__ = ["LightningCallback"]


class LightningCallback(RecordingCallback, pl.Callback):
    """Record a LightningModule's parameters into MLflow while it trains.

    The run is the trainer's ``MLFlowLogger`` run when it has one, else the active MLflow
    run (or ``run_id``). Steps are Lightning's: ``trainer.global_step`` (optimizer steps
    done) with ``every_n_train_steps``, or epochs done with ``every_n_epochs`` (the
    default, N = 1); the weights when training starts are recorded too. At the end of
    training, and on an exception (``on_exception``), the snapshots are flushed and the
    GIFs rendered and logged. Only the global-zero process records; with sharded (FSDP2)
    parameters every rank reduces its own shard for it.

    ::

        trainer = Trainer(logger=MLFlowLogger(...), callbacks=[LightningCallback(every_n_train_steps=10)])

    Args:
        every_n_train_steps: Record every N optimizer steps.
        every_n_epochs: Record after every N epochs (the default, with N = 1).
        **settings: The recording keywords shared by every callback (``layers``, ``artifact_path``,
            ``render``, ``run_id``, ``dtype``, ...) and the render options (``max_frames=50``, ...);
            see :class:`~mlflow_weightviz.capture.RecordingCallback`.

    Raises:
        UsageError: A bad argument or render option (when the callback is made).
    """

    def __init__(self, *, every_n_train_steps: int | None = None, every_n_epochs: int | None = None,
                 **settings: Any) -> None:
        unit, every = pick_every("train_steps", every_n_train_steps, "epochs", every_n_epochs, ("epochs", 1))
        super().__init__(unit, every, **settings)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Open a recorder on the logger's (or the active) run and record the starting weights."""
        if not trainer.is_global_zero and not sharded(pl_module):
            return  # data parallel: rank 0 records; sharded parameters need every rank (see record())
        run_id, tracking_uri = _logger_run(trainer)
        self._start(pl_module, run_id=run_id, tracking_uri=tracking_uri)
        self._step(trainer.global_step if self.unit == "train_steps" else trainer.current_epoch)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Record when ``trainer.global_step`` reaches a multiple of ``every_n_train_steps``."""
        if self.unit == "train_steps":
            self._step(trainer.global_step)  # repeats under gradient accumulation are skipped

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record when the epochs done reach a multiple of ``every_n_epochs``."""
        if self.unit == "epochs":
            self._step(trainer.current_epoch + 1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Flush the snapshots, then render and log the GIFs."""
        self.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Flush and render what was recorded; Lightning then re-raises ``exception``."""
        self.close(exception)


def _logger_run(trainer: Any) -> tuple[str | None, str | None]:
    """The run and tracking URI of the trainer's first ``MLFlowLogger``, if any."""
    for logger in getattr(trainer, "loggers", None) or []:
        if type(logger).__name__ == "MLFlowLogger":
            run_id = logger.run_id  # creates the run if the logger has not yet
            return str(run_id), str(logger.experiment.tracking_uri)
    return None, None
