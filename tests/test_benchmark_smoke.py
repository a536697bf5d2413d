"""The benchmark's smoke mode keeps working: it runs end to end and writes its report (no speed checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_smoke_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)  # the benchmark starts its own server
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--out", str(out),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    for heading in ("## Same look, original frame size", "## GIF size for the same frames", "## Larger matrices",
                    "## Memory in frame count", "## A huge layer", "## Workers: 1 vs 2",
                    "## Downloads:", "## The floor", "## Profile:"):
        assert heading in text
    raw = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    for row in raw["paired"]:
        for runs in row["runs"].values():
            assert all(r["frames"] > 0 and r["gif_bytes"] > 0 and r["rss_mb"] > 0 for r in runs)
        if "original" in row["runs"]:
            assert row["runs"]["original"][0]["size"] == [1500, 1000]
        assert row["runs"]["ours w1"][0]["size"] == [1500, 1000]
        # Both worker counts wrote the same GIF.
        assert row["runs"]["ours w1"][0]["gif_bytes"] == row["runs"]["ours w2"][0]["gif_bytes"]
    assert [d["server_workers"] for d in raw["downloads"]] == [1, 4]
    assert all(d["seconds"]["sequential"] > 0 and d["seconds"]["project"] > 0 for d in raw["downloads"])
    assert not (REPO / "benchmarks" / "RESULTS.md").exists() or "SMOKE" not in (
        REPO / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_overview_benchmark_smoke_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "overview.md"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_overview.py"), "--smoke", "--out",
                           str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## Overview: 30 layers × 40 snapshots" in out.read_text(encoding="utf-8")
    raw = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert raw["overview"]["size"][0] > 0
    assert [row["layers"] for row in raw["grid"]] == [4, 8]
    assert all(row["size"][0] <= 2048 and row["rss_mb"] > 0 for row in raw["grid"])
