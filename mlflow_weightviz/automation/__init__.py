"""Automation: render a whole experiment (``batch``) and render runs as they finish (``watch``).

- :mod:`~mlflow_weightviz.automation.batch`: :func:`render_experiment`.
- :mod:`~mlflow_weightviz.automation.watch`: :func:`watch_experiment`, :func:`parse_since`.
- :mod:`~mlflow_weightviz.automation.claims`: one renderer per run at a time.
- :mod:`~mlflow_weightviz.automation.executors`: one run rendered here, in a local
  process pool or on a Dask cluster, reported as a :class:`RunOutcome`.

A run's MLflow status is never changed.
"""

from __future__ import annotations

from mlflow_weightviz.automation.batch import BatchReport, render_experiment
from mlflow_weightviz.automation.executors import RunOutcome, StopFlag, stop_on_signals
from mlflow_weightviz.automation.watch import WatchReport, parse_since, watch_experiment

__all__ = ["BatchReport", "RunOutcome", "StopFlag", "WatchReport", "parse_since", "render_experiment",
           "stop_on_signals", "watch_experiment"]
