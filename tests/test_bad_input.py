"""Bad and odd inputs (issue 5, item 1), through the real CLI in a subprocess.

Every case ends in one of two ways: one ``error:`` line on stderr with a non-zero exit
code, no traceback, nothing logged and no temporary file left behind; or a documented,
sensible rendering. Each subprocess gets a fresh, empty TMPDIR that must be empty again
when it exits.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import (
    artifact_files,
    assert_one_line_error,
    log_folder,
    make_run,
    read_gif,
    run_isolated,
)

SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,110}\.gif$")


# --------------------------------------------------------------------------------- file writers


def npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def empty(path: Path) -> None:
    path.write_bytes(b"")


def truncated_npy(path: Path) -> None:
    path.write_bytes(npy_bytes(np.ones((20, 20)))[:1000])


def truncated_npy_header(path: Path) -> None:
    path.write_bytes(npy_bytes(np.ones((20, 20)))[:40])


def truncated_npz(path: Path) -> None:
    np.savez(path, a=np.ones((20, 20)))
    path.write_bytes(path.read_bytes()[:2000])


def corrupt_compressed_npz(path: Path) -> None:
    np.savez_compressed(path, a=np.random.default_rng(0).normal(size=(30, 30)))
    data = bytearray(path.read_bytes())
    data[200:260] = b"\xff" * 60  # inside the deflated stream; the zip directory stays intact
    path.write_bytes(bytes(data))


def truncated_safetensors(path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"w": np.ones((20, 20), np.float32)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])


def corrupt_safetensors_header(path: Path) -> None:
    header = b'{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]'  # JSON cut short
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))


def lying_safetensors_offsets(path: Path) -> None:
    header = b'{"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4000000]}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(64))


def corrupt_torch(path: Path) -> None:
    path.write_bytes(b"\x80\x02" + bytes(range(256)) * 4)


def object_npy(path: Path) -> None:
    np.save(path, np.array([{"a": 1}, [1, 2]], dtype=object), allow_pickle=True)


def object_npz(path: Path) -> None:
    np.savez(path, w=np.array([None, 1.5], dtype=object))


def string_npy(path: Path) -> None:
    np.save(path, np.array([["a", "b"], ["c", "d"]]))


def plain_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps([np.zeros((2, 2))] * 3))


def zero_size(path: Path) -> None:
    np.save(path, np.zeros((0, 5), np.float32))


def zero_length_stack(path: Path) -> None:
    np.save(path, np.zeros((0, 4, 4), np.float32))


def shapes_change(path: Path) -> None:
    path.mkdir()
    np.save(path / "step_1.npy", np.zeros((4, 6)))
    np.save(path / "step_2.npy", np.zeros((4, 6)))
    np.save(path / "step_3.npy", np.zeros((6, 4)))


def not_a_snapshot(path: Path) -> None:
    path.write_text("epoch,loss\n1,0.5\n")


ERRORS: dict[str, tuple[Callable[[Path], None], str]] = {
    "empty.npy": (empty, "the file is empty"),
    "empty.npz": (empty, "the file is empty"),
    "empty.safetensors": (empty, "the file is empty"),
    "empty.pt": (empty, "the file is empty"),
    "empty.pkl": (empty, "the file is empty"),
    "truncated.npy": (truncated_npy, "the file is truncated (1000 of 3328 bytes)"),
    "truncated_header.npy": (truncated_npy_header, "truncated_header.npy"),
    "truncated.npz": (truncated_npz, "not a readable .npz (zip) archive, perhaps truncated"),
    "corrupt.npz": (corrupt_compressed_npz, "cannot read corrupt.npz"),
    "truncated.safetensors": (truncated_safetensors, "tensor 'w' is truncated or its offsets are corrupt"),
    "corrupt.safetensors": (corrupt_safetensors_header, "corrupt safetensors header: expected JSON"),
    "lying.safetensors": (lying_safetensors_offsets, "F32 [1000, 1000] needs 4000000 bytes, at data offsets "
                                                     "[0, 4000000) of the 64 bytes the file holds"),
    "corrupt.pt": (corrupt_torch, "not a readable torch file"),
    "object.npy": (object_npy, "got an object array"),
    "object.npz": (object_npz, "got an object array"),
    "strings.npy": (string_npy, "expected a numeric array (bool, integer, float or complex); got dtype <U1"),
    "animation_data.obj": (plain_pickle, "--allow-pickle"),
    "zero_size.npy": (zero_size, "this one has shape (0, 5)"),
    "zero_stack.npy": (zero_length_stack, "expected a stack of at least one snapshot"),
    "shapes": (shapes_change, "every snapshot must have the shape of step 1, (4, 6); step 3 has shape (6, 4)"),
    "metrics.csv": (not_a_snapshot, "metrics.csv: not a snapshot format"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_file_gives_one_line_and_no_output(tmp_path: Path, name: str) -> None:
    writer, fragment = ERRORS[name]
    writer(tmp_path / name)
    cli = run_isolated("render-file", name, "--output-dir", "out", cwd=tmp_path)
    assert_one_line_error(cli, 3, fragment)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def encoded_dots(path: Path) -> None:
    (path / "%2e%2e").mkdir(parents=True)  # MLflow stores this name but refuses to download it ("..")
    np.save(path / "%2e%2e" / "step_1.npy", np.eye(2))


# A few through a real run as well (test_cli.py runs more): the errors are the same, and nothing is logged.
IN_A_RUN = {name: ERRORS[name] for name in ("empty.npz", "truncated.safetensors", "zero_size.npy")}
IN_A_RUN["dots"] = (encoded_dots, "dots/%2e%2e/step_1.npy: MLflow refuses to download this artifact path")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(IN_A_RUN))
def test_bad_snapshots_in_a_run_log_nothing(tmp_path: Path, name: str) -> None:
    run_id = make_run()
    folder = tmp_path / "w"
    folder.mkdir()
    writer, fragment = IN_A_RUN[name]
    writer(folder / name)
    log_folder(run_id, folder)
    assert_one_line_error(run_isolated("render", run_id, cwd=tmp_path), 3, fragment)
    assert artifact_files(run_id, "weightviz") == []
    assert [k for k in MlflowClient().get_run(run_id).data.tags if k.startswith("weightviz.")] == []


# ---------------------------------------------------------------------------- malicious payloads


class Payload:
    """Unpickling this creates the directory ``marker``: proof that the file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, ...]:
        return (os.makedirs, (self.marker,))


def malicious_files(folder: Path, marker: Path) -> dict[str, Path]:
    torch = pytest.importorskip("torch")
    folder.mkdir()
    files = {
        "pickle": folder / "animation_data.pkl",
        "pickle disguised as .npy": folder / "step_1.npy",
        "pickle under an unknown name": folder / "weights.data",
        "pickle under torch's .bin": folder / "pytorch_model.bin",
        "object array in .npy": folder / "object.npy",
        "object array in .npz": folder / "object.npz",
        "torch checkpoint with an object": folder / "model.pt",
    }
    evil = pickle.dumps([np.zeros((2, 2)), Payload(marker)])
    for key in ("pickle", "pickle disguised as .npy", "pickle under an unknown name", "pickle under torch's .bin"):
        files[key].write_bytes(evil)
    np.save(files["object array in .npy"], np.array([Payload(marker), 1], dtype=object), allow_pickle=True)
    np.savez(files["object array in .npz"], w=np.array([Payload(marker), 1], dtype=object))
    torch.save({"fc.weight": torch.ones(2, 2), "hook": Payload(marker)}, files["torch checkpoint with an object"])
    assert not marker.exists()
    return files


MALICIOUS_ERRORS = {
    "pickle": "--allow-pickle",
    "pickle disguised as .npy": "the magic string is not correct",
    "pickle under an unknown name": "--allow-pickle",
    "pickle under torch's .bin": "not a readable torch file",
    "object array in .npy": "got an object array",
    "object array in .npz": "got an object array",
    "torch checkpoint with an object": "refused by torch's safe loader (weights_only=True)",
}


@pytest.mark.slow
def test_malicious_payloads_never_run_without_the_flag(tmp_path: Path) -> None:
    marker = tmp_path / "PAYLOAD-RAN"
    files = malicious_files(tmp_path / "evil", marker)
    for kind, path in files.items():
        cli = run_isolated("render-file", str(path), "--output-dir", "out", cwd=tmp_path)
        assert_one_line_error(cli, 3, MALICIOUS_ERRORS[kind])
        assert not marker.exists(), f"the payload ran for: {kind}"
    # A whole folder of them, and the same files inside an MLflow run.
    assert_one_line_error(run_isolated("render-file", "evil", "--output-dir", "out", cwd=tmp_path), 3, "")
    run_id = make_run()
    log_folder(run_id, tmp_path / "evil")
    cli = run_isolated("render", run_id, cwd=tmp_path)
    assert cli.code == 3
    assert not marker.exists()
    assert artifact_files(run_id, "weightviz") == []
    # With the flag the user trusts the file, and unpickling does run its code: the test can tell.
    run_isolated("render-file", str(files["pickle"]), "--allow-pickle", "--output-dir", "out", cwd=tmp_path)
    assert marker.exists()


# ------------------------------------------------------------------------- documented renderings


def stack_of(*frames: np.ndarray) -> Callable[[Path], None]:
    return lambda path: np.save(path, np.stack(frames))


RENDERS: dict[str, tuple[Callable[[Path], None], int]] = {
    "single_snapshot.npy": (lambda p: np.save(p, np.eye(3)), 1),
    "int32.npy": (stack_of(np.arange(12, dtype=np.int32).reshape(3, 4), np.ones((3, 4), np.int32)), 2),
    "bool.npy": (stack_of(np.eye(3, dtype=bool), ~np.eye(3, dtype=bool)), 2),
    "float16.npy": (stack_of(np.linspace(-1, 1, 6, dtype=np.float16).reshape(2, 3),
                             np.linspace(-2, 2, 6, dtype=np.float16).reshape(2, 3)), 2),
    "complex64.npy": (stack_of(np.full((2, 2), 3 + 4j, np.complex64), np.full((2, 2), 1j, np.complex64)), 2),
    "constant.npy": (stack_of(np.full((3, 3), 0.5), np.full((3, 3), 0.5)), 2),
    "huge_values.npy": (stack_of(np.array([[1e30, -1e30], [0, 1]]), np.array([[-1e30, 1e30], [1, 0]])), 2),
    "all_nan.npy": (stack_of(np.full((3, 3), np.nan), np.full((3, 3), np.nan)), 2),
    "inf_and_nan.npy": (stack_of(np.array([[np.inf, -np.inf], [np.nan, 1.0]]), np.array([[1.0, 2.0], [3, 4]])), 2),
    "scalar.npy": (lambda p: np.save(p, np.float32(3.5)), 1),
    "float64_limits.npy": (stack_of(np.zeros((2, 2)), np.full((2, 2), np.finfo(np.float64).max),
                                    np.full((2, 2), -np.finfo(np.float64).max)), 3),
}


@pytest.mark.parametrize("name", list(RENDERS))
def test_odd_but_valid_data_renders(tmp_path: Path, name: str) -> None:
    writer, frames = RENDERS[name]
    writer(tmp_path / name)
    cli = run_isolated("render-file", name, "--out", "out.gif", "--quiet", cwd=tmp_path)
    assert cli.code == 0, cli.stderr
    assert cli.stderr == ""
    assert read_gif(tmp_path / "out.gif").n_frames == frames


def test_duplicate_steps_render_once_with_a_warning(tmp_path: Path) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    for name, value in (("step_1.npy", 0.0), ("step_2.npy", 1.0), ("epoch_2.npy", 2.0), ("step_3.npy", 3.0)):
        np.save(folder / name, np.full((2, 2), value))
    cli = run_isolated("render-file", "w", "--out", "w.gif", "--quiet", cwd=tmp_path)
    assert cli.code == 0, cli.stderr
    assert cli.stderr.strip() == "warning: 1 snapshot(s) repeat a step of their layer; the later file wins"
    assert "3 frames" in cli.stdout
    assert read_gif(tmp_path / "w.gif").n_frames == 3


# ------------------------------------------------------------------------------------ unsafe names

UNSAFE_LAYERS = ["../../escape", "/etc/passwd", "..", ".", "权重", "Gewicht-ä", "a" * 300, "a/b", "a_b",
                 "with space", "C:\\windows\\evil", "-rf"]


def test_unsafe_layer_names_stay_inside_the_output_folder(tmp_path: Path) -> None:
    arrays = {name: np.stack([np.eye(2) * i for i in range(2)]) for name in UNSAFE_LAYERS}
    np.savez(tmp_path / "layers.npz", steps=np.array([0, 1]), **arrays)  # type: ignore[arg-type]
    before = {p for p in tmp_path.parent.rglob("*") if "out" not in p.parts}
    cli = run_isolated("render-file", "layers.npz", "--output-dir", "out", "--quiet", cwd=tmp_path)
    assert cli.code == 0, cli.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(written) == len(UNSAFE_LAYERS)  # one per layer, none lost to a collision
    assert all(SAFE_NAME.match(n) for n in written), written
    assert all(p.is_file() for p in (tmp_path / "out").iterdir())
    after = {p for p in tmp_path.parent.rglob("*") if "out" not in p.parts}
    assert after - before == set(), "something was written outside the output folder"
    assert "escape.gif" in written
    assert "etc_passwd.gif" in written


@pytest.mark.slow
def test_unsafe_folder_names_and_artifact_names_in_a_run(tmp_path: Path) -> None:
    root = tmp_path / "w"
    for layer in ("层", "a b", "x" * 200, "a:b*c?"):
        (root / layer).mkdir(parents=True)
        for s in (1, 2):
            np.save(root / layer / f"step_{s}.npy", np.full((2, 2), float(s)))
    run_id = make_run()
    log_folder(run_id, root)
    cli = run_isolated("render", run_id, "--quiet", cwd=tmp_path)
    assert cli.code == 0, cli.stderr
    files = artifact_files(run_id)
    gifs = [f for f in files if f.endswith(".gif")]
    assert len(gifs) == 4
    for f in gifs:
        folder, _, name = f.rpartition("/")
        assert folder == "weightviz"
        assert SAFE_NAME.match(name), name


def _colliding_layers(base: str) -> list[str]:
    """Names whose safe names and hash fallbacks used to meet: ``_b``, ``/b-<hash of b>``, ``b`` and ``B``."""
    import hashlib

    return [f"_{base}", f"/{base}-{hashlib.sha256(base.encode()).hexdigest()[:8]}", base, base.upper()]


@pytest.mark.parametrize("base", ["enc.out", "Head_7"])
def test_colliding_layer_names_get_one_file_each_locally_and_in_the_run(tmp_path: Path, base: str) -> None:
    layers = _colliding_layers(base)
    arrays = {name: np.stack([np.eye(3) * (i + k) for i in range(2)]) for k, name in enumerate(layers)}
    (tmp_path / "w").mkdir()
    np.savez(tmp_path / "w" / "layers.npz", steps=np.array([0, 1]), **arrays)  # type: ignore[arg-type]
    cli = run_isolated("render-file", "w/layers.npz", "--output-dir", "out", "--quiet", cwd=tmp_path)
    assert cli.code == 0, cli.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len({n.lower() for n in written}) == len(layers), written  # distinct even on macOS/Windows
    assert f"{base}.gif" in written or f"{base.upper()}.gif" in written  # a safe name keeps it when free
    assert all(SAFE_NAME.match(n) for n in written), written

    run_id = make_run()
    log_folder(run_id, tmp_path / "w")
    cli = run_isolated("render", run_id, "--source", "weights/layers.npz", "--step-images", "--quiet", cwd=tmp_path)
    assert cli.code == 0, cli.stderr
    gifs = [f for f in artifact_files(run_id, "weightviz") if f.endswith(".gif")]
    assert len({g.lower() for g in gifs}) == len(layers), gifs
    images = {f.rsplit("/", 1)[-1].split("+step+")[0].lower() for f in artifact_files(run_id, "images")}
    assert len(images) == len(layers), images  # step-image keys are distinct as well


# ------------------------------------------------------------------------------------- many files


@pytest.mark.slow
def test_two_thousand_tiny_snapshot_files(tmp_path: Path) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for s in range(2000):
        np.save(folder / f"step_{s}.npy", rng.normal(size=(2, 3)).astype(np.float32))
    run_id = make_run()
    log_folder(run_id, folder)
    cli = run_isolated("render", run_id, "--max-frames", "12", "--output-dir", "gifs", "--quiet", cwd=tmp_path)
    assert cli.code == 0, cli.stderr
    assert cli.stdout.startswith("weights: 12 frames")
    assert read_gif(tmp_path / "gifs" / "weights.gif").n_frames == 12
    import mlflow_weightviz as wv

    (summary,) = wv.inspect_file(folder)
    assert (summary.snapshots, summary.first_step, summary.last_step) == (2000, 0, 1999)


# ------------------------------------------------------------------------------ a 1.6 GB layer

MEASURE = textwrap.dedent("""
    import resource, subprocess, sys
    proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    print("maxrss_kib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    sys.exit(proc.returncode)
""")


@pytest.mark.slow
def test_a_20000_by_20000_float32_layer_renders_with_bounded_memory(tmp_path: Path) -> None:
    n = 20_000
    path = tmp_path / "huge.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, n))
    cols = np.arange(n, dtype=np.float32) / n
    for r in range(0, n, 2000):  # written in bands; the test itself never holds the matrix
        arr[r:r + 2000] = np.arange(r, r + 2000, dtype=np.float32)[:, None] / n - cols[None, :]
    arr.flush()
    del arr
    assert path.stat().st_size > 1_600_000_000
    try:
        tmpdir = tmp_path / "tmpdir"
        tmpdir.mkdir()
        proc = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "mlflow_weightviz",
                               "render-file", str(path), "--out", str(tmp_path / "huge.gif"), "--quiet"],
                              capture_output=True, text=True, timeout=600, env=dict(os.environ, TMPDIR=str(tmpdir)),
                              check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("huge: 1 frames, grid 64×64")
        peak_mib = int(proc.stdout.split("maxrss_kib")[1]) / 1024
        assert peak_mib < 1024, f"peak RSS {peak_mib:.0f} MiB for a 1526 MiB layer"
        assert list(tmpdir.iterdir()) == []
        assert read_gif(tmp_path / "huge.gif").n_frames == 1
    finally:
        path.unlink()  # pytest keeps recent temp folders; do not keep 1.6 GB in them


# ------------------------------------------------------------- issue 14: tiny files, every layout, odd files


def test_a_tiny_header_declaring_millions_of_empty_steps_is_refused_at_once(tmp_path: Path) -> None:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (4_000_000, 0, 7)})
    (tmp_path / "hollow.npy").write_bytes(buf.getvalue())
    proc = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "mlflow_weightviz", "render-file",
                           "hollow.npy", "--output-dir", "out"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 3, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: hollow.npy: declares 4,000,000 snapshots")
    peak_mib = int(proc.stdout.split("maxrss_kib")[1]) / 1024
    assert peak_mib < 400, f"peak RSS {peak_mib:.0f} MiB to refuse a {len(buf.getvalue())}-byte file"


def test_a_fifo_named_like_a_snapshot_is_refused_not_waited_on(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "step_12")
    cli = run_isolated("render-file", "step_12", "--output-dir", "out", cwd=tmp_path, timeout=60)
    assert_one_line_error(cli, 3, "step_12: a FIFO (named pipe), not a regular file")
    folder = tmp_path / "w"
    folder.mkdir()
    np.save(folder / "step_1.npy", np.eye(3))
    np.save(folder / "step_2.npy", np.eye(3) * 2)
    os.mkfifo(folder / "step_3")
    (folder / "step_4.npz").symlink_to("nowhere.npz")
    (folder / "step_5.npy").symlink_to("step_5.npy")  # a loop of one
    cli = run_isolated("render-file", "w", "--output-dir", "out", "--quiet", cwd=tmp_path, timeout=60)
    assert cli.code == 0, cli.stderr
    assert sorted(cli.stderr.strip().splitlines()) == [
        "warning: skipped step_3: a FIFO (named pipe), not a regular file",
        "warning: skipped step_4.npz: a broken symbolic link (to nowhere.npz)",
        "warning: skipped step_5.npy: a symbolic link loop"]
    assert read_gif(tmp_path / "out" / "w.gif").n_frames == 2
    for name in ("step_4.npz", "step_5.npy"):  # named on their own: exit 3, naming them
        assert_one_line_error(run_isolated("render-file", f"w/{name}", cwd=tmp_path, timeout=60), 3, f"w/{name}")


# Peak memory while pooling one large layer, per layout. Bands are shrunk to 2 MiB in the
# child so that the few-hundred-MB files here show the difference a multi-GB file would:
# reading whole (or touching every page of the file at once) grows by the file's size.
GROWTH = textwrap.dedent("""
    import resource, sys
    from mlflow_weightviz import grid
    from mlflow_weightviz.snapshots import read_snapshots
    grid._BAND_BYTES = 2 << 20
    snaps = read_snapshots(sys.argv[1])
    if sys.argv[1].endswith(".pt"):
        import torch  # imported by the reader already; counted in the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for snap in snaps[:2]:
        values, info = grid.to_grid(snap.open(), max_rows=64, max_cols=64)
        lo, hi = grid.finite_range(snap.open())
    print(info.matrix, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
""")


def _layout(path: Path, name: str) -> None:
    rows = 5000
    cols = 5200  # 5000 × 5200 float32: 104 MB
    if name == "fortran_stack.npy":  # np.save(w.T) of a (T, N, M) series: steps interleaved in the file
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(2600, 200, 50), fortran_order=True)
        for m in range(0, 50, 10):
            arr[:, :, m:m + 10] = np.float32(m + 1)
        arr.flush()
        return
    if name.endswith(".npy"):
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, cols), fortran_order=True)
        for c in range(0, cols, 1000):
            arr[:, c:c + 1000] = np.arange(rows, dtype=np.float32)[:, None] * 1e-3 + c
        arr.flush()
        return
    values = np.add.outer(np.arange(rows, dtype=np.float32) * 1e-3, np.arange(cols, dtype=np.float32) % 7)
    if name.endswith(".npz"):
        np.savez_compressed(path, w=values)
    elif name.endswith(".safetensors"):
        bits = (values.view(np.uint32) >> 16).astype(np.uint16)
        header = json_header({"w": {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [0, bits.nbytes]}})
        with path.open("wb") as fh:
            fh.write(header)
            fh.write(bits.tobytes())
    else:
        import torch

        tensor = torch.from_numpy(values)
        torch.save({"w": tensor.to(torch.bfloat16) if "bf16" in name else tensor}, path)


def json_header(header: dict[str, object]) -> bytes:
    import json

    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fortran.npy", "fortran_stack.npy", "deflated.npz", "bf16.safetensors",
                                  "f32.pt", "bf16.pt"])
def test_pooling_memory_stays_bounded_for_every_layout(tmp_path: Path, name: str) -> None:
    if name.endswith(".pt"):
        pytest.importorskip("torch")
    path = tmp_path / name
    _layout(path, name)
    try:
        proc = subprocess.run([sys.executable, "-c", GROWTH, str(path)], capture_output=True, text=True,
                              timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr
        matrix, growth = proc.stdout.rsplit(" ", 1)
        assert int(growth) < 60, f"{name} {matrix}: memory grew by {growth} MiB while pooling"
    finally:
        path.unlink()


# ------------------------------------------------------------------------------- names are text


@pytest.mark.parametrize("length", [3100, 12000])
def test_long_and_math_like_names_render_literally_at_the_normal_width(tmp_path: Path, length: int) -> None:
    from mlflow_weightviz import RenderOptions, render_file
    from mlflow_weightviz.frames import NAME_CHARS
    from mlflow_weightviz.options import Format, OutputOptions

    long_name = "".join(f"blk{i}.mix." for i in range(length))[:length]
    names = ["$\\sqrt{$", "m$x_{", long_name, "n" * NAME_CHARS, "ok"]
    arrays = {name: np.stack([np.full((3, 5), i + k / 10) for i in range(3)]) for k, name in enumerate(names)}
    np.savez(tmp_path / "named.npz", steps=np.array([0, 4, 8]), **arrays)  # type: ignore[arg-type]
    options = RenderOptions(outputs=OutputOptions(formats=(Format.GIF, Format.HTML)))
    result = render_file(tmp_path / "named.npz", options, output_dir=tmp_path / "out")
    assert {r.layer for r in result.layers} == set(names)
    widths = {r.layer: read_gif(tmp_path / "out" / r.file_name).size[0] for r in result.layers}
    # A long name ends in an ellipsis: the frame is as wide as for a name of NAME_CHARS characters.
    assert abs(widths[long_name] - widths["n" * NAME_CHARS]) <= 4, widths
    assert widths[long_name] < 1000
    player = next(r for r in result.layers if r.layer == long_name).files[1]
    assert long_name in (tmp_path / "out" / player).read_text(encoding="utf-8")  # the full name stays there


def test_math_like_labels_and_formats_render_literally(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.stack([np.eye(4) * i for i in range(3)]))
    cli = run_isolated("render-file", "w.npy", "--out", "w.gif", "--row-label", "$\\unknown{$", "--col-label",
                       "c_$^$", "--fmt", "$\\oops {x:.1f}$", "--quiet", cwd=tmp_path)
    assert cli.code == 0, cli.stderr
    assert read_gif(tmp_path / "w.gif").n_frames == 3
