"""Hugging Face ``transformers`` callback: record the model's weights during ``Trainer.train()``.

Importing this module imports transformers; install it with
``pip install 'mlflow-weightviz[transformers]'``.
"""

from __future__ import annotations

from typing import Any

from mlflow_weightviz.capture._callback import RecordingCallback, missing, pick_every, sharded

try:
    import transformers
except ImportError as exc:
    error = missing("transformers", "transformers")
    raise error from exc

__all__ = ["TransformersCallback"]


class TransformersCallback(RecordingCallback, transformers.TrainerCallback):
    """Record a ``Trainer``'s model weights into MLflow while it trains.

    The run is ``run_id``, else the MLflow run active when training begins (the one
    ``report_to="mlflow"`` starts, or your own ``mlflow.start_run()``). Steps are the
    trainer's ``state.global_step``: the starting weights, then every ``every_n_steps``
    optimizer steps (default 50), or every ``every_n_epochs`` epochs instead. When
    training ends the snapshots are flushed and the GIFs rendered and logged. ``Trainer``
    has no exception hook: wrap ``train()`` in ``with callback:`` to render after a failure
    too (otherwise that happens when Python exits). Only the main process records (with
    sharded FSDP2 parameters every process reduces its shard for it).

    ::

        trainer = Trainer(model=model, args=args, train_dataset=data,
                          callbacks=[mlflow_weightviz.TransformersCallback(every_n_steps=10)])

    Args:
        every_n_steps: Record every N optimizer steps (default 50).
        every_n_epochs: Record after every N epochs instead.
        **settings: The recording keywords shared by every callback (``layers``, ``artifact_path``,
            ``render``, ``run_id``, ``dtype``, ...) and the render options (``max_frames=50``, ...);
            see :class:`~mlflow_weightviz.capture.RecordingCallback`.

    Raises:
        UsageError: A bad argument or render option (when the callback is made).
    """

    def __init__(self, *, every_n_steps: int | None = None, every_n_epochs: int | None = None,
                 **settings: Any) -> None:
        unit, every = pick_every("steps", every_n_steps, "epochs", every_n_epochs, ("steps", 50))
        super().__init__(unit, every, **settings)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Open a recorder on the current run and record the starting weights."""
        if model is None:
            msg = "the Trainer passed no model to the callback"
            raise RuntimeError(msg)
        if not state.is_world_process_zero and not sharded(model):
            return  # data parallel: the main process records; sharded parameters need every rank
        self._start(model)
        self._step(state.global_step if self.unit == "steps" else int(round(state.epoch or 0)))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Record when ``state.global_step`` reaches a multiple of ``every_n_steps``."""
        if self.unit == "steps":
            self._step(state.global_step)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Record when the epochs done reach a multiple of ``every_n_epochs``."""
        if self.unit == "epochs":
            self._step(int(round(state.epoch or 0)))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Flush the snapshots, then render and log the GIFs."""
        self.close()
