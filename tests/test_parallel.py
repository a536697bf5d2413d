"""Worker processes: frames in order, and the GIF byte for byte the single-process one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mlflow_weightviz as wv
from mlflow_weightviz.parallel import FramePool, LayerJob, encode_range
from tests.helpers import read_gif


def snapshot_folder(folder: Path, frames: int = 9, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir()
    fc1, fc2, out = rng.uniform(0, 0.05, (4, 6)), rng.normal(0, 1, (3, 5)), rng.normal(0, 1, (2, 2))
    for step in range(frames):
        np.savez(folder / f"step_{step}.npz", fc1=fc1, fc2=fc2, out=out)
        out = out + rng.normal(0, 0.1, out.shape)
        fc1 = np.clip(fc1 + rng.normal(0, 0.003, fc1.shape), 0, 0.05)
        fc2 = fc2 + rng.normal(0, 0.1, fc2.shape)
    return folder


def test_two_workers_write_the_same_bytes(tmp_path: Path) -> None:
    src = snapshot_folder(tmp_path / "w")
    one = wv.render_file(src, wv.RenderOptions(), output_dir=tmp_path / "one", workers=1)
    two = wv.render_file(src, wv.RenderOptions(), output_dir=tmp_path / "two", workers=2)
    # Three layers on two workers: two written whole by one worker each, the third split into chunks.
    assert [r.layer for r in one.layers] == [r.layer for r in two.layers] == ["fc1", "fc2", "out"]
    assert [r.frames for r in two.layers] == [9, 9, 9]
    for name in ("fc1.gif", "fc2.gif", "out.gif"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    gif = read_gif(tmp_path / "two" / "fc2.gif")
    assert gif.n_frames == 9
    assert gif.durations == [200] * 8 + [1000]  # the last frame is held


def test_forkserver_started_early_writes_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A parent with another thread (as after an MLflow download) gets its workers from the forkserver,
    # which the render starts before preparing anything, so its imports overlap that work.
    import threading

    from mlflow_weightviz import parallel

    started: list[str] = []
    real = parallel.prestart

    def prestart() -> None:
        started.append(parallel._context().get_start_method())
        real()

    monkeypatch.setattr(parallel, "prestart", prestart)
    src = snapshot_folder(tmp_path / "w")
    one = wv.render_file(src, wv.RenderOptions(), output_dir=tmp_path / "one", workers=1)
    assert started == []  # one process: no workers to start
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        two = wv.render_file(src, wv.RenderOptions(), output_dir=tmp_path / "two", workers=2)
    finally:
        stop.set()
        other.join()
    assert started == ["forkserver"]
    assert [r.frames for r in two.layers] == [r.frames for r in one.layers] == [9, 9, 9]
    for name in ("fc1.gif", "fc2.gif", "out.gif"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_per_frame_scale_and_delta_view_with_workers(tmp_path: Path) -> None:
    src = snapshot_folder(tmp_path / "w", frames=7, seed=1)
    for opts in (wv.RenderOptions(scale="frame", layers=("fc1",)),
                 wv.RenderOptions(view="delta-step", layers=("fc2",))):
        a = wv.render_file(src, opts, output_dir=tmp_path / "a")
        wv.render_file(src, opts, output_dir=tmp_path / "b", workers=2)
        name = a.layers[0].file_name
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert not list(tmp_path.rglob("stack-*"))  # prepared stacks are removed


def job(tmp_path: Path, frames: int = 6) -> LayerJob:
    rng = np.random.default_rng(2)
    stack = rng.uniform(0, 1, (frames, 3, 4))
    path = tmp_path / "stack.npy"
    np.save(path, stack)
    renderer = {"grid": (3, 4), "cmap": "viridis", "vmin": 0.0, "vmax": 1.0, "fmt": "{x:.2f}", "annotate": True,
                "row_labels": ["r0", "r1", "r2"], "col_labels": ["c0", "c1", "c2", "c3"], "title_sample": "t 00/00"}
    return LayerJob("L", str(path), renderer, tuple(f"t {i}/{frames}" for i in range(frames)),
                    tuple((0.0, 1.0) for _ in range(frames)))


def test_pool_keeps_order_with_any_chunk_size(tmp_path: Path) -> None:
    layer = job(tmp_path)
    expected = encode_range(layer)
    assert [f.index for f in expected] == list(range(6))
    assert expected[0].palette is not None
    assert expected[0].palette.shape == (256, 3)
    for chunk in (1, 4):
        with FramePool(2, chunk=chunk) as pool:
            got = list(pool.frames([layer, layer]))
        assert [f.index for f in got] == list(range(6)) * 2
        assert [f.block for f in got[:6]] == [f.block for f in expected]
        assert got[0].palette is not None
        assert np.array_equal(got[0].palette, expected[0].palette)
    # A chunk that starts mid-layer is diffed against the frame before it, drawn again.
    assert [f.block for f in encode_range(layer, 3, 6)] == [f.block for f in expected[3:]]


def test_workers_draw_mp4_and_html_too_with_the_same_bytes(tmp_path: Path) -> None:
    src = snapshot_folder(tmp_path / "w", frames=7, seed=3)
    opts = wv.RenderOptions(formats=("gif", "html", "mp4"), layers=("fc1", "fc2"))
    wv.render_file(src, opts, output_dir=tmp_path / "one")
    wv.render_file(src, opts, output_dir=tmp_path / "two", workers=2)
    for name in ("fc1.gif", "fc1.html", "fc1.mp4", "fc2.gif", "fc2.html", "fc2.mp4"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert not list(tmp_path.rglob("stack-*"))


def test_workers_warn_once_when_an_output_cannot_use_them(tmp_path: Path) -> None:
    src = snapshot_folder(tmp_path / "w", frames=4)
    with pytest.warns(wv.WeightvizWarning, match="--workers 2 is ignored here: --grid") as caught:
        wv.render_file(src, wv.RenderOptions(grid=True), output_dir=tmp_path / "g", workers=2)
    assert len(caught) == 1
    with pytest.warns(wv.WeightvizWarning, match="--workers 2 is ignored here: the HTML player alone"):
        wv.render_file(src, wv.RenderOptions(formats=("html",)), output_dir=tmp_path / "h", workers=2)
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["fc1.html", "fc2.html", "out.html"]


def test_frame_zero_is_drawn_once_by_whole_layers_and_gives_one_process_palette(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow_weightviz.encoders import FrameEncoder, build_palette
    from mlflow_weightviz.frames import HeatmapRenderer
    from mlflow_weightviz.parallel import build_renderer

    layer = job(tmp_path)
    renderer = build_renderer(layer.renderer)  # one process: the palette of frame 0 as drawn (pipeline.draw_layer)
    try:
        first = renderer.render(np.load(layer.stack_path)[0], layer.titles[0], layer.limits[0])
        expected = FrameEncoder(build_palette(first, renderer.palette_colors())).table
    finally:
        renderer.close()
    drawn: list[str] = []
    render, render_indices = HeatmapRenderer.render, HeatmapRenderer.render_indices

    def counting(self: HeatmapRenderer, *args: object, **kwargs: object) -> np.ndarray:
        drawn.append(str(args[1]))  # the title names the frame
        return render(self, *args, **kwargs)  # type: ignore[arg-type]

    def counting_indices(self: HeatmapRenderer, *args: object, **kwargs: object) -> np.ndarray | None:
        index = render_indices(self, *args, **kwargs)  # type: ignore[arg-type]
        if index is not None:  # composed as indices (else it is drawn with render)
            drawn.append(str(args[1]))
        return index

    monkeypatch.setattr(HeatmapRenderer, "render", counting)
    monkeypatch.setattr(HeatmapRenderer, "render_indices", counting_indices)
    whole = encode_range(layer)  # what a worker does with a whole layer
    assert drawn == list(layer.titles)  # every frame once: the palette comes from frame 0's own drawing
    assert whole[0].palette is not None
    assert np.array_equal(whole[0].palette, expected)
    drawn.clear()
    encode_range(layer, 3, 6)  # a chunk mid-layer: frame 0 once for the palette, frame 2 to diff against
    assert drawn == [layer.titles[i] for i in (0, 2, 3, 4, 5)]


def test_a_later_chunk_after_a_gap_is_diffed_against_indices_composed_not_drawn(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow_weightviz import parallel
    from mlflow_weightviz.frames import HeatmapRenderer

    layer = job(tmp_path, frames=10)
    expected = encode_range(layer)
    rgb: list[str] = []
    render = HeatmapRenderer.render

    def counting(self: HeatmapRenderer, *args: object, **kwargs: object) -> np.ndarray:
        rgb.append(str(args[1]))
        return render(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(HeatmapRenderer, "render", counting)
    # One worker's tasks when two share a layer: frames 0-1, then (after a gap) 4-5 and 8-9.
    try:
        got = [parallel._run_task(parallel._tasks(layer, start, start + 2)) for start in (0, 4, 8)]
    finally:
        state = parallel._STATES.pop(layer.key, None)
        if state is not None:
            state.close()
    assert [b for _, _, blocks, _ in got for b in blocks] == [expected[i].block for i in (0, 1, 4, 5, 8, 9)]
    # Only frame 0 is drawn in RGB (for the palette); frames 3 and 7, the ones before each gap's
    # chunk, are composed as palette indices from the frame this worker drew last.
    assert rgb == [layer.titles[0]]
