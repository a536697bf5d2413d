"""SIGTERM stops render and render-file like Ctrl-C: one line, exit 143, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import artifact_files, log_folder, make_run, training_series, write_canonical


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _gone(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("command", ["render", "render-file"])
def test_sigterm_cleans_up_like_ctrl_c(tmp_path: Path, command: str) -> None:
    snaps = tmp_path / "snaps"
    write_canonical(snaps, {"enc.w": training_series(110, (14, 18)), "dec.w": training_series(110, (9, 11), seed=2)},
                    range(0, 1100, 10))
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    out = tmp_path / "gifs"
    if command == "render":
        run_id = make_run()
        log_folder(run_id, snaps)
        args = ["render", run_id, "--workers", "2", "--output-dir", str(out)]
    else:
        args = ["render-file", str(snaps), "--workers", "2", "--output-dir", str(out)]
    env = dict(os.environ, TMPDIR=str(tmpdir))
    proc = subprocess.Popen([sys.executable, "-m", "mlflow_weightviz", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        # Drawing has begun once the staging folder exists and the frame workers are up.
        deadline = time.monotonic() + 240
        workers: set[int] = set()
        while time.monotonic() < deadline and proc.poll() is None:
            staged = list(tmpdir.glob("weightviz-*/out"))
            workers = _descendants(proc.pid)
            if staged and len(workers) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the render ended before it could be stopped: make the job longer"
        time.sleep(0.5)
        workers |= _descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: terminated by SIGTERM")
    assert stdout == ""
    assert [p.name for p in tmpdir.glob("weightviz-*")] == []
    assert not out.exists() or list(out.iterdir()) == []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(_gone(pid) for pid in workers):
        time.sleep(0.2)
    assert all(_gone(pid) for pid in workers), "frame workers outlived the render"
    if command == "render":
        tags = MlflowClient().get_run(run_id).data.tags
        assert [k for k in tags if k.startswith("weightviz.")] == []  # no claim, no pending or final tags
        assert artifact_files(run_id, "weightviz") == []
