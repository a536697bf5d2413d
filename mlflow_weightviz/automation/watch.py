"""``watch``: poll an experiment and render each run once it has finished.

Runs are rendered one at a time in this process through
:func:`~mlflow_weightviz.automation.executors.render_job`; each is claimed first, so
several watchers (and batch or render processes) never render one run twice. A failed
run is tried again at the next polls only when its error is
:attr:`~mlflow_weightviz.errors.WeightvizError.retryable`, at most
:data:`WATCH_MAX_ATTEMPTS` times.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from mlflow_weightviz import _tracking
from mlflow_weightviz.automation._search import and_filters, resolve_experiment, run_name, search_runs
from mlflow_weightviz.automation.claims import lease_from_env
from mlflow_weightviz.automation.executors import RenderJob, RunOutcome, count_statuses, one_line, render_job
from mlflow_weightviz.errors import TrackingServerError, UsageError
from mlflow_weightviz.options import RenderOptions
from mlflow_weightviz.tags import Status

if TYPE_CHECKING:
    from mlflow.entities import Run

__all__ = ["MAX_INTERVAL_S", "MIN_INTERVAL_S", "WATCH_FULL_PASS_S", "WATCH_MAX_ATTEMPTS", "WATCH_OVERLAP_S",
           "WatchReport", "parse_since", "watch_experiment"]

#: watch re-reads runs that ended this long before its last complete poll (clock skew, late tags).
WATCH_OVERLAP_S = 15 * 60
#: ... and looks at the whole experiment again this often.
WATCH_FULL_PASS_S = 60 * 60
#: Renders of a run whose failure is retryable, before watch gives up on it.
WATCH_MAX_ATTEMPTS = 3
#: The range of ``--interval``: shorter polls hammer the server, longer ones never come.
MIN_INTERVAL_S = 0.1
MAX_INTERVAL_S = 7 * 86400.0
#: ``--since`` may lie this far in the future (time zones, clock skew); later is an error.
_SINCE_FUTURE_S = 86400.0

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)", re.IGNORECASE)
_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


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
        return count_statuses(self.outcomes)

    @property
    def failed(self) -> list[RunOutcome]:
        """Runs that failed (each listed once per attempt)."""
        return [o for o in self.outcomes if o.status == Status.FAILED]


def parse_since(text: str, *, now: float | None = None) -> float:
    """Turn ``--since`` into Unix seconds.

    Accepts an ISO 8601 date-time (``2024-05-01``, ``2024-05-01T12:00``,
    ``2024-05-01T12:00:00+02:00``, ``...Z``; without a zone it is local time) or a
    duration before now such as ``2h``, ``30m``, ``7d``, ``1h30m``, ``90s``, ``1w``.

    Raises:
        UsageError: Neither form, or a time before 1970 or more than a day after ``now``.
    """
    value = text.strip()
    now = time.time() if now is None else now
    if value and _DURATION.sub("", value).strip() == "" and _DURATION.search(value):
        seconds = sum(float(n) * _UNITS[u.lower()] for n, u in _DURATION.findall(value))
        return _since_in_range(now - seconds, text, now)
    if value[-1:] in ("Z", "z") and value[10:11] in ("T", "t", " "):
        # datetime.fromisoformat reads "Z" only from Python 3.11 on; "+00:00" means the same.
        value = value[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(value).timestamp()
    except (ValueError, OverflowError, OSError):
        msg = (f"--since must be an ISO date-time such as 2024-05-01T12:00 or a duration such as 2h, 30m or 7d; "
               f"got {text!r}")
        raise UsageError(msg) from None
    return _since_in_range(when, text, now)


def _since_in_range(when: float, given: object, now: float) -> float:
    # The store compares end times in integer milliseconds: keep to times it can hold and that make sense.
    if not 0 <= when <= now + _SINCE_FUTURE_S:  # also false for nan
        msg = f"--since must lie between 1970-01-01 and now; got {given!r}"
        raise UsageError(msg)
    return when


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
        interval: Seconds between the start of one poll and the next, from
            :data:`MIN_INTERVAL_S` to :data:`MAX_INTERVAL_S`.
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
        UsageError: Bad option values (also ``source``, ``artifact_path`` or
            ``MLFLOW_WEIGHTVIZ_CLAIM_LEASE``) or a bad filter.
        RunNotFoundError: The experiment does not exist.
    """
    if not MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S:  # also false for nan
        msg = f"--interval must be from {MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g} seconds; got {interval}"
        raise UsageError(msg)
    if max_iterations is not None and max_iterations < 1:
        msg = f"--max-iterations must be at least 1; got {max_iterations}"
        raise UsageError(msg)
    if once:
        max_iterations = 1
    if isinstance(since, datetime):
        try:
            since_s: float | None = _since_in_range(since.timestamp(), since.isoformat(), time.time())
        except (OverflowError, OSError, ValueError):
            msg = f"--since must lie between 1970-01-01 and now; got {since!r}"
            raise UsageError(msg) from None
    else:
        since_s = parse_since(since) if since else None
    source = _tracking.artifact_folder(source, "--source")
    artifact_path = _tracking.artifact_folder(artifact_path, "--artifact-path")
    lease_from_env()  # a bad lease fails here once, not in every run
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
                report.experiment_id, report.experiment_name = resolve_experiment(client, experiment)
                if on_watching is not None:
                    on_watching(report.experiment_id, report.experiment_name)
            full = last_complete is None or poll_start - last_full >= WATCH_FULL_PASS_S
            after = [t for t in (since_s, None if full else (last_complete or 0) - WATCH_OVERLAP_S) if t is not None]
            flt = and_filters(filter_string, "attributes.status = 'FINISHED'",
                       f"attributes.end_time >= {int(max(after) * 1000)}" if after else None)
            runs = [r for r in search_runs(client, report.experiment_id, flt, page_size=page_size,
                                       order_by=["attributes.end_time ASC"]) if r.info.run_id not in handled]
        except TrackingServerError as exc:
            report.errors += 1
            if on_error is not None:
                on_error(f"{one_line(str(exc))}; trying again in {interval:g} s")
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
        job = RenderJob(run.info.run_id, run_name(run), options, source, artifact_path, tracking_uri,
                        allow_pickle=allow_pickle, draw_workers=workers)
        if on_start is not None:
            on_start(job.run_id, job.run_name)
        outcome = render_job(job, should_stop=stop.is_set)
        report.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        if outcome.status in (Status.RENDERED, Status.UP_TO_DATE, Status.NO_SNAPSHOTS):
            handled.add(job.run_id)
        elif outcome.status == Status.FAILED:
            if outcome.error == TrackingServerError.__name__:
                # The server went away mid-poll: the other runs would fail the same way.
                report.errors += 1
                if on_error is not None:
                    on_error(f"{outcome.reason}; trying again at the next poll")
                return False
            attempts[job.run_id] = attempts.get(job.run_id, 0) + 1
            if not outcome.retryable or attempts[job.run_id] >= WATCH_MAX_ATTEMPTS:
                handled.add(job.run_id)
        elif outcome.status == Status.ABANDONED:
            return False
        # CLAIMED: someone else is on it; the next poll finds it up to date or its claim expired.
    return True
