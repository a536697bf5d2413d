"""``batch``: render every run of an experiment that is not rendered yet.

Runs are found with ``MlflowClient.search_runs``, page by page, and each is handed to
:func:`~mlflow_weightviz.pipeline.render_run` (through
:func:`~mlflow_weightviz.automation.executors.render_job`), which decides from the run's
tags whether it is up to date and claims the run so that several processes never render
one run twice. Runs are rendered one after another here (``workers=1``), in a local
process pool (``workers=N``) or on a Dask cluster (``scheduler=ADDRESS``). Every run's
result or failure comes back as a :class:`~mlflow_weightviz.automation.executors.RunOutcome`;
one failing run never stops the others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlflow_weightviz import _tracking
from mlflow_weightviz.automation._search import resolve_experiment, run_name, search_runs
from mlflow_weightviz.automation.claims import honoured_claim, lease_from_env
from mlflow_weightviz.automation.executors import RenderJob, RunOutcome, count_statuses, execute, one_line
from mlflow_weightviz.errors import SnapshotsNotFoundError, UsageError, WeightvizError
from mlflow_weightviz.options import RenderOptions
from mlflow_weightviz.tags import TAG_CLAIM, TAG_FINGERPRINT, TAG_LISTING, Status
from mlflow_weightviz.tags import fingerprint as render_fingerprint

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["BatchReport", "render_experiment"]

#: MLflow run statuses of runs still being written to.
ACTIVE_RUN_STATUSES = ("RUNNING", "SCHEDULED")


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
        return count_statuses(self.outcomes)

    @property
    def failed(self) -> tuple[RunOutcome, ...]:
        """The runs that failed, with their reasons."""
        return tuple(o for o in self.outcomes if o.status == Status.FAILED)


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
        UsageError: Bad option values (also ``source``, ``artifact_path`` or
            ``MLFLOW_WEIGHTVIZ_CLAIM_LEASE``) or a bad filter.
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
    source = _tracking.artifact_folder(source, "--source")
    artifact_path = _tracking.artifact_folder(artifact_path, "--artifact-path")
    lease_from_env()  # a bad lease fails here once, not in every run
    options = options or RenderOptions()
    client = _tracking.client(tracking_uri)
    exp_id, exp_name = resolve_experiment(client, experiment)
    outcomes: list[RunOutcome] = []
    jobs: list[tuple[RenderJob, dict[str, str]]] = []
    for run in search_runs(client, exp_id, filter_string or "", max_runs=max_runs, page_size=page_size):
        name = run_name(run)
        if run.info.status in ACTIVE_RUN_STATUSES and not include_running:
            outcomes.append(RunOutcome(run.info.run_id, Status.RUNNING, name,
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
        execute([j for j, _ in jobs], record, workers=workers, scheduler=scheduler, stop=stop)
    return BatchReport(exp_id, exp_name, tuple(outcomes), dry_run=dry_run,
                       interrupted=stop is not None and stop.is_set())


def _plan(client: MlflowClient, job: RenderJob, tags: dict[str, str]) -> RunOutcome:
    """What a render would do, from the artifact listing and tags, and the files' bytes when the listing is unchanged.

    A changed listing (paths, sizes) needs a render; an unchanged one may still hide new values of
    the same size, so then the snapshots are downloaded and their contents compared, as a render does.
    """
    import tempfile
    from pathlib import Path

    from mlflow_weightviz.sources import RunSource

    src = RunSource(client, job.run_id, job.source)
    try:
        listing = render_fingerprint(src, job.options, source=job.source, artifact_path=job.artifact_path)
        up_to_date = False
        if not job.force and tags.get(TAG_LISTING) == listing and tags.get(TAG_FINGERPRINT):
            with tempfile.TemporaryDirectory(prefix="weightviz-") as tmp:
                contents = render_fingerprint(src, job.options, local=src.fetch(Path(tmp)), source=job.source,
                                              artifact_path=job.artifact_path)
            up_to_date = tags.get(TAG_FINGERPRINT) == contents
    except SnapshotsNotFoundError as exc:
        return RunOutcome(job.run_id, Status.NO_SNAPSHOTS, job.run_name, str(exc))
    except WeightvizError as exc:
        return RunOutcome(job.run_id, Status.FAILED, job.run_name, one_line(str(exc)), exc.exit_code,
                          retryable=exc.retryable, error=type(exc).__name__)
    if up_to_date:
        return RunOutcome(job.run_id, Status.UP_TO_DATE, job.run_name)
    claim = honoured_claim(tags.get(TAG_CLAIM), now=time.time(), lease_s=lease_from_env(), run_id=job.run_id)
    if claim is not None:
        return RunOutcome(job.run_id, Status.CLAIMED, job.run_name, f"being rendered by {claim.describe()}")
    return RunOutcome(job.run_id, Status.WOULD_RENDER, job.run_name)
