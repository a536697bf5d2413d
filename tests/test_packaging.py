"""The wheel as a user gets it: built from the source tree, installed into a clean venv, run from elsewhere.

The venv is created by this interpreter's ``venv`` module, without system site-packages and
without the development install, and the runtime dependencies come from the package index
(pip's cache makes repeated runs faster; the first install takes a minute or two).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.helpers import read_gif, run_cli

pytestmark = pytest.mark.slow

PACKAGE = "mlflow_weightviz"
# Build products and caches that are not part of the source tree.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                                     ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis", ".work",
                                     "test-output", "node_modules")


def _clean_env(venv: Path) -> dict[str, str]:
    """The environment of a user's shell with the venv activated: no PYTHONPATH to the repository, no user site."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTHON") and k not in {"VIRTUAL_ENV", "MLFLOW_TRACKING_URI"}}
    env.update(PYTHONNOUSERSITE="1", VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return env


def _run(cmd: Sequence[str | Path], *, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository: setuptools writes build/ and *.egg-info next to the sources it builds."""
    src = tmp_path_factory.mktemp("source") / "repo"
    shutil.copytree(REPO, src, ignore=_NOT_SOURCE, symlinks=True)
    return src


@pytest.fixture(scope="module")
def wheel(source_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built as ``pip install .`` builds it: in an isolated env with pyproject's build requirements."""
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, source_tree], cwd=source_tree)
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel and its runtime dependencies installed from the package index."""
    home = tmp_path_factory.mktemp("venv")
    venv = home / "venv"
    # venv builds on the base interpreter even when run from the development venv.
    _run([sys.executable, "-m", "venv", venv], cwd=home)
    # --no-compile halves pip's work; the few modules the tests import compile on first use.
    _run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-compile", wheel], cwd=home,
         env=_clean_env(venv), timeout=1800)
    yield venv
    shutil.rmtree(venv, ignore_errors=True)  # close to a gigabyte with mlflow's dependencies


def test_wheel_ships_every_package_file_and_nothing_else(wheel: Path, source_tree: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    shipped = {n for n in names if not n.startswith(f"{dist_info}/")}
    source = {p.relative_to(source_tree).as_posix() for p in (source_tree / PACKAGE).rglob("*")
              if p.is_file() and not p.name.startswith(".")}
    assert f"{PACKAGE}/py.typed" in shipped
    assert {n for n in source if n.endswith(".py")} <= shipped
    # Data files (the player's .js/.css, py.typed) ship when pyproject's package-data globs name them.
    assert source - shipped == set(), "package files missing from the wheel: add their pattern to package-data"
    assert shipped - source == set()
    assert all(n.startswith(f"{PACKAGE}/") for n in shipped), sorted(shipped)
    assert not any(n.startswith(("tests/", "benchmarks/", "examples/", "scripts/", "docs/")) for n in names)
    assert re.search(rf"^mlflow-weightviz = {PACKAGE}\.cli:main$", entry_points, re.M), entry_points


def test_the_installed_package_is_the_wheel_not_the_repository(venv: Path, tmp_path: Path) -> None:
    code = ("import importlib.metadata as md, importlib.resources as r, sysconfig, mlflow_weightviz as m\n"
            "print(m.__file__); print(sysconfig.get_paths()['purelib'])\n"
            "print(r.files('mlflow_weightviz').joinpath('py.typed').is_file())\n"
            "print(md.distribution('mlflow-weightviz').read_text('direct_url.json'))")
    out = _run([venv / "bin" / "python", "-c", code], cwd=tmp_path, env=_clean_env(venv)).stdout.splitlines()
    module, purelib, typed, direct_url = out[0], Path(out[1]), out[2], "\n".join(out[3:])
    assert Path(module).is_relative_to(purelib), (module, purelib)
    assert not Path(module).resolve().is_relative_to(REPO)
    assert typed == "True"
    assert '"archive_info"' in direct_url, direct_url
    assert "editable" not in direct_url, direct_url
    assert not list(purelib.glob("__editable__*"))


def test_demo_runs_from_the_installed_wheel_on_the_default_store(venv: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    proc = _run([venv / "bin" / "mlflow-weightviz", "demo", "--steps", "40", "--every", "10", "--quiet"],
                cwd=tmp_path, env=_clean_env(venv))
    run_id = re.search(r"^run id:\s+([0-9a-f]{32})$", proc.stdout, re.M)
    assert run_id, proc.stdout
    assert (tmp_path / "mlflow.db").is_file()
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id[1])
    assert run.info.status == "FINISHED"
    gifs = sorted(p.name for p in (tmp_path / "weightviz-demo").iterdir() if p.suffix == ".gif")
    assert gifs == ["fc1.bias.gif", "fc1.weight.gif", "fc2.weight.gif"]
    assert (tmp_path / "weightviz-demo" / "overview.png").is_file()  # the demo logs to a run: the overview too
    for name in gifs:
        assert (tmp_path / "weightviz-demo" / name).read_bytes()[:6] == b"GIF89a"
    assert read_gif(tmp_path / "weightviz-demo" / "fc1.weight.gif").n_frames == 5


def test_render_file_html_from_the_installed_wheel_carries_the_packaged_player(
        venv: Path, wheel: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "weights.npz", fc1=rng.normal(0, 0.1, (4, 5, 7)).cumsum(axis=0),
             fc2=rng.normal(0, 0.1, (4, 3, 5)).cumsum(axis=0))  # stacks of 4 steps
    _run([venv / "bin" / "mlflow-weightviz", "render-file", "weights.npz", "--format", "html", "--output-dir", "out",
          "--quiet"], cwd=tmp_path, env=_clean_env(venv))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fc1.html", "fc2.html"]
    html = (tmp_path / "out" / "fc1.html").read_text(encoding="utf-8")

    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)  # inline, not the JSON or data blocks
    assert len(scripts) == 1, "the player's script is missing from the page"
    assert len(scripts[0]) > 1000, scripts[0]
    assert "<script src" not in html  # self-contained: the MLflow UI shows one file
    assert "<link" not in html
    with zipfile.ZipFile(wheel) as zf:
        assets = {n: zf.read(n).decode() for n in zf.namelist() if n.endswith((".js", ".css"))}
    for name, text in assets.items():
        missing = [line for line in text.splitlines() if line.strip() and line.strip() not in html]
        assert not missing, f"{name} is not in the page: {missing[:3]}"

    # The installed wheel writes the same page as the source tree.
    cli = run_cli("render-file", "weights.npz", "--format", "html", "--output-dir", "dev", "--quiet", cwd=tmp_path)
    assert cli.code == 0, cli.stderr
    for name in ("fc1.html", "fc2.html"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "dev" / name).read_bytes()
