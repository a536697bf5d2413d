"""Helpers shared by tests: runs with snapshots, reading GIFs back, running the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


def make_run(uri: str | None = None, *, finished: bool = True, experiment: str = "tests") -> str:
    """Create a run (FINISHED by default) and return its id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run_id: str = client.create_run(exp_id).info.run_id
    if finished:
        client.set_terminated(run_id, "FINISHED")
    return run_id


def log_folder(run_id: str, folder: Path, artifact_path: str = "weights", uri: str | None = None) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).log_artifacts(run_id, str(folder), artifact_path)


def training_series(steps: int = 5, shape: tuple[int, ...] = (4, 6), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.1, size=shape)
    out = []
    for _ in range(steps):
        out.append(w.copy())
        w = w + rng.normal(0, 0.01, size=shape)
    return out


def write_canonical(folder: Path, layers: Mapping[str, Sequence[np.ndarray]], steps: Sequence[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, step in enumerate(steps):
        np.savez(folder / f"step_{step}.npz", **{name: frames[i] for name, frames in layers.items()})


@dataclass
class GifInfo:
    size: tuple[int, int]
    n_frames: int
    durations: list[int]
    loop: int | None
    palettes: list[bytes]
    frames: list[np.ndarray]


def read_gif(path: Path) -> GifInfo:
    """Read a GIF back with Pillow: size, frame count, delays, loop, palettes and RGB frames."""
    with Image.open(path) as im:
        assert im.format == "GIF"
        durations, palettes, frames = [], [], []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(int(im.info.get("duration", 0)))
            palettes.append(bytes(im.getpalette() or b""))
            frames.append(np.asarray(im.convert("RGB")))
        return GifInfo(im.size, im.n_frames, durations, im.info.get("loop"), palettes, frames)


@dataclass
class Cli:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout: float = 300) -> Cli:
    """Run the real console entry point in a subprocess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "mlflow_weightviz", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout, check=False)
    return Cli(proc.returncode, proc.stdout, proc.stderr)


def artifact_files(run_id: str, path: str = "", uri: str | None = None) -> list[str]:
    """Every artifact file of a run under ``path``, recursively."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    out, stack = [], [path]
    while stack:
        for info in client.list_artifacts(run_id, stack.pop() or None):
            (stack.append if info.is_dir else out.append)(info.path)
    return sorted(out)


#: What a render logs besides the layers' GIFs: the layers × steps overview.
OVERVIEW_FILES = ("overview.html", "overview.png")


def with_overview(files: Sequence[str], folder: str = "weightviz") -> list[str]:
    """``files`` (artifact paths) and the overview a render logs beside them, sorted."""
    return sorted([*files, *(f"{folder}/{name}" for name in OVERVIEW_FILES)])


def run_isolated(*args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 300) -> Cli:
    """Run the CLI with its own TMPDIR and check that it leaves nothing in it."""
    tmpdir = cwd / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    cli = run_cli(*args, cwd=cwd, env={"TMPDIR": str(tmpdir), **(env or {})}, timeout=timeout)
    left = [str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*")]
    assert left == [], f"temporary files left behind: {left}"
    tmpdir.rmdir()  # leave the folder as it was found
    return cli


def assert_one_line_error(cli: Cli, code: int, *fragments: str) -> str:
    """The CLI failed with ``code`` and exactly one ``error:`` line holding every fragment; no traceback."""
    assert cli.code == code, (cli.code, cli.stdout, cli.stderr[-2000:])
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1, cli.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in cli.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def gif_blocks(data: bytes) -> tuple[bool, list[bool]]:
    """Walk a GIF's blocks: whether it has a global colour table, and for every image whether it has its own."""
    assert data[:6] in (b"GIF87a", b"GIF89a")
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    local: list[bool] = []

    def skip_sub_blocks(p: int) -> int:
        while data[p]:
            p += data[p] + 1
        return p + 1

    while data[pos] != 0x3B:
        if data[pos] == 0x21:  # extension: label, then sub-blocks
            pos = skip_sub_blocks(pos + 2)
        elif data[pos] == 0x2C:  # image descriptor
            packed = data[pos + 9]
            local.append(bool(packed & 0x80))
            pos += 10 + (3 * 2 ** ((packed & 7) + 1) if packed & 0x80 else 0)
            pos = skip_sub_blocks(pos + 1)  # LZW minimum code size, then data
        else:
            msg = f"unexpected GIF block {data[pos]:#x} at {pos}"
            raise AssertionError(msg)
    return bool(flags & 0x80), local


#: A number that reads as a signed zero: "-0", "-0.00", "-0.0%", "-0.00e+00" (also with U+2212, matplotlib's minus).
NEGATIVE_ZERO = re.compile(r"[-\u2212]0+(?:[.,]0+)?(?![\d.,])")
