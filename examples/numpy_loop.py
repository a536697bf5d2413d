"""A plain numpy training loop recorded with ``mlflow_weightviz.record``.

A 10→6→3 tanh network learns three Gaussian blobs with SGD. The recorder takes a
snapshot every 5 steps from a callable (only called at those steps), buffers them on
local disk, logs them as chunk files, and renders one GIF per layer when the ``with``
block ends.

Run: ``python examples/numpy_loop.py`` (MLflow's default store in the current folder,
unless MLFLOW_TRACKING_URI is set).
"""

import mlflow
import numpy as np

import mlflow_weightviz as wv

rng = np.random.default_rng(0)
centres = rng.normal(0, 1.5, size=(3, 10))
labels = rng.integers(0, 3, size=300)
x = centres[labels] + rng.normal(0, 1.0, size=(300, 10))
w1, w2 = rng.normal(0, 0.3, size=(6, 10)), rng.normal(0, 0.3, size=(3, 6))

mlflow.set_experiment("weightviz-examples")
with mlflow.start_run(run_name="numpy-loop") as run:
    # A callable source: it returns the current arrays whenever a snapshot is due.
    with wv.record(lambda: {"w1": w1, "w2": w2}, every=5) as rec:
        for step in range(51):
            batch = rng.integers(0, 300, size=32)
            h = np.tanh(x[batch] @ w1.T)
            logits = h @ w2.T
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            loss = -np.log(p[np.arange(32), labels[batch]]).mean()
            mlflow.log_metric("loss", float(loss), step=step)
            grad = p
            grad[np.arange(32), labels[batch]] -= 1
            grad /= 32
            gh = (grad @ w2) * (1 - h**2)
            w2 = w2 - 0.2 * grad.T @ h
            w1 = w1 - 0.2 * gh.T @ x[batch]
            rec.step(step)

print(f"run_id: {run.info.run_id}")
print(f"snapshots: {rec.snapshots} in {rec.uploads} upload(s): {', '.join(rec.artifact_paths)}")
print(f"gifs: {', '.join(rec.result.artifact_paths) if rec.result else '(none)'}")
print(f"view: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}")
