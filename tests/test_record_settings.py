"""What to record (capture/settings.py), checked before training; and the keyword set record() and callbacks share."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

import mlflow_weightviz as wv
from mlflow_weightviz.capture import RecordingCallback
from mlflow_weightviz.capture.settings import RecordSettings, render_options_from


def test_settings_are_normalised() -> None:
    settings = RecordSettings.build(layers="*.weight", artifact_path="/w/", render_artifact_path="gifs/",
                                    dtype="float16", buffer_dir="buf", render_options={"max_frames": 3})
    assert settings.layers == ("*.weight",)
    assert (settings.artifact_path, settings.render_artifact_path) == ("w", "gifs")
    assert settings.dtype == np.dtype("float16")
    assert settings.buffer_dir == Path("buf")
    assert settings.options == wv.RenderOptions(max_frames=3)
    assert RecordSettings.build() == RecordSettings()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"every": True}, "every must be an integer of at least 1"),
    ({"chunk_steps": 0}, "chunk_steps must be an integer of at least 1"),
    ({"max_uploads": 1.5}, "max_uploads must be an integer of at least 1"),
    ({"layers": []}, "layers must be one or more non-empty name globs"),
    ({"layers": ["ok", ""]}, "layers must be one or more non-empty name globs"),
    ({"artifact_path": "../up"}, "artifact_path must be a relative artifact folder"),
    ({"render_artifact_path": "/"}, "render_artifact_path must be a relative artifact folder"),
    ({"artifact_path": "snaps//daily"}, "artifact_path must be a relative artifact folder"),
    ({"render_artifact_path": "gifs/./x"}, "render_artifact_path must be a relative artifact folder"),
    ({"artifact_path": "."}, "artifact_path must be a relative artifact folder"),
    ({"artifact_path": "same", "render_artifact_path": "same/"}, "need different folders"),
    ({"dtype": "U3"}, "dtype must be a numeric numpy dtype"),
    ({"dtype": "not-a-dtype"}, "dtype must be a numeric numpy dtype"),
])
def test_bad_settings_are_usage_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(wv.UsageError, match=message):
        RecordSettings.build(**kwargs)  # type: ignore[arg-type]


def test_render_options_are_checked_and_recorder_only_fields_refused() -> None:
    assert render_options_from({"cmap": "viridis", "view": "delta-init"}).cmap == "viridis"
    with pytest.raises(wv.UsageError, match="unknown colormap 'nope'"):
        render_options_from({"cmap": "nope"})
    for name in ("layers", "allow_pickle", "frame_mss"):
        with pytest.raises(wv.UsageError, match=f"unknown render option.*{name}.*the render options are: "):
            render_options_from({name: 1})


def test_record_and_the_callbacks_share_one_keyword_set() -> None:
    def keywords(func: object) -> set[str]:
        params = inspect.signature(func).parameters.values()  # type: ignore[arg-type]
        return {p.name for p in params if p.kind is p.KEYWORD_ONLY}

    shared = keywords(RecordingCallback.__init__)
    assert shared == keywords(wv.record) - {"every"}
    assert shared - {"run_id", "tracking_uri"} == keywords(RecordSettings.build) - {"every", "render_options"}
