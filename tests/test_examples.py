"""Every script in examples/ runs as a user would run it, in a fresh folder of its own.

One training example runs on MLflow's default store (``sqlite:///mlflow.db`` in its
folder, created there); the others honour ``MLFLOW_TRACKING_URI`` pointing at the real
server, which spares each a fresh database.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import artifact_files, read_gif

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# example → the optional packages it needs (a missing one skips the example, saying which)
NEEDS = {
    "numpy_loop.py": [],
    "pytorch_mlp.py": ["torch"],
    "keras_torch_backend.py": ["keras", "torch"],
    "lightning_mlp.py": ["lightning", "torch"],
    "hf_trainer.py": ["transformers", "accelerate", "torch"],
}
DEFAULT_STORE = "numpy_loop.py"


def test_every_example_is_tested() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts == {*NEEDS, "pickle_render_file.py"}


@dataclass
class Launched:
    cwd: Path
    proc: subprocess.Popen[str] | None
    missing: list[str]
    tracking_uri: str | None


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory, mlflow_server: Any) -> Iterator[dict[str, Launched]]:
    """Start every example at once (each in its own fresh folder): they spend much of their time waiting."""
    base = {k: v for k, v in os.environ.items() if k not in {"MLFLOW_TRACKING_URI", "KERAS_BACKEND"}}
    base["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # (the Keras example picks its backend itself)
    out = {}
    for name in [*NEEDS, "pickle_render_file.py"]:
        cwd = tmp_path_factory.mktemp(name.removesuffix(".py"))
        env = dict(base) if name == DEFAULT_STORE else dict(base, MLFLOW_TRACKING_URI=mlflow_server.url)
        missing = [pkg for pkg in NEEDS.get(name, []) if importlib.util.find_spec(pkg) is None]
        proc = None if missing else subprocess.Popen([sys.executable, str(EXAMPLES / name)], cwd=cwd, env=env,
                                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out[name] = Launched(cwd, proc, missing, env.get("MLFLOW_TRACKING_URI"))
    yield out
    for item in out.values():
        if item.proc is not None and item.proc.poll() is None:
            item.proc.kill()
            item.proc.communicate()


def run_example(launched: dict[str, Launched], name: str) -> tuple[Launched, str]:
    item = launched[name]
    if item.proc is None:
        pytest.skip(f"{name} needs {', '.join(item.missing)}, which is not installed")
    stdout, stderr = item.proc.communicate(timeout=300)
    assert item.proc.returncode == 0, f"{name} failed:\n{stdout}\n{stderr[-4000:]}"
    return item, stdout


def printed(stdout: str, key: str) -> str:
    return next(line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith(f"{key}: "))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NEEDS))
def test_training_example_logs_snapshots_and_gifs(name: str, launched: dict[str, Launched]) -> None:
    item, stdout = run_example(launched, name)
    if item.tracking_uri is None:  # MLflow's default store, made in the example's folder
        assert (item.cwd / "mlflow.db").is_file()
        uri = f"sqlite:///{item.cwd / 'mlflow.db'}"
    else:  # MLFLOW_TRACKING_URI is honoured: nothing local
        assert not (item.cwd / "mlflow.db").exists()
        uri = item.tracking_uri
    run_id = printed(stdout, "run_id")
    chunks = artifact_files(run_id, "weights", uri)
    assert chunks
    assert all(c.startswith("weights/chunk_") and c.endswith(".npz") for c in chunks)
    gifs = artifact_files(run_id, "weightviz", uri)
    assert gifs == sorted(printed(stdout, "gifs").split(", "))
    assert len(gifs) == 2


@pytest.mark.slow
def test_pickle_example_renders_the_original_scripts_file(launched: dict[str, Launched]) -> None:
    item, stdout = run_example(launched, "pickle_render_file.py")
    assert "render-file animation_data.obj --allow-pickle --out training_weights.gif" in stdout
    gif = read_gif(item.cwd / "training_weights.gif")
    assert gif.n_frames == 15
    assert not (item.cwd / "mlflow.db").exists()  # no MLflow involved
