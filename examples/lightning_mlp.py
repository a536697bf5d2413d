"""PyTorch Lightning with an ``MLFlowLogger``, recorded with ``mlflow_weightviz.LightningCallback``.

The callback finds the logger's MLflow run, records the module's weight matrices when
training starts and every 4 optimizer steps (``trainer.global_step``), and renders the
GIFs into the run when ``fit`` ends (or fails: Lightning's ``on_exception`` hook).

Needs Lightning: ``pip install 'mlflow-weightviz[lightning]'``.
"""

import lightning.pytorch as pl
import mlflow
import torch
from lightning.pytorch.loggers import MLFlowLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mlflow_weightviz as wv


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(8, 6)
        self.out = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


torch.manual_seed(0)
x = torch.randn(256, 8)
y = x[:, :2].sum(dim=1, keepdim=True) - x[:, 5:6]
loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)

# The logger writes to MLflow's default store in the current folder unless MLFLOW_TRACKING_URI is set.
logger = MLFlowLogger(experiment_name="weightviz-examples", run_name="lightning-mlp",
                      tracking_uri=mlflow.get_tracking_uri())
callback = wv.LightningCallback(every_n_train_steps=4)
trainer = pl.Trainer(max_epochs=3, logger=logger, callbacks=[callback], log_every_n_steps=4,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     accelerator="cpu", devices=1)
trainer.fit(Regressor(), loader)

rec = callback.recorder
assert rec is not None
print(f"run_id: {logger.run_id}")
print(f"snapshots: {rec.snapshots} in {rec.uploads} upload(s): {', '.join(rec.artifact_paths)}")
print(f"gifs: {', '.join(callback.result.artifact_paths) if callback.result else '(none)'}")
print(f"view: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}")
