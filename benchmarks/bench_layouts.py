"""Peak memory of ``render-file`` on one large layer, for every file layout (issue 14, items 1-2).

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_layouts.py                       # writes LAYOUT_RESULTS.md
    .venv/bin/python benchmarks/bench_layouts.py --side 4000 --before /work/main --out /tmp/l.md

For each layout a file holding the same values is written to a temporary folder (removed
at the end), then ``python -m mlflow_weightviz render-file FILE --out X.gif`` runs in a
fresh process and its peak RSS (``ru_maxrss``) is reported by a small wrapper process.
With ``--before PATH`` the same render also runs with ``PYTHONPATH=PATH`` (e.g. the code
before the fix) for the layouts listed in ``--before-layouts``. The ratio column compares
each peak with the C-order ``.npy`` of this code, the layout that was already banded.

Layouts: C-order ``.npy``; Fortran-order ``.npy`` (what ``np.save(w.T)`` writes) in 2-D and
as a 3-D stack of steps (each step interleaved across the whole file); a deflated ``.npz``
member; a BF16 ``.safetensors`` tensor; float32 and bfloat16 torch ``.pt`` files; and a
128-byte ``.npy`` whose header declares ten million empty steps.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BAND = 512  # rows written at a time: the benchmark itself never holds a whole matrix


def values(r0: int, r1: int, cols: int) -> np.ndarray:
    """Rows r0..r1 of the benchmark matrix: smooth, compressible, no two blocks alike."""
    r = np.arange(r0, r1, dtype=np.float32)[:, None]
    c = np.arange(cols, dtype=np.float32)[None, :]
    return np.asarray(np.sin(r * 1e-3) + (c % 97) * 1e-2, dtype=np.float32)


def write_c(path: Path, n: int) -> None:
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, n))
    for r in range(0, n, BAND):
        arr[r:r + BAND] = values(r, min(r + BAND, n), n)
    arr.flush()


def write_fortran(path: Path, n: int) -> None:
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, n), fortran_order=True)
    for c in range(0, n, BAND):  # column bands: contiguous in a Fortran-order file
        arr[:, c:c + BAND] = values(c, min(c + BAND, n), n).T
    arr.flush()


def write_fortran_stack(path: Path, n: int) -> None:
    steps = 3
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(steps, n, n), fortran_order=True)
    for c in range(0, n, BAND):
        block = values(c, min(c + BAND, n), n).T
        for t in range(steps):
            arr[t, :, c:c + BAND] = block + t
    arr.flush()


def write_deflated(path: Path, n: int) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (n, n)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf, \
            zf.open("w.npy", "w", force_zip64=True) as member:
        member.write(header.getvalue())
        for r in range(0, n, BAND):
            member.write(values(r, min(r + BAND, n), n).tobytes())


def write_bf16(path: Path, n: int) -> None:
    cols = 2 * n  # same file size as the float32 layouts, twice the values
    meta = {"w": {"dtype": "BF16", "shape": [n, cols], "data_offsets": [0, n * cols * 2]}}
    raw = json.dumps(meta).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        for r in range(0, n, BAND):
            fh.write((values(r, min(r + BAND, n), cols).view(np.uint32) >> 16).astype("<u2").tobytes())


def write_torch(path: Path, n: int, *, bf16: bool = False) -> None:
    import torch

    rows = 2 * n if bf16 else n
    tensor = torch.empty((rows, n), dtype=torch.bfloat16 if bf16 else torch.float32)
    for r in range(0, rows, BAND):
        tensor[r:r + BAND] = torch.from_numpy(values(r, min(r + BAND, rows), n))
    torch.save({"w": tensor}, path)


def write_bomb(path: Path, n: int) -> None:
    del n
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**7, 1, 0)})
    path.write_bytes(buf.getvalue())


LAYOUTS: dict[str, tuple[str, Callable[[Path, int], None]]] = {
    "C-order .npy": ("c.npy", write_c),
    "Fortran .npy 2-D": ("fortran.npy", write_fortran),
    "Fortran .npy 3-D stack": ("fortran_stack.npy", write_fortran_stack),
    "deflated .npz": ("deflated.npz", write_deflated),
    "BF16 .safetensors": ("bf16.safetensors", write_bf16),
    "torch .pt float32": ("f32.pt", write_torch),
    "torch .pt bfloat16": ("bf16.pt", lambda p, n: write_torch(p, n, bf16=True)),
    "128-byte header, 10^7 empty steps": ("bomb.npy", write_bomb),
}


# The render runs under a small wrapper: on Linux a child's ru_maxrss counts the memory of
# the process it was forked from, so forking straight from this (larger) process would
# report this process's size. The wrapper reports its own child's peak.
WRAPPER = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def measure(path: Path, out: Path, pythonpath: Path) -> tuple[int, float, float]:
    """(exit code, peak RSS MiB, seconds) of one render in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(pythonpath), TMPDIR=str(out.parent))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, "-m", "mlflow_weightviz", "render-file",
                           str(path), "--out", str(out), "--quiet"], env=env, capture_output=True, text=True,
                          check=True, cwd=out.parent)  # not the repository: `-m` would import it from the cwd
    seconds = time.perf_counter() - start
    code, kib = (int(x) for x in proc.stdout.split())
    if code not in (0, 3):
        print(f"  {path.name}: exit {code}", file=sys.stderr)
    return code, kib / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--side", type=int, default=8000, help="matrix side (float32: side² × 4 bytes per file)")
    parser.add_argument("--before", type=Path, default=None, help="a checkout of the code before, for comparison")
    parser.add_argument("--before-layouts", nargs="*", default=[
        "Fortran .npy 2-D", "Fortran .npy 3-D stack", "deflated .npz", "BF16 .safetensors", "torch .pt float32",
        "torch .pt bfloat16"])
    parser.add_argument("--out", type=Path, default=HERE / "LAYOUT_RESULTS.md")
    args = parser.parse_args()
    started = time.perf_counter()
    rows: list[str] = []
    c_peak = None
    with tempfile.TemporaryDirectory(prefix="bench-layouts-") as tmp:
        folder = Path(tmp)
        for label, (name, write) in LAYOUTS.items():
            path = folder / name
            write(path, args.side)
            size = path.stat().st_size
            code, peak, secs = measure(path, folder / "after.gif", ROOT)
            if name == "c.npy":
                c_peak = peak
            before = "–"
            if args.before is not None and label in args.before_layouts:
                b_code, b_peak, b_secs = measure(path, folder / "before.gif", args.before)
                before = f"{b_peak:,.0f} ({b_secs:.0f} s{'' if b_code == 0 else f', exit {b_code}'})"
            ratio = f"{peak / c_peak:.2f}" if c_peak else "–"
            outcome = "rendered" if code == 0 else f"exit {code}"
            rows.append(f"| {label} | {size / 2**20:,.1f} | {before} | {peak:,.0f} ({secs:.0f} s) | {ratio} | "
                        f"{outcome} |")
            print(rows[-1], flush=True)
            path.unlink()
            for gif in folder.glob("*.gif"):
                gif.unlink()
    total = time.perf_counter() - started
    command = f"benchmarks/bench_layouts.py --side {args.side}" + (f" --before {args.before}" if args.before else "")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    text = "\n".join([
        "# Peak memory per file layout",
        "",
        f"Generated by `.venv/bin/python {command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{machine}; whole run {total / 60:.1f} min.",
        "",
        "Each cell is one `render-file FILE --out X.gif` in a fresh process: its peak RSS in MiB (the child's "
        "own `ru_maxrss`, taken by a small wrapper process) and wall time. The matrix is "
        f"{args.side:,}×{args.side:,} float32 (BF16 and bfloat16 torch files hold twice as many values in the "
        "same bytes; the Fortran 3-D stack is 3 steps of it, 3 frames). \"Before\" is the code at "
        f"`{args.before}` on the same file in the same run; \"ratio\" is this code's peak over its C-order "
        "`.npy` peak. The machine is shared and noisy: compare within this file.",
        "",
        "| layout | file MiB | before: peak MiB (time) | after: peak MiB (time) | ratio to C-order | outcome |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Every layout goes through the same banded pooling (`grid.to_grid`): bands of rows, or of columns where "
        "the matrix is stored column by column (Fortran order; a step of a Fortran-order stack), each read in "
        "pieces spanning at most 64 MiB of the file, whose pages are released after use. Arrays that must be "
        "converted or inflated (BF16, torch floats, deflated members over 64 MiB) are `LazyArray`s read the same "
        "way: torch files through `torch.load(mmap=True, weights_only=True)` and the tensor's storage, deflated "
        "members as a stream. The 128-byte header is refused on its header (exit 3) before any per-step work.",
        "",
        "The torch rows include torch itself, which `render-file` imports to read them (about 300 MiB before "
        "any tensor is read).",
        "",
    ])
    args.out.write_text(text)
    print(f"wrote {args.out} in {total / 60:.1f} min")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
