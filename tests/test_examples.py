"""Every script in examples/ runs as a user would run it, in a fresh folder, on MLflow's default store."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


def test_every_example_is_tested() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts == {*NEEDS, "pickle_render_file.py"}


@dataclass
class Launched:
    cwd: Path
    proc: subprocess.Popen[str] | None
    missing: list[str]


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Launched]]:
    """Start every example at once (each in its own fresh folder): they spend much of their time waiting."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the default store, in cwd
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    env.pop("KERAS_BACKEND", None)  # the Keras example chooses torch itself
    out = {}
    for name in [*NEEDS, "pickle_render_file.py"]:
        cwd = tmp_path_factory.mktemp(name.removesuffix(".py"))
        missing = [pkg for pkg in NEEDS.get(name, []) if importlib.util.find_spec(pkg) is None]
        proc = None if missing else subprocess.Popen([sys.executable, str(EXAMPLES / name)], cwd=cwd, env=env,
                                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out[name] = Launched(cwd, proc, missing)
    yield out
    for item in out.values():
        if item.proc is not None and item.proc.poll() is None:
            item.proc.kill()
            item.proc.communicate()


def run_example(launched: dict[str, Launched], name: str) -> tuple[Path, str]:
    item = launched[name]
    if item.proc is None:
        pytest.skip(f"{name} needs {', '.join(item.missing)}, which is not installed")
    stdout, stderr = item.proc.communicate(timeout=300)
    assert item.proc.returncode == 0, f"{name} failed:\n{stdout}\n{stderr[-4000:]}"
    return item.cwd, stdout


def printed(stdout: str, key: str) -> str:
    return next(line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith(f"{key}: "))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NEEDS))
def test_training_example_logs_snapshots_and_gifs_to_the_default_store(name: str,
                                                                       launched: dict[str, Launched]) -> None:
    cwd, stdout = run_example(launched, name)
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    assert (cwd / "mlflow.db").is_file()  # MLflow's default store, in the example's folder
    run_id = printed(stdout, "run_id")
    chunks = artifact_files(run_id, "weights", uri)
    assert chunks
    assert all(c.startswith("weights/chunk_") and c.endswith(".npz") for c in chunks)
    gifs = artifact_files(run_id, "weightviz", uri)
    assert gifs == sorted(printed(stdout, "gifs").split(", "))
    assert len(gifs) == 2


@pytest.mark.slow
def test_pickle_example_renders_the_original_scripts_file(launched: dict[str, Launched]) -> None:
    cwd, stdout = run_example(launched, "pickle_render_file.py")
    assert "render-file animation_data.obj --allow-pickle --out training_weights.gif" in stdout
    gif = read_gif(cwd / "training_weights.gif")
    assert gif.n_frames == 15
    assert not (cwd / "mlflow.db").exists()  # no MLflow involved
