"""`compare`: one layer of several runs side by side, step-aligned, under one colour scale (real MLflow, real files)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import mlflow_weightviz as wv
from mlflow_weightviz.outputs.compare import read_compare_player
from tests.helpers import (
    artifact_files,
    assert_one_line_error,
    log_folder,
    make_run,
    read_gif,
    run_isolated,
    training_series,
    write_canonical,
)

GREY = (128, 128, 128)  # frames.NAN_COLOR: a panel with no snapshot yet


def run_with(folder: Path, layers: dict[str, Sequence[np.ndarray]], steps: Sequence[int], name: str = "") -> str:
    run_id = make_run()
    if name:
        MlflowClient().set_tag(run_id, "mlflow.runName", name)
    write_canonical(folder, layers, steps)
    log_folder(run_id, folder)
    return run_id


def ramp(steps: Sequence[int], offset: float, shape: tuple[int, int] = (4, 6)) -> list[np.ndarray]:
    """Values that change clearly from one snapshot to the next."""
    base = np.arange(np.prod(shape), dtype=np.float64).reshape(shape) / 100
    return [base + offset + 0.05 * s for s in steps]


def halves(frame: np.ndarray, top: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The left and right panel of a two-panel frame (panels have the same size, so the middle splits them)."""
    mid = frame.shape[1] // 2
    return frame[top:, :mid], frame[top:, mid:]


def count(picture: np.ndarray, colour: tuple[int, int, int]) -> int:
    """Pixels of about ``colour`` (the GIF palette holds the nearest of its 255 colours)."""
    return int((np.abs(picture.astype(int) - np.array(colour)) <= 2).all(axis=2).sum())


def main_colour(picture: np.ndarray) -> tuple[int, ...]:
    """The most frequent colour that is not the white background."""
    colours = Counter(map(tuple, picture.reshape(-1, 3).tolist()))
    colours.pop((255, 255, 255), None)
    return colours.most_common(1)[0][0]


# ---------------------------------------------------------------------------- the held-out check


@pytest.mark.slow
def test_two_runs_with_different_steps_give_one_frame_per_step_of_the_union_side_by_side(tmp_path: Path) -> None:
    a = run_with(tmp_path / "a", {"fc1": training_series(5, seed=1)}, [0, 5, 10, 15, 20], name="baseline")
    b = run_with(tmp_path / "b", {"fc1": training_series(4, seed=2)}, [0, 10, 20, 30], name="wider-lr")
    cli = run_isolated("compare", a, b, "--layer", "fc1", "--out", str(tmp_path / "cmp.gif"), cwd=tmp_path)
    assert cli.code == 0, cli.stderr
    assert cli.stdout.strip() == f"fc1: 2 runs, 6 frames, grid 4×6 → {tmp_path / 'cmp.gif'}"
    single = run_isolated("render", a, "--layer", "fc1", "--no-log", "--out", str(tmp_path / "one.gif"), cwd=tmp_path)
    assert single.code == 0, single.stderr
    gif, one = read_gif(tmp_path / "cmp.gif"), read_gif(tmp_path / "one.gif")
    assert gif.n_frames == 6  # steps 0, 5, 10, 15, 20, 30
    assert gif.size[0] >= 1.6 * one.size[0], (gif.size, one.size)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["cmp.gif", "one.gif"]


# ---------------------------------------------------------------------------- alignment and the shared scale


def test_a_run_shows_its_latest_earlier_snapshot_and_a_grey_panel_before_its_first(tmp_path: Path) -> None:
    a = run_with(tmp_path / "a", {"fc1": ramp([0, 10], 0.0)}, [0, 10])
    b = run_with(tmp_path / "b", {"fc1": ramp([5, 10], 1.0)}, [5, 10])
    result = wv.compare_runs([a, b], "fc1", wv.RenderOptions(formats=("gif", "html"), annotate=False),
                             output_dir=tmp_path / "out")
    assert result.steps == (0, 5, 10)
    gif = read_gif(result.local_paths[0])
    assert gif.n_frames == 3
    top = 60  # below the frame title, whose step changes
    left0, right0 = halves(gif.frames[0], top)
    left1, right1 = halves(gif.frames[1], top)
    left2, _ = halves(gif.frames[2], top)
    # b has no snapshot at step 0: its cells are the NaN grey (elsewhere grey is only the edges of text)
    assert count(right0, GREY) > 10_000
    assert count(left0, GREY) < 500
    assert count(right1, GREY) < 500  # b's first snapshot, at step 5
    rows = slice(60, None)  # the panel titles say "step 0" and "step 0 (latest at 5)"; the cells are the same
    assert np.array_equal(left0[rows], left1[rows])
    assert not np.array_equal(left1[rows], left2[rows])  # a's step 10 snapshot is new
    # The exact values behind the panels, from the HTML page.
    meta, panels = read_compare_player(result.local_paths[1])
    assert meta["steps"] == [0, 5, 10]
    (meta_a, values_a), (meta_b, values_b) = panels
    expected_a, expected_b = ramp([0, 10], 0.0), ramp([5, 10], 1.0)
    np.testing.assert_array_equal(values_a, np.float32([expected_a[0], expected_a[0], expected_a[1]]))
    assert np.isnan(values_b[0]).all()
    np.testing.assert_array_equal(values_b[1:], np.float32(expected_b))
    assert meta_a["titles"][1].endswith("step 0 (latest at 5)")
    assert "no snapshot until step 5" in meta_b["titles"][0]


def test_the_same_value_has_the_same_colour_in_every_panel(tmp_path: Path) -> None:
    # Most cells are 0.25 in both runs; alone, b's scale (0.25 to 0.5) would draw them at its low end.
    first = np.full((6, 6), 0.25)
    first[0, 0], first[0, 1] = 0.0, 1.0
    second = np.full((6, 6), 0.25)
    second[0, 0] = 0.5
    a = run_with(tmp_path / "a", {"w": [first, first]}, [0, 1])
    b = run_with(tmp_path / "b", {"w": [second, second]}, [0, 1])
    options = wv.RenderOptions(annotate=False)
    result = wv.compare_runs([a, b], "w", options, output_dir=tmp_path / "out")
    frame = read_gif(result.local_paths[0]).frames[0]
    left, right = halves(frame)
    assert main_colour(left) == main_colour(right)
    # The same runs drawn alone: the 0.25 cells get different colours, so the check above can fail.
    alone = [read_gif(Path(r.layers[0].local_path)).frames[0] for r in
             (wv.render_run(run, options, log=False, output_dir=tmp_path / run) for run in (a, b))]
    assert main_colour(alone[0]) != main_colour(alone[1])
    meta, panels = read_compare_player_of(a, b, tmp_path)
    assert {(m["vmin"], m["vmax"], m["fmt"]) for m, _ in panels} == {(0.0, 1.0, panels[0][0]["fmt"])}
    assert meta["panels"] == 2


def read_compare_player_of(a: str, b: str, tmp_path: Path) -> tuple[dict[str, Any], list[Any]]:
    result = wv.compare_runs([a, b], "w", wv.RenderOptions(formats=("html",)), output_dir=tmp_path / "html")
    return read_compare_player(result.local_paths[0])


def test_scale_frame_gives_every_panel_the_same_scale_at_each_frame(tmp_path: Path) -> None:
    a = run_with(tmp_path / "a", {"fc1": ramp([0, 10], 0.0)}, [0, 10])
    b = run_with(tmp_path / "b", {"fc1": ramp([5, 10], 2.0)}, [5, 10])
    result = wv.compare_runs([a, b], "fc1", wv.RenderOptions(formats=("html",), scale="frame"), output_dir=tmp_path)
    _, ((meta_a, _), (meta_b, _)) = read_compare_player(result.local_paths[0])
    assert meta_a["limits"] == meta_b["limits"]
    top = ramp([0, 10], 0.0)[0].max()
    assert meta_a["limits"][0] == [0.0, pytest.approx(top)]  # only a is shown at step 0
    assert meta_a["limits"][1][1] == pytest.approx(ramp([5], 2.0)[0].max())  # b's larger values at step 5


def test_delta_init_shares_one_symmetric_scale_and_each_run_starts_from_its_own_first_snapshot(tmp_path: Path) -> None:
    a = run_with(tmp_path / "a", {"fc1": ramp([0, 10, 20], 0.0)}, [0, 10, 20])
    b = run_with(tmp_path / "b", {"fc1": ramp([10, 20], 3.0)}, [10, 20])
    result = wv.compare_runs([a, b], "fc1", wv.RenderOptions(formats=("html",), view="delta-init"),
                             output_dir=tmp_path)
    meta, ((meta_a, values_a), (meta_b, values_b)) = read_compare_player(result.local_paths[0])
    assert meta_a["vmin"] == meta_b["vmin"] == -meta_a["vmax"]
    np.testing.assert_allclose(values_a[2], np.full((4, 6), 1.0), atol=1e-6)  # 0.05 × 20 since step 0
    np.testing.assert_allclose(values_b[2], np.full((4, 6), 0.5), atol=1e-6)  # 0.05 × 10 since its step 10
    assert np.isnan(values_b[0]).all()
    assert "change since each run's first snapshot" in meta["titles"][0]


def test_diff_adds_the_first_run_minus_the_second_on_its_own_scale(tmp_path: Path) -> None:
    a = run_with(tmp_path / "a", {"fc1": ramp([0, 10], 0.0)}, [0, 10])
    b = run_with(tmp_path / "b", {"fc1": ramp([5, 10], 0.5)}, [5, 10])
    plain = wv.compare_runs([a, b], "fc1", output_dir=tmp_path / "plain")
    result = wv.compare_runs([a, b], "fc1", wv.RenderOptions(formats=("gif", "html")), diff=True,
                             output_dir=tmp_path / "diff")
    assert read_gif(result.local_paths[0]).size[0] > 1.4 * read_gif(plain.local_paths[0]).size[0]
    _, panels = read_compare_player(result.local_paths[1])
    assert len(panels) == 3
    diff_meta, diff = panels[2]
    a_values, b_values = ramp([0, 10], 0.0), ramp([5, 10], 0.5)
    assert np.isnan(diff[0]).all()  # b has nothing at step 0
    np.testing.assert_allclose(diff[1], a_values[0] - b_values[0], atol=1e-6)  # a holds step 0 at step 5
    np.testing.assert_allclose(diff[2], a_values[1] - b_values[1], atol=1e-6)
    assert diff_meta["vmin"] == -diff_meta["vmax"] == pytest.approx(-0.75)
    assert "own scale" in diff_meta["titles"][2]
    assert diff_meta["name"] == f"{a[:8]} − {b[:8]}"


def test_pooled_layers_of_different_shapes_compare_when_they_share_a_grid(tmp_path: Path) -> None:
    a = run_with(tmp_path / "a", {"big": training_series(2, (100, 8), seed=1)}, [0, 1])
    b = run_with(tmp_path / "b", {"big": training_series(2, (110, 8), seed=2)}, [0, 1])
    result = wv.compare_runs([a, b], "big", wv.RenderOptions(max_rows=10), output_dir=tmp_path)
    assert result.grid == (10, 8)
    assert read_gif(result.local_paths[0]).n_frames == 2


# ---------------------------------------------------------------------------- logging to a run


def test_log_to_logs_under_weightviz_compare_and_leaves_the_run_as_it_was(tmp_path: Path) -> None:
    a = run_with(tmp_path / "a", {"fc1": training_series(2, seed=1)}, [0, 1])
    b = run_with(tmp_path / "b", {"fc1": training_series(2, seed=2)}, [0, 1])
    target = make_run()
    before = MlflowClient().get_run(target)
    result = wv.compare_runs([a, b], "fc1", wv.RenderOptions(formats=("gif", "html")), log_to=target)
    name = f"fc1_{a[:8]}-{b[:8]}"
    assert artifact_files(target, "weightviz") == [f"weightviz/compare/{name}.gif", f"weightviz/compare/{name}.html"]
    assert result.artifact_paths == (f"weightviz/compare/{name}.gif", f"weightviz/compare/{name}.html")
    assert result.local_paths == ()  # only --log-to: nothing written locally
    assert not any(p.suffix in {".gif", ".html"} for p in Path.cwd().iterdir())
    after = MlflowClient().get_run(target)
    assert after.info.status == before.info.status == "FINISHED"
    assert after.info.end_time == before.info.end_time
    assert {k: v for k, v in after.data.tags.items() if k.startswith("weightviz.")} == {}
    assert artifact_files(a, "weightviz") == []
    # An unknown target is found out before anything is drawn, written or logged.
    with pytest.raises(wv.RunNotFoundError, match="f" * 32):
        wv.compare_runs([a, b], "fc1", log_to="f" * 32, output_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


# ---------------------------------------------------------------------------- errors


@pytest.fixture
def runs_ab(tmp_path: Path) -> tuple[str, str]:
    a = run_with(tmp_path / "a", {"fc1": training_series(2, seed=1), "fc2": training_series(2, (2, 5))}, [0, 1],
                 name="first")
    b = run_with(tmp_path / "b", {"fc1": training_series(2, (4, 7), seed=2), "head": training_series(2, (1, 3))},
                 [0, 1], name="second")
    return a, b


@pytest.mark.slow
@pytest.mark.parametrize(("case", "code", "fragments"), [
    ("unknown run", 4, ["0123456789abcdef0123456789abcdef"]),
    ("missing layer", 3, ["run second", "has no layer 'fc2'", "its layers: fc1, head"]),
    ("shapes differ", 3, ["4×6 in first", "4×7 in second", "pooled to the same grid"]),
    ("one run", 2, ["compare needs 2 to 8 runs; got 1"]),
    ("nine runs", 2, ["compare needs 2 to 8 runs; got 9"]),
    ("twice", 2, ["given more than once"]),
    ("out and output-dir", 2, ["either --out or --output-dir"]),
    ("grid", 2, ["--grid"]),
])
def test_each_error_is_one_line_with_its_exit_code_and_writes_nothing(
        runs_ab: tuple[str, str], tmp_path: Path, case: str, code: int, fragments: list[str]) -> None:
    a, b = runs_ab
    out = ["--out", str(tmp_path / "out" / "cmp.gif")]
    args = {
        "unknown run": [a, "0123456789abcdef0123456789abcdef", "--layer", "fc1", *out],
        "missing layer": [a, b, "--layer", "fc2", *out],
        "shapes differ": [a, b, "--layer", "fc1", *out, "--format", "gif", "--format", "html"],
        "one run": [a, "--layer", "fc1", *out],
        "nine runs": [a, *(f"{i:032x}" for i in range(8)), "--layer", "fc1", *out],
        "twice": [a, a, "--layer", "fc1", *out],
        "out and output-dir": [a, b, "--layer", "fc1", *out, "--output-dir", str(tmp_path / "out")],
        "grid": [a, b, "--layer", "fc1", *out, "--grid"],
    }[case]
    (tmp_path / "out").mkdir()
    target = make_run()
    cli = run_isolated("compare", *args, "--log-to", target, cwd=tmp_path)
    if case == "grid":  # compare has no --grid at all: click's own usage error, exit 2
        assert cli.code == 2
        assert "No such option: --grid" in cli.stderr
        return
    assert_one_line_error(cli, code, *fragments)
    assert list((tmp_path / "out").iterdir()) == []
    assert artifact_files(target) == []


# ---------------------------------------------------------------------------- the HTML page in a browser


@pytest.mark.slow
def test_the_html_page_has_one_slider_for_every_panel_and_hover_values_per_panel(tmp_path: Path) -> None:
    from tests.browser import cell_point, launch

    a = run_with(tmp_path / "a", {"fc1": ramp([0, 10], 0.0)}, [0, 10])
    b = run_with(tmp_path / "b", {"fc1": ramp([5, 10], 1.0)}, [5, 10])
    result = wv.compare_runs([a, b], "fc1", wv.RenderOptions(formats=("html",)), diff=True, output_dir=tmp_path)
    errors: list[str] = []
    for browser in launch():
        page = browser.new_page(viewport={"width": 1500, "height": 800})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(result.local_paths[0].resolve().as_uri())
        page.wait_for_function("document.getElementById('compare').dataset.ready !== '0'", timeout=20_000)
        assert page.evaluate("document.getElementById('compare').dataset.ready") == "1", errors
        assert page.locator(".panel").count() == 3
        page.get_by_role("slider", name="frame").fill("2")  # the page's one slider (the panels' own are hidden)
        assert page.evaluate("weightviz.panels.map(p => p.frame())") == [2, 2, 2]
        info = page.locator("#compare > #controls > #stepinfo").inner_text()
        assert info == "step 10 · frame 3/3"  # inner_text collapses the spaces
        page.keyboard.press("Home")
        assert page.evaluate("weightviz.panels.map(p => p.frame())") == [0, 0, 0]
        page.evaluate("weightviz.show(1)")
        panel = page.locator("#panel-1")  # Playwright's locators reach into each panel's shadow root
        x, y = cell_point(panel, 1, 2)
        page.mouse.move(x, y)
        tip = panel.locator("#tip")
        assert tip.get_attribute("data-value") == str(np.float32(ramp([5], 1.0)[0][1, 2]))
        assert page.locator("#panel-1 #title").inner_text().endswith("step 5")
        page.evaluate("weightviz.show(0)")
        assert "no snapshot until step 5" in page.locator("#panel-1 #title").inner_text()
        assert errors == []
