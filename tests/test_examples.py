"""Every script in examples/ runs as a user would run it, in a fresh folder of its own.

One training example runs on MLflow's default store (``sqlite:///mlflow.db`` in its
folder, created there); the others honour ``MLFLOW_TRACKING_URI`` pointing at the real
server, which spares each a fresh database.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.helpers import artifact_files, read_gif

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# example → the optional packages it needs (a missing one skips the example, saying which)
NEEDS = {
    "numpy_loop.py": [],
    "pytorch_mlp.py": ["torch"],
    "keras_torch_backend.py": ["keras", "torch"],
    "lightning_mlp.py": ["lightning", "torch"],
    "hf_trainer.py": ["transformers", "accelerate", "torch"],
    "gpt2_overview.py": ["transformers", "torch"],
}
# example → its command-line arguments: a quick run
ARGS = {"gpt2_overview.py": ["--scale", "8", "--steps", "6", "--every", "2", "--save", "saved"]}
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
        command = [sys.executable, str(EXAMPLES / name), *ARGS.get(name, [])]
        proc = None if missing else subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                                     stderr=subprocess.PIPE, text=True)
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
@pytest.mark.parametrize("name", sorted(n for n in NEEDS if n != "gpt2_overview.py"))
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
    files = artifact_files(run_id, "weightviz", uri)
    assert files == sorted(printed(stdout, "gifs").split(", "))
    assert len([f for f in files if f.endswith(".gif")]) == 2
    assert {"weightviz/overview.png", "weightviz/overview.html"} <= set(files)


@pytest.mark.slow
def test_gpt2_example_logs_a_grid_within_budget_and_the_overview(launched: dict[str, Launched]) -> None:
    item, stdout = run_example(launched, "gpt2_overview.py")
    assert printed(stdout, "layers") == "50"
    assert printed(stdout, "files") == ("weightviz/grid-legend.json, weightviz/grid.gif, weightviz/overview.html, "
                                        "weightviz/overview.png")
    saved = item.cwd / "saved" / "weightviz"
    gif = read_gif(saved / "grid.gif")
    assert gif.n_frames == 4  # steps 0, 2, 4, 6
    assert gif.size[0] <= 2048
    assert gif.size[0] * gif.size[1] <= 4_000_000
    legend = json.loads((saved / "grid-legend.json").read_text(encoding="utf-8"))
    assert len(legend["panels"]) == 50
    assert legend["panels"][0]["layer"] == "transformer.wte.weight"  # the model's order
    page = (saved / "overview.html").read_text(encoding="utf-8")
    assert "transformer.h.11.mlp.c_fc.weight" in page
    with Image.open(saved / "overview.png") as png:
        assert png.format == "PNG"


@pytest.mark.slow
def test_pickle_example_renders_the_original_scripts_file(launched: dict[str, Launched]) -> None:
    item, stdout = run_example(launched, "pickle_render_file.py")
    assert "render-file animation_data.obj --allow-pickle --out training_weights.gif" in stdout
    gif = read_gif(item.cwd / "training_weights.gif")
    assert gif.n_frames == 15
    assert not (item.cwd / "mlflow.db").exists()  # no MLflow involved
