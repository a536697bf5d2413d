"""Rendering one run anywhere: here, in a local process pool, or on a Dask cluster.

A :class:`RenderJob` holds everything a worker needs (it is picklable);
:func:`render_job` renders it and reports a :class:`RunOutcome`, never raising for the
run's own problems. :func:`execute` runs many jobs through :class:`LocalPool` or
:class:`DaskExecutor` (``distributed.Client(...).get_executor()``); each worker renders a
whole run and draws its frames in that one process.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import importlib
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from mlflow_weightviz import _tracking
from mlflow_weightviz.errors import (
    EXIT_CRASH,
    MissingDependencyError,
    SnapshotsNotFoundError,
    UsageError,
    WeightvizError,
)
from mlflow_weightviz.options import RenderOptions, WeightvizWarning
from mlflow_weightviz.tags import Status

__all__ = ["OUTCOME_STATUSES", "DaskExecutor", "LocalPool", "RenderJob", "RunOutcome", "StopFlag", "count_statuses",
           "execute", "render_job", "stop_on_signals"]

#: Run outcomes, in the order the summaries list them.
OUTCOME_STATUSES = (Status.RENDERED, Status.WOULD_RENDER, Status.UP_TO_DATE, Status.NO_SNAPSHOTS, Status.RUNNING,
                    Status.CLAIMED, Status.FAILED, Status.ABANDONED, Status.CANCELLED)


@dataclass(frozen=True)
class RunOutcome:
    """What happened to one run.

    Attributes:
        run_id: The run.
        status: One of ``rendered``, ``would_render`` (dry run), ``up_to_date``,
            ``no_snapshots``, ``running`` (skipped), ``claimed`` (another process is
            rendering it), ``failed``, ``abandoned`` (stopped before publishing) or
            ``cancelled`` (never started because the batch was interrupted).
        run_name: The run's name.
        reason: Why it failed or was skipped.
        exit_code: The error's CLI exit code when it failed (:data:`~mlflow_weightviz.errors.EXIT_CRASH`
            for an unexpected exception).
        retryable: Whether the failure may go away by trying again (see
            :attr:`WeightvizError.retryable <mlflow_weightviz.errors.WeightvizError.retryable>`).
        error: The error's class name when it failed, e.g. ``TrackingServerError``.
        layers: GIFs rendered.
        frames: Frames drawn.
        seconds: Wall time spent on the run.
        warnings: Warnings raised while rendering it.
    """

    run_id: str
    status: Status
    run_name: str = ""
    reason: str = ""
    exit_code: int = 0
    layers: int = 0
    frames: int = 0
    seconds: float = 0.0
    warnings: tuple[str, ...] = ()
    retryable: bool = False
    error: str = ""


def count_statuses(outcomes: Iterable[RunOutcome]) -> dict[str, int]:
    """Runs per status, every outcome status present, in the order summaries list them."""
    counts = dict.fromkeys((s.value for s in OUTCOME_STATUSES), 0)
    for o in outcomes:
        key = Status(o.status).value
        counts[key] = counts.get(key, 0) + 1
    return counts



# ------------------------------------------------------------------------- stopping


class StopFlag(threading.Event):
    """An event set by SIGINT/SIGTERM; ``signal_name`` tells which."""

    signal_name: str | None = None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Turn the first SIGINT/SIGTERM into a stop request; the second interrupts at once.

    Outside the main thread (where signals cannot be handled) the flag is only set by
    the caller.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.signal_name = signal.Signals(signum).name
        flag.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ------------------------------------------------------------------ one run, anywhere


class _Abandoned(Exception):
    """Raised from the progress callback to stop a render before it publishes anything."""


@dataclass(frozen=True)
class RenderJob:
    """Everything a worker process needs to render one run (picklable)."""

    run_id: str
    run_name: str
    options: RenderOptions
    source: str
    artifact_path: str
    tracking_uri: str
    force: bool = False
    allow_pickle: bool = False
    draw_workers: int = 1  # processes drawing this run's frames


def _worker_setup() -> None:
    # Same quiet, bounded HTTP behaviour as the CLI, also in spawned and Dask workers.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for key, value in _tracking.HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def _pool_init() -> None:
    _worker_setup()
    # The parent decides how to stop; Ctrl-C reaches the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def render_job(job: RenderJob, should_stop: Callable[[], bool] | None = None) -> RunOutcome:
    """Render one run and report what happened; never raises for the run's own problems.

    Args:
        job: The run and how to render it.
        should_stop: Polled between frames; when it returns true the render is abandoned
            before anything is logged (status ``abandoned``).
    """
    from mlflow_weightviz.pipeline import render_run

    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if should_stop is not None and should_stop():
            raise _Abandoned

    def outcome(status: Status, reason: str = "", error: BaseException | None = None, layers: int = 0,
                frames: int = 0) -> RunOutcome:
        if error is None:
            exit_code, retryable, kind = 0, False, ""
        elif isinstance(error, WeightvizError):
            exit_code, retryable, kind = error.exit_code, error.retryable, type(error).__name__
        else:  # a surprise may be a passing one (e.g. a worker's memory); let it be tried again
            exit_code, retryable, kind = EXIT_CRASH, True, type(error).__name__
        return RunOutcome(job.run_id, status, job.run_name, reason, exit_code, layers, frames,
                          round(time.perf_counter() - start, 3), tuple(str(w.message) for w in caught), retryable,
                          kind)

    with warnings.catch_warnings(record=True) as caught:
        # Record our own warnings per run instead of printing them from many workers.
        warnings.simplefilter("always", WeightvizWarning)
        try:
            result = render_run(job.run_id, job.options, source=job.source, artifact_path=job.artifact_path,
                                tracking_uri=job.tracking_uri, force=job.force, progress=progress,
                                workers=job.draw_workers, allow_pickle=job.allow_pickle)
        except _Abandoned:
            return outcome(Status.ABANDONED, "stopped before publishing; nothing was logged")
        except SnapshotsNotFoundError as exc:
            return outcome(Status.NO_SNAPSHOTS, str(exc))
        except WeightvizError as exc:
            return outcome(Status.FAILED, one_line(str(exc)), exc)
        except Exception as exc:  # one run's surprise must not stop the others
            return outcome(Status.FAILED, f"unexpected {type(exc).__name__}: {one_line(str(exc))}", exc)
    if result.status == Status.RENDERED:
        return outcome(Status.RENDERED, layers=len(result.layers), frames=sum(r.frames for r in result.layers))
    if result.status == Status.CLAIMED:
        return outcome(Status.CLAIMED, f"being rendered by {result.claimed_by or 'another process'}")
    return outcome(Status.UP_TO_DATE)


def _remote_render_job(job: RenderJob) -> RunOutcome:
    """:func:`render_job` in a pool or Dask worker, set up like the CLI."""
    _worker_setup()
    return render_job(job)


def one_line(text: str) -> str:
    """``text`` on one line, for reports."""
    return " ".join(text.split())


# ------------------------------------------------------------------------ executors


class LocalPool:
    """A local process pool that is rebuilt if a worker process dies."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.executor = self._new()

    def _new(self) -> cf.ProcessPoolExecutor:
        import multiprocessing

        # spawn, not fork: the parent has threads (progress bar, HTTP pools) that fork would copy mid-state.
        return cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_pool_init)

    def capacity(self) -> int:
        """Jobs that run at once."""
        return self.workers

    def submit(self, job: RenderJob) -> cf.Future[RunOutcome]:
        """Start rendering ``job`` in a worker process."""
        try:
            return self.executor.submit(_remote_render_job, job)
        except cf.process.BrokenProcessPool:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = self._new()
            return self.executor.submit(_remote_render_job, job)

    def close(self) -> None:
        """Wait for the running jobs and stop the workers."""
        self.executor.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """Runs jobs on a Dask cluster through its concurrent.futures executor."""

    def __init__(self, address: str) -> None:
        try:
            # distributed's own annotations are partial; treat it as untyped.
            dist: Any = importlib.import_module("distributed")
        except ImportError as exc:
            msg = "--scheduler needs Dask distributed: pip install 'mlflow-weightviz[dask]'"
            raise MissingDependencyError(msg) from exc
        try:
            self.client: Any = dist.Client(address)
        except (OSError, TimeoutError, ValueError) as exc:
            msg = f"cannot connect to the Dask scheduler at {address!r} (see --scheduler): {one_line(str(exc))}"
            raise UsageError(msg) from exc
        # pure=False: two jobs for the same run are two renders, not one cached result.
        self.executor: Any = self.client.get_executor(pure=False)

    def capacity(self) -> int:
        """Threads of the cluster's workers."""
        return max(1, int(sum(self.client.nthreads().values())))

    def submit(self, job: RenderJob) -> cf.Future[RunOutcome]:
        """Start rendering ``job`` on the cluster."""
        future: cf.Future[RunOutcome] = self.executor.submit(_remote_render_job, job)
        return future

    def close(self) -> None:
        """Wait for the running jobs and disconnect."""
        self.executor.shutdown(wait=True)
        self.client.close()


def execute(jobs: list[RenderJob], record: Callable[[RunOutcome], None], *, workers: int, scheduler: str | None,
            stop: threading.Event | None) -> None:
    """Render ``jobs`` here, in a local pool or on Dask, passing each outcome to ``record``.

    A job whose worker process died is tried once more (the pool may have died for
    another job); jobs not started when ``stop`` is set are recorded as cancelled.
    """
    if not jobs:
        return
    stopped = stop.is_set if stop is not None else (lambda: False)
    if scheduler is None and workers == 1:
        for i, job in enumerate(jobs):
            if stopped():
                for rest in jobs[i:]:
                    record(RunOutcome(rest.run_id, Status.CANCELLED, rest.run_name, "interrupted before it started"))
                return
            record(render_job(job))
        return
    runner: LocalPool | DaskExecutor = DaskExecutor(scheduler) if scheduler else LocalPool(min(workers, len(jobs)))
    queue = list(reversed(jobs))
    retried: set[str] = set()
    running: dict[cf.Future[RunOutcome], RenderJob] = {}
    try:
        while queue or running:
            # Keep every worker busy plus one job each in hand, without queueing everything at once.
            while queue and not stopped() and len(running) < 2 * runner.capacity():
                job = queue.pop()
                running[runner.submit(job)] = job
            if not running:
                break
            done, _ = cf.wait(running, timeout=0.5, return_when=cf.FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                try:
                    record(future.result())
                except cf.process.BrokenProcessPool:
                    if job.run_id not in retried:  # the pool died, maybe for another run: try once more
                        retried.add(job.run_id)
                        queue.append(job)
                        continue
                    record(RunOutcome(job.run_id, Status.FAILED, job.run_name,
                                      "the worker process died while rendering it (out of memory?)", EXIT_CRASH,
                                      retryable=True, error="BrokenProcessPool"))
                except Exception as exc:  # the cluster lost the task: report it as this run's failure
                    record(RunOutcome(job.run_id, Status.FAILED, job.run_name,
                                      f"worker failed: {type(exc).__name__}: {one_line(str(exc))}", EXIT_CRASH,
                                      retryable=True, error=type(exc).__name__))
        for job in reversed(queue):
            record(RunOutcome(job.run_id, Status.CANCELLED, job.run_name, "interrupted before it started"))
    finally:
        runner.close()
