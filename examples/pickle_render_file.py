"""The original script's workflow: a pickled list of 2-D weight arrays → one animated GIF.

The original blog post's script read ``animation_data.obj``, a pickle of a list of 2-D
numpy arrays (one layer's weights per training step), and drew it into
``training_weights.gif``. This makes such a file from a simulated training run (the
idea of ``shared/bench/make_data.py``: a noisy gradient step towards a target, values
kept in 0..0.05), then renders it with the CLI. Reading a pickle can run code, so the
CLI needs ``--allow-pickle``; only pass it for files you trust. No MLflow is involved.
"""

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np


def simulate(rows: int, cols: int, frames: int, seed: int = 0, lr: float = 0.05, noise: float = 0.004) -> list:
    rng = np.random.default_rng(seed)
    w = np.clip(np.abs(rng.normal(0.025, 0.01, size=(rows, cols))), 0.0, 0.05)
    target = rng.uniform(0.0, 0.05, size=(rows, cols))
    out = []
    for _ in range(frames):
        out.append(w.astype(np.float32))
        w = np.clip(w - lr * ((w - target) + rng.normal(0.0, noise, size=w.shape)), 0.0, 0.05)
    return out


data = Path("animation_data.obj")
with data.open("wb") as fh:
    pickle.dump(simulate(rows=8, cols=12, frames=15), fh)

cmd = [sys.executable, "-m", "mlflow_weightviz", "render-file", str(data), "--allow-pickle",
       "--out", "training_weights.gif", "--quiet"]
print("$ mlflow-weightviz " + " ".join(cmd[3:]))
subprocess.run(cmd, check=True)
print(f"gif: {Path('training_weights.gif').resolve()}")
