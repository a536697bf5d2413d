"""Change views, caption metrics, the all-layer grid and MLflow step images, read back from the outputs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import mlflow_weightviz as wv
from mlflow_weightviz.outputs.html_player import read_player
from tests.helpers import (
    artifact_files,
    log_folder,
    make_run,
    read_gif,
    run_cli,
    training_series,
    with_overview,
    write_canonical,
)


def positive_series(steps: int, shape: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    return [np.abs(w) + 0.5 for w in training_series(steps, shape, seed)]


@pytest.mark.parametrize("view", ["delta-init", "delta-step"])
def test_delta_views_show_the_change_on_a_scale_centred_on_zero(tmp_path: Path, view: str) -> None:
    series = positive_series(5, (4, 6))  # all positive: the weights view would use a sequential map
    write_canonical(tmp_path / "w", {"fc1": series}, [0, 10, 20, 30, 40])
    result = wv.render_file(tmp_path / "w", wv.RenderOptions(view=view, formats=("gif", "html")),
                            output_dir=tmp_path / "out")
    assert result.layers[0].files == ("fc1.gif", "fc1.html")
    meta, values = read_player(tmp_path / "out" / "fc1.html")
    stack = np.array(series)
    expected = stack - stack[0] if view == "delta-init" else np.diff(stack, axis=0, prepend=stack[:1])
    np.testing.assert_array_equal(values, expected.astype(np.float32))
    assert np.all(values[0] == 0)
    assert meta["cmapName"] == "RdBu_r"  # diverging ...
    assert meta["vmin"] == -meta["vmax"]  # ... and centred on 0
    assert meta["vmax"] == pytest.approx(np.abs(expected).max())
    note = "change since step 0" if view == "delta-init" else "change since the previous frame"
    assert all(t.splitlines()[1] == note for t in meta["titles"])
    assert read_gif(tmp_path / "out" / "fc1.gif").n_frames == 5


def test_weights_view_keeps_the_data_and_a_sequential_map(tmp_path: Path) -> None:
    series = positive_series(3, (2, 3))
    write_canonical(tmp_path / "w", {"fc1": series}, [0, 1, 2])
    wv.render_file(tmp_path / "w", wv.RenderOptions(formats=("html",)), output_dir=tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["fc1.html"]  # no GIF drawn when only html is asked
    meta, values = read_player(tmp_path / "out" / "fc1.html")
    np.testing.assert_array_equal(values, np.array(series, dtype=np.float32))
    assert meta["cmapName"] == "YlGn"
    assert 0 < meta["vmin"] < meta["vmax"]


# ------------------------------------------------------------------- captions


def test_caption_metric_at_or_before_each_step(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    run_id = make_run()
    client = MlflowClient()
    for step, loss in [(0, 2.0), (10, 1.5), (25, 0.75)]:
        client.log_metric(run_id, "loss", loss, step=step, timestamp=1_000_000 + step)
    client.log_metric(run_id, "loss", 1.25, step=10, timestamp=2_000_000)  # a later value at the same step wins
    write_canonical(tmp_path / "w", {"fc1": training_series(4, (2, 3))}, [5, 10, 20, 30])
    log_folder(run_id, tmp_path / "w")
    wv.render_run(run_id, wv.RenderOptions(caption_metric="loss", formats=("gif", "html")),
                  output_dir=tmp_path / "cap")
    meta, _ = read_player(tmp_path / "cap" / "fc1.html")
    assert [t.splitlines()[-1] for t in meta["titles"]] == [
        "loss = 2 (step 0)", "loss = 1.25", "loss = 1.25 (step 10)", "loss = 0.75 (step 25)"]
    plain = wv.render_run(run_id, wv.RenderOptions(), log=False, output_dir=tmp_path / "plain")
    assert plain.status == "rendered"
    captioned, uncaptioned = read_gif(tmp_path / "cap" / "fc1.gif"), read_gif(tmp_path / "plain" / "fc1.gif")
    assert captioned.size[1] > uncaptioned.size[1]  # the caption line is drawn in the frame
    assert captioned.n_frames == 4
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"


def test_caption_metric_must_exist(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    run_id = make_run()
    MlflowClient().log_metric(run_id, "acc", 0.5, step=1)
    write_canonical(tmp_path / "w", {"fc1": training_series(2, (2, 2))}, [0, 1])
    log_folder(run_id, tmp_path / "w")
    with pytest.raises(wv.UsageError, match="no metric 'loss' for --caption-metric; its metrics: acc"):
        wv.render_run(run_id, wv.RenderOptions(caption_metric="loss"))
    assert artifact_files(run_id, "weightviz") == []


def test_render_file_refuses_run_only_options(tmp_path: Path) -> None:
    write_canonical(tmp_path / "w", {"fc1": training_series(2, (2, 2))}, [0, 1])
    for options in (wv.RenderOptions(caption_metric="loss"), wv.RenderOptions(step_images=1)):
        with pytest.raises(wv.UsageError, match="render-file has none"):
            wv.render_file(tmp_path / "w", options)
    cli = run_cli("render-file", str(tmp_path / "w"), "--caption-metric", "loss", cwd=tmp_path)
    assert cli.code == 2
    assert cli.stderr.startswith("error: --caption-metric and --step-images")
    assert len(cli.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.gif"))


# ----------------------------------------------------------------------- grid


def test_grid_aligns_layers_on_the_union_of_steps(tmp_path: Path) -> None:
    write_canonical(tmp_path / "w", {"fc1": training_series(4, (4, 6))}, [0, 2, 4, 6])
    write_canonical(tmp_path / "w", {"fc2": training_series(2, (3, 2), seed=1)}, [3, 5])
    result = wv.render_file(tmp_path / "w", wv.RenderOptions(grid=True, hold_last_ms=0),
                            out=tmp_path / "all.gif")  # one file for every layer, so --out is fine
    assert [(r.layer, r.file_name, r.steps) for r in result.layers] == [("grid", "grid.gif", (0, 2, 3, 4, 5, 6))]
    gif = read_gif(tmp_path / "all.gif")
    assert gif.n_frames == 6
    width = gif.size[0]
    body = slice(60, None)  # below the header, which names the step of every frame
    left, right = slice(0, width // 3), slice(width - width // 4, width)
    frames = gif.frames
    # step 2 → 3: fc1 (left) holds its step-2 value while fc2 (right) appears
    assert np.array_equal(frames[1][body, left], frames[2][body, left])
    assert not np.array_equal(frames[1][body, right], frames[2][body, right])
    # step 5 → 6: fc2 holds its step-5 value while fc1 moves on
    assert np.array_equal(frames[4][body, right], frames[5][body, right])
    assert not np.array_equal(frames[4][body, left], frames[5][body, left])
    # before its first snapshot fc2's panel is drawn empty: grey (NaN) cells
    grey_before = np.all(frames[0][body, right] == 128, axis=-1).sum()
    grey_after = np.all(frames[2][body, right] == 128, axis=-1).sum()
    assert grey_before > 1000
    assert grey_after < grey_before / 20  # at most a few anti-aliased text pixels


def test_grid_with_html_is_a_usage_error() -> None:
    with pytest.raises(wv.UsageError, match="HTML player shows one layer"):
        wv.RenderOptions(grid=True, formats=("gif", "html"))


# -------------------------------------------------------------- step images

_IMAGE = re.compile(r"images/(?P<key>[^+]+)\+step\+(?P<step>\d+)\+timestamp\+\d+\+[0-9a-f-]+\.png$")


def test_step_images_every_kth_frame_with_its_step(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from PIL import Image

    run_id = make_run()
    write_canonical(tmp_path / "w", {"fc1.weight": training_series(6, (3, 4)), "x/y": training_series(6, (2, 2))},
                    [0, 2, 4, 6, 8, 10])
    log_folder(run_id, tmp_path / "w")
    wv.render_run(run_id, wv.RenderOptions(step_images=2), output_dir=tmp_path / "out")
    found: dict[str, dict[int, str]] = {}
    for path in artifact_files(run_id, "images"):
        m = _IMAGE.match(path)
        if m:
            found.setdefault(m["key"], {})[int(m["step"])] = path
    # keys are valid for MLflow; "/" is stored as "~" in the file names
    assert sorted(found) == ["weightviz~fc1.weight", "weightviz~x_y"]
    assert sorted(found["weightviz~fc1.weight"]) == [0, 4, 8, 10]  # every 2nd frame and the last
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags.get("mlflow.loggedImages") == "True"
    local = client.download_artifacts(run_id, found["weightviz~fc1.weight"][8], str(tmp_path / "dl"))
    gif = read_gif(tmp_path / "out" / "fc1.weight.gif")
    with Image.open(local) as image:
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), gif.frames[4])  # step 8 is frame 4


def test_step_images_without_a_gif_format_log_images_but_no_gif(tmp_path: Path) -> None:
    run_id = make_run()
    write_canonical(tmp_path / "w", {"fc1": training_series(3, (2, 3))}, [0, 1, 2])
    log_folder(run_id, tmp_path / "w")
    wv.render_run(run_id, wv.RenderOptions(step_images=1, formats=("html",)))
    steps = sorted(int(m["step"]) for p in artifact_files(run_id, "images") if (m := _IMAGE.match(p)))
    assert steps == [0, 1, 2]
    assert artifact_files(run_id, "weightviz") == with_overview(["weightviz/fc1.html"])


def test_step_images_need_a_run_to_log_to(tmp_path: Path) -> None:
    run_id = make_run()
    with pytest.raises(wv.UsageError, match="cannot be used with --no-log"):
        wv.render_run(run_id, wv.RenderOptions(step_images=1), log=False, output_dir=tmp_path)
    with pytest.raises(wv.UsageError, match="at least 1"):
        wv.RenderOptions(step_images=0)
