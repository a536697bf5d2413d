"""Small helpers around MlflowClient: one place that turns MLflow failures into our errors."""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow_weightviz.errors import (
    OutputError,
    RunNotFoundError,
    SnapshotFormatError,
    TrackingServerError,
    UsageError,
    WeightvizError,
)

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


# urllib3's words when the server answered, but only with errors, until the retries ran out.
_SERVER_ERRORS = re.compile(r"too many (\d{3}) error responses")
# One file's failure inside ArtifactRepository.download_artifacts' summary message.
_FILE_FAILURE = re.compile(r"##### File .*? #####\n(.*)", re.DOTALL)


#: MLflow's error codes for a request it refuses as malformed: no retry can help.
_REFUSED = ("INVALID_PARAMETER_VALUE", "BAD_REQUEST")


def artifact_folder(path: str, option: str) -> str:
    """``path`` checked as a relative artifact path in a run, without its trailing slashes.

    Checked before any work, so a render that could not log never starts (MLflow refuses
    such paths only when the files are logged).

    Raises:
        UsageError: ``path`` is empty, absolute, holds a backslash or a control
            character, or has an empty, ``.`` or ``..`` part (``a//b``, ``./a``, ``../a``).
    """
    text = path.rstrip("/") if isinstance(path, str) else ""
    parts = text.split("/")
    if (not text or text.startswith("/") or "\\" in text or any(ord(c) < 32 or c == "\x7f" for c in text)
            or any(p in ("", ".", "..") for p in parts)):
        msg = (f"{option} must be a relative artifact folder such as 'weightviz' or 'a/b' (no leading '/', "
               f"no empty, '.' or '..' parts); got {path!r}")
        raise UsageError(msg)
    return text


def client(tracking_uri: str | None = None) -> MlflowClient:
    """An MlflowClient for ``tracking_uri`` (default: MLFLOW_TRACKING_URI, else MLflow's default)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) says the server could not be reached."""
    import requests

    lost = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError, ConnectionError)
    seen: BaseException | None = exc
    for _ in range(10):  # causes can form a cycle
        if seen is None:
            break
        if isinstance(seen, lost) or any(m in str(seen) for m in _CONNECTION_MARKERS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def translate(action: str, *, writing: bool = False,
              refused: type[WeightvizError] | None = None) -> Iterator[None]:
    """Turn MLflow and HTTP failures during ``action`` into this package's errors.

    Args:
        action: What was being done, for the message.
        writing: Failures are :class:`OutputError` rather than :class:`TrackingServerError`.
        refused: The error for a request MLflow refuses as malformed
            (``INVALID_PARAMETER_VALUE``), e.g. :class:`RunNotFoundError` for a run id no
            run can have; by default it counts like any other MLflow failure.
    """
    try:
        yield
    except WeightvizError:
        raise
    except Exception as exc:  # MLflow, HTTP and OS errors alike; anything unknown is re-raised as is
        error = _classify(exc, action, writing, refused)
        if error is None:
            raise
        raise error from exc


def _classify(exc: Exception, action: str, writing: bool,
              refused: type[WeightvizError] | None = None) -> WeightvizError | None:
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        text = str(exc.message).strip()
        detail = text.splitlines()[0] if text else exc.error_code
    elif isinstance(exc, OSError):
        detail = exc.strerror or str(exc)
    else:
        detail = str(exc)
    failing = _SERVER_ERRORS.search(_chain_text(exc))
    if failing is not None:
        status = failing.group(1)
        if writing:
            return OutputError(f"{action}: the tracking server answered HTTP {status} to every attempt; "
                               "is its artifact store writable and not full? (see the server's log)")
        return TrackingServerError(f"{action}: the tracking server answered HTTP {status} to every attempt "
                                   "(see the server's log)")
    if is_connection_error(exc):
        return TrackingServerError(f"{action}: the tracking server cannot be reached ({_short(detail)})")
    if isinstance(exc, MlflowException) and exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
        return RunNotFoundError(f"{action}: {_short(detail)}")
    if refused is not None and isinstance(exc, MlflowException) and exc.error_code in _REFUSED:
        return refused(f"{action}: {_short(detail)}")
    if isinstance(exc, (MlflowException, OSError)):
        kind = OutputError if writing else TrackingServerError
        return kind(f"{action}: {_short(detail)}")
    return None


def _chain_text(exc: BaseException) -> str:
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 10:
        parts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    return " ".join(parts)


def _short(text: str) -> str:
    text = " ".join(text.split())
    # Keep both ends: an OS error names a long local path first and what went wrong last.
    return text if len(text) <= 160 else text[:100] + " ... " + text[-55:]


def get_run(c: MlflowClient, run_id: str) -> Any:
    """The run, or RunNotFoundError / TrackingServerError."""
    with translate(f"run {run_id}", refused=RunNotFoundError):
        return c.get_run(run_id)


def list_files(c: MlflowClient, run_id: str, path: str) -> list[tuple[str, int]]:
    """Every file under artifact ``path`` of the run (recursively), as (path, size), sorted.

    A ``path`` naming a single file gives that file.
    """
    out: list[tuple[str, int]] = []
    with translate(f"listing artifacts of run {run_id} at {path!r} (see --source)", refused=UsageError):
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


def download_folder(c: MlflowClient, run_id: str, path: str, dst: Path, *, action: str) -> Path:
    """Download the run's artifact ``path`` (a folder, recursively, or one file) into ``dst``; returns its local path.

    One call of the run's artifact repository's public ``download_artifacts`` (any store
    MLflow supports): it lists each folder once and downloads the files in its own
    thread pool, rather than listing every file before downloading it. The repository's
    pool is replaced by one where the first failure makes the downloads not yet started
    fail at once, so an unreachable server costs one round of retries, not one per file.
    After a failure ``dst`` is removed: no half-downloaded file is left to be read.

    Raises:
        TrackingServerError: The server or the artifact store cannot be reached.
        RunNotFoundError: The run or a file does not exist.
        SnapshotFormatError: MLflow refuses to download a path it stored.
        OutputError: A file cannot be written locally.
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    with translate(action):
        run = c.get_run(run_id)
        repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=c.tracking_uri)
        dst.mkdir(parents=True, exist_ok=True)
    pool = _FailFastPool(max(1, int(getattr(repo, "max_workers", 4) or 4)))
    repo.thread_pool = pool  # the pool download_artifacts submits each file's download to
    download: Callable[[str, str], str] = repo.download_artifacts
    try:
        local = download(path, os.fspath(dst.resolve()))
    except BaseException as exc:
        shutil.rmtree(dst, ignore_errors=True)
        if not isinstance(exc, Exception):  # Ctrl-C, SIGTERM: as they are
            raise
        if pool.failure is not None:  # the first failure, not the files skipped after it
            failed, error = pool.failure
            _raise_download_error(error, f"{action}: {failed}" if failed else action)
        _raise_download_error(exc, action)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return Path(local)


class _FailFastPool(ThreadPoolExecutor):
    """A thread pool for one folder download: once a download fails, the ones not yet started fail at once."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers, thread_name_prefix="weightviz-download")
        self.failure: tuple[str, BaseException] | None = None  # (artifact path, error) of the first failure
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn``; it is skipped (fails with :class:`_Skipped`) if another download failed first."""
        path = str(kwargs.get("remote_file_path") or "")

        def run() -> Any:
            if self.failure is not None:
                raise _Skipped(path)
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                with self._lock:
                    if self.failure is None:
                        self.failure = (path, exc)
                raise

        return super().submit(run)


class _Skipped(Exception):
    """A download not started because another one had failed."""


def _raise_download_error(error: BaseException, action: str) -> None:
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        # download_artifacts reports "The following failures occurred ...: ##### File <path> #####
        # <error>"; the error itself is what the user needs to read.
        inner = _FILE_FAILURE.search(str(error.message))
        if inner is not None:
            from mlflow.protos.databricks_pb2 import ErrorCode

            unwrapped = MlflowException(inner.group(1).strip(), error_code=ErrorCode.Value(error.error_code))
            unwrapped.__cause__ = error
            error = unwrapped
        if error.error_code == "INVALID_PARAMETER_VALUE":
            # MLflow's own path checks refuse some names it accepted on upload (e.g. "%2e%2e").
            msg = f"{action}: MLflow refuses to download this artifact path ({_short(str(error.message))})"
            raise SnapshotFormatError(msg) from error
    with translate(action):
        raise error
