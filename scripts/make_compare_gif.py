"""Make docs/compare-fc2.weight.gif, the README's `compare` example, from two small real runs.

Two runs of the demo's tiny MLP (different seeds) are logged to a throw-away embedded
MLflow store, snapshotted at different steps (every 20 steps to 200, and every 30 steps
to 180), then compared with `mlflow-weightviz compare --view delta-init --diff`.

    python scripts/make_compare_gif.py          # writes docs/compare-fc2.weight.gif
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "docs" / "compare-fc2.weight.gif"


def log_run(client: Any, experiment_id: str, name: str, seed: int, steps: int, every: int) -> str:
    """One finished run of the tiny MLP with a snapshot every ``every`` steps; returns its id."""
    from mlflow_weightviz import log_snapshot
    from mlflow_weightviz.demo import train_tiny_mlp

    run_id: str = client.create_run(experiment_id, run_name=name).info.run_id
    for step, weights, _ in train_tiny_mlp(steps, seed=seed):
        if step % every == 0:
            log_snapshot(weights, step, run_id=run_id)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def main() -> None:
    """Log the two runs and write the GIF."""
    with tempfile.TemporaryDirectory(prefix="weightviz-compare-gif-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        os.chdir(tmp)  # the store's artifacts go to ./mlruns here
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        experiment_id = client.create_experiment("compare-example")
        a = log_run(client, experiment_id, "seed-0", seed=0, steps=200, every=20)
        b = log_run(client, experiment_id, "seed-1", seed=1, steps=180, every=30)
        subprocess.run([sys.executable, "-m", "mlflow_weightviz", "compare", a, b, "--layer", "fc2.weight",
                        "--view", "delta-init", "--diff", "--out", str(TARGET), "--quiet"], check=True)
    sys.stdout.write(f"wrote {TARGET.relative_to(REPO)} ({TARGET.stat().st_size // 1024} KiB)\n")


if __name__ == "__main__":
    main()
