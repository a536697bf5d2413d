"""RenderOptions: grouped by concern, flat keywords routed to their group, checked when made."""

from __future__ import annotations

import pytest

import mlflow_weightviz as wv
from mlflow_weightviz.options import GifOptions, LookOptions, OutputOptions


def test_flat_keywords_go_to_their_group_and_read_back_flat() -> None:
    options = wv.RenderOptions(cmap="viridis", fps=10, hold_last_ms=500, formats="mp4", max_frames=5)
    assert options.look == LookOptions(cmap="viridis")
    assert options.gif == GifOptions(frame_ms=100, hold_last_ms=500)
    assert options.outputs == OutputOptions(formats=(wv.Format.MP4,))
    assert (options.cmap, options.frame_ms, options.formats, options.max_frames) == ("viridis", 100, ("mp4",), 5)
    assert options.replace(frame_ms=300).gif.frame_ms == 300
    assert options.replace(look=LookOptions(dpi=80)).look == LookOptions(dpi=80)


def test_unknown_keywords_name_the_valid_ones() -> None:
    with pytest.raises(wv.UsageError, match=r"unknown render option\(s\) frame_mss.*annotate, caption_metric"):
        wv.RenderOptions(frame_mss=3)
    with pytest.raises(wv.UsageError, match="workers and allow_pickle are arguments of render_run"):
        wv.RenderOptions(workers=2)


def test_colormap_is_checked_when_made() -> None:
    with pytest.raises(wv.UsageError, match="unknown colormap 'nope'"):
        wv.RenderOptions(cmap="nope")


def test_fingerprint_fields_are_the_flat_fields() -> None:
    # pool="mean" given explicitly keeps the fingerprint it always had (the default is now auto: None).
    fields = wv.RenderOptions(cmap="magma", layers=("fc*",), pool="mean").fingerprint_fields()
    assert wv.RenderOptions().fingerprint_fields()["pool"] is None
    assert fields == {
        "layers": ["fc*"], "scale": "global", "vmin": None, "vmax": None, "cmap": "magma", "annotate": None,
        "fmt": None, "max_rows": 64, "max_cols": 64, "pool": "mean", "row_label": "", "col_label": "",
        "frame_ms": 200, "hold_last_ms": 1000, "loop": 0, "max_frames": None, "dpi": 100, "view": "weights",
        "formats": ["gif"], "step_images": None, "caption_metric": None, "grid": False}
