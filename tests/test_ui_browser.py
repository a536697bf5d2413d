"""The results in the MLflow UI: a real `mlflow server`, a real render, headless Debian chromium.

Screenshots go to test-output/ (docs/ui-gif.png and docs/ui-html-player.png are copies).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mlflow_weightviz as wv
from mlflow_weightviz.frames import format_value
from mlflow_weightviz.outputs.html_player import read_player
from tests.browser import cell_point, launch
from tests.conftest import MlflowServer
from tests.helpers import log_folder, make_run, read_gif, training_series, write_canonical

pytestmark = [pytest.mark.server, pytest.mark.slow]

STEPS = list(range(0, 200, 10))
VIEWPORT = {"width": 1280, "height": 860}


@dataclass(frozen=True)
class Rendered:
    url: str
    experiment_id: str
    run_id: str
    local: Path

    def artifact_url(self, name: str) -> str:
        return f"{self.url}/#/experiments/{self.experiment_id}/runs/{self.run_id}/artifacts/weightviz/{name}"

    def run_url(self, tab: str) -> str:
        return f"{self.url}/#/experiments/{self.experiment_id}/runs/{self.run_id}/{tab}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch()


@pytest.fixture(scope="module")
def rendered(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """A run on the real server with snapshots, a loss curve, and its GIF, HTML player and MP4."""
    from mlflow.tracking import MlflowClient

    uri = mlflow_server.url
    folder = tmp_path_factory.mktemp("ui")
    run_id = make_run(uri, experiment="weightviz-ui")
    client = MlflowClient(uri)
    for step in STEPS:
        client.log_metric(run_id, "loss", 2.0 * np.exp(-step / 60) + 0.1, step=step)
    write_canonical(folder / "w", {"fc1.weight": training_series(len(STEPS), (6, 8), seed=4)}, STEPS)
    log_folder(run_id, folder / "w", uri=uri)
    result = wv.render_run(run_id, wv.RenderOptions(formats=("gif", "html", "mp4"), caption_metric="loss",
                                                    row_label="out_", col_label="in_", fmt="{x:.4f}",
                                                    step_images=5),
                           tracking_uri=uri, output_dir=folder / "out")
    assert result.status == "rendered"
    return Rendered(uri, client.get_run(run_id).info.experiment_id, run_id, folder / "out")


@pytest.fixture(scope="module")
def context(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT)  # one profile: the UI remembers a closed side panel
    yield context
    context.close()


@pytest.fixture
def page(context: Any) -> Iterator[Any]:
    page = context.new_page()
    yield page
    page.close()


def close_assistant(page: Any) -> None:
    """Close the UI's assistant side panel, if it opened, so screenshots show the artifact view."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.locator("button[aria-label='Close']").first.click(timeout=3_000)
    except PlaywrightTimeout:
        pass  # no panel in this MLflow version or state


def test_gif_is_shown_in_the_artifact_view(page: Any, rendered: Rendered, output_dir: Path) -> None:
    width, height = read_gif(rendered.local / "fc1.weight.gif").size
    page.goto(rendered.artifact_url("fc1.weight.gif"))
    shown = page.wait_for_function(
        """([w, h]) => [...document.images].find(
               i => i.complete && i.naturalWidth === w && i.naturalHeight === h && i.getBoundingClientRect().width > 0)
           ?.src ?? null""",
        arg=[width, height], timeout=60_000)
    assert shown.json_value().startswith("blob:")  # the UI fetched the artifact and shows it as an image
    close_assistant(page)
    page.screenshot(path=str(output_dir / "ui-gif.png"))


def test_html_player_works_inside_the_artifact_view(page: Any, rendered: Rendered, output_dir: Path) -> None:
    meta, values = read_player(rendered.local / "fc1.weight.html")
    page.goto(rendered.artifact_url("fc1.weight.html"))
    frame = page.frame_locator("iframe.mlflow-html-iframe")  # sandboxed, scripts allowed
    root = frame.locator("#wv")
    root.and_(frame.locator("[data-ready='1']")).wait_for(timeout=60_000)
    assert root.get_attribute("data-frame") == "0"
    assert frame.locator("#title").text_content().splitlines()[0].startswith("fc1.weight  ·  step 0")

    # the slider changes the step shown, and the caption with it
    frame.locator("#slider").fill("12")
    assert root.get_attribute("data-step") == str(STEPS[12])
    assert frame.locator("#stepinfo").text_content() == f"step {STEPS[12]}  ·  frame 13/{len(STEPS)}"
    assert frame.locator("#title").text_content().splitlines()[-1] == meta["titles"][12].splitlines()[-1]
    assert meta["titles"][12].splitlines()[-1].startswith("loss = ")

    # hovering a cell shows its labels and its value at that step, from the data
    close_assistant(page)
    x, y = cell_point(frame, 4, 6)
    page.mouse.move(x, y)
    tip = frame.locator("#tip")
    original = training_series(len(STEPS), (6, 8), seed=4)[12][4, 6]
    assert np.float32(float(tip.get_attribute("data-value"))) == np.float32(original) == values[12, 4, 6]
    lines = tip.text_content().splitlines()
    assert lines[:2] == ["row out_4  ·  col in_6",
                         f"step {STEPS[12]}:  {format_value('{x:.4f}', float(np.float32(original)))}"]
    page.screenshot(path=str(output_dir / "ui-html-player.png"))

    # keyboard arrows step through the frames once the player has the focus
    frame.locator("#heat").click(position={"x": 2, "y": 2})
    page.keyboard.press("ArrowLeft")
    assert root.get_attribute("data-frame") == "11"
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert root.get_attribute("data-frame") == "13"


def test_mp4_plays_in_the_artifact_view(page: Any, rendered: Rendered) -> None:
    width, height = read_gif(rendered.local / "fc1.weight.gif").size
    page.goto(rendered.artifact_url("fc1.weight.mp4"))
    video = page.locator("video").first
    video.wait_for(state="attached", timeout=60_000)
    size = page.wait_for_function(
        "() => { const v = document.querySelector('video'); return v && v.videoWidth ? [v.videoWidth, v.videoHeight]"
        " : (v && v.error ? ['error', v.error.code] : null); }", timeout=30_000).json_value()
    if size[0] == "error":
        pytest.skip(f"this chromium build cannot decode H.264 (media error {size[1]}); the MP4 itself is tested "
                    "in test_video.py")
    assert size == [width, height]


def test_step_images_scrub_in_the_run_metrics_view(page: Any, rendered: Rendered, output_dir: Path) -> None:
    page.goto(rendered.run_url("model-metrics"))
    selector = "img[src*='weightviz~fc1.weight']"
    page.locator(selector).first.wait_for(timeout=60_000)
    assert "%2Bstep%2B0%2B" in page.locator(selector).first.get_attribute("src")  # opens at the first step
    slider = page.locator("[role=slider]").first
    assert slider.get_attribute("aria-valuemax") == "190"  # the chart's slider spans the logged steps
    close_assistant(page)
    slider.click()
    for step in (50, 100, 150, 190):  # every 5th frame and the last were logged
        page.keyboard.press("ArrowRight")
        page.wait_for_function("([sel, step]) => document.querySelector(sel)?.src.includes(`%2Bstep%2B${step}%2B`)",
                               arg=[selector, step], timeout=20_000)
    page.screenshot(path=str(output_dir / "ui-step-images.png"))


def test_overview_is_shown_in_the_artifact_view(page: Any, rendered: Rendered, output_dir: Path) -> None:
    from PIL import Image

    with Image.open(rendered.local / "overview.png") as png:  # the local copy of what was logged
        width, height = png.size
    page.goto(rendered.artifact_url("overview.png"))
    shown = page.wait_for_function(
        """([w, h]) => [...document.images].find(
               i => i.complete && i.naturalWidth === w && i.naturalHeight === h && i.getBoundingClientRect().width > 0)
           ?.src ?? null""",
        arg=[width, height], timeout=60_000)
    assert shown.json_value().startswith("blob:")
    close_assistant(page)
    page.screenshot(path=str(output_dir / "ui-overview.png"))


def test_overview_page_shows_values_on_hover_in_the_artifact_view(page: Any, rendered: Rendered) -> None:
    page.goto(rendered.artifact_url("overview.html"))
    frame = page.frame_locator("iframe.mlflow-html-iframe")
    cells = frame.locator("#cells")
    cells.wait_for(timeout=60_000)
    close_assistant(page)
    box = cells.bounding_box()
    assert box is not None
    assert box["width"] > 0
    # the third column of the one row: fc1.weight at the third step
    page.mouse.move(box["x"] + box["width"] * 2.5 / len(STEPS), box["y"] + box["height"] / 2)
    tip = frame.locator("#tip")
    tip.wait_for(state="visible", timeout=10_000)
    text = tip.text_content()
    series = training_series(len(STEPS), (6, 8), seed=4)
    expected = float(np.linalg.norm(series[2] - series[1]) / np.linalg.norm(series[1]))
    assert text.startswith(f"fc1.weight · step {STEPS[2]} · update_ratio = ")
    assert float(text.rsplit("= ", 1)[1]) == pytest.approx(expected, rel=1e-3)
