"""Benchmark mlflow-weightviz against the original script's approach, side by side, as ratios.

Usage (from the repository root)::

    .venv/bin/python benchmarks/run.py            # full run, writes benchmarks/RESULTS.md (~5-10 min)
    .venv/bin/python benchmarks/run.py --smoke    # a few frames of every case, for CI
    .venv/bin/python benchmarks/run.py --out /tmp/r.md --reps 3

Seed-like data comes from ``../shared/bench/make_data.py`` and the original approach is
``../shared/bench/seed_baseline.py`` (``--shared DIR`` or ``WEIGHTVIZ_BENCH_SHARED`` point
elsewhere); when the baseline is missing the report says so and skips it. Every
measurement runs in a fresh Python process (``run.py --measure JSON``) so its peak RSS
(``ru_maxrss``) is its own; the original and this project run on the same data in the
same run, alternating, ``--reps`` times (the median is reported).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ORIGINAL_SIZE = (1500, 1000)  # the original's 15x10 in at 100 dpi
ORIGINAL_FMT = "{x:.9f}"


def shared_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("WEIGHTVIZ_BENCH_SHARED") or REPO.parent / "shared" / "bench")


def peak_rss_mb(children: bool = False) -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_maxrss / 1024  # kB on Linux


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has spent busy so far (Linux ``/proc/stat``), else ``None``."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            ticks = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_quiet(limit_s: float = 120.0) -> float:
    """Wait (at most ``limit_s``) until other processes use under 5% of the machine; returns the seconds waited.

    Two workers need both cores: another process's CPU time is taken straight from them, while
    one process still has a core to spare, so the 1-vs-2 ratio is only meaningful on an idle machine.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        before, start = machine_busy_s(), time.perf_counter()
        time.sleep(1.0)
        after = machine_busy_s()
        if before is None or after is None:
            break
        if (after - before) / ((os.cpu_count() or 1) * (time.perf_counter() - start)) < 0.05:
            break
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- measurements (child process)


def load_module(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def m_baseline(a: dict[str, Any]) -> dict[str, Any]:
    """The original script's approach, in process: one new figure per frame, PNG round trip, save_all."""
    i0 = time.perf_counter()
    seed = load_module(Path(a["baseline"]), "seed_baseline")  # imports matplotlib (pyplot) at its top
    import_ms = (time.perf_counter() - i0) * 1000
    weights = seed.load_weights(a["data"])[: a["frames"]]
    t0 = time.perf_counter()
    frames = []
    per_frame = []
    for w in weights:
        f0 = time.perf_counter()
        frames.append(seed.render_frame(w))
        per_frame.append(time.perf_counter() - f0)
    s0 = time.perf_counter()
    frames[0].save(a["out"], save_all=True, append_images=frames[1:], optimize=False, duration=8, loop=0)
    save = time.perf_counter() - s0
    total = time.perf_counter() - t0
    return {"ms_per_frame": total / len(weights) * 1000, "median_render_ms": statistics.median(per_frame) * 1000,
            "import_ms": import_ms,
            "save_ms_per_frame": save / len(weights) * 1000, "frames": len(weights),
            "gif_bytes": os.path.getsize(a["out"]), "size": list(frames[0].size)}


def renderer_kwargs(grid: tuple[int, int], *, original: bool) -> dict[str, Any]:
    rows, cols = grid
    kw: dict[str, Any] = {
        "grid": grid, "cmap": "YlGn", "vmin": 0.0, "vmax": 0.05, "fmt": ORIGINAL_FMT, "annotate": True,
        "row_labels": [f"embed_dim_{i}" for i in range(rows)], "col_labels": [f"orig_dim_{j}" for j in range(cols)],
        "title_sample": "weights  ·  step 1000  ·  frame 1000/1000"}
    if original:
        kw.update(size=ORIGINAL_SIZE, fontsize=10)
    return kw


def load_stack(path: str, frames: int | None) -> Any:
    import numpy as np

    with np.load(path) as z:
        w = z["weights"]
    return np.asarray(w[:frames] if frames else w, dtype=np.float64)


def m_direct(a: dict[str, Any]) -> dict[str, Any]:
    """This project's renderer and encoder on the original's frame (1500x1000, 9 decimals), 1 or N processes."""
    import numpy as np

    i0 = time.perf_counter()
    # The modules the frames are drawn with, imported before the clock starts, as the original's
    # are (its module imports matplotlib at its top; m_baseline times only the frames and the GIF).
    # The renderer imports matplotlib lazily, so without this the clock would count it on this
    # side only. Workers forked from this process start with them (as with the forkserver's preload).
    import matplotlib.figure  # noqa: F401
    from matplotlib.backends import backend_agg  # noqa: F401

    from mlflow_weightviz.encoders import GifEncoder, encode_next
    from mlflow_weightviz.frames import HeatmapRenderer
    from mlflow_weightviz.parallel import FramePool, LayerJob

    import_ms = (time.perf_counter() - i0) * 1000
    stack = load_stack(a["data"], a.get("frames"))
    n = stack.shape[0]
    kw = renderer_kwargs(tuple(stack.shape[1:]), original=a.get("original", True))
    titles = [f"weights  ·  step {i}  ·  frame {i + 1}/{n}" for i in range(n)]
    t0 = time.perf_counter()
    worker_rss = None
    with open(a["out"], "wb") as fh:
        if a["workers"] == 1:
            grid = kw.pop("grid")
            renderer = HeatmapRenderer(grid, **kw)
            # As pipeline.draw_layer does: frames after the first composed as palette indices.
            with GifEncoder(fh, frame_ms=200) as gif:
                first = None
                encoder = None
                for i in range(n):
                    encoder, block = encode_next(renderer, encoder, stack[i], titles[i], (0.0, 0.05))
                    if i == 0:
                        gif.start(encoder.table, renderer.size)
                    gif.add_block(block)
                    if i == 0:
                        first = time.perf_counter()
            size = renderer.size
            renderer.close()
        else:
            path = Path(a["out"]).with_suffix(".stack.npy")
            np.save(path, stack)
            job = LayerJob("bench", str(path), kw, tuple(titles), tuple((0.0, 0.05) for _ in range(n)))
            gif = GifEncoder(fh, frame_ms=200)
            first = None
            with FramePool(a["workers"]) as pool:
                for frame in pool.frames([job]):
                    if frame.index == 0:
                        assert frame.palette is not None
                        gif.start(frame.palette, frame.size)
                        size = frame.size
                        first = time.perf_counter()
                    gif.add_block(frame.block)
                worker_rss = max(pool.peak_rss_mb(), default=None)
            gif.finish()
            path.unlink()
    total = time.perf_counter() - t0
    assert first is not None
    return {"ms_per_frame": total / n * 1000, "first_frame_ms": (first - t0) * 1000, "import_ms": import_ms,
            "steady_ms_per_frame": (total - (first - t0)) / max(1, n - 1) * 1000, "frames": n,
            "gif_bytes": os.path.getsize(a["out"]), "size": list(size),
            "worker_rss_mb": worker_rss if a["workers"] > 1 else None}


def m_render_file(a: dict[str, Any]) -> dict[str, Any]:
    """The whole product path: ``render_file`` (read, prepare, draw, encode, write) at this project's sizes."""
    from PIL import Image

    import mlflow_weightviz as wv

    options = dict(a["options"])
    workers = int(options.pop("workers", 1))  # an argument of render_file, not a render option
    opts = wv.RenderOptions(**options)
    t0 = time.perf_counter()
    result = wv.render_file(a["data"], opts, output_dir=a["out_dir"], workers=workers)
    total = time.perf_counter() - t0
    frames = sum(r.frames for r in result.layers)
    gifs = [Path(a["out_dir"]) / r.file_name for r in result.layers]
    with Image.open(gifs[0]) as im:
        size = list(im.size)
    return {"ms_per_frame": total / frames * 1000, "total_s": total, "frames": frames,
            "gif_bytes": sum(p.stat().st_size for p in gifs), "size": size, "grid": list(result.layers[0].grid)}


def m_floor(a: dict[str, Any]) -> dict[str, Any]:
    """Quantize + diff + LZW of frames already rendered: the cost of the pixels alone."""
    from mlflow_weightviz.encoders import FrameEncoder, build_palette
    from mlflow_weightviz.frames import HeatmapRenderer

    stack = load_stack(a["data"], a["frames"])
    kw = renderer_kwargs(tuple(stack.shape[1:]), original=a["original"])
    renderer = HeatmapRenderer(kw.pop("grid"), **kw)
    rgb = [renderer.render(stack[i], f"weights  ·  step {i}", (0.0, 0.05)) for i in range(stack.shape[0])]
    encoder = FrameEncoder(build_palette(rgb[0], renderer.palette_colors()))
    q = d = e = 0.0
    from mlflow_weightviz.encoders import changed_box, encode_image

    prev = None
    for frame in rgb:
        t0 = time.perf_counter()
        index = encoder.quantize(frame)
        t1 = time.perf_counter()
        box = changed_box(prev, index)
        t2 = time.perf_counter()
        if box is not None:
            encode_image(index, box)
        t3 = time.perf_counter()
        q, d, e = q + t1 - t0, d + t2 - t1, e + t3 - t2
        prev = index
    n = len(rgb)
    return {"quantize_ms": q / n * 1000, "diff_ms": d / n * 1000, "lzw_ms": e / n * 1000,
            "floor_ms": (q + d + e) / n * 1000, "frames": n, "size": list(renderer.size)}


def m_lzw_floor(a: dict[str, Any]) -> dict[str, Any]:
    """The physical limit of a frame: Pillow's LZW of the same frames as palette indices, one full frame each.

    Measured side by side with this project's own steady frames, in turn in one process: each
    frame is made (``encode_next``, timed), then its full indices are LZW-encoded (timed
    apart). Both see the same machine at the same moments, so their ratio holds even when the
    machine's speed drifts between processes (on this shared 2-vCPU machine it does, by ±20%).
    """
    from mlflow_weightviz.encoders import encode_image, encode_next
    from mlflow_weightviz.frames import HeatmapRenderer

    stack = load_stack(a["data"], a["frames"])
    n = stack.shape[0]
    kw = renderer_kwargs(tuple(stack.shape[1:]), original=True)
    renderer = HeatmapRenderer(kw.pop("grid"), **kw)
    encoder = None
    width, height = renderer.size
    made, lzw = 0.0, 0.0
    for i in range(n):
        t0 = time.perf_counter()
        encoder, _ = encode_next(renderer, encoder, stack[i], f"weights  ·  step {i}  ·  frame {i + 1}/{n}",
                                 (0.0, 0.05))
        t1 = time.perf_counter()
        assert encoder.previous is not None
        encode_image(encoder.previous, (0, 0, width, height))
        if i:  # the first frame (setup) is not a steady one
            made, lzw = made + (t1 - t0), lzw + (time.perf_counter() - t1)
    steps = max(1, n - 1)
    return {"lzw_full_ms": lzw / steps * 1000, "steady_ms": made / steps * 1000, "frames": n,
            "size": [width, height]}


def m_profile(a: dict[str, Any]) -> dict[str, Any]:
    """Where each millisecond of one frame goes, stage by stage, at the original's frame size.

    The frames go through the product's path (``encode_next``: composed as palette indices);
    the stages are timed by wrapping the functions that do them.
    """
    from mlflow_weightviz import _glyphs
    from mlflow_weightviz import encoders as enc_mod
    from mlflow_weightviz import frames as frames_mod

    stack = load_stack(a["data"], a["frames"])
    kw = renderer_kwargs(tuple(stack.shape[1:]), original=a["original"])
    t0 = time.perf_counter()
    renderer = frames_mod.HeatmapRenderer(kw.pop("grid"), **kw)
    n = stack.shape[0]
    titles = [f"weights  ·  step {i}  ·  frame {i + 1}/{n}" for i in range(n)]
    encoder, _ = enc_mod.encode_next(renderer, None, stack[0], titles[0], (0.0, 0.05))
    setup = time.perf_counter() - t0
    spent: dict[str, float] = dict.fromkeys(("texts", "title", "lzw", "compose", "encode"), 0.0)

    def timed(owner: Any, name: str, key: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start
        setattr(owner, name, wrapper)

    timed(_glyphs.Composer, "_glyph_pixels", "texts")
    timed(_glyphs._IndexTables, "stamp", "texts")
    timed(_glyphs.Composer, "_draw_title", "title")
    timed(enc_mod, "_lzw", "lzw")
    timed(frames_mod.HeatmapRenderer, "render_indices", "compose")
    timed(enc_mod.FrameEncoder, "encode", "encode")
    for i in range(1, n):
        encoder, _ = enc_mod.encode_next(renderer, encoder, stack[i], titles[i], (0.0, 0.05))
    frames = n - 1
    stages = {"cells + grid": spent["compose"] - spent["texts"] - spent["title"], "value texts": spent["texts"],
              "title": spent["title"], "diff": spent["encode"] - spent["lzw"], "LZW": spent["lzw"]}
    out = {k: v / frames * 1000 for k, v in stages.items()}
    fast = renderer._fast
    assert fast is not None
    return {"stages_ms": out, "total_ms": sum(out.values()), "setup_ms": setup * 1000, "frames": frames,
            "size": list(renderer.size), "mixed_px": int(fast.mixed_px.size),
            "cells_px": int((fast.y1 - fast.y0) * (fast.x1 - fast.x0))}


def m_make_huge(a: dict[str, Any]) -> dict[str, Any]:
    """Write a rows x cols float32 .npy band by band (this process's memory stays small)."""
    import numpy as np

    path = Path(a["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    rows, cols = a["shape"]
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, cols))
    rng = np.random.default_rng(0)
    band = 500
    base = rng.uniform(0, 0.05, (band, cols)).astype(np.float32)
    for r0 in range(0, rows, band):
        arr[r0:r0 + band] = base[: min(band, rows - r0)] * np.float32(1 + r0 / rows)
    arr.flush()
    del arr
    return {"bytes": path.stat().st_size}


def m_downloads(a: dict[str, Any]) -> dict[str, Any]:
    """500 per-step snapshot files on a real ``mlflow server``: parallel vs sequential download."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    from mlflow.tracking import MlflowClient

    from mlflow_weightviz import _tracking
    from mlflow_weightviz.sources import RunSource
    from tests.conftest import MlflowServer

    class Server(MlflowServer):
        """The tests' real server, with ``workers`` gunicorn workers (a deployed server has several)."""

        def __init__(self, root: Path, workers: int) -> None:
            super().__init__(root)
            self.workers = workers

        def start(self, timeout: float = 90.0) -> None:
            import subprocess as sp
            import urllib.request

            self.root.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
            env.pop("MLFLOW_TRACKING_URI", None)
            cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                   "--artifacts-destination", str(self.root / "artifacts"), "--workers", str(self.workers)]
            with self.log.open("ab") as log:
                self.proc = sp.Popen(cmd, stdout=log, stderr=sp.STDOUT, env=env, cwd=self.root,
                                     start_new_session=True)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                        if r.status == 200:
                            return
                except OSError:
                    time.sleep(0.3)
            self.stop()
            msg = f"mlflow server did not answer within {timeout}s"
            raise RuntimeError(msg)

    work = Path(a["work"])
    server = Server(work / "server", a["server_workers"])
    server.start()
    try:
        client = MlflowClient(server.url)
        exp = client.create_experiment("bench-downloads")
        run_id = client.create_run(exp).info.run_id
        src = work / "upload" / "weights"
        src.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for step in range(a["files"]):
            np.save(src / f"step_{step}.npy", rng.uniform(0, 0.05, (16, 16)).astype(np.float32))
        t0 = time.perf_counter()
        client.log_artifacts(run_id, str(src), "weights")
        upload = time.perf_counter() - t0
        paths = [f"weights/step_{s}.npy" for s in range(a["files"])]
        results: dict[str, float] = {}

        def timed(name: str, fn: Callable[[Path], None]) -> None:
            dst = work / name
            t = time.perf_counter()
            fn(dst)
            results[name] = time.perf_counter() - t
            assert len(list((dst).rglob("step_*.npy"))) == a["files"], name

        def sequential(dst: Path) -> None:
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri, tracking_uri=server.url)
            for p in paths:
                (dst / p).parent.mkdir(parents=True, exist_ok=True)
                repo._download_file(p, str(dst / p))

        def project(dst: Path) -> None:
            RunSource(client, run_id, "weights").fetch(dst)

        def mlflow_api(dst: Path) -> None:
            import mlflow.artifacts

            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="weights", dst_path=str(dst),
                                                tracking_uri=server.url)

        project(work / "warm-up")  # every server worker has served requests before the timed runs
        for name, fn in (("sequential", sequential), ("project", project), ("mlflow_download_artifacts", mlflow_api)):
            timed(name, fn)
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri, tracking_uri=server.url)
        return {"files": a["files"], "upload_s": upload, "seconds": results, "server_workers": a["server_workers"],
                "threads": int(getattr(repo, "max_workers", 0) or 0), "helper": _tracking.download_folder.__name__}
    finally:
        server.stop()


MEASURES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "baseline": m_baseline, "direct": m_direct, "render_file": m_render_file, "floor": m_floor,
    "lzw_floor": m_lzw_floor, "profile": m_profile, "make_huge": m_make_huge, "downloads": m_downloads}


def child_main(spec: str) -> None:
    a = json.loads(spec)
    out = MEASURES[a["kind"]](a)
    out["rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(out))


# ----------------------------------------------------------------------------- orchestration (parent)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.smoke: bool = args.smoke
        self.shared = shared_dir(args.shared)
        self.baseline = self.shared / "seed_baseline.py"
        self.make_data = self.shared / "make_data.py"
        self.have_baseline = self.baseline.is_file()
        self.work = Path(args.work or tempfile.mkdtemp(prefix="weightviz-bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.log: list[str] = []
        self.started = time.perf_counter()

    def say(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.1f}s] {msg}", flush=True)

    def before_code(self) -> Path | None:
        """A copy of the project at ``--before REV`` (``git archive``), to measure it side by side; None: not asked."""
        rev = self.args.before
        if not rev:
            return None
        target = self.work / f"before-{rev}"
        if not (target / "benchmarks" / "run.py").is_file():
            target.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
        return target

    def measure(self, kind: str, code: Path | None = None, **a: Any) -> dict[str, Any]:
        """One measurement in a fresh process; ``code``: another copy of the project to measure instead."""
        a["kind"] = kind
        root = REPO if code is None else code
        env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   MPLBACKEND="Agg", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
        busy0, ours0 = machine_busy_s(), children_cpu_s()
        # Another copy of the project is measured by this script's measurements (the same clock, the
        # same imports before it); only the library comes from the copy, first on PYTHONPATH.
        script = Path(__file__).resolve()
        proc = subprocess.run([sys.executable, str(script), "--measure", json.dumps(a)],
                              capture_output=True, text=True, env=env, cwd=self.work, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            msg = f"measurement {kind} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
            raise RuntimeError(msg)
        result: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
        busy1, ours1 = machine_busy_s(), children_cpu_s()
        result["cpu_s"] = round(ours1 - ours0, 2)  # the measurement's own processes (workers included)
        # CPU time other processes took during the measurement: a disturbed run shows here.
        result["others_cpu_s"] = None if busy0 is None or busy1 is None else round(
            max(0.0, (busy1 - busy0) - (ours1 - ours0)), 2)
        return result

    def data(self, rows: int, cols: int, frames: int, seed: int = 0) -> Path:
        path = self.work / f"data_{rows}x{cols}_{frames}_{seed}.npz"
        if not path.exists():
            source = self.make_data if self.make_data.is_file() else None
            if source is not None:
                subprocess.run([sys.executable, str(source), "--rows", str(rows), "--cols", str(cols), "--frames",
                                str(frames), "--seed", str(seed), "--out", str(path)], check=True,
                               capture_output=True)
            else:  # the same model, in case ../shared is missing
                import numpy as np

                rng = np.random.default_rng(seed)
                w = np.clip(np.abs(rng.normal(0.025, 0.01, (rows, cols))), 0, 0.05)
                target = rng.uniform(0, 0.05, (rows, cols))
                out = np.empty((frames, rows, cols), np.float32)
                for t in range(frames):
                    out[t] = w
                    w = np.clip(w - 0.05 * ((w - target) + rng.normal(0, 0.004, w.shape)), 0, 0.05)
                np.savez(path, weights=out)
        return path

    # ------------------------------------------------------------------ cases

    def paired(self) -> list[dict[str, Any]]:
        """8x12 and 16x16 at the original's frame and annotations: original vs this project, alternating."""
        base_frames = 2 if self.smoke else 6
        ours_frames = 4 if self.smoke else 300  # a long render, as the product's (10 layers x 500 snapshots)
        reps = 1 if self.smoke else self.args.reps
        rows_out = []
        before = self.before_code()
        for grid in ((8, 12), (16, 16)):
            data = self.data(*grid, ours_frames)
            same = self.data(*grid, base_frames)  # the original's frames: the first ones of the same series
            runs: dict[str, list[dict[str, Any]]] = {}
            for rep in range(reps):
                self.say(f"paired {grid} rep {rep + 1}/{reps}")
                if self.have_baseline:
                    runs.setdefault("original", []).append(self.measure(
                        "baseline", baseline=str(self.baseline), data=str(same), frames=base_frames,
                        out=str(self.work / "orig.gif")))
                for workers in (1, 2):
                    runs.setdefault(f"ours w{workers}", []).append(self.measure(
                        "direct", data=str(data), workers=workers, out=str(self.work / f"ours{workers}.gif")))
                    if before is not None:  # the project before this change, on the same frames, in turn
                        runs.setdefault(f"before w{workers}", []).append(self.measure(
                            "direct", code=before, data=str(data), workers=workers,
                            out=str(self.work / f"before{workers}.gif")))
                for workers in (1, 2):
                    runs.setdefault(f"default w{workers}", []).append(self.measure(
                        "render_file", data=str(data), out_dir=str(self.work / f"rf{workers}"),
                        options={"fmt": ORIGINAL_FMT, "annotate": True, "cmap": "YlGn", "vmin": 0.0, "vmax": 0.05,
                                 "row_label": "embed_dim_", "col_label": "orig_dim_", "workers": workers}))
                for workers in (1, 2):  # the original's look from the command line (--size 1500x1000 ...)
                    runs.setdefault(f"cli look w{workers}", []).append(self.measure(
                        "render_file", data=str(data), out_dir=str(self.work / f"cli{workers}"),
                        options={"size": list(ORIGINAL_SIZE), "fmt": ORIGINAL_FMT, "annotate": True, "cmap": "YlGn",
                                 "vmin": 0.0, "vmax": 0.05, "row_label": "embed_dim_", "col_label": "orig_dim_",
                                 "workers": workers}))
                # The floor and this project's steady frames, side by side in one process.
                runs.setdefault("floor", []).append(self.measure("lzw_floor", data=str(data), frames=ours_frames))
            same_frames = self.measure("direct", data=str(same), workers=1, out=str(self.work / "same.gif"))
            floor = {"lzw_full_ms": med(runs["floor"], "lzw_full_ms"), "steady_ms": med(runs["floor"], "steady_ms"),
                     "ratio": statistics.median(r["steady_ms"] / r["lzw_full_ms"] for r in runs.pop("floor"))}
            rows_out.append({"grid": grid, "runs": runs, "same_frames": same_frames, "base_frames": base_frames,
                             "ours_frames": ours_frames, "lzw_floor": floor})
        return rows_out

    def large(self) -> list[dict[str, Any]]:
        """32x48 and 64x128 at this project's defaults (annotations off) vs the original (annotating every cell)."""
        out = []
        for grid, base_frames in (((32, 48), 2), ((64, 128), 1)):
            frames = 4 if self.smoke else 60
            data = self.data(*grid, frames)
            self.say(f"large {grid}")
            row: dict[str, Any] = {"grid": grid}
            if self.have_baseline and not self.smoke:
                row["original"] = self.measure("baseline", baseline=str(self.baseline),
                                               data=str(self.data(*grid, base_frames)), frames=base_frames,
                                               out=str(self.work / "orig_large.gif"))
            row["ours"] = self.measure("render_file", data=str(data), out_dir=str(self.work / "large"),
                                       options={"row_label": "embed_dim_", "col_label": "orig_dim_"})
            out.append(row)
        return out

    def memory(self) -> list[dict[str, Any]]:
        out = []
        for frames in ((5, 10, 20) if self.smoke else (50, 200, 1000)):
            self.say(f"memory 16x16 x {frames}")
            data = self.data(16, 16, frames)
            out.append(self.measure("render_file", data=str(data), out_dir=str(self.work / "mem"),
                                    options={"row_label": "embed_dim_", "col_label": "orig_dim_"}))
        return out

    def workers(self) -> list[dict[str, Any]]:
        """A long multi-layer render through render_file: 1 vs 2 worker processes, alternating."""
        layers, frames = (2, 6) if self.smoke else (4, 150)
        path = self.work / f"multi_{layers}x{frames}.npz"
        if not path.exists():
            import numpy as np

            stacks = {}
            for k, name in zip(range(layers), ("alpha", "beta", "gamma", "delta"), strict=False):
                with np.load(self.data(16, 16, frames, seed=k)) as z:
                    stacks[name] = z["weights"]
            np.savez(path, **stacks)  # one (T, N, M) stack per layer
        out: dict[str, list[dict[str, Any]]] = {}
        for rep in range(1 if self.smoke else self.args.reps):
            self.say(f"workers rep {rep + 1}")
            for w in (1, 2):
                waited = 0.0 if self.smoke else wait_quiet()
                run = self.measure("render_file", data=str(path), out_dir=str(self.work / f"multi{w}"),
                                   options={"workers": w, "row_label": "embed_dim_", "col_label": "orig_dim_"})
                run["waited_s"] = round(waited, 1)
                self.say(f"  w{w}: {run['total_s']:.2f} s, {run['cpu_s']} CPU s (others took {run['others_cpu_s']} "
                         "CPU s meanwhile)")
                out.setdefault(f"w{w}", []).append(run)
        return [{"layers": layers, "frames": frames, "runs": out}]

    def huge(self) -> dict[str, Any]:
        shape = (2000, 2000) if self.smoke else (20000, 20000)
        path = self.work / f"huge_{shape[0]}" / "step_0.npy"
        self.say(f"huge layer {shape}")
        if not path.exists():
            self.measure("make_huge", path=str(path), shape=list(shape))
        result = self.measure("render_file", data=str(path.parent), out_dir=str(self.work / "huge_out"),
                              options={})
        result["shape"] = list(shape)
        result["file_bytes"] = path.stat().st_size
        if not self.args.keep_huge:
            path.unlink()
        return result

    def floor_and_profile(self) -> dict[str, Any]:
        frames = 4 if self.smoke else 40
        out: dict[str, Any] = {}
        for grid in ((8, 12), (16, 16)):
            data = self.data(*grid, frames, seed=5)
            self.say(f"floor and profile {grid}")
            out[f"{grid[0]}x{grid[1]}"] = {
                "floor": self.measure("floor", data=str(data), frames=frames, original=True),
                "floor_default": self.measure("floor", data=str(data), frames=frames, original=False),
                "profile": self.measure("profile", data=str(data), frames=frames, original=True)}
        return out

    def downloads(self) -> list[dict[str, Any]]:
        files = 20 if self.smoke else 500
        out = []
        for server_workers in (1, 4):
            self.say(f"downloads of {files} files from a real mlflow server with {server_workers} worker(s)")
            work = self.work / f"downloads_{time.time_ns()}"
            out.append(self.measure("downloads", files=files, work=str(work), server_workers=server_workers))
        return out


# ----------------------------------------------------------------------------- report


def med(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def fmt_ms(x: float) -> str:
    return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def fmt_size(size: list[int]) -> str:
    return f"{size[0]}×{size[1]}"


def report(b: Bench, res: dict[str, Any], elapsed: float) -> str:
    lines: list[str] = []
    add = lines.append
    smoke = " (SMOKE MODE: a few frames, numbers are not meaningful)" if b.smoke else ""
    add(f"# Benchmark results{smoke}")
    add("")
    add(f"Generated by `.venv/bin/python benchmarks/run.py{' --smoke' if b.smoke else ''}` on "
        f"{datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}: {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; whole run {elapsed / 60:.1f} min. "
        "Each measurement is a fresh process (peak RSS = its `ru_maxrss`); the original and this project run "
        f"on the same data in the same run, alternating, median of {1 if b.smoke else b.args.reps} repetitions. "
        "The machine is shared and noisy: compare ratios within this file, not absolute times across runs.")
    add("")
    if not b.have_baseline:
        add(f"**The original script was not found at `{b.baseline}`; its columns are skipped.**")
        add("")
    # --- headline
    add("## Same look, original frame size (1500×1000 px, 9-decimal values, labels, YlGn 0–0.05)")
    add("")
    add("| matrix | original ms/frame | this project, 1 process | ratio | 2 workers | ratio | "
        "this project's default size, 1 process | ratio | 2 workers | ratio |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    heads = []
    for row in res["paired"]:
        g = f"{row['grid'][0]}×{row['grid'][1]}"
        runs = row["runs"]
        orig = med(runs["original"], "ms_per_frame") if "original" in runs else None
        cells = [g, fmt_ms(orig) if orig else "skipped"]
        for key in ("ours w1", "ours w2", "default w1", "default w2"):
            ms = med(runs[key], "ms_per_frame")
            ratio = orig / ms if orig else None
            cells += [fmt_ms(ms), f"**{ratio:.1f}×**" if ratio else "–"]
            heads.append((g, key, ratio))
        add("| " + " | ".join(cells) + " |")
    add("")
    add("The floor: Pillow's LZW of the same frames given as palette indices, one full frame each (the "
        "encoder's limit), against this project's steady ms/frame, measured side by side: in one process each "
        "frame is made, then its full indices are LZW-encoded, timed apart (300 frames, the first not counted; "
        "median over the repetitions of the ratio). And the original's look from "
        "the command line (`render-file --size 1500x1000 --fmt '{x:.9f}' --cmap YlGn --vmin 0 --vmax 0.05 "
        "--row-label embed_dim_ --col-label orig_dim_`, 9 pt values).")
    add("")
    add("| matrix | LZW floor ms/frame | steady ms/frame, 1 process | × floor | command line, 1 process | ratio | "
        "2 workers | ratio |")
    add("|---|---|---|---|---|---|---|---|")
    for row in res["paired"]:
        g = f"{row['grid'][0]}×{row['grid'][1]}"
        runs = row["runs"]
        fl = row.get("lzw_floor", {})
        orig = med(runs["original"], "ms_per_frame") if "original" in runs else None
        cells = [g, fmt_ms(fl["lzw_full_ms"]) if fl else "–", fmt_ms(fl["steady_ms"]) if fl else "–",
                 f"**{fl['ratio']:.2f}×**" if fl else "–"]
        for key in ("cli look w1", "cli look w2"):
            if key in runs:
                ms = med(runs[key], "ms_per_frame")
                cells += [fmt_ms(ms), f"**{orig / ms:.1f}×**" if orig else "–"]
            else:
                cells += ["–", "–"]
        add("| " + " | ".join(cells) + " |")
    add("")
    if any("before w1" in row["runs"] for row in res["paired"]):
        add(f"Before and after, in this same run: the project at `{res.get('before', '?')}` and now, on the same "
            "frames, alternating, each in fresh processes (so the machine's drift between processes shows here; "
            "`docs/performance.md` gives the same comparison in one process, frame by frame).")
        same_gifs = all(r["runs"][f"before w{w}"][0]["gif_bytes"] == r["runs"][f"ours w{w}"][0]["gif_bytes"]
                        for r in res["paired"] for w in (1, 2) if f"before w{w}" in r["runs"])
        add("The GIFs are byte-identical." if same_gifs else "The GIFs differ in size.")
        add("")
        add("| matrix | case | before ms/frame | now ms/frame | before steady | now steady | steady × floor, before "
            "→ now | vs original, before → now |")
        add("|---|---|---|---|---|---|---|---|")
        for row in res["paired"]:
            g = f"{row['grid'][0]}×{row['grid'][1]}"
            runs = row["runs"]
            orig = med(runs["original"], "ms_per_frame") if "original" in runs else None
            floor_ms = row["lzw_floor"]["lzw_full_ms"] if "lzw_floor" in row else None
            for w in (1, 2):
                if f"before w{w}" not in runs:
                    continue
                b_ms, n_ms = med(runs[f"before w{w}"], "ms_per_frame"), med(runs[f"ours w{w}"], "ms_per_frame")
                b_st = med(runs[f"before w{w}"], "steady_ms_per_frame")
                n_st = med(runs[f"ours w{w}"], "steady_ms_per_frame")
                floor_cell = (f"{b_st / floor_ms:.2f}× → **{n_st / floor_ms:.2f}×**" if floor_ms and w == 1 else "–")
                orig_cell = f"{orig / b_ms:.1f}× → **{orig / n_ms:.1f}×**" if orig else "–"
                same = ("" if runs[f"before w{w}"][0]["gif_bytes"] == runs[f"ours w{w}"][0]["gif_bytes"]
                        else " (GIF sizes differ!)")
                add(f"| {g} | {'1 process' if w == 1 else '2 workers'}{same} | {fmt_ms(b_ms)} | {fmt_ms(n_ms)} | "
                    f"{fmt_ms(b_st)} | {fmt_ms(n_st)} | {floor_cell} | {orig_cell} |")
        add("")
    add("ms/frame is the whole job divided by its frames: for the original, drawing every frame and saving "
        f"the GIF ({row['base_frames']} frames); for this project, building the renderer, drawing, quantizing, "
        f"diffing, compressing and writing {row['ours_frames']} frames. \"Default size\" is `render_file` end to "
        "end (reading the .npz, preparing the layer, frames sized from the grid).")
    add("")
    add("Imports are outside the clock on both sides, as they are for the original: its module imports "
        "matplotlib when it is loaded, before its clock starts. This project's renderer imports matplotlib "
        "lazily, so its measurement imports matplotlib's figure and Agg backend first (workers forked from it "
        "start with them, as the forkserver's preloaded workers do). The import times are in the table; the "
        "`render_file` rows (default size, command-line look) count every import they make.")
    add("")
    add("| matrix | case | frame px | peak RSS MiB (main) | workers' peak RSS MiB | GIF bytes | imports ms "
        "(not timed) | first frame ms (setup) | steady ms/frame |")
    add("|---|---|---|---|---|---|---|---|---|")
    for row in res["paired"]:
        g = f"{row['grid'][0]}×{row['grid'][1]}"
        for key, runs in row["runs"].items():
            r0 = runs[0]
            worker_rss = f"{r0['worker_rss_mb']:.0f}" if r0.get("worker_rss_mb") else "–"
            first = fmt_ms(med(runs, "first_frame_ms")) if "first_frame_ms" in r0 else "–"
            steady = fmt_ms(med(runs, "steady_ms_per_frame")) if "steady_ms_per_frame" in r0 else "–"
            imports = fmt_ms(med(runs, "import_ms")) if "import_ms" in r0 else "–"
            add(f"| {g} | {key} ({r0['frames']} frames) | {fmt_size(r0['size'])} | {med(runs, 'rss_mb'):.0f} | "
                f"{worker_rss} | {r0['gif_bytes']:,} | {imports} | {first} | {steady} |")
    add("")
    # --- gif size
    add("## GIF size for the same frames")
    add("")
    add("| matrix | frames | original bytes | this project bytes (same 1500×1000 frames) | ratio |")
    add("|---|---|---|---|---|")
    for row in res["paired"]:
        g = f"{row['grid'][0]}×{row['grid'][1]}"
        if "original" in row["runs"]:
            ob = row["runs"]["original"][0]["gif_bytes"]
            sb = row["same_frames"]["gif_bytes"]
            add(f"| {g} | {row['base_frames']} | {ob:,} | {sb:,} | {sb / ob:.2f} |")
        else:
            add(f"| {g} | {row['base_frames']} | skipped | {row['same_frames']['gif_bytes']:,} | – |")
    add("")
    add("Both GIFs hold the same frames. This project writes one shared 256-colour palette and only the changed "
        "rectangle of each frame; the original gives every frame its own palette. (The original's frames have "
        "no title or colorbar; this project's have both, so its frames hold more.)")
    add("")
    # --- large
    add("## Larger matrices (this project's defaults: pooled/annotations off by default)")
    add("")
    add("| matrix | original ms/frame (every cell annotated) | this project ms/frame | ratio | frame px | "
        "peak RSS MiB | GIF bytes |")
    add("|---|---|---|---|---|---|---|")
    for row in res["large"]:
        g = f"{row['grid'][0]}×{row['grid'][1]}"
        ours = row["ours"]
        o = row.get("original")
        orig = f"{fmt_ms(o['ms_per_frame'])} ({o['frames']} frame)" if o else "skipped"
        ratio = f"{o['ms_per_frame'] / ours['ms_per_frame']:.0f}×" if o else "–"
        add(f"| {g} | {orig} | {fmt_ms(ours['ms_per_frame'])} ({ours['frames']} frames) | {ratio} | "
            f"{fmt_size(ours['size'])} | {ours['rss_mb']:.0f} | {ours['gif_bytes']:,} |")
    add("")
    add("The original writes a 9-decimal value in every cell whatever the size; this project shows these grids "
        "without values (they would not be readable) at a size derived from the grid, so these rows compare "
        "the job, not the same picture.")
    add("")
    # --- memory
    add("## Memory in frame count (16×16, `render_file`, one process)")
    add("")
    add("| frames | peak RSS MiB | ms/frame | GIF bytes |")
    add("|---|---|---|---|")
    for r in res["memory"]:
        add(f"| {r['frames']} | {r['rss_mb']:.1f} | {fmt_ms(r['ms_per_frame'])} | {r['gif_bytes']:,} |")
    mem = res["memory"]
    add("")
    add(f"Peak RSS at {mem[-1]['frames']} frames is **{mem[-1]['rss_mb'] / mem[0]['rss_mb']:.3f}×** the peak at "
        f"{mem[0]['frames']} frames (target ≤ 1.1×): frames stream into the encoder, one figure is reused, and "
        "only the previous frame's palette indices are kept.")
    add("")
    # --- huge
    h = res["huge"]
    add("## A huge layer")
    add("")
    add(f"A {h['shape'][0]:,}×{h['shape'][1]:,} float32 layer ({h['file_bytes'] / 2**30:.2f} GiB `.npy`, read "
        f"memory-mapped in bands and pooled to {h['grid'][0]}×{h['grid'][1]}): **peak RSS {h['rss_mb']:.0f} MiB** "
        f"(target < 1,536 MiB), {h['total_s']:.1f} s.")
    add("")
    # --- workers
    w = res["workers"][0]
    w1, w2 = med(w["runs"]["w1"], "total_s"), med(w["runs"]["w2"], "total_s")
    add("## Workers: 1 vs 2 processes on a long multi-layer render")
    add("")
    assert all(r["frames"] == w["layers"] * w["frames"] for r in w["runs"]["w1"] + w["runs"]["w2"])
    add(f"`render_file` of {w['layers']} layers × {w['frames']} frames (16×16, default size): 1 worker "
        f"{w1:.2f} s, 2 workers {w2:.2f} s → **{w1 / w2:.2f}×** (target ≥ 1.7×). The GIFs are byte-identical "
        "(tests/test_parallel.py checks it). At the original's frame size (table above): "
        + ", ".join(f"{g} {ratio_of(res, g, 'ours w1', 'ours w2'):.2f}×" for g in ("8×12", "16×16")) + ".")
    add("")
    # --- downloads
    downloads = res["downloads"]
    d = downloads[0]
    add(f"## Downloads: {d['files']} per-step snapshot files from a real `mlflow server`")
    add("")
    add("| how | server with 1 worker: s | vs sequential | server with 4 workers: s | vs sequential |")
    add("|---|---|---|---|---|")
    for key, label in (("sequential", "one file after another (the artifact repository's per-file download)"),
                       ("project", f"this project's fetch (`RunSource.fetch`: {d['threads']} threads, "
                                   "first failure cancels the rest)"),
                       ("mlflow_download_artifacts", "`mlflow.artifacts.download_artifacts` (MLflow's own pool)")):
        cells = []
        for dd in downloads:
            sec = dd["seconds"]
            cells += [f"{sec[key]:.2f}", f"{sec['sequential'] / sec[key]:.1f}×"]
        add(f"| {label} | " + " | ".join(cells) + " |")
    add("")
    add(f"(Uploading them took {d['upload_s']:.1f} s. Servers: sqlite backend, proxied artifacts, "
        "`MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`, on this same 2-core machine, so the server and the client "
        "share the CPU and there is no network latency. With one gunicorn worker the server handles one request "
        "at a time and parallel requests only overlap the client's share; with several workers each request is "
        "slower here (the workers and the client compete for 2 cores) and parallel requests win clearly.)")
    add("")
    # --- floor + profile
    add("## The floor: quantize + encode of frames already rendered")
    add("")
    add("| matrix | frame px | quantize ms | diff ms | LZW ms | floor ms/frame |")
    add("|---|---|---|---|---|---|")
    for g, fp in res["floor_profile"].items():
        for key in ("floor", "floor_default"):
            f = fp[key]
            add(f"| {g} | {fmt_size(f['size'])} | {f['quantize_ms']:.1f} | {f['diff_ms']:.1f} | {f['lzw_ms']:.1f} | "
                f"{f['floor_ms']:.1f} |")
    add("")
    add("## Profile: where each remaining millisecond goes (one process, original frame size)")
    add("")
    add("Frames after the first, as the product draws them: composed as palette indices, no RGB frame "
        "and no per-pixel palette mapping (the quantize column above is what that mapping would cost).")
    add("")
    keys = list(next(iter(res["floor_profile"].values()))["profile"]["stages_ms"])
    add("| stage | " + " | ".join(f"{g} ms" for g in res["floor_profile"]) + " | what was done about it |")
    add("|---|" + "---|" * len(res["floor_profile"]) + "---|")
    notes = {
        "cells + grid": "each cell's colour (the colormap's bytes) gets a colour id, whose palette index and grid "
                        "blend patterns are mapped once, when first seen; indices copied over each row of cells, "
                        "opaque grid pixels set, anti-aliased grid edges looked up per pattern and cell colour",
        "value texts": "glyphs rasterised once by matplotlib's own FreeType engine at their 1/64 px positions "
                       "(placed by matplotlib's text layout, shared by strings that differ only in digits); each "
                       "inked pixel's index comes from a table per cell colour (text colour × coverage → index); "
                       "pixels inked by two glyphs (texts overlapping their neighbours, as at 16×16 here) or over "
                       "a grid line are blended exactly in RGB, three channels in one uint64, and then mapped",
        "title": "composed like the values from matplotlib's glyphs and layout, onto its band's background, only "
                 "the changed digits; that part is mapped to the palette (matplotlib draws it itself, with "
                 "`draw_artist`, when a title's layout is not shared)",
        "diff": "one comparison with the previous frame's indices gives the changed rectangle and the pixels "
                "inside it written as the transparent index",
        "LZW": "Pillow's C encoder on the changed rectangle only, unchanged pixels in it written as the "
               "transparent index (long runs); tick labels, colorbar and margins are never re-encoded",
    }
    for k in keys:
        vals = [fp["profile"]["stages_ms"][k] for fp in res["floor_profile"].values()]
        add(f"| {k} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {notes.get(k, '')} |")
    totals = [fp["profile"]["total_ms"] for fp in res["floor_profile"].values()]
    setups = [fp["profile"]["setup_ms"] for fp in res["floor_profile"].values()]
    add("| **total per frame** | " + " | ".join(f"**{t:.1f}**" for t in totals) + " | |")
    add("| renderer setup, once per layer | " + " | ".join(f"{t:.0f}" for t in setups)
        + " | one full matplotlib draw (black cells), the grid and tick lines again over white, a one-pixel "
          "index-coded scan of the cells, glyph layouts; each worker process builds its own |")
    add("")
    add("Gone entirely compared with the original: the per-frame figure, heatmap and ~100–250 `Text` artists "
        "(one figure is built per layer and never redrawn in full), `tight_layout` (fixed pixel layout), the PNG "
        "encode and decode (frames stay numpy arrays), per-frame adaptive palettes (one shared palette), and "
        "keeping every frame in memory (streamed). `--workers N`: while there are at least N layers left, each "
        "worker writes whole layers' GIFs (no renderer built twice); otherwise frames are split into chunks drawn "
        "and compressed in the workers, and the main process writes the blocks in order.")
    add("")
    return "\n".join(lines)


def ratio_of(res: dict[str, Any], grid: str, a: str, b: str) -> float:
    for row in res["paired"]:
        if f"{row['grid'][0]}×{row['grid'][1]}" == grid:
            return med(row["runs"][a], "ms_per_frame") / med(row["runs"][b], "ms_per_frame")
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--smoke", action="store_true", help="a few frames of every case (for CI)")
    p.add_argument("--out", help="report path (default benchmarks/RESULTS.md; smoke: benchmarks/.work/SMOKE.md)")
    p.add_argument("--reps", type=int, default=2, help="paired repetitions of the timed cases")
    p.add_argument("--shared", help="folder with seed_baseline.py and make_data.py (default ../shared/bench)")
    p.add_argument("--work", help="scratch folder (default: a new temporary folder)")
    p.add_argument("--keep-huge", action="store_true", help="keep the huge .npy for the next run")
    p.add_argument("--before", help="also measure the project at this git revision, side by side (before/after)")
    p.add_argument("--from-json", help="only rewrite the report from a previous run's .json")
    p.add_argument("--only", help="run only these sections (comma-separated: paired, large, memory, workers, huge, "
                   "floor_profile, downloads); writes their JSON (--out, default benchmarks/.work/ONLY.json) "
                   "and prints the per-frame ratios, not the report")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        child_main(args.measure)
        return
    b = Bench(args)
    out = Path(args.out) if args.out else (HERE / ".work" / "SMOKE.md" if args.smoke else HERE / "RESULTS.md")
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        out.write_text(report(b, res, float(res.get("elapsed_s", 0.0))) + "\n", encoding="utf-8")
        return
    if not b.have_baseline:
        print(f"note: the original script is missing ({b.baseline}); its measurements are skipped", flush=True)
    if args.only:
        sections: dict[str, Callable[[], Any]] = {
            "paired": b.paired, "large": b.large, "memory": b.memory, "workers": b.workers, "huge": b.huge,
            "floor_profile": b.floor_and_profile, "downloads": b.downloads}
        chosen = {name: sections[name] for name in args.only.split(",")}
        only: dict[str, Any] = {name: run() for name, run in chosen.items()}
        target = Path(args.out) if args.out else HERE / ".work" / "ONLY.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(only, indent=1, default=str), encoding="utf-8")
        for row in only.get("paired", []):
            runs = row["runs"]
            orig = med(runs["original"], "ms_per_frame") if "original" in runs else float("nan")
            fl = row["lzw_floor"]
            print(f"{row['grid'][0]}x{row['grid'][1]}: original {orig:.0f} ms/frame; LZW floor {fl['lzw_full_ms']:.1f} "
                  f"ms, steady beside it {fl['steady_ms']:.1f} ms ({fl['ratio']:.2f}x floor); "
                  + "; ".join(f"{k} {med(r, 'ms_per_frame'):.1f} ms ({orig / med(r, 'ms_per_frame'):.1f}x), steady "
                              f"{med(r, 'steady_ms_per_frame'):.1f}" if "steady_ms_per_frame" in r[0] else
                              f"{k} {med(r, 'ms_per_frame'):.1f} ms ({orig / med(r, 'ms_per_frame'):.1f}x)"
                              for k, r in runs.items() if k != "original"), flush=True)
        b.say(f"wrote {target}")
        return
    t0 = time.perf_counter()
    res: dict[str, Any] = {}
    if args.before:
        res["before"] = args.before
    res["paired"] = b.paired()
    res["large"] = b.large()
    res["memory"] = b.memory()
    res["workers"] = b.workers()
    res["huge"] = b.huge()
    res["floor_profile"] = b.floor_and_profile()
    res["downloads"] = b.downloads()
    elapsed = time.perf_counter() - t0
    res["elapsed_s"] = elapsed
    text = report(b, res, elapsed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n", encoding="utf-8")
    (out.with_suffix(".json")).write_text(json.dumps(res, indent=1, default=str), encoding="utf-8")
    b.say(f"wrote {out}")


if __name__ == "__main__":
    main()
