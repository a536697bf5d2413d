"""The layers × steps overview (overview.png/.html), read back from disk and from real MLflow runs."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import mlflow_weightviz as wv
from mlflow_weightviz import stats
from mlflow_weightviz.outputs.overview import model_order, overview_data, short_names, write_overview
from tests.helpers import artifact_files, log_folder, make_run, run_cli, training_series, with_overview, write_canonical


def page_data(path: Path) -> dict[str, Any]:
    """The values the HTML overview shows on hover."""
    text = path.read_text(encoding="utf-8")
    assert "<img" in text
    assert ".gif" not in text
    match = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S)
    assert match is not None
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def update_ratios(series: list[np.ndarray]) -> list[float | None]:
    """‖W_t − W_s‖ / ‖W_s‖ straight from the arrays, for comparison."""
    out: list[float | None] = [None]
    for prev, cur in zip(series, series[1:], strict=False):
        out.append(float(np.linalg.norm(cur - prev) / np.linalg.norm(prev)))
    return out


def test_overview_values_are_the_update_ratios_of_the_snapshots(tmp_path: Path) -> None:
    fc1, fc2 = training_series(4, (6, 5)), training_series(4, (3, 8), seed=1)
    fc2 = [w * (1 + 0.5 * i) for i, w in enumerate(fc2)]  # fc2 moves much more than fc1
    write_canonical(tmp_path / "w", {"fc1": fc1, "fc2": fc2}, [0, 10, 20, 30])
    result = wv.render_file(tmp_path / "w", wv.RenderOptions(overview=True), output_dir=tmp_path / "out")
    assert result.extras == ("overview.html", "overview.png")
    data = page_data(tmp_path / "out" / "overview.html")
    assert data["stat"] == "update_ratio"
    assert data["layers"] == ["fc1", "fc2"]
    assert data["steps"] == [0, 10, 20, 30]
    for row, series in zip(data["values"], (fc1, fc2), strict=True):
        assert row[0] is None  # the first column has no previous snapshot
        np.testing.assert_allclose(row[1:], update_ratios(series)[1:], rtol=1e-6)
    assert min(data["values"][1][1:]) > max(data["values"][0][1:])
    with Image.open(tmp_path / "out" / "overview.png") as png:
        assert png.format == "PNG"
        assert 400 <= png.size[0] <= 2400
        assert 200 <= png.size[1] <= 2400


def test_overview_is_off_for_local_renders_unless_asked(tmp_path: Path) -> None:
    write_canonical(tmp_path / "w", {"fc1": training_series(3)}, [0, 1, 2])
    wv.render_file(tmp_path / "w", output_dir=tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fc1.gif"]


@pytest.mark.parametrize("stat", ["drift", "rms", "norm"])
def test_overview_stat_choices_match_the_statistics(tmp_path: Path, stat: str) -> None:
    series = training_series(3, (4, 4))
    write_canonical(tmp_path / "w", {"fc": series}, [0, 5, 9])
    wv.render_file(tmp_path / "w", wv.RenderOptions(overview=True, overview_stat=stat), output_dir=tmp_path / "o")
    data = page_data(tmp_path / "o" / "overview.html")
    expected = {"drift": [float(np.linalg.norm(w - series[0]) / np.linalg.norm(series[0])) for w in series],
                "rms": [float(np.sqrt(np.mean(w ** 2))) for w in series],
                "norm": [float(np.linalg.norm(w)) for w in series]}[stat]
    assert data["stat"] == stat
    if stat == "drift":  # 0 at the first snapshot by definition
        assert data["values"][0][0] == 0.0
    np.testing.assert_allclose(data["values"][0], expected, rtol=1e-6, atol=1e-12)


def test_overview_is_logged_for_a_rendered_run(tmp_path: Path) -> None:
    series = training_series(3, (5, 4))
    write_canonical(tmp_path / "w", {"fc": series}, [0, 1, 2])
    run_id = make_run()
    log_folder(run_id, tmp_path / "w")
    result = wv.render_run(run_id)
    assert artifact_files(run_id, "weightviz") == with_overview(["weightviz/fc.gif"])
    assert "weightviz/overview.png" in result.artifact_paths
    from mlflow.tracking import MlflowClient

    page = Path(MlflowClient().download_artifacts(run_id, "weightviz/overview.html", str(tmp_path)))
    np.testing.assert_allclose(page_data(page)["values"][0][1:], update_ratios(series)[1:], rtol=1e-6)


def test_overview_reads_back_the_metrics_a_run_logged(tmp_path: Path) -> None:
    """Where the statistics were logged as metrics (as record() does), the overview shows those, not new ones."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    write_canonical(tmp_path / "w", {"fc": training_series(3, (5, 4))}, [0, 1, 2])
    run_id = make_run()
    log_folder(run_id, tmp_path / "w")
    marks = {1: 0.123456, 2: 0.654321}  # nothing computed from these snapshots is near these numbers
    metrics = [Metric(stats.metric_key("fc", "norm"), 7.0 + s, 0, s) for s in (0, 1, 2)]
    metrics += [Metric(stats.metric_key("fc", "update_ratio"), v, 0, s) for s, v in marks.items()]
    MlflowClient().log_batch(run_id, metrics=metrics)
    wv.render_run(run_id)
    page = Path(MlflowClient().download_artifacts(run_id, "weightviz/overview.html", str(tmp_path)))
    assert page_data(page)["values"] == [[None, 0.123456, 0.654321]]
    wv.render_run(run_id, wv.RenderOptions(overview_stat="norm"), force=True)
    page = Path(MlflowClient().download_artifacts(run_id, "weightviz/overview.html", str(tmp_path / "n")))
    assert page_data(page)["values"] == [[7.0, 8.0, 9.0]]


def test_record_logs_the_overview_at_the_end(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import mlflow

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with mlflow.start_run() as run, wv.record(model, every=2, layers="*.weight") as rec:
        for step in range(6):
            loss = model(torch.randn(8, 5)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(step)
    files = artifact_files(run.info.run_id, "weightviz")
    assert "weightviz/overview.png" in files
    assert "weightviz/overview.html" in files
    from mlflow.tracking import MlflowClient

    page = Path(MlflowClient().download_artifacts(run.info.run_id, "weightviz/overview.html", str(tmp_path)))
    data = page_data(page)
    assert data["layers"] == ["0.weight", "2.weight"]  # the model's order
    assert len(data["steps"]) >= 3
    assert all(v is not None and v > 0 for row in data["values"] for v in row[1:])
    # The same numbers as the metrics record() logged while training (one set of statistics).
    for layer, row in zip(data["layers"], data["values"], strict=True):
        logged = metric_history(run.info.run_id, stats.metric_key(layer, "update_ratio"))
        assert sorted(logged) == data["steps"][1:]
        np.testing.assert_allclose(row[1:], [logged[s] for s in data["steps"][1:]], rtol=1e-6)


def metric_history(run_id: str, key: str) -> dict[int, float]:
    """A run's logged metric ``key`` as {step: value}."""
    from mlflow.tracking import MlflowClient

    return {m.step: m.value for m in MlflowClient().get_metric_history(run_id, key)}


@pytest.mark.parametrize("stat", ["update_ratio", "drift", "norm"])
def test_a_rendered_runs_overview_shows_the_metrics_the_render_logged(tmp_path: Path, stat: str) -> None:
    fc1, fc2 = training_series(4, (6, 5)), training_series(4, (3, 8), seed=1)
    write_canonical(tmp_path / "w", {"fc1": fc1, "fc2": fc2}, [0, 3, 6, 9])
    run_id = make_run()
    log_folder(run_id, tmp_path / "w")
    wv.render_run(run_id, wv.RenderOptions(overview_stat=stat))
    from mlflow.tracking import MlflowClient

    page = Path(MlflowClient().download_artifacts(run_id, "weightviz/overview.html", str(tmp_path)))
    data = page_data(page)
    assert data["stat"] == stat
    for layer, row in zip(data["layers"], data["values"], strict=True):
        logged = metric_history(run_id, stats.metric_key(layer, stat))
        shown = {step: v for step, v in zip(data["steps"], row, strict=True) if v is not None}
        assert shown == pytest.approx(logged, rel=1e-9)
        assert len(shown) == (3 if stat == "update_ratio" else 4)


def test_no_overview_logs_none_and_changes_the_fingerprint(tmp_path: Path) -> None:
    write_canonical(tmp_path / "w", {"fc": training_series(3)}, [0, 1, 2])
    run_id = make_run()
    log_folder(run_id, tmp_path / "w")
    cli = run_cli("render", run_id, "--no-overview", cwd=tmp_path)
    assert cli.code == 0, cli.stderr
    assert artifact_files(run_id, "weightviz") == ["weightviz/fc.gif"]
    # The default options keep the fingerprint renders had before the overview existed.
    assert "overview" not in wv.RenderOptions().fingerprint_fields()
    assert "overview_stat" not in wv.RenderOptions().fingerprint_fields()
    assert wv.RenderOptions(overview=False).fingerprint_fields()["overview"] is False
    assert wv.RenderOptions(overview_stat="rms").fingerprint_fields()["overview_stat"] == "rms"


def test_overview_cli_for_a_local_render(tmp_path: Path) -> None:
    write_canonical(tmp_path / "w", {"fc": training_series(3)}, [0, 1, 2])
    cli = run_cli("render-file", str(tmp_path / "w"), "--output-dir", str(tmp_path / "o"), "--overview",
                  "--overview-stat", "drift", cwd=tmp_path)
    assert cli.code == 0, cli.stderr
    assert "also: overview.html, overview.png" in cli.stdout
    assert page_data(tmp_path / "o" / "overview.html")["stat"] == "drift"
    bad = run_cli("render-file", str(tmp_path / "w"), "--overview-stat", "loss", cwd=tmp_path)
    assert bad.code == 2
    assert "Traceback" not in bad.stderr


def test_short_names_keep_the_telling_part() -> None:
    names = [f"transformer.h.{i}.mlp.c_fc.weight" for i in range(12)] + ["transformer.wte.weight", "lm_head.weight"]
    short = short_names(names, 20)
    assert short[11] == "h.11.mlp.c_fc"
    assert short[-2:] == ["wte", "lm_head"]
    assert len(set(short)) == len(names)
    assert short_names(["fc1", "fc2"], 20) == ["fc1", "fc2"]  # names that fit stay whole
    assert all(len(s) <= 8 for s in short_names(names, 8))
    assert len(set(short_names(["a.weight", "a.bias", "b.weight"], 3))) == 3  # still distinct when cut


def test_model_order_follows_the_snapshots_or_the_numbers() -> None:
    assert model_order(["b", "a"], ["b", "a"]) == ["b", "a"]  # as the snapshot file listed them
    alphabetical = ["h.0.w", "h.1.w", "h.10.w", "h.2.w"]
    assert model_order(alphabetical, alphabetical) == ["h.0.w", "h.1.w", "h.2.w", "h.10.w"]


def test_150_layers_by_200_steps_render_readably_and_fast(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = [f"transformer.h.{i // 12}.block{i % 12}.weight" for i in range(150)]
    per_layer = {n: [stats.StepStats(step=s * 10, norm=1.0, update_ratio=float(rng.lognormal(-6, 1)) if s else None,
                                     drift=0.1, max_abs=1.0, rms=1.0, nonfinite=0.0) for s in range(200)]
                 for n in names}
    start = time.perf_counter()
    png, page = write_overview(overview_data(per_layer, "update_ratio"), tmp_path)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, elapsed
    with Image.open(png) as im:
        width, height = im.size
    assert 1000 <= width <= 2600
    assert 1500 <= height <= 2600
    assert page.stat().st_size < 2_000_000
    assert len(page_data(page)["values"]) == 150
