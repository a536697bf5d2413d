"""MP4 output (imageio + imageio-ffmpeg) and reading staged GIFs back frame by frame."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import mlflow_weightviz as wv
from mlflow_weightviz.encoders import (
    Animation,
    Frame,
    FrameEncoder,
    GifWriter,
    StepImageWriter,
    build_palette,
)
from mlflow_weightviz.errors import MissingDependencyError
from mlflow_weightviz.options import GifOptions
from mlflow_weightviz.outputs.video import Mp4Encoder, Mp4Writer, _imageio
from mlflow_weightviz.pipeline import write_frames
from tests.helpers import read_gif, run_cli, training_series, write_canonical


def read_mp4(path: Path) -> tuple[list[np.ndarray], dict[str, object]]:
    import imageio.v2 as iio

    reader = iio.get_reader(path, format="FFMPEG")
    try:
        return [np.asarray(f) for f in reader], dict(reader.get_meta_data())
    finally:
        reader.close()


def test_mp4_shows_what_the_gif_shows(tmp_path: Path) -> None:
    write_canonical(tmp_path / "w", {"fc1": training_series(5, (4, 6))}, [0, 10, 20, 30, 40])
    result = wv.render_file(tmp_path / "w", wv.RenderOptions(formats=("gif", "mp4"), frame_ms=100,
                                                             hold_last_ms=1000), output_dir=tmp_path / "out")
    assert result.layers[0].files == ("fc1.gif", "fc1.mp4")
    gif = read_gif(tmp_path / "out" / "fc1.gif")
    frames, meta = read_mp4(tmp_path / "out" / "fc1.mp4")
    # four frames of 100 ms, then the last held for 1000 ms = 10 frames at 10 fps
    assert len(frames) == 4 + 10
    assert meta["fps"] == 10.0
    assert tuple(meta["size"]) == gif.size
    assert frames[0].shape == gif.frames[0].shape
    for video_frame, gif_frame in [(frames[0], gif.frames[0]), (frames[2], gif.frames[2]),
                                   (frames[-1], gif.frames[-1])]:
        assert np.abs(video_frame.astype(int) - gif_frame.astype(int)).mean() < 4  # lossy, but the same picture
    assert np.abs(frames[0].astype(int) - frames[3].astype(int)).mean() > 0.05  # and the frames do change


def test_mp4_alone_writes_no_gif(tmp_path: Path) -> None:
    write_canonical(tmp_path / "w", {"a": training_series(3, (2, 3)), "b": training_series(3, (3, 3))}, [0, 1, 2])
    result = wv.render_file(tmp_path / "w", wv.RenderOptions(formats=("mp4",), hold_last_ms=0),
                            output_dir=tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.mp4", "b.mp4"]
    assert [r.file_name for r in result.layers] == ["a.mp4", "b.mp4"]
    frames, _ = read_mp4(tmp_path / "out" / "b.mp4")
    assert len(frames) == 3


def test_cli_format_is_repeatable(tmp_path: Path) -> None:
    write_canonical(tmp_path / "w", {"fc1": training_series(3, (2, 3))}, [0, 1, 2])
    cli = run_cli("render-file", str(tmp_path / "w"), "--format", "mp4", "--format", "html", "--out",
                  str(tmp_path / "o" / "fc1.mp4"), "--quiet")
    assert cli.code == 0, cli.stderr
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["fc1.html", "fc1.mp4"]
    assert "(+ fc1.html)" in cli.stdout
    bad = run_cli("render-file", str(tmp_path / "w"), "--format", "png")
    assert bad.code == 2
    assert "png" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_encoder_needs_even_sides(tmp_path: Path) -> None:
    with Mp4Encoder(tmp_path / "x.mp4") as mp4, pytest.raises(ValueError, match="even frame sides; got 11×10"):
        mp4.add_frame(np.zeros((10, 11, 3), np.uint8))


def test_missing_imageio_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if the package were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'mlflow-weightviz\[mp4\]'") as info:
        _imageio()
    assert info.value.exit_code == 7


def test_missing_imageio_fails_before_drawing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_canonical(tmp_path / "w", {"fc1": training_series(3, (2, 3))}, [0, 1, 2])
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(MissingDependencyError, match="MP4 output needs imageio"):
        wv.render_file(tmp_path / "w", wv.RenderOptions(formats=("gif", "mp4")), output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_writers_fed_from_the_frame_loop_keep_merged_repeats(tmp_path: Path) -> None:
    # MP4 and step images get each frame as the GIF shows it, straight from the loop (no GIF is decoded).
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 255, (6, 3), dtype=np.uint8)  # few colours: the GIF palette holds them exactly
    a, b, c = (colours[rng.integers(0, 6, (8, 10))] for _ in range(3))
    frames = [a, a, a, b, c, c]
    timing = GifOptions(frame_ms=50, hold_last_ms=500)
    encoder = FrameEncoder(build_palette(a, colours))
    steps = (0, 10, 20, 30, 40, 50)

    def loop() -> Iterator[Frame]:
        for i, rgb in enumerate(frames):
            block = encoder.encode(rgb)
            yield Frame(i, steps[i], block=block, indices=encoder.previous, palette=encoder.table)

    gif, mp4 = GifWriter(tmp_path / "x.gif", timing), Mp4Writer(tmp_path / "x.mp4", timing)
    stills = StepImageWriter(tmp_path / "steps", every=1)
    assert write_frames(Animation("x", steps, (10, 8)), loop(), [gif, mp4, stills]) == 6
    assert read_gif(tmp_path / "x.gif").n_frames == 3  # identical neighbours were merged into one GIF frame
    assert read_gif(tmp_path / "x.gif").durations == [150, 50, 500]
    back = list(stills.frames())
    assert [step for step, _ in back] == list(steps)
    for (_, got), want in zip(back, frames, strict=True):
        np.testing.assert_array_equal(got, want)
    video, meta = read_mp4(tmp_path / "x.mp4")
    assert len(video) == 3 + 1 + 10  # as long as the GIF shows each picture: the last is held 500 ms
    assert meta["fps"] == 20.0
