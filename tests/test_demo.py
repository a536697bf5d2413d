"""The README's main job: `mlflow-weightviz demo` on MLflow's embedded default store, no configuration."""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from mlflow_weightviz.demo import mlflow_command, ui_command
from tests.conftest import free_port
from tests.helpers import artifact_files, assert_one_line_error, read_gif, run_cli, with_overview

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
    assert artifact_files(run_id[1], "weightviz", uri=uri) == with_overview([
        "weightviz/fc1.bias.gif", "weightviz/fc1.weight.gif", "weightviz/fc2.weight.gif"])
    assert read_gif(tmp_path / "weightviz-demo" / "fc1.weight.gif").n_frames == 5
    assert f"mlflow ui --backend-store-uri {uri}" in cli.stdout
    assert f"/runs/{run_id[1]}/artifacts/weightviz/fc1.weight.gif" in cli.stdout


# ------------------------------------------------------------------ the MLflow UI on the demo's store


def _fetch(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        assert r.status == 200, url
        data: bytes = r.read()
        return data


def _wait_healthy(url: str, proc: subprocess.Popen[Any], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the UI exited early with {proc.returncode}"
        try:
            if _fetch(f"{url}/health", timeout=2) == b"OK":
                return
        except OSError:
            time.sleep(0.3)
    msg = f"{url} did not answer within {timeout} s"
    raise AssertionError(msg)


def _gif_through_the_server(base: str, run_id: str) -> bytes:
    """The GIF as the UI's artifact viewer gets it: the server's REST API, not the files."""
    query = urllib.parse.urlencode({"path": "weightviz/fc1.weight.gif", "run_uuid": run_id})
    return _fetch(f"{base}/get-artifact?{query}")


def test_mlflow_command_is_a_path_that_exists() -> None:
    cmd = mlflow_command()
    assert Path(cmd[0]).is_file(), cmd
    assert Path(cmd[0]).is_absolute()
    assert cmd == [str(Path(sys.executable).parent / "mlflow")] or cmd == [sys.executable, "-m", "mlflow"]
    assert shlex.split(ui_command("sqlite:////a b/mlflow.db", 5123)) == [
        *cmd, "ui", "--backend-store-uri", "sqlite:////a b/mlflow.db", "--port", "5123"]


def test_the_printed_ui_command_runs_as_printed_from_a_shell_without_the_venv(tmp_path: Path) -> None:
    port = free_port()
    cli = run_cli("demo", "--steps", "10", "--every", "10", "--quiet", "--port", str(port), cwd=tmp_path,
                  env={"MLFLOW_TRACKING_URI": ""})
    assert cli.code == 0, cli.stderr
    run_id = re.search(r"^run id:\s+([0-9a-f]{32})$", cli.stdout, re.M)
    printed = re.search(r"^open the UI: (.+)$", cli.stdout, re.M)
    url = re.search(r"^then visit:  (\S+)$", cli.stdout, re.M)
    assert run_id, cli.stdout
    assert printed, cli.stdout
    assert url, cli.stdout
    argv = shlex.split(printed[1])
    assert Path(argv[0]).is_file(), argv  # an absolute path, not a bare `mlflow` the shell may not find
    assert argv[argv.index("--port") + 1] == str(port)
    assert url[1].startswith(f"http://127.0.0.1:{port}/#/experiments/")
    # A fresh shell: no venv on PATH, no tracking URI, another current folder.
    env = {k: v for k, v in os.environ.items() if k not in {"MLFLOW_TRACKING_URI", "VIRTUAL_ENV"}}
    env["PATH"] = "/usr/bin:/bin"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with (tmp_path / "ui.log").open("wb") as log:
        proc = subprocess.Popen(argv, cwd=elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(base, proc)
        assert b"<html" in _fetch(url[1]).lower()  # the UI's page; the part after '#' is the browser's
        assert _gif_through_the_server(base, run_id[1]).startswith(b"GIF89a")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def _read_until(proc: subprocess.Popen[str], pattern: str, timeout: float) -> tuple[re.Match[str], str]:
    """Read the process's stdout until ``pattern`` matches; a thread reads, so no line waits in a buffer."""
    stdout = proc.stdout
    assert stdout is not None
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in iter(stdout.readline, ""):
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen += lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        found = re.search(pattern, seen, re.M)
        if found:
            return found, seen
    msg = f"no {pattern!r} within {timeout} s (exit {proc.poll()}):\n{seen}"
    raise AssertionError(msg)


def test_demo_ui_serves_the_gif_until_ctrl_c_then_stops_the_server(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI="")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow_weightviz", "demo", "--ui", "--port", str(port),
                             "--steps", "10", "--every", "10", "--quiet"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        found, out = _read_until(proc, r"^the GIF:\s+(\S+)$", timeout=400)
        assert f"MLflow UI:   http://127.0.0.1:{port} (Ctrl-C stops it)" in out
        run_id = re.search(r"^run id:\s+([0-9a-f]{32})$", out, re.M)
        assert run_id
        assert found[1] == (f"http://127.0.0.1:{port}/#/experiments/1/runs/{run_id[1]}/artifacts/"
                            "weightviz/fc1.weight.gif")
        assert b"<html" in _fetch(found[1]).lower()
        assert _gif_through_the_server(f"http://127.0.0.1:{port}", run_id[1]).startswith(b"GIF89a")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1, children  # the MLflow UI, leading its own process group
        server = int(children[0])
        assert os.getpgid(server) == server
        environ = Path(f"/proc/{server}/environ").read_bytes().split(b"\0")
        assert b"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in environ
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert "error" not in err, err
    assert err.strip().splitlines()[-1] == "stopped the MLflow UI"
    with pytest.raises(ProcessLookupError):  # no process left in the server's group: workers included
        os.killpg(server, 0)
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        _fetch(f"http://127.0.0.1:{port}/health", timeout=2)


def test_demo_ui_reports_a_server_that_cannot_start_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cli = run_cli("demo", "--ui", "--port", str(port), "--steps", "10", "--every", "10", "--quiet",
                      cwd=tmp_path, env={"MLFLOW_TRACKING_URI": ""})
    line = assert_one_line_error(cli, 1, "the MLflow UI did not start", "address already in use", "server log:")
    assert "exit code 0" not in line
    assert "run id:      " in cli.stdout  # the demo itself was done and reported before
