"""The Keras, Lightning and transformers callbacks, with the real frameworks on CPU and real MLflow."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mlflow_weightviz as wv
from tests.helpers import artifact_files, read_gif, with_overview

# Shared with test_capture: reading chunks back, Keras on torch, and the autouse check that recorders get closed.
from tests.test_capture import chunk_contents, keras_module, no_recorder_left_open  # noqa: F401

pytestmark = pytest.mark.slow  # real training runs in three frameworks

# ----------------------------------------------------------------------------------- Keras


def keras_model(keras: Any) -> Any:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="tanh", name="hidden"),
                              keras.layers.Dense(1, name="out")], name="net")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def keras_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    return x, x[:, :1] - x[:, 1:2]


def test_keras_callback_records_every_epoch_and_renders_at_train_end(server_uri: str) -> None:
    import mlflow

    keras = keras_module()
    model = keras_model(keras)
    callback = wv.KerasCallback(max_frames=2)
    with mlflow.start_run() as run:
        model.fit(*keras_data(), epochs=3, batch_size=16, verbose=0, callbacks=[callback])
    run_id = run.info.run_id
    contents = chunk_contents(run_id, uri=server_uri)
    assert sorted(contents) == [0, 1, 2, 3]  # before training, then after each epoch
    assert sorted(contents[3]) == ["net/hidden/kernel", "net/out/kernel"]
    np.testing.assert_array_equal(contents[3]["net/out/kernel"], model.get_layer("out").kernel.value.detach().numpy())
    assert not np.array_equal(contents[0]["net/out/kernel"], contents[3]["net/out/kernel"])
    assert artifact_files(run_id, "weightviz", server_uri) == with_overview(["weightviz/net_hidden_kernel.gif",
                                                               "weightviz/net_out_kernel.gif"])
    assert callback.result is not None
    assert [layer.frames for layer in callback.result.layers] == [2, 2]


def test_keras_callback_every_n_batches() -> None:
    import mlflow

    keras = keras_module()
    callback = wv.KerasCallback(every_n_batches=3, render=False)
    with mlflow.start_run() as run:
        keras_model(keras).fit(*keras_data(), epochs=2, batch_size=16, verbose=0, callbacks=[callback])
    assert sorted(chunk_contents(run.info.run_id)) == [0, 3, 6]  # 8 batches
    assert artifact_files(run.info.run_id, "weightviz") == []


def test_keras_failure_mid_fit_still_leaves_snapshots_and_gifs() -> None:
    import mlflow

    keras = keras_module()

    class Diverge(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if epoch == 1:
                msg = "loss diverged"
                raise RuntimeError(msg)

    callback = wv.KerasCallback(layers="*/out/kernel", max_frames=2)
    model = keras_model(keras)

    def fit() -> None:
        with callback:  # fit() has no exception hook; the context manager closes the recorder
            model.fit(*keras_data(), epochs=5, batch_size=16, verbose=0, callbacks=[callback, Diverge()])

    with mlflow.start_run() as run, pytest.raises(RuntimeError, match="loss diverged"):
        fit()
    assert sorted(chunk_contents(run.info.run_id)) == [0, 1, 2]
    assert artifact_files(run.info.run_id, "weightviz") == with_overview(["weightviz/net_out_kernel.gif"])


def test_callback_arguments_are_checked_when_made() -> None:
    keras_module()
    with pytest.raises(wv.UsageError, match="every_n_epochs or every_n_batches, not both"):
        wv.KerasCallback(every_n_epochs=1, every_n_batches=2)
    with pytest.raises(wv.UsageError, match="unknown render option"):
        wv.KerasCallback(colormap="viridis")
    with pytest.raises(wv.UsageError, match="every must be an integer of at least 1"):
        wv.KerasCallback(every_n_batches=0)
    with pytest.raises(wv.UsageError, match=r"unknown render option\(s\) every;"):
        wv.KerasCallback(every=5)  # the frequency keywords are every_n_*; every is not one
    with pytest.raises(wv.UsageError, match="dtype must be"):
        wv.KerasCallback(dtype="object")  # a shared recording keyword, checked by the base class


# ------------------------------------------------------------------------------- Lightning

LIGHTNING_NOISE = [
    # Lightning's own use of a torch pytree API that torch deprecated.
    "ignore:.*isinstance\\(treespec, LeafSpec\\).* is deprecated:FutureWarning",
]


def lightning_parts(fail_at: int | None = None) -> tuple[Any, Any]:
    pl = pytest.importorskip("lightning.pytorch", reason="lightning is not installed")
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Net(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.hidden = torch.nn.Linear(4, 3)
            self.out = torch.nn.Linear(3, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.global_step == fail_at:
                msg = "NaN loss"
                raise FloatingPointError(msg)
            x, y = batch
            return torch.nn.functional.mse_loss(self.out(torch.tanh(self.hidden(x))), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    x = torch.randn(32, 4)
    return Net(), DataLoader(TensorDataset(x, x[:, :1] * 2), batch_size=8)


def trainer(callback: Any, logger: Any, epochs: int = 2) -> Any:
    import lightning.pytorch as pl

    return pl.Trainer(max_epochs=epochs, logger=logger, callbacks=[callback], enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                      accelerator="cpu", devices=1)


@pytest.mark.filterwarnings(*LIGHTNING_NOISE)
def test_lightning_callback_uses_the_mlflow_logger_run(server_uri: str) -> None:
    module, loader = lightning_parts()
    from lightning.pytorch.loggers import MLFlowLogger

    logger = MLFlowLogger(experiment_name="lightning", tracking_uri=server_uri)
    callback = wv.LightningCallback(every_n_train_steps=2, max_frames=2)
    trainer(callback, logger).fit(module, loader)
    run_id = logger.run_id
    contents = chunk_contents(run_id, uri=server_uri)
    assert sorted(contents) == [0, 2, 4, 6, 8]  # 4 steps per epoch, 2 epochs
    np.testing.assert_array_equal(contents[8]["hidden.weight"], module.hidden.weight.detach().numpy())
    assert artifact_files(run_id, "weightviz", server_uri) == with_overview(["weightviz/hidden.weight.gif",
                                                               "weightviz/out.weight.gif"])


@pytest.mark.filterwarnings(*LIGHTNING_NOISE)
def test_lightning_exception_renders_through_on_exception() -> None:
    import mlflow

    module, loader = lightning_parts(fail_at=5)
    callback = wv.LightningCallback(every_n_train_steps=2, layers="out.*", max_frames=2)
    with mlflow.start_run() as run, pytest.raises(FloatingPointError, match="NaN loss"):
        trainer(callback, logger=False).fit(module, loader)
    assert sorted(chunk_contents(run.info.run_id)) == [0, 2, 4]
    assert sorted(chunk_contents(run.info.run_id)[4]) == ["out.bias", "out.weight"]
    assert artifact_files(run.info.run_id, "weightviz") == with_overview(["weightviz/out.bias.gif",
                                                                          "weightviz/out.weight.gif"])


@pytest.mark.filterwarnings(*LIGHTNING_NOISE)
def test_lightning_every_n_epochs_on_the_active_run() -> None:
    import mlflow

    module, loader = lightning_parts()
    callback = wv.LightningCallback(render=False)
    with mlflow.start_run() as run:
        trainer(callback, logger=False, epochs=3).fit(module, loader)
    assert sorted(chunk_contents(run.info.run_id)) == [0, 1, 2, 3]


# ---------------------------------------------------------------------------- transformers


def hf_parts(tmp_path: Path, steps: int, report_to: str | list[str] = "none") -> tuple[Any, Any, list[dict[str, Any]]]:
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    pytest.importorskip("accelerate", reason="accelerate (needed by Trainer) is not installed")
    import torch

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    ids = torch.randint(8, 32, (32, 8))
    ids[::2, 2] = 7
    data = [{"input_ids": row, "labels": int((row == 7).any())} for row in ids]
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=steps,
                                          per_device_train_batch_size=8, learning_rate=1e-2, report_to=report_to,
                                          save_strategy="no", logging_strategy="no", use_cpu=True,
                                          disable_tqdm=True, seed=0)
    return model, args, data


def test_transformers_callback_records_into_the_run_report_to_mlflow_starts(tmp_path: Path, server_uri: str) -> None:
    from mlflow.tracking import MlflowClient
    from transformers import Trainer

    model, args, data = hf_parts(tmp_path, steps=6, report_to=["mlflow"])
    callback = wv.TransformersCallback(every_n_steps=2, layers=["classifier.weight", "*.query.weight"],
                                       max_frames=2)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    gc.collect()  # transformers' MLflowCallback.__del__ ends whatever run is active: let it run here
    assert callback.recorder is not None
    run = MlflowClient().get_run(callback.recorder.run_id)
    assert run.info.status == "FINISHED"  # ended by transformers' MLflowCallback; the GIFs came after
    assert run.data.params["max_steps"] == "6"  # the run transformers' own MLflow integration made
    contents = chunk_contents(run.info.run_id, uri=server_uri)
    assert sorted(contents) == [0, 2, 4, 6]
    assert sorted(contents[6]) == ["bert.encoder.layer.0.attention.self.query.weight", "classifier.weight"]
    np.testing.assert_array_equal(contents[6]["classifier.weight"], model.classifier.weight.detach().numpy())
    gifs = artifact_files(run.info.run_id, "weightviz", server_uri)
    assert gifs == with_overview(["weightviz/bert.encoder.layer.0.attention.self.query.weight.gif",
                                  "weightviz/classifier.weight.gif"])
    local = MlflowClient().download_artifacts(run.info.run_id, gifs[1])
    assert read_gif(Path(local)).n_frames == 2


def test_transformers_failure_inside_with_callback_still_renders(tmp_path: Path) -> None:
    import mlflow
    from transformers import Trainer, TrainerCallback

    model, args, data = hf_parts(tmp_path, steps=10)

    class Fail(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 3:
                msg = "out of memory"
                raise MemoryError(msg)

    callback = wv.TransformersCallback(every_n_steps=2, layers="classifier.weight", max_frames=2)

    def train() -> None:
        with callback:  # Trainer has no exception hook
            Trainer(model=model, args=args, train_dataset=data, callbacks=[callback, Fail()]).train()

    # transformers' MLflowCallback ends the active run in its __del__: one left by an earlier
    # test (report_to="mlflow") must be collected now, not in the middle of this run.
    gc.collect()
    with mlflow.start_run() as run, pytest.raises(MemoryError, match="out of memory"):
        train()
    assert sorted(chunk_contents(run.info.run_id)) == [0, 2]
    assert artifact_files(run.info.run_id, "weightviz") == with_overview(["weightviz/classifier.weight.gif"])
