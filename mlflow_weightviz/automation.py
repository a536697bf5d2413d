"""Automation: render a whole experiment (``batch``) and render runs as they finish (``watch``).

Both find runs with ``MlflowClient.search_runs``, page by page, and hand each run to
:func:`~mlflow_weightviz.pipeline.render_run`, which decides from the run's tags whether
it is up to date and claims the run (see :mod:`mlflow_weightviz.claims`) so that several
batch or watch processes never render one run twice. A run's status is never changed.

``batch`` renders runs one after another in this process (``workers=1``), in a local
process pool (``workers=N``), or on a Dask cluster (``scheduler=ADDRESS``) through
``distributed.Client(...).get_executor()``. Each worker renders a whole run and draws its
frames in that one process. Every run's result or failure comes back as a
:class:`RunOutcome`; one failing run never stops the others.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import importlib
import logging
import os
import re
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mlflow_weightviz import _tracking
from mlflow_weightviz.errors import (
    MissingDependencyError,
    RunNotFoundError,
    SnapshotsNotFoundError,
    TrackingServerError,
    UsageError,
    WeightvizError,
)
from mlflow_weightviz.options import RenderOptions, WeightvizWarning

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = ["BatchReport", "RunOutcome", "StopFlag", "WatchReport", "parse_since", "render_experiment",
           "stop_on_signals", "watch_experiment"]

# Run outcomes, in the order the summary lists them.
RENDERED = "rendered"
WOULD_RENDER = "would_render"
UP_TO_DATE = "up_to_date"
NO_SNAPSHOTS = "no_snapshots"
RUNNING = "running"
CLAIMED = "claimed"
FAILED = "failed"
ABANDONED = "abandoned"
CANCELLED = "cancelled"
STATUSES = (RENDERED, WOULD_RENDER, UP_TO_DATE, NO_SNAPSHOTS, RUNNING, CLAIMED, FAILED, ABANDONED, CANCELLED)

#: Exit codes of errors that will not go away by trying again (bad option, bad data, no run).
_PERMANENT = frozenset({2, 3, 4})
_ACTIVE = ("RUNNING", "SCHEDULED")
#: watch re-reads runs that ended this long before its last complete poll (clock skew, late tags).
WATCH_OVERLAP_S = 15 * 60
#: ... and looks at the whole experiment again this often.
WATCH_FULL_PASS_S = 60 * 60
_WATCH_MAX_ATTEMPTS = 3


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
        exit_code: The error's CLI exit code when it failed.
        layers: GIFs rendered.
        frames: Frames drawn.
        seconds: Wall time spent on the run.
        warnings: Warnings raised while rendering it.
    """

    run_id: str
    status: str
    run_name: str = ""
    reason: str = ""
    exit_code: int = 0
    layers: int = 0
    frames: int = 0
    seconds: float = 0.0
    warnings: tuple[str, ...] = ()


def _count(outcomes: tuple[RunOutcome, ...] | list[RunOutcome]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    return counts


@dataclass(frozen=True)
class BatchReport:
    """The result of :func:`render_experiment`: one outcome per run looked at."""

    experiment_id: str
    experiment_name: str
    outcomes: tuple[RunOutcome, ...]
    dry_run: bool = False
    interrupted: bool = False

    def counts(self) -> dict[str, int]:
        """Runs per status, every status present."""
        return _count(self.outcomes)

    @property
    def failed(self) -> tuple[RunOutcome, ...]:
        """The runs that failed, with their reasons."""
        return tuple(o for o in self.outcomes if o.status == FAILED)


@dataclass
class WatchReport:
    """What a :func:`watch_experiment` call did before it stopped."""

    experiment_id: str = ""
    experiment_name: str = ""
    polls: int = 0
    outcomes: list[RunOutcome] = field(default_factory=list)
    errors: int = 0
    stopped_by: str | None = None

    def counts(self) -> dict[str, int]:
        """Outcomes per status, every status present."""
        return _count(self.outcomes)

    @property
    def failed(self) -> list[RunOutcome]:
        """Runs that failed (each listed once per attempt)."""
        return [o for o in self.outcomes if o.status == FAILED]


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


# ----------------------------------------------------------------- one run, anywhere


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

    def outcome(status: str, reason: str = "", exit_code: int = 0, layers: int = 0, frames: int = 0) -> RunOutcome:
        return RunOutcome(job.run_id, status, job.run_name, reason, exit_code, layers, frames,
                          round(time.perf_counter() - start, 3), tuple(str(w.message) for w in caught))

    with warnings.catch_warnings(record=True) as caught:
        # Record our own warnings per run instead of printing them from many workers.
        warnings.simplefilter("always", WeightvizWarning)
        try:
            result = render_run(job.run_id, job.options, source=job.source, artifact_path=job.artifact_path,
                                tracking_uri=job.tracking_uri, force=job.force, progress=progress,
                                workers=job.draw_workers, allow_pickle=job.allow_pickle)
        except _Abandoned:
            return outcome(ABANDONED, "stopped before publishing; nothing was logged")
        except SnapshotsNotFoundError as exc:
            return outcome(NO_SNAPSHOTS, str(exc))
        except WeightvizError as exc:
            return outcome(FAILED, _one_line(str(exc)), exc.exit_code)
        except Exception as exc:  # one run's surprise must not stop the others
            return outcome(FAILED, f"unexpected {type(exc).__name__}: {_one_line(str(exc))}", 1)
    if result.status == "rendered":
        return outcome(RENDERED, layers=len(result.layers), frames=sum(r.frames for r in result.layers))
    if result.status == "claimed":
        return outcome(CLAIMED, f"being rendered by {result.claimed_by or 'another process'}")
    return outcome(UP_TO_DATE)


def _remote_render_job(job: RenderJob) -> RunOutcome:
    """:func:`render_job` in a pool or Dask worker, set up like the CLI."""
    _worker_setup()
    return render_job(job)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- finding the runs


def _resolve_experiment(client: MlflowClient, name_or_id: str) -> tuple[str, str]:
    with _tracking.translate(f"looking up experiment {name_or_id!r}"):
        exp = client.get_experiment_by_name(name_or_id)
    if exp is None:
        try:
            exp = client.get_experiment(name_or_id)
        except Exception as exc:
            if _tracking.is_connection_error(exc):
                msg = f"looking up experiment {name_or_id!r}: the tracking server cannot be reached"
                raise TrackingServerError(msg) from exc
            exp = None
    if exp is None or exp.lifecycle_stage != "active":
        msg = f"no experiment named or with id {name_or_id!r}"
        raise RunNotFoundError(msg)
    return str(exp.experiment_id), str(exp.name)


def _and(*parts: str | None) -> str:
    return " and ".join(f"{p.strip()}" for p in parts if p and p.strip())


def _search(client: MlflowClient, experiment_id: str, filter_string: str, *, max_runs: int | None = None,
            page_size: int = 1000, order_by: list[str] | None = None) -> Iterator[Run]:
    """Every matching active run, fetched page by page with MLflow's page tokens."""
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    token: str | None = None
    seen = 0
    while True:
        want = page_size if max_runs is None else min(page_size, max_runs - seen)
        if want <= 0:
            return
        try:
            with _tracking.translate(f"searching runs of experiment {experiment_id}"):
                page = client.search_runs([experiment_id], filter_string=filter_string,
                                          run_view_type=ViewType.ACTIVE_ONLY, max_results=want,
                                          order_by=order_by, page_token=token)
        except TrackingServerError as exc:
            cause = exc.__cause__
            if isinstance(cause, MlflowException) and cause.error_code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"):
                detail = str(cause.message).strip().splitlines()[0]
                msg = f"bad run filter {filter_string!r}: {detail}"
                raise UsageError(msg) from cause
            raise
        for run in page:
            yield run
            seen += 1
        token = page.token
        if not token:
            return


def _run_name(run: Run) -> str:
    return str(run.info.run_name or run.data.tags.get("mlflow.runName", ""))


# ---------------------------------------------------------------------------- batch


def render_experiment(experiment: str, options: RenderOptions | None = None, *, filter_string: str | None = None,
                      max_runs: int | None = None, force: bool = False, dry_run: bool = False,
                      include_running: bool = False, workers: int = 1, scheduler: str | None = None,
                      source: str = "weights", artifact_path: str = "weightviz", tracking_uri: str | None = None,
                      page_size: int = 1000, progress: Callable[[int, int], None] | None = None,
                      stop: threading.Event | None = None, allow_pickle: bool = False) -> BatchReport:
    """Render every run of an experiment that has snapshots and is not rendered yet.

    Args:
        experiment: Experiment name or id.
        options: Render options; frames of a run are always drawn by one process here,
            the parallelism is over runs.
        filter_string: An MLflow search filter such as ``"params.lr = '0.1'"``.
        max_runs: Look at no more than this many matching runs (newest first).
        force: Render runs again even if they are up to date.
        dry_run: Only report what would be done; nothing is written.
        include_running: Also render RUNNING runs (their status is left alone).
        workers: Runs rendered at once: 1 renders them one after another in this
            process, more starts a local process pool of that size.
        scheduler: A Dask scheduler address; runs are then rendered on that cluster
            (needs the ``dask`` extra) and ``workers`` must be 1.
        source: Artifact path of the snapshots in each run.
        artifact_path: Where the GIFs go in each run.
        tracking_uri: Defaults to ``MLFLOW_TRACKING_URI`` or MLflow's default; workers
            (also Dask workers) must be able to reach it.
        page_size: Runs fetched per ``search_runs`` page.
        progress: Called as ``progress(done, total)`` over runs.
        stop: When set, no new run is started; runs in progress finish.
        allow_pickle: Allow reading Python pickles, which can run arbitrary code.

    Returns:
        One outcome per run looked at.

    Raises:
        UsageError: Bad option values or a bad filter.
        RunNotFoundError: The experiment does not exist.
        TrackingServerError: The run search failed.
        MissingDependencyError: ``scheduler`` without Dask installed.
    """
    if workers < 1:
        msg = f"--workers must be at least 1; got {workers}"
        raise UsageError(msg)
    if scheduler and workers != 1:
        msg = "give --workers (local processes) or --scheduler (a Dask cluster), not both"
        raise UsageError(msg)
    if max_runs is not None and max_runs < 1:
        msg = f"--max-runs must be at least 1; got {max_runs}"
        raise UsageError(msg)
    options = options or RenderOptions()
    client = _tracking.client(tracking_uri)
    exp_id, exp_name = _resolve_experiment(client, experiment)
    outcomes: list[RunOutcome] = []
    jobs: list[tuple[RenderJob, dict[str, str]]] = []
    for run in _search(client, exp_id, filter_string or "", max_runs=max_runs, page_size=page_size):
        name = _run_name(run)
        if run.info.status in _ACTIVE and not include_running:
            outcomes.append(RunOutcome(run.info.run_id, RUNNING, name,
                                       f"{run.info.status.lower()} (--include-running renders it)"))
            continue
        jobs.append((RenderJob(run.info.run_id, name, options, source, artifact_path, client.tracking_uri, force,
                               allow_pickle),
                     dict(run.data.tags)))
    total = len(outcomes) + len(jobs)
    if progress is not None:
        progress(len(outcomes), total)

    def record(outcome: RunOutcome) -> None:
        outcomes.append(outcome)
        if progress is not None:
            progress(len(outcomes), total)

    if dry_run:
        for job, tags in jobs:
            record(_plan(client, job, tags))
    else:
        _execute([j for j, _ in jobs], record, workers=workers, scheduler=scheduler, stop=stop)
    return BatchReport(exp_id, exp_name, tuple(outcomes), dry_run=dry_run,
                       interrupted=stop is not None and stop.is_set())


def _plan(client: MlflowClient, job: RenderJob, tags: dict[str, str]) -> RunOutcome:
    """What a render would do, from the artifact listing and tags alone."""
    from mlflow_weightviz.claims import TAG_CLAIM, parse_claim
    from mlflow_weightviz.pipeline import TAG_FINGERPRINT, _fingerprint
    from mlflow_weightviz.sources import RunSource

    try:
        fingerprint = _fingerprint(RunSource(client, job.run_id, job.source), job.options, source=job.source,
                                   artifact_path=job.artifact_path)
    except SnapshotsNotFoundError as exc:
        return RunOutcome(job.run_id, NO_SNAPSHOTS, job.run_name, str(exc))
    except WeightvizError as exc:
        return RunOutcome(job.run_id, FAILED, job.run_name, _one_line(str(exc)), exc.exit_code)
    if not job.force and tags.get(TAG_FINGERPRINT) == fingerprint:
        return RunOutcome(job.run_id, UP_TO_DATE, job.run_name)
    claim = parse_claim(tags.get(TAG_CLAIM))
    if claim is not None and claim.valid():
        return RunOutcome(job.run_id, CLAIMED, job.run_name, f"being rendered by {claim.describe()}")
    return RunOutcome(job.run_id, WOULD_RENDER, job.run_name)


class _Pool:
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
        return self.workers

    def submit(self, job: RenderJob) -> cf.Future[RunOutcome]:
        try:
            return self.executor.submit(_remote_render_job, job)
        except cf.process.BrokenProcessPool:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = self._new()
            return self.executor.submit(_remote_render_job, job)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class _Dask:
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
            msg = f"cannot connect to the Dask scheduler at {address!r} (see --scheduler): {_one_line(str(exc))}"
            raise UsageError(msg) from exc
        # pure=False: two jobs for the same run are two renders, not one cached result.
        self.executor: Any = self.client.get_executor(pure=False)

    def capacity(self) -> int:
        return max(1, int(sum(self.client.nthreads().values())))

    def submit(self, job: RenderJob) -> cf.Future[RunOutcome]:
        future: cf.Future[RunOutcome] = self.executor.submit(_remote_render_job, job)
        return future

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.client.close()


def _execute(jobs: list[RenderJob], record: Callable[[RunOutcome], None], *, workers: int, scheduler: str | None,
             stop: threading.Event | None) -> None:
    """Render ``jobs`` here, in a local pool or on Dask, passing each outcome to ``record``."""
    if not jobs:
        return
    stopped = stop.is_set if stop is not None else (lambda: False)
    if scheduler is None and workers == 1:
        for i, job in enumerate(jobs):
            if stopped():
                for rest in jobs[i:]:
                    record(RunOutcome(rest.run_id, CANCELLED, rest.run_name, "interrupted before it started"))
                return
            record(render_job(job))
        return
    runner: _Pool | _Dask = _Dask(scheduler) if scheduler else _Pool(min(workers, len(jobs)))
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
                    record(RunOutcome(job.run_id, FAILED, job.run_name,
                                      "the worker process died while rendering it (out of memory?)", 1))
                except Exception as exc:  # the cluster lost the task: report it as this run's failure
                    record(RunOutcome(job.run_id, FAILED, job.run_name,
                                      f"worker failed: {type(exc).__name__}: {_one_line(str(exc))}", 1))
        for job in reversed(queue):
            record(RunOutcome(job.run_id, CANCELLED, job.run_name, "interrupted before it started"))
    finally:
        runner.close()


# ---------------------------------------------------------------------------- watch

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)", re.IGNORECASE)
_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_since(text: str, *, now: float | None = None) -> float:
    """Turn ``--since`` into Unix seconds.

    Accepts an ISO 8601 date-time (``2024-05-01``, ``2024-05-01T12:00``,
    ``2024-05-01T12:00:00+02:00``, ``...Z``; without a zone it is local time) or a
    duration before now such as ``2h``, ``30m``, ``7d``, ``1h30m``, ``90s``, ``1w``.

    Raises:
        UsageError: Neither form.
    """
    value = text.strip()
    if value and _DURATION.sub("", value).strip() == "" and _DURATION.search(value):
        seconds = sum(float(n) * _UNITS[u.lower()] for n, u in _DURATION.findall(value))
        return (time.time() if now is None else now) - seconds
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        msg = (f"--since must be an ISO date-time such as 2024-05-01T12:00 or a duration such as 2h, 30m or 7d; "
               f"got {text!r}")
        raise UsageError(msg) from None


def watch_experiment(experiment: str, options: RenderOptions | None = None, *, interval: float = 30.0,
                     since: str | datetime | None = None, once: bool = False, max_iterations: int | None = None,
                     filter_string: str | None = None, source: str = "weights", artifact_path: str = "weightviz",
                     tracking_uri: str | None = None, page_size: int = 1000, stop: threading.Event | None = None,
                     on_start: Callable[[str, str], None] | None = None,
                     on_outcome: Callable[[RunOutcome], None] | None = None,
                     on_error: Callable[[str], None] | None = None,
                     on_watching: Callable[[str, str], None] | None = None, workers: int = 1,
                     allow_pickle: bool = False) -> WatchReport:
    """Poll an experiment and render each FINISHED run with snapshots that is not rendered yet.

    Runs are rendered one at a time in this process (``workers`` processes draw the
    frames). A tracking server that cannot be reached is reported through ``on_error``
    and tried again at the next poll. Each run is claimed before it is rendered, so
    several watchers (and batch or render processes) never render one run twice.

    Args:
        experiment: Experiment name or id.
        options: Render options.
        interval: Seconds between the start of one poll and the next.
        since: Only runs that finished after this time (see :func:`parse_since`).
        once: Do one poll and return (same as ``max_iterations=1``).
        max_iterations: Stop after this many polls.
        filter_string: An extra MLflow search filter.
        source: Artifact path of the snapshots in each run.
        artifact_path: Where the GIFs go in each run.
        tracking_uri: Defaults to ``MLFLOW_TRACKING_URI`` or MLflow's default.
        page_size: Runs fetched per ``search_runs`` page.
        stop: Set it (e.g. from a signal handler, see :func:`stop_on_signals`) to stop:
            a render in progress is abandoned before it logs anything, or finishes if it
            is already logging.
        on_start: Called as ``on_start(run_id, run_name)`` before a run is rendered.
        on_outcome: Called with each run's outcome (not for runs already handled).
        on_error: Called with a one-line message when a poll fails.
        on_watching: Called as ``on_watching(experiment_id, experiment_name)`` once the
            experiment has been found.
        workers: Processes drawing each run's frames.
        allow_pickle: Allow reading Python pickles, which can run arbitrary code.

    Returns:
        What was done. Runs that are up to date or have no snapshots are remembered and
        not looked at again by this watcher.

    Raises:
        UsageError: Bad option values or a bad filter.
        RunNotFoundError: The experiment does not exist.
    """
    if interval <= 0:
        msg = f"--interval must be positive; got {interval}"
        raise UsageError(msg)
    if max_iterations is not None and max_iterations < 1:
        msg = f"--max-iterations must be at least 1; got {max_iterations}"
        raise UsageError(msg)
    if once:
        max_iterations = 1
    since_s = since.timestamp() if isinstance(since, datetime) else parse_since(since) if since else None
    options = options or RenderOptions()
    stop = stop if stop is not None else threading.Event()
    client = _tracking.client(tracking_uri)
    report = WatchReport()
    handled: set[str] = set()
    attempts: dict[str, int] = {}
    last_complete: float | None = None  # start of the last poll that looked at every candidate
    last_full = 0.0
    while not stop.is_set():
        poll_start = time.time()
        try:
            if not report.experiment_id:
                report.experiment_id, report.experiment_name = _resolve_experiment(client, experiment)
                if on_watching is not None:
                    on_watching(report.experiment_id, report.experiment_name)
            full = last_complete is None or poll_start - last_full >= WATCH_FULL_PASS_S
            after = [t for t in (since_s, None if full else (last_complete or 0) - WATCH_OVERLAP_S) if t is not None]
            flt = _and(filter_string, "attributes.status = 'FINISHED'",
                       f"attributes.end_time >= {int(max(after) * 1000)}" if after else None)
            runs = [r for r in _search(client, report.experiment_id, flt, page_size=page_size,
                                       order_by=["attributes.end_time ASC"]) if r.info.run_id not in handled]
        except TrackingServerError as exc:
            report.errors += 1
            if on_error is not None:
                on_error(f"{_one_line(str(exc))}; trying again in {interval:g} s")
        else:
            complete = _watch_pass(runs, options, source, artifact_path, client.tracking_uri, stop, report,
                                   handled, attempts, on_start, on_outcome, on_error, workers, allow_pickle)
            if complete:
                last_complete = poll_start
                last_full = poll_start if full else last_full
        report.polls += 1
        if max_iterations is not None and report.polls >= max_iterations:
            break
        stop.wait(max(0.0, poll_start + interval - time.time()))
    report.stopped_by = getattr(stop, "signal_name", None) if stop.is_set() else None
    return report


def _watch_pass(runs: list[Run], options: RenderOptions, source: str, artifact_path: str, tracking_uri: str,
                stop: threading.Event, report: WatchReport, handled: set[str], attempts: dict[str, int],
                on_start: Callable[[str, str], None] | None, on_outcome: Callable[[RunOutcome], None] | None,
                on_error: Callable[[str], None] | None, workers: int = 1, allow_pickle: bool = False) -> bool:
    """Render the candidates of one poll; true when every one was dealt with."""
    for run in runs:
        if stop.is_set():
            return False
        job = RenderJob(run.info.run_id, _run_name(run), options, source, artifact_path, tracking_uri,
                        allow_pickle=allow_pickle, draw_workers=workers)
        if on_start is not None:
            on_start(job.run_id, job.run_name)
        outcome = render_job(job, should_stop=stop.is_set)
        report.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        if outcome.status in (RENDERED, UP_TO_DATE, NO_SNAPSHOTS):
            handled.add(job.run_id)
        elif outcome.status == FAILED:
            if outcome.exit_code == TrackingServerError.exit_code:
                # The server went away mid-poll: the other runs would fail the same way.
                report.errors += 1
                if on_error is not None:
                    on_error(f"{outcome.reason}; trying again at the next poll")
                return False
            attempts[job.run_id] = attempts.get(job.run_id, 0) + 1
            if outcome.exit_code in _PERMANENT or attempts[job.run_id] >= _WATCH_MAX_ATTEMPTS:
                handled.add(job.run_id)
        elif outcome.status == ABANDONED:
            return False
        # CLAIMED: someone else is on it; the next poll finds it up to date or its claim expired.
    return True
