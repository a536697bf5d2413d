"""Small helpers around MlflowClient: one place that turns MLflow failures into our errors."""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mlflow_weightviz.errors import OutputError, RunNotFoundError, TrackingServerError, WeightvizError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

#: Defaults the CLI applies when the user has not set them, so an unreachable server
#: fails in about 10 seconds instead of MLflow's several minutes of retries.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}

_CONNECTION_MARKERS = ("Max retries exceeded", "Connection refused", "ConnectionError",
                       "Failed to establish a new connection", "Read timed out", "RemoteDisconnected",
                       "Connection aborted", "ChunkedEncodingError", "IncompleteRead")


def client(tracking_uri: str | None = None) -> MlflowClient:
    """An MlflowClient for ``tracking_uri`` (default: MLFLOW_TRACKING_URI, else MLflow's default)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) says the server could not be reached."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)):
            return True
        if any(m in str(seen) for m in _CONNECTION_MARKERS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def translate(action: str, *, writing: bool = False) -> Iterator[None]:
    """Turn MLflow and HTTP failures during ``action`` into this package's errors."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except WeightvizError:
        raise
    except (MlflowException, OSError, Exception) as exc:
        error = _classify(exc, action, writing)
        if error is None:
            raise
        raise error from exc


def _classify(exc: Exception, action: str, writing: bool) -> WeightvizError | None:
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        text = str(exc.message).strip()
        detail = text.splitlines()[0] if text else exc.error_code
    elif isinstance(exc, OSError):
        detail = exc.strerror or str(exc)
    else:
        detail = str(exc)
    if is_connection_error(exc):
        return TrackingServerError(f"{action}: the tracking server cannot be reached ({_short(detail)})")
    if isinstance(exc, MlflowException) and exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
        return RunNotFoundError(f"{action}: {_short(detail)}")
    if isinstance(exc, (MlflowException, OSError)):
        kind = OutputError if writing else TrackingServerError
        return kind(f"{action}: {_short(detail)}")
    return None


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 160 else text[:157] + "..."


def get_run(c: MlflowClient, run_id: str) -> Any:
    """The run, or RunNotFoundError / TrackingServerError."""
    with translate(f"run {run_id}"):
        return c.get_run(run_id)


def list_files(c: MlflowClient, run_id: str, path: str) -> list[tuple[str, int]]:
    """Every file under artifact ``path`` of the run (recursively), as (path, size), sorted.

    A ``path`` naming a single file gives that file.
    """
    out: list[tuple[str, int]] = []
    with translate(f"listing artifacts of run {run_id}"):
        stack = [path.strip("/")]
        while stack:
            current = stack.pop()
            for info in c.list_artifacts(run_id, current or None):
                if info.is_dir:
                    stack.append(info.path)
                else:
                    out.append((info.path, int(info.file_size or 0)))
        if not out and path.strip("/"):
            parent = posixpath.dirname(path.strip("/"))
            for info in c.list_artifacts(run_id, parent or None):
                if info.path == path.strip("/") and not info.is_dir:
                    out.append((info.path, int(info.file_size or 0)))
    return sorted(out)
