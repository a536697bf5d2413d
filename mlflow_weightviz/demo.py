"""``mlflow-weightviz demo``: train a tiny numpy network, log its snapshots, render and log the GIFs."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import numpy as np

from mlflow_weightviz import _tracking
from mlflow_weightviz.capture import log_snapshot
from mlflow_weightviz.errors import UsageError, WeightvizError
from mlflow_weightviz.pipeline import render_run

__all__ = ["DemoResult", "UiServer", "choose_port", "is_remote", "mlflow_command", "run_demo", "serve_ui", "start_ui",
           "train_tiny_mlp", "ui_command"]

EXPERIMENT = "weightviz-demo"
DEFAULT_PORT = 5000


@dataclass(frozen=True)
class DemoResult:
    """Where the demo put things, and how to look at them."""

    run_id: str
    experiment_id: str
    artifact_paths: tuple[str, ...]
    local_dir: Path
    #: A shell command starting the MLflow UI on the demo's store; empty for a tracking server.
    ui_command: str
    ui_url: str
    tracking_uri: str = ""


def train_tiny_mlp(steps: int = 300, seed: int = 0):  # type: ignore[no-untyped-def]
    """Yield ``(step, weights, loss)`` while training a 12→8→3 tanh MLP on three Gaussian blobs with SGD."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.5, size=(3, 12))
    labels = rng.integers(0, 3, size=600)
    x = centres[labels] + rng.normal(0, 1.0, size=(600, 12))
    w1 = rng.normal(0, 0.3, size=(8, 12))
    b1 = np.zeros(8)
    w2 = rng.normal(0, 0.3, size=(3, 8))
    b2 = np.zeros(3)
    lr = 0.1
    for step in range(steps + 1):
        batch = rng.integers(0, 600, size=64)
        xb, yb = x[batch], labels[batch]
        h = np.tanh(xb @ w1.T + b1)
        logits = h @ w2.T + b2
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        loss = float(-np.log(p[np.arange(64), yb] + 1e-12).mean())
        yield step, {"fc1.weight": w1.copy(), "fc1.bias": b1.copy(), "fc2.weight": w2.copy()}, loss
        grad = p
        grad[np.arange(64), yb] -= 1
        grad /= 64
        gw2, gb2 = grad.T @ h, grad.sum(axis=0)
        gh = (grad @ w2) * (1 - h**2)
        gw1, gb1 = gh.T @ xb, gh.sum(axis=0)
        w1 -= lr * gw1
        b1 -= lr * gb1
        w2 -= lr * gw2
        b2 -= lr * gb2


def run_demo(*, tracking_uri: str | None = None, steps: int = 300, every: int = 10,
             output_dir: str | Path = "weightviz-demo",
             progress: Callable[[int, int], None] | None = None, port: int = DEFAULT_PORT) -> DemoResult:
    """Train, log snapshots every ``every`` steps to a new run, render the GIFs and log them back.

    Uses MLflow's default store (``sqlite:///mlflow.db`` with artifacts in ``./mlruns``)
    unless ``tracking_uri`` is given. Local copies of the GIFs go to ``output_dir``.
    ``port`` is the one the printed UI command and URL use (a local store only).
    """
    import mlflow
    from mlflow.entities import Metric

    client = _tracking.client(tracking_uri)
    uri = tracking_uri or mlflow.get_tracking_uri()
    with _tracking.translate("starting the demo run", writing=True):
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
        run = client.create_run(experiment_id, run_name="tiny-mlp",
                                tags={"mlflow.source.name": "mlflow-weightviz demo"})
        run_id = run.info.run_id
        client.log_batch(run_id, params=[mlflow.entities.Param("steps", str(steps)),
                                         mlflow.entities.Param("every", str(every))])
    metrics = []
    try:
        for step, weights, loss in train_tiny_mlp(steps):
            metrics.append(Metric("loss", loss, 0, step))
            if step % every == 0:
                log_snapshot(weights, step, run_id=run_id, tracking_uri=tracking_uri)
        with _tracking.translate("logging the demo's metrics", writing=True):
            for i in range(0, len(metrics), 500):
                client.log_batch(run_id, metrics=metrics[i:i + 500])
    except BaseException:
        with contextlib.suppress(Exception):  # keep the original error
            client.set_terminated(run_id, "FAILED")
        raise
    with _tracking.translate("finishing the demo run", writing=True):
        client.set_terminated(run_id, "FINISHED")
    local = Path(output_dir).resolve()
    result = render_run(run_id, tracking_uri=tracking_uri, output_dir=local, progress=progress)
    # Point the URL at the largest layer's GIF: the most to look at.
    main = max(result.layers, key=lambda r: r.grid[0] * r.grid[1], default=None)
    first = main.artifact_path if main is not None and main.artifact_path else "weightviz"
    # A tracking server is its own UI; a local store needs one started on it.
    remote = is_remote(uri)
    base = uri.rstrip("/") if remote else f"http://127.0.0.1:{port}"
    return DemoResult(
        run_id=run_id, experiment_id=experiment_id, artifact_paths=result.artifact_paths, local_dir=local,
        ui_command="" if remote else ui_command(uri, port),
        ui_url=f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{first}", tracking_uri=uri)


def is_remote(uri: str) -> bool:
    """Whether ``uri`` is a tracking server (which serves its own UI) rather than a local store."""
    return uri.split(":", 1)[0].lower() in {"http", "https", "databricks"}


# ------------------------------------------------------------------ the MLflow UI


def mlflow_command() -> list[str]:
    """How to run MLflow's command line under the interpreter running this code.

    The ``mlflow`` script next to the interpreter (a venv's ``bin``) when there is one,
    else ``<interpreter> -m mlflow``: either works from a shell that never activated the
    venv, unlike a bare ``mlflow``. The interpreter path is not resolved, since a venv's
    ``python`` is a symlink to a base interpreter that lacks the venv's packages.
    """
    exe = Path(sys.executable)
    script = exe.parent / ("mlflow.exe" if os.name == "nt" else "mlflow")
    if script.is_file():
        return [str(script)]
    return [str(exe), "-m", "mlflow"]


def ui_command(uri: str, port: int = DEFAULT_PORT) -> str:
    """A shell command that starts the MLflow UI on the store at ``uri``, quoted to run as printed."""
    return shlex.join([*mlflow_command(), "ui", "--backend-store-uri", uri, "--port", str(port)])


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_port(preferred: int = DEFAULT_PORT) -> int:
    """``preferred`` if nothing listens on it on 127.0.0.1, else a free port the system picks."""
    if _port_is_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class UiServer:
    """A running ``mlflow ui`` started by :func:`start_ui`; :meth:`stop` ends it and its workers."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server's whole process group (uvicorn runs its workers as children)."""
        proc = self.process
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
                proc.wait(timeout=timeout)
        # Workers may outlive the parent by a moment; make sure none is left behind.
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if hasattr(os, "killpg"):
                os.killpg(self.process.pid, sig)
            elif self.process.poll() is None:
                self.process.send_signal(sig)

    def failure(self, what: str) -> str:
        """One line saying ``what`` went wrong, with the most telling line of the server's log."""
        try:
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            lines = []
        telling = [ln for ln in lines if "error" in ln.lower()] or lines
        detail = f": {telling[-1]}" if telling else ""
        return f"{what}{detail} (server log: {self.log_path})"


def start_ui(uri: str, port: int, *, log_path: Path, timeout: float = 180.0) -> UiServer:
    """Start ``mlflow ui`` on the store at ``uri`` on 127.0.0.1:``port`` and wait until it answers /health.

    The server runs in its own process group, with MLflow's job runner off and its
    output in ``log_path``. Raises :class:`~mlflow_weightviz.errors.WeightvizError`
    (after stopping it) if it exits or does not answer within ``timeout`` seconds.
    """
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    server = UiServer(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            code = proc.poll()
            if code is not None:
                # `mlflow ui` exits 0 even when uvicorn could not bind: the log says why.
                what = "the MLflow UI did not start" + (f" (exit code {code})" if code else "")
                raise WeightvizError(server.failure(what))
            if _healthy(server.url):
                return server
            if time.monotonic() > deadline:
                raise WeightvizError(server.failure(f"the MLflow UI did not answer within {timeout:g} s"))
            time.sleep(0.3)
    except BaseException:
        server.stop()
        raise


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Let SIGINT, SIGTERM and SIGHUP end the wait, so the server is stopped too.

    SIGINT is set explicitly because a shell starts background jobs with it ignored.
    Only the first signal interrupts: a second Ctrl-C must not cut the server's shutdown short.
    """
    interrupted = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            raise KeyboardInterrupt

    names = ("SIGINT", "SIGTERM", "SIGHUP")
    sigs = [getattr(signal, n) for n in names if hasattr(signal, n)]
    previous = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def serve_ui(result: DemoResult, port: int, *, on_ready: Callable[[UiServer], None] | None = None,
             timeout: float = 180.0) -> None:
    """Start the MLflow UI on the demo's store and keep it running until Ctrl-C (or SIGTERM).

    Returns normally once stopped by a signal; raises
    :class:`~mlflow_weightviz.errors.WeightvizError` if the server fails to start or dies.
    """
    if not result.ui_command:
        msg = f"the demo logged to the tracking server {result.tracking_uri}, which is its own UI: open it there"
        raise UsageError(msg)
    with _terminate_as_interrupt():
        server: UiServer | None = None
        try:
            server = start_ui(result.tracking_uri, port, log_path=result.local_dir / "mlflow-ui.log",
                              timeout=timeout)
            if on_ready is not None:
                on_ready(server)
            code = server.process.wait()
            msg = server.failure(f"the MLflow UI stopped unexpectedly (exit code {code})")
            raise WeightvizError(msg)
        except KeyboardInterrupt:
            return
        finally:
            if server is not None:
                server.stop()
