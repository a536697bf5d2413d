"""``mlflow-weightviz demo``: train a tiny numpy network, log its snapshots, render and log the GIFs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlflow_weightviz import _tracking
from mlflow_weightviz.capture import log_snapshot
from mlflow_weightviz.pipeline import render_run

__all__ = ["DemoResult", "run_demo", "train_tiny_mlp"]

EXPERIMENT = "weightviz-demo"


@dataclass(frozen=True)
class DemoResult:
    """Where the demo put things, and how to look at them."""

    run_id: str
    experiment_id: str
    artifact_paths: tuple[str, ...]
    local_dir: Path
    ui_command: str
    ui_url: str


def train_tiny_mlp(steps: int = 300, seed: int = 0):  # type: ignore[no-untyped-def]
    """Yield ``(step, weights, loss)`` while training a 12→8→3 tanh MLP on three Gaussian blobs with SGD."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.5, size=(3, 12))
    labels = rng.integers(0, 3, size=600)
    x = centres[labels] + rng.normal(0, 1.0, size=(600, 12))
    w1 = rng.normal(0, 0.3, size=(8, 12))
    b1 = np.zeros(8)
    w2 = rng.normal(0, 0.3, size=(3, 8))
    b2 = np.zeros(3)
    lr = 0.1
    for step in range(steps + 1):
        batch = rng.integers(0, 600, size=64)
        xb, yb = x[batch], labels[batch]
        h = np.tanh(xb @ w1.T + b1)
        logits = h @ w2.T + b2
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        loss = float(-np.log(p[np.arange(64), yb] + 1e-12).mean())
        yield step, {"fc1.weight": w1.copy(), "fc1.bias": b1.copy(), "fc2.weight": w2.copy()}, loss
        grad = p
        grad[np.arange(64), yb] -= 1
        grad /= 64
        gw2, gb2 = grad.T @ h, grad.sum(axis=0)
        gh = (grad @ w2) * (1 - h**2)
        gw1, gb1 = gh.T @ xb, gh.sum(axis=0)
        w1 -= lr * gw1
        b1 -= lr * gb1
        w2 -= lr * gw2
        b2 -= lr * gb2


def run_demo(*, tracking_uri: str | None = None, steps: int = 300, every: int = 10,
             output_dir: str | Path = "weightviz-demo",
             progress: Callable[[int, int], None] | None = None) -> DemoResult:
    """Train, log snapshots every ``every`` steps to a new run, render the GIFs and log them back.

    Uses MLflow's default store (``sqlite:///mlflow.db`` with artifacts in ``./mlruns``)
    unless ``tracking_uri`` is given. Local copies of the GIFs go to ``output_dir``.
    """
    import mlflow
    from mlflow.entities import Metric

    client = _tracking.client(tracking_uri)
    uri = tracking_uri or mlflow.get_tracking_uri()
    with _tracking.translate("starting the demo run", writing=True):
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
        run = client.create_run(experiment_id, run_name="tiny-mlp",
                                tags={"mlflow.source.name": "mlflow-weightviz demo"})
        run_id = run.info.run_id
        client.log_batch(run_id, params=[mlflow.entities.Param("steps", str(steps)),
                                         mlflow.entities.Param("every", str(every))])
    metrics = []
    try:
        for step, weights, loss in train_tiny_mlp(steps):
            metrics.append(Metric("loss", loss, 0, step))
            if step % every == 0:
                log_snapshot(weights, step, run_id=run_id, tracking_uri=tracking_uri)
        with _tracking.translate("logging the demo's metrics", writing=True):
            for i in range(0, len(metrics), 500):
                client.log_batch(run_id, metrics=metrics[i:i + 500])
    except BaseException:
        with contextlib.suppress(Exception):  # keep the original error
            client.set_terminated(run_id, "FAILED")
        raise
    with _tracking.translate("finishing the demo run", writing=True):
        client.set_terminated(run_id, "FINISHED")
    local = Path(output_dir).resolve()
    result = render_run(run_id, tracking_uri=tracking_uri, output_dir=local, progress=progress)
    # Point the URL at the largest layer's GIF: the most to look at.
    main = max(result.layers, key=lambda r: r.grid[0] * r.grid[1], default=None)
    first = main.artifact_path if main is not None and main.artifact_path else "weightviz"
    return DemoResult(
        run_id=run_id, experiment_id=experiment_id, artifact_paths=result.artifact_paths, local_dir=local,
        ui_command=f"mlflow ui --backend-store-uri {uri} --port 5000",
        ui_url=f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{first}")
