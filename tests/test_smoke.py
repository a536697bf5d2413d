"""End-to-end smoke tests of the core path on both MLflow backends."""

from __future__ import annotations

from pathlib import Path

import pytest

import mlflow_weightviz as wv
from tests.helpers import (
    artifact_files,
    log_folder,
    make_run,
    read_gif,
    training_series,
    with_overview,
    write_canonical,
)


def test_render_run_embedded_store(tmp_path: Path) -> None:
    run_id = make_run()
    series = training_series(12, (4, 6))
    write_canonical(tmp_path / "w", {"fc1": series}, list(range(12)))
    log_folder(run_id, tmp_path / "w")
    result = wv.render_run(run_id)
    assert result.status == "rendered"
    assert artifact_files(run_id, "weightviz") == with_overview(["weightviz/fc1.gif"])
    again = wv.render_run(run_id)
    assert again.status == "up_to_date"


@pytest.mark.slow
def test_render_run_real_server(server_uri: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    run_id = make_run(server_uri)
    write_canonical(tmp_path / "w", {"a": training_series(3), "b": training_series(3, (2, 2))}, [0, 5, 10])
    log_folder(run_id, tmp_path / "w", uri=server_uri)
    out = tmp_path / "local"
    result = wv.render_run(run_id, output_dir=out)
    assert {r.layer for r in result.layers} == {"a", "b"}
    gif = read_gif(out / "a.gif")
    assert gif.n_frames == 3
    assert MlflowClient(server_uri).get_run(run_id).info.status == "FINISHED"
