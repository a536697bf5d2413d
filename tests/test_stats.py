"""stats.py: the diagnostics against numpy's own figures, for full, big, reduced and non-finite snapshots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mlflow_weightviz import stats
from mlflow_weightviz.snapshots import group_layers, read_snapshots
from tests.helpers import training_series, write_canonical
from tests.reduced_files import write_reduced


def _expected(series: list[np.ndarray]) -> list[dict[str, float]]:
    out = []
    for i, w in enumerate(series):
        row = {"norm": float(np.linalg.norm(w)), "max_abs": float(np.abs(w).max()),
               "rms": float(np.sqrt(np.mean(w.astype(np.float64) ** 2))), "nonfinite": 0.0,
               "drift": float(np.linalg.norm(w - series[0]) / np.linalg.norm(series[0]))}
        if i:
            row["update_ratio"] = float(np.linalg.norm(w - series[i - 1]) / np.linalg.norm(series[i - 1]))
        out.append(row)
    return out


def _stats(folder: Path, layer: str) -> list[stats.StepStats]:
    return stats.layer_stats(group_layers(read_snapshots(folder))[layer])


def test_full_snapshots_match_numpy(tmp_path: Path) -> None:
    series = training_series(5, (6, 9))
    write_canonical(tmp_path, {"fc1": series}, [0, 5, 10, 15, 20])
    got = _stats(tmp_path, "fc1")
    assert [s.step for s in got] == [0, 5, 10, 15, 20]
    for s, want in zip(got, _expected(series), strict=True):
        assert s.values() == pytest.approx(want, rel=1e-12)
    assert got[0].update_ratio is None


def test_big_layer_is_read_in_bands_and_stays_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats, "_BAND_VALUES", 40)  # many bands of a few rows each
    series = [w.astype(np.float32) for w in training_series(3, (50, 7, 3), seed=3)]
    write_canonical(tmp_path, {"conv": series}, [0, 1, 2])
    got = _stats(tmp_path, "conv")
    for s, want in zip(got, _expected([w.astype(np.float64) for w in series]), strict=True):
        assert s.values() == pytest.approx(want, rel=1e-9)


def test_nonfinite_entries_are_left_out_and_counted(tmp_path: Path) -> None:
    a = np.ones((4, 5))
    b = a * 1.1
    b[0, 0] = np.nan
    b[1, 1] = np.inf
    write_canonical(tmp_path, {"w": [a, b]}, [0, 1])
    s = _stats(tmp_path, "w")[1]
    assert s.nonfinite == pytest.approx(2 / 20)
    assert s.norm == pytest.approx(math.sqrt(18 * 1.21))
    assert s.max_abs == pytest.approx(1.1)
    assert s.update_ratio == pytest.approx(math.sqrt(18 * 0.01) / math.sqrt(18))
    assert all(math.isfinite(v) for v in s.values().values())


def test_all_zero_layer_has_no_ratio(tmp_path: Path) -> None:
    write_canonical(tmp_path, {"w": [np.zeros((3, 3)), np.ones((3, 3))]}, [0, 1])
    got = _stats(tmp_path, "w")
    assert got[1].update_ratio is None
    assert got[1].drift is None
    assert "update_ratio" not in got[1].values()


def test_reduced_snapshots_give_exact_norm_rms_max(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    series = [rng.normal(size=(130, 70)).astype(np.float32) for _ in range(2)]
    write_reduced(tmp_path / "r.npz", {"big": series}, [0, 1], max_rows=8, max_cols=8)
    got = _stats(tmp_path, "big")
    for s, w in zip(got, series, strict=True):
        w64 = w.astype(np.float64)
        assert s.norm == pytest.approx(np.linalg.norm(w64), rel=1e-5)
        assert s.rms == pytest.approx(np.sqrt(np.mean(w64 ** 2)), rel=1e-5)
        assert s.max_abs == pytest.approx(np.abs(w64).max(), rel=1e-6)
        assert s.update_ratio is None
        assert s.drift is None


def test_metric_key_is_a_valid_mlflow_key() -> None:
    assert stats.metric_key("fc1.weight", "norm") == "weightviz/fc1.weight/norm"
    assert stats.metric_key("layers[0]:w", "drift") == "weightviz/layers_0__w/drift"
    from mlflow.utils.validation import _validate_metric_name

    # Names MLflow would read as odd paths: a leading or doubled slash, dot segments.
    odd = ["/enc.out", "a//b", "a/./b", "../a", "a/", "x" * 300, "ä/ö"]
    keys = [stats.metric_key(name, "norm") for name in odd]
    for key in keys:
        _validate_metric_name(key)  # raises on a key MLflow refuses
        assert len(key) <= 250
    assert len(set(keys)) == len(keys)


def test_logged_statistics_are_read_back_and_win(tmp_path: Path, embedded_store: str) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from tests.helpers import make_run

    series = training_series(3, (4, 4))
    write_canonical(tmp_path, {"fc1": series, "fc2": series}, [0, 1, 2])
    layers = group_layers(read_snapshots(tmp_path))
    run_id = make_run(embedded_store)
    client = MlflowClient(embedded_store)
    # As record() logs them: exact figures measured on the device, here made recognisable.
    client.log_batch(run_id, metrics=[Metric(stats.metric_key("fc1", k), v, 0, s)
                                      for s in (0, 1, 2) for k, v in (("norm", 100.0 + s), ("update_ratio", 0.5))])
    logged = stats.read_logged(client, run_id, layers)
    assert set(logged) == {"fc1"}
    got = stats.collect(layers, logged)
    assert [s.norm for s in got["fc1"]] == [100.0, 101.0, 102.0]
    assert got["fc2"][1].norm == pytest.approx(np.linalg.norm(series[1]))
