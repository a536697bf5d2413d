"""The README's main job: `mlflow-weightviz demo` on MLflow's embedded default store, no configuration."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import artifact_files, read_gif, run_cli

pytestmark = pytest.mark.slow


def test_demo_logs_snapshots_and_gifs_to_the_default_store_in_the_current_folder(tmp_path: Path) -> None:
    cli = run_cli("demo", "--steps", "40", "--every", "10", "--quiet", cwd=tmp_path,
                  env={"MLFLOW_TRACKING_URI": ""})  # unset: MLflow's own default, sqlite:///mlflow.db
    assert cli.code == 0, cli.stderr
    assert (tmp_path / "mlflow.db").is_file()
    run_id = re.search(r"^run id:\s+([0-9a-f]{32})$", cli.stdout, re.M)
    assert run_id, cli.stdout
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = MlflowClient(uri).get_run(run_id[1])
    assert run.info.status == "FINISHED"
    assert artifact_files(run_id[1], "weights", uri=uri) == [f"weights/step_{s}.npz" for s in (0, 10, 20, 30, 40)]
    assert artifact_files(run_id[1], "weightviz", uri=uri) == [
        "weightviz/fc1.bias.gif", "weightviz/fc1.weight.gif", "weightviz/fc2.weight.gif"]
    assert read_gif(tmp_path / "weightviz-demo" / "fc1.weight.gif").n_frames == 5
    assert f"mlflow ui --backend-store-uri {uri}" in cli.stdout
    assert f"/runs/{run_id[1]}/artifacts/weightviz/fc1.weight.gif" in cli.stdout
