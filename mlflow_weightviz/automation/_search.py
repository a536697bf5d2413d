"""Finding an experiment's runs, page by page, for ``batch`` and ``watch``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from mlflow_weightviz import _tracking
from mlflow_weightviz.errors import RunNotFoundError, TrackingServerError, UsageError

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = ["and_filters", "resolve_experiment", "run_name", "search_runs"]


def resolve_experiment(client: MlflowClient, name_or_id: str) -> tuple[str, str]:
    """The id and name of the active experiment named ``name_or_id``, or with that id.

    Raises:
        RunNotFoundError: No such active experiment.
        TrackingServerError: The server cannot be reached.
    """
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


def and_filters(*parts: str | None) -> str:
    """MLflow search filters joined with ``and``; empty ones left out."""
    return " and ".join(f"{p.strip()}" for p in parts if p and p.strip())


def search_runs(client: MlflowClient, experiment_id: str, filter_string: str, *, max_runs: int | None = None,
            page_size: int = 1000, order_by: list[str] | None = None) -> Iterator[Run]:
    """Every matching active run, fetched page by page with MLflow's page tokens.

    Raises:
        UsageError: MLflow refused ``filter_string``.
        TrackingServerError: The search failed.
    """
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


def run_name(run: Run) -> str:
    """The run's name, or an empty string."""
    return str(run.info.run_name or run.data.tags.get("mlflow.runName", ""))
