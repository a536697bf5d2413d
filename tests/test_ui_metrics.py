"""The training metrics in the MLflow UI's Model metrics tab: a real `mlflow server`, headless Debian chromium.

The screenshot goes to test-output/ui-metrics.png (docs/ui-metrics.png is a copy).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mlflow_weightviz as wv
from tests.browser import launch
from tests.conftest import MlflowServer
from tests.helpers import make_run
from tests.test_ui_browser import close_assistant

pytestmark = [pytest.mark.server, pytest.mark.slow]

STEPS = list(range(0, 200, 10))
LAYER = "fc1.weight"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch()


def training(steps: int, shape: tuple[int, int], seed: int) -> list[np.ndarray]:
    """Weights under a decaying learning rate: large updates first, then smaller ones."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.1, size=shape)
    out = []
    for i in range(steps):
        out.append(w.astype(np.float32))
        w = w + 0.02 * np.exp(-i / 6) * rng.normal(size=shape) + 0.001 * w
    return out


def test_metrics_are_charted_in_the_model_metrics_tab(browser: Any, mlflow_server: MlflowServer,
                                                      output_dir: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = mlflow_server.url
    run_id = make_run(uri, finished=False, experiment="weightviz-metrics-ui")
    client = MlflowClient(uri)
    series = {LAYER: training(len(STEPS), (16, 24), 1), "fc2.weight": training(len(STEPS), (8, 16), 2)}
    for i, step in enumerate(STEPS):
        wv.log_snapshot({k: v[i] for k, v in series.items()}, step, run_id=run_id, tracking_uri=uri)
    client.set_terminated(run_id, "FINISHED")
    wv.render_run(run_id, tracking_uri=uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    page = browser.new_page(viewport={"width": 1280, "height": 960})
    try:
        page.goto(f"{uri}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics")
        search = page.get_by_placeholder("Search metric charts").first
        search.wait_for(timeout=60_000)
        search.fill(f"weightviz/{LAYER}/")
        # The UI groups the charts by key prefix: one section for the layer, one chart per statistic.
        page.get_by_text(f"weightviz/{LAYER}", exact=True).first.wait_for(timeout=30_000)
        close_assistant(page)  # the side panel opens late; closed, the charts get the width
        for stat in ("norm", "update_ratio", "drift", "max_abs", "rms", "nonfinite"):
            assert page.get_by_text(stat, exact=True).first.is_visible(), stat
            assert page.get_by_text(f"({'weightviz'}/{LAYER}/{stat})").count() == 1, stat  # the chart's legend
        assert page.get_by_text("weightviz/fc2.weight", exact=False).count() == 0  # filtered out by the search
        page.wait_for_timeout(1500)  # let the charts finish drawing
        page.screenshot(path=str(output_dir / "ui-metrics.png"))
    finally:
        page.close()
