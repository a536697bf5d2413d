from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_weightviz.options import WeightvizWarning
from mlflow_weightviz.outputs import PREVIEW_LIMIT, warn_if_too_big


def test_files_over_the_ui_preview_limit_are_warned_about(tmp_path: Path) -> None:
    big, small = tmp_path / "fc1.gif", tmp_path / "fc2.gif"
    with big.open("wb") as fh:  # sparse: takes no disk space
        fh.truncate(PREVIEW_LIMIT + 1)
    small.write_bytes(b"GIF89a")
    with pytest.warns(WeightvizWarning, match=r"fc1\.gif is 50 MiB, over the MLflow UI's 50 MiB preview limit"):
        warn_if_too_big([big, small])


def test_files_within_the_limit_pass_quietly(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    ok = tmp_path / "fc1.gif"
    with ok.open("wb") as fh:
        fh.truncate(PREVIEW_LIMIT)
    warn_if_too_big([ok])
    assert not recwarn.list
