"""Faults (issue 5, item 3) with a real `mlflow server` that these tests start, kill and restart.

The server here is this module's own (own port, own sqlite backend and artifact root), not
the session's, because the tests kill it. A restart reuses the port, the backend and the
artifact root, so the run and everything logged before the fault are still there.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import MlflowServer
from tests.helpers import (
    artifact_files,
    assert_one_line_error,
    log_folder,
    make_run,
    read_gif,
    run_cli,
    run_isolated,
    with_overview,
)

pytestmark = [pytest.mark.server, pytest.mark.slow]

# A render interrupted by a fault cannot release its claim on the run (the server is gone);
# a short lease lets the rerun after the restart go ahead instead of waiting 10 minutes.


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    srv = MlflowServer(tmp_path_factory.mktemp("fault-server"))
    srv.start()
    yield srv
    srv.stop(kill=True)


def ensure_up(srv: MlflowServer) -> None:
    if srv.proc is None or srv.proc.poll() is not None:
        srv.stop()
        srv.start()


class KillWhen(threading.Thread):
    """SIGKILL the server (its whole process group) as soon as ``condition()`` holds."""

    def __init__(self, srv: MlflowServer, condition: Callable[[], bool], timeout: float = 240) -> None:
        super().__init__(daemon=True)
        assert srv.proc is not None
        self.pid = srv.proc.pid
        self.condition = condition
        self.deadline = time.monotonic() + timeout
        self.done = threading.Event()
        self.killed = False

    def run(self) -> None:
        while not self.done.is_set() and time.monotonic() < self.deadline:
            if self.condition():
                os.killpg(self.pid, signal.SIGKILL)
                self.killed = True
                return
            time.sleep(0.002)


def weightviz_tags(uri: str, run_id: str) -> dict[str, str]:
    return {k: v for k, v in MlflowClient(uri).get_run(run_id).data.tags.items() if k.startswith("weightviz.")}


def run_with_snapshots(uri: str, folder: Path, steps: int, shape: tuple[int, ...], layers: int = 1) -> str:
    run_id = make_run(uri)
    folder.mkdir()
    rng = np.random.default_rng(0)
    for s in range(steps):
        np.savez(folder / f"step_{s}.npz",
                 **{f"layer{j:02d}": rng.normal(size=shape).astype(np.float32) for j in range(layers)})
    log_folder(run_id, folder, uri=uri)
    return run_id


def rerender_after_restart(srv: MlflowServer, run_id: str, cwd: Path, layers: int) -> None:
    ensure_up(srv)  # same port, same backend and artifact root
    # The interrupted render's claim is still on the run with most of its 600 s lease
    # left; its process is gone, so the claim is void for a renderer on this host.
    cli = run_isolated("render", run_id, "--tracking-uri", srv.url, "--quiet", cwd=cwd)
    assert cli.code == 0, cli.stderr
    assert len(cli.stdout.splitlines()) == layers + 1  # one line per layer, and the overview's
    assert cli.stdout.splitlines()[-1] == "also: overview.html, overview.png"
    tags = weightviz_tags(srv.url, run_id)
    assert tags["weightviz.status"] == "rendered"
    assert len(tags["weightviz.fingerprint"]) == 32
    assert len(artifact_files(run_id, "weightviz", uri=srv.url)) == layers + 2  # with overview.png/.html
    assert MlflowClient(srv.url).get_run(run_id).info.status == "FINISHED"


# ------------------------------------------------------------------------------------------ faults


def test_server_down_at_start_fails_after_bounded_retries(server: MlflowServer, tmp_path: Path) -> None:
    ensure_up(server)
    run_id = run_with_snapshots(server.url, tmp_path / "w", steps=3, shape=(3, 4))
    server.stop()
    started = time.monotonic()
    cli = run_isolated("render", run_id, "--tracking-uri", server.url, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert_one_line_error(cli, 5, "the tracking server cannot be reached")
    # HTTP_DEFAULTS: 2 retries with a 1 s backoff factor, so about 3 s of waiting, not minutes.
    assert elapsed < 45, f"gave up only after {elapsed:.0f} s"
    ensure_up(server)
    assert artifact_files(run_id, "weightviz", uri=server.url) == []
    assert weightviz_tags(server.url, run_id) == {}
    cli = run_isolated("render", run_id, "--tracking-uri", server.url, "--quiet", cwd=tmp_path)
    assert cli.code == 0, cli.stderr
    assert artifact_files(run_id, "weightviz", uri=server.url) == with_overview(["weightviz/layer00.gif"])


def test_server_killed_during_download(server: MlflowServer, tmp_path: Path) -> None:
    ensure_up(server)
    files = 120  # 120 × 256 KiB: the kill lands while most files are still to come
    run_id = run_with_snapshots(server.url, tmp_path / "w", steps=files, shape=(256, 256))
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()

    def downloading() -> bool:  # the first snapshot file has appeared in the render's work folder
        return any("source" in root for root, _, names in os.walk(tmpdir) if names)

    log_before = server.log.read_text()
    killer = KillWhen(server, downloading)
    killer.start()
    started = time.monotonic()
    cli = run_isolated("render", run_id, "--tracking-uri", server.url, cwd=tmp_path)
    elapsed = time.monotonic() - started
    killer.done.set()
    killer.join()
    assert killer.killed
    assert_one_line_error(cli, 5, "the tracking server cannot be reached")
    # The first failed file makes the ones not started fail at once: one round of retries
    # (about 3 s), not one per file still to come (about 3 s for every 4 of them).
    assert elapsed < 60, f"gave up only after {elapsed:.0f} s"
    print(f"render with the server killed ended after {elapsed:.1f} s")
    pattern = re.compile(rf"GET /api/2\.0/mlflow-artifacts/artifacts/\d+/{run_id}/artifacts/weights/step_\d+\.npz")
    served = len(pattern.findall(server.log.read_text()[len(log_before):]))
    assert served < files, f"the server sent all {served} files before it was killed"
    server.stop(kill=True)
    ensure_up(server)
    assert artifact_files(run_id, "weightviz", uri=server.url) == []
    assert "weightviz.fingerprint" not in weightviz_tags(server.url, run_id)
    rerender_after_restart(server, run_id, tmp_path, layers=1)


def test_server_killed_during_upload(server: MlflowServer, tmp_path: Path) -> None:
    ensure_up(server)
    layers = 30  # 30 GIFs, uploaded one after another
    run_id = run_with_snapshots(server.url, tmp_path / "w", steps=4, shape=(3, 3), layers=layers)
    exp_id = MlflowClient(server.url).get_run(run_id).info.experiment_id
    target = server.root / "artifacts" / exp_id / run_id / "artifacts" / "weightviz"
    killer = KillWhen(server, target.exists)  # the server has begun to receive the first GIF
    killer.start()
    cli = run_isolated("render", run_id, "--tracking-uri", server.url, cwd=tmp_path)
    killer.done.set()
    killer.join()
    assert killer.killed
    assert_one_line_error(cli, 5, "the tracking server cannot be reached")
    server.stop(kill=True)
    ensure_up(server)
    logged = artifact_files(run_id, "weightviz", uri=server.url)
    assert len(logged) < layers, "the kill came after the upload had finished"
    for path in logged:  # whatever arrived is complete: the server publishes a file only when it has it all
        local = MlflowClient(server.url).download_artifacts(run_id, path, str(tmp_path / "check"))
        assert read_gif(Path(local)).n_frames == 4
    tags = weightviz_tags(server.url, run_id)
    assert tags["weightviz.status"] == "logging"  # marked before the upload, so not "up to date"
    assert tags["weightviz.fingerprint"] == ""
    rerender_after_restart(server, run_id, tmp_path, layers=layers)


@contextlib.contextmanager
def read_only(folder: Path, run_folder: Path, how: str) -> Iterator[None]:
    """Make the artifact store unwritable, also for root (CI runs as root, where chmod stops nothing)."""
    if how == "bind-mount":
        bound = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True,
                               check=False)
        if bound.returncode != 0:
            pytest.skip(f"cannot bind-mount here (needs root/CAP_SYS_ADMIN): {bound.stderr.strip()}")
        try:
            remount = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True,
                                     text=True, check=False)
            if remount.returncode != 0:
                pytest.skip(f"cannot remount read-only here: {remount.stderr.strip()}")
            yield
        finally:
            subprocess.run(["umount", str(folder)], capture_output=True, check=False)
        return
    # Works anywhere: a file where the server must create the weightviz/ folder makes every write fail.
    blocker = run_folder / "weightviz"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    try:
        yield
    finally:
        blocker.unlink()


@pytest.mark.parametrize("how", ["bind-mount", "file-in-the-way"])
def test_read_only_artifact_store(server: MlflowServer, tmp_path: Path, how: str) -> None:
    ensure_up(server)
    run_id = run_with_snapshots(server.url, tmp_path / "w", steps=3, shape=(3, 4))
    exp_id = MlflowClient(server.url).get_run(run_id).info.experiment_id
    store = server.root / "artifacts"
    with read_only(store, store / exp_id / run_id / "artifacts", how):
        cli = run_isolated("render", run_id, "--tracking-uri", server.url, cwd=tmp_path)
    assert_one_line_error(cli, 6, "is its artifact store writable")
    assert artifact_files(run_id, "weightviz", uri=server.url) == []
    assert weightviz_tags(server.url, run_id).get("weightviz.status") != "rendered"
    cli = run_isolated("render", run_id, "--tracking-uri", server.url, "--quiet", cwd=tmp_path)
    assert cli.code == 0, cli.stderr  # writable again: the next render completes


# ------------------------------------------------------------------------------ local disk full


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a size-limited folder")
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root/CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def test_disk_full_while_encoding_leaves_no_partial_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "r8.npy", rng.normal(size=(40, 8, 8)).astype(np.float32))  # 20 KiB stack, ~0.8 MB GIF
    np.save(tmp_path / "r16.npy", rng.normal(size=(40, 16, 16)).astype(np.float32))  # 80 KiB stack
    with tiny_tmpfs(tmp_path / "small", "256k") as small:
        # The temporary folder fills up while the GIF is encoded.
        cli = run_cli("render-file", "r8.npy", "--output-dir", "out", cwd=tmp_path, env={"TMPDIR": str(small)})
        assert_one_line_error(cli, 6, "r8.gif: No space left on device")
        assert list(small.iterdir()) == []
        assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
        # The output folder fills up while the finished GIF is copied there.
        cli = run_cli("render-file", "r8.npy", "--output-dir", str(small), cwd=tmp_path)
        assert_one_line_error(cli, 6, "No space left on device")
        assert list(small.iterdir()) == []  # no r8.gif, no hidden .part file
    with tiny_tmpfs(tmp_path / "tiny", "32k") as tiny:
        # Even the frame stack does not fit: a clean error, not a crash (SIGBUS) in a memory map.
        cli = run_cli("render-file", "r16.npy", "--output-dir", "out", cwd=tmp_path, env={"TMPDIR": str(tiny)})
        assert_one_line_error(cli, 6, "cannot write temporary data in")
        assert "No space left on device (point TMPDIR at a folder with more free space)" in cli.stderr
        assert list(tiny.iterdir()) == []
