"""A plain PyTorch training loop recorded with ``mlflow_weightviz.record``.

A small MLP fits a synthetic regression task. ``record(model, every=10)`` snapshots every
parameter with 2 or more dims (the two weight matrices) from ``named_parameters()``
at steps 0, 10, 20, ..., and renders ``fc1.weight.gif`` and ``fc2.weight.gif`` into the
run when training ends. ``dtype="float16"`` halves the stored size.

Needs torch: ``pip install 'mlflow-weightviz[torch]'``.
"""

import mlflow
import torch
from torch import nn

import mlflow_weightviz as wv


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 6)
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


torch.manual_seed(0)
x = torch.randn(256, 8)
y = torch.stack([x[:, :4].sum(dim=1), x[:, 4:].prod(dim=1)], dim=1)
model = MLP()
optimizer = torch.optim.Adam(model.parameters(), lr=0.02)

mlflow.set_experiment("weightviz-examples")
with mlflow.start_run(run_name="pytorch-mlp") as run:
    with wv.record(model, every=10, dtype="float16", max_frames=12) as rec:
        for step in range(101):
            batch = torch.randint(0, 256, (32,))
            loss = nn.functional.mse_loss(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            mlflow.log_metric("loss", loss.item(), step=step)
            rec.step(step)

print(f"run_id: {run.info.run_id}")
print(f"snapshots: {rec.snapshots} in {rec.uploads} upload(s): {', '.join(rec.artifact_paths)}")
print(f"gifs: {', '.join(rec.result.artifact_paths) if rec.result else '(none)'}")
print(f"view: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}")
