"""Reading every snapshot format from local files (issue 2, item 2), without MLflow."""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from mlflow_weightviz.errors import PickleNotAllowedError, SnapshotFormatError, SnapshotsNotFoundError
from mlflow_weightviz.options import WeightvizWarning
from mlflow_weightviz.snapshots import Snapshot, group_layers, read_snapshots, step_from_name
from tests.helpers import training_series, write_canonical


def layers_of(path: Path, *, allow_pickle: bool = False, select: tuple[str, ...] = ()) -> dict[str, list[Snapshot]]:
    return group_layers(read_snapshots(path, allow_pickle=allow_pickle), select)


def steps_of(snaps: list[Snapshot]) -> list[int]:
    return [s.step for s in snaps]


@pytest.mark.parametrize(("name", "step"), [
    ("step_7.npy", 7), ("epoch-12.npy", 12), ("000123.npy", 123), ("w5_step10.npy", 10), ("weights.npy", None),
    ("step_3", 3),
])
def test_step_is_the_last_integer_of_the_file_name(name: str, step: int | None) -> None:
    assert step_from_name(name) == step


def test_canonical_per_step_files_keep_layer_names_and_values(tmp_path: Path) -> None:
    fc1, fc2 = training_series(3, (4, 6), seed=1), training_series(3, (2, 4), seed=2)
    write_canonical(tmp_path / "weights", {"fc1": fc1, "fc2": fc2}, [0, 10, 20])
    layers = layers_of(tmp_path / "weights")
    assert list(layers) == ["fc1", "fc2"]
    assert steps_of(layers["fc1"]) == [0, 10, 20]
    for i, snap in enumerate(layers["fc2"]):
        np.testing.assert_array_equal(snap.load(), fc2[i])


def test_chunk_files_with_a_steps_array_mix_with_per_step_files(tmp_path: Path) -> None:
    series = training_series(7, (3, 3))
    folder = tmp_path / "weights"
    write_canonical(folder, {"fc1": series[:2]}, [0, 1])
    np.savez(folder / "chunk_2-6.npz", fc1=np.stack(series[2:]), steps=np.array([2, 3, 4, 5, 6]))
    (fc1,) = layers_of(folder).values()
    assert steps_of(fc1) == list(range(7))
    for snap, expected in zip(fc1, series, strict=True):
        np.testing.assert_array_equal(snap.load(), expected)


def test_chunk_with_non_integer_steps_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "chunk.npz", fc1=np.zeros((2, 3, 3)), steps=np.array([0.5, 1.5]))
    with pytest.raises(SnapshotFormatError, match="'steps' array must hold integers; it holds float64"):
        read_snapshots(tmp_path / "chunk.npz")


def test_chunk_whose_layer_is_not_stacked_per_step_says_what_was_expected(tmp_path: Path) -> None:
    np.savez(tmp_path / "chunk.npz", fc1=np.zeros((3, 4, 4)), steps=np.array([0, 1]))
    with pytest.raises(SnapshotFormatError, match=r"shape \(2, \.\.\.\); it has shape \(3, 4, 4\)"):
        read_snapshots(tmp_path / "chunk.npz")


def test_per_step_npy_files_are_ordered_numerically_not_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    steps = [0, 1, 2, 3, 5, 8, 9, 10, 11, 12, 20, 100, 101, 1000]  # unpadded: "10" sorts before "2" as text
    for s in steps:
        np.save(folder / f"step_{s}.npy", np.full((2, 3), float(s)))
    (layer,) = layers_of(folder).items()
    assert layer[0] == "weights"  # loose files at the top are one layer named after the folder
    assert steps_of(layer[1]) == steps
    assert [float(s.load()[0, 0]) for s in layer[1]] == [float(s) for s in steps]


def test_mixed_step_name_styles_in_one_folder(tmp_path: Path) -> None:
    for name in ("step_7.npy", "epoch-12.npy", "000123.npy", "w5_step10.npy"):
        np.save(tmp_path / name, np.ones((2, 2)))
    (snaps,) = layers_of(tmp_path).values()
    assert steps_of(snaps) == [7, 10, 12, 123]


def test_per_step_npz_files_hold_several_layers(tmp_path: Path) -> None:
    for s in (3, 1, 2):
        np.savez(tmp_path / f"epoch{s}.npz", a=np.full((2, 2), s), b=np.full(5, -s))
    layers = layers_of(tmp_path)
    assert {k: steps_of(v) for k, v in layers.items()} == {"a": [1, 2, 3], "b": [1, 2, 3]}


def test_one_subfolder_per_layer(tmp_path: Path) -> None:
    root = tmp_path / "weights"
    for layer, shape in (("fc1", (4, 3)), ("fc2", (3, 2)), ("conv/kernel", (2, 1, 3, 3))):
        (root / layer).mkdir(parents=True)
        for s in (1, 2, 10):
            np.save(root / layer / f"step_{s}.npy", np.zeros(shape))
    layers = layers_of(root)
    assert sorted(layers) == ["conv/kernel", "fc1", "fc2"]
    assert all(steps_of(v) == [1, 2, 10] for v in layers.values())
    assert layers["conv/kernel"][0].load().shape == (2, 1, 3, 3)


def test_stacked_npy_is_a_series_of_steps(tmp_path: Path) -> None:
    stack = np.stack(training_series(6, (3, 5)))
    np.save(tmp_path / "fc1.npy", stack)
    (name, snaps), = layers_of(tmp_path / "fc1.npy").items()
    assert name == "fc1"
    assert steps_of(snaps) == list(range(6))
    np.testing.assert_array_equal(snaps[4].load(), stack[4])


def test_stacked_npz_uses_its_steps_array_or_counts_from_zero(tmp_path: Path) -> None:
    a, b = np.stack(training_series(4, (3, 3))), np.stack(training_series(4, (2, 6)))
    np.savez(tmp_path / "with.npz", a=a, b=b, steps=np.array([10, 20, 30, 40]))
    np.savez(tmp_path / "without.npz", a=a, b=b)
    assert {k: steps_of(v) for k, v in layers_of(tmp_path / "with.npz").items()} == {
        "a": [10, 20, 30, 40], "b": [10, 20, 30, 40]}
    without = layers_of(tmp_path / "without.npz")
    assert steps_of(without["b"]) == [0, 1, 2, 3]
    np.testing.assert_array_equal(without["b"][2].load(), b[2])


def test_compressed_npz_is_read_too(tmp_path: Path) -> None:
    stack = np.stack(training_series(3, (4, 4)))
    np.savez_compressed(tmp_path / "w.npz", w=stack, steps=np.array([5, 6, 7]))
    (snaps,) = layers_of(tmp_path / "w.npz").values()
    np.testing.assert_array_equal(snaps[1].load(), stack[1])


def test_pickle_is_refused_without_the_flag_and_read_with_it(tmp_path: Path) -> None:
    frames = [np.asarray(f, dtype=np.float32) for f in training_series(5, (3, 4))]
    path = tmp_path / "animation_data.obj"
    path.write_bytes(pickle.dumps(frames))
    with pytest.raises(PickleNotAllowedError, match=r"--allow-pickle.*") as info:
        read_snapshots(path)
    assert "arbitrary code" in str(info.value)
    (name, snaps), = layers_of(path, allow_pickle=True).items()
    assert name == "animation_data"
    assert steps_of(snaps) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(snaps[3].load(), frames[3])


def test_pickle_is_detected_by_content_under_any_name(tmp_path: Path) -> None:
    path = tmp_path / "snapshots.data"
    path.write_bytes(pickle.dumps([np.zeros((2, 2))], protocol=4))
    with pytest.raises(PickleNotAllowedError):
        read_snapshots(path)


def test_safetensors_written_by_the_real_package_incl_bf16(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file as save_torch

    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    save_numpy({"fc1.weight": w, "fc1.bias": np.array([1, -2, 3], np.int32)}, str(tmp_path / "step_5.safetensors"))
    bf = torch.linspace(-2, 2, 20, dtype=torch.float32).reshape(4, 5)
    save_torch({"emb": bf.to(torch.bfloat16)}, str(tmp_path / "step_6.safetensors"))
    layers = layers_of(tmp_path)
    np.testing.assert_array_equal(layers["fc1.weight"][0].load(), w)
    assert layers["fc1.bias"][0].load().tolist() == [1, -2, 3]
    emb = layers["emb"][0].load()
    assert emb.dtype == np.float32
    np.testing.assert_array_equal(emb, bf.to(torch.bfloat16).float().numpy())
    assert steps_of(layers["emb"]) == [6]


def test_torch_state_dict_and_legacy_format(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    state = {"fc.weight": torch.randn(3, 4), "fc.bias": torch.randn(3), "num_batches": torch.tensor(7)}
    torch.save(state, tmp_path / "step_1.pt")
    torch.save(state, tmp_path / "step_2.pt", _use_new_zipfile_serialization=False)  # torch < 1.6 format
    layers = layers_of(tmp_path)
    assert sorted(layers) == ["fc.bias", "fc.weight"]  # 0-d counters are not layers
    assert steps_of(layers["fc.weight"]) == [1, 2]
    for snap in layers["fc.weight"]:
        np.testing.assert_array_equal(snap.load(), state["fc.weight"].numpy())


def test_autolog_checkpoint_layout_takes_the_step_from_the_epoch_folder(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    root = tmp_path / "checkpoints"
    for epoch in (0, 1, 2, 10):
        (root / f"epoch_{epoch}").mkdir(parents=True)
        ckpt = {"epoch": epoch, "global_step": 4 * epoch,
                "state_dict": {"fc1.weight": torch.full((2, 3), float(epoch)), "fc1.bias": torch.zeros(2)},
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}]}
        torch.save(ckpt, root / f"epoch_{epoch}" / "checkpoint.pth")
        (root / f"epoch_{epoch}" / "checkpoint_metrics.json").write_text('{"val_loss": 1.0}')
    layers = layers_of(root)
    assert sorted(layers) == ["fc1.bias", "fc1.weight"]
    assert steps_of(layers["fc1.weight"]) == [0, 1, 2, 10]
    assert float(layers["fc1.weight"][3].load()[0, 0]) == 10.0


def test_layer_selection_by_name_and_glob(tmp_path: Path) -> None:
    write_canonical(tmp_path, {n: training_series(2, (2, 2)) for n in ("enc.fc1", "enc.fc2", "dec.fc1")}, [0, 1])
    snaps = read_snapshots(tmp_path)
    assert list(group_layers(snaps, ["dec.fc1"])) == ["dec.fc1"]
    assert list(group_layers(snaps, ["enc.*"])) == ["enc.fc1", "enc.fc2"]
    assert list(group_layers(snaps, ["*.fc1", "enc.fc2"])) == ["dec.fc1", "enc.fc1", "enc.fc2"]
    with pytest.raises(SnapshotsNotFoundError, match=r"no layer matches nope; the layers are: dec\.fc1"):
        group_layers(snaps, ["nope"])


def test_duplicate_steps_warn_and_the_later_file_wins(tmp_path: Path) -> None:
    np.save(tmp_path / "a_step_3.npy", np.zeros((2, 2)))
    np.save(tmp_path / "b_step_3.npy", np.ones((2, 2)))
    np.save(tmp_path / "b_step_4.npy", np.ones((2, 2)))
    with pytest.warns(WeightvizWarning, match="1 snapshot"):
        (snaps,) = layers_of(tmp_path).values()
    assert steps_of(snaps) == [3, 4]
    assert snaps[0].load()[0, 0] == 1.0


def test_files_are_memory_mapped_and_only_read_on_load(tmp_path: Path) -> None:
    np.save(tmp_path / "step_1.npy", np.arange(6.0).reshape(2, 3))
    np.savez(tmp_path / "step_2.npz", weights=np.arange(6.0).reshape(2, 3))
    snaps = read_snapshots(tmp_path)
    os.remove(tmp_path / "step_1.npy")  # nothing was kept open or read ahead
    with pytest.raises(SnapshotFormatError, match=r"cannot read step_1\.npy"):
        next(s for s in snaps if s.step == 1).load()
    loaded = next(s for s in snaps if s.step == 2).load()
    assert not loaded.flags.writeable


def test_unrelated_files_in_a_folder_are_skipped_but_a_named_file_must_be_a_snapshot(tmp_path: Path) -> None:
    np.save(tmp_path / "step_1.npy", np.zeros((2, 2)))
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / "checkpoint_metrics.json").write_text('{"loss": 1}')
    (tmp_path / ".hidden.npy").write_bytes(b"junk")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_snapshots(tmp_path)) == 1
    with pytest.raises(SnapshotFormatError, match=r"README\.md: not a snapshot format \(expected .npz"):
        read_snapshots(tmp_path / "README.md")


def test_nothing_there_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SnapshotsNotFoundError, match="no snapshot file or folder at"):
        read_snapshots(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SnapshotsNotFoundError, match=r"no weight snapshots found in .*empty \(expected"):
        read_snapshots(tmp_path / "empty")


# ------------------------------------------------------------- issue 14: bombs, layouts, odd files


def npy_header_only(path: Path, shape: tuple[int, ...], dtype: str = "<f4") -> None:
    """A .npy whose header declares ``shape`` and that holds no data (a zero-size shape needs none)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    path.write_bytes(buf.getvalue())


def refused_quickly(path: Path, match: str, **kwargs: bool) -> None:
    import time
    import tracemalloc

    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(SnapshotFormatError, match=match):
            read_snapshots(path, **kwargs)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5, f"{elapsed:.2f} s to refuse {path.name}"
    assert peak < 5_000_000, f"{peak} bytes allocated to refuse {path.name}"


def test_a_header_declaring_millions_of_steps_is_refused_before_any_per_step_work(tmp_path: Path) -> None:
    npy_header_only(tmp_path / "many.npy", (3_500_000, 0, 2))
    assert (tmp_path / "many.npy").stat().st_size == 128
    refused_quickly(tmp_path / "many.npy", r"declares 3,500,000 snapshots .* more than the 1,000,000")


def test_a_stack_of_empty_steps_is_refused_at_once(tmp_path: Path) -> None:
    npy_header_only(tmp_path / "hollow.npy", (600_000, 2, 0))  # under the cap, but nothing to draw
    refused_quickly(tmp_path / "hollow.npy", r"layer 'hollow' is a stack of 600000 empty snapshots \(shape "
                                              r"\(600000, 2, 0\)\)")
    np.save(tmp_path / "small.npy", np.zeros((4, 0, 3), np.float32))
    with pytest.raises(SnapshotFormatError, match="stack of 4 empty snapshots"):
        read_snapshots(tmp_path / "small.npy")


def test_header_bombs_in_other_formats_are_refused_too(tmp_path: Path) -> None:
    import io
    import zipfile

    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": (2_200_000, 0, 4)})
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        with zipfile.ZipFile(tmp_path / "bomb.npz", "w", compression) as zf:
            zf.writestr("enc.npy", member.getvalue())
        refused_quickly(tmp_path / "bomb.npz", "declares 2,200,000 snapshots")
    header = json.dumps({"dec": {"dtype": "F32", "shape": [1_700_000, 0, 5], "data_offsets": [0, 0]}}).encode()
    (tmp_path / "bomb.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    refused_quickly(tmp_path / "bomb.safetensors", "declares 1,700,000 snapshots")
    (tmp_path / "bomb.pkl").write_bytes(pickle.dumps(np.zeros((1_300_000, 0, 1))))
    refused_quickly(tmp_path / "bomb.pkl", "declares 1,300,000 snapshots", allow_pickle=True)
    # A chunk whose steps array is real data, but declares steps × layers beyond the cap.
    steps = np.arange(400_000, dtype=np.int32)
    np.savez(tmp_path / "chunk.npz", steps=steps, a=np.zeros((400_000, 1), np.int8), b=np.zeros((400_000, 1), np.int8),
             c=np.zeros((400_000, 1), np.int8))
    refused_quickly(tmp_path / "chunk.npz", r"declares 1,200,000 snapshots \(400000 steps\)")


def test_a_file_with_absurdly_many_dimensions_is_one_clear_error(tmp_path: Path) -> None:
    npy_header_only(tmp_path / "deep.npy", (1,) * 70 + (0,))
    with pytest.raises(SnapshotFormatError, match="deep.npy"):
        read_snapshots(tmp_path / "deep.npy")


def test_only_regular_files_are_opened(tmp_path: Path) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    np.save(folder / "step_2.npy", np.ones((2, 3)))
    os.mkfifo(folder / "step_5")  # named like a snapshot, no extension: opening it would block for ever
    (folder / "step_7.npy").symlink_to(folder / "gone.npy")  # dangling
    (folder / "loop_a.npz").symlink_to(folder / "loop_b.npz")
    (folder / "loop_b.npz").symlink_to(folder / "loop_a.npz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        snaps = read_snapshots(folder)
    assert [s.step for s in snaps] == [2]
    texts = sorted(str(w.message) for w in caught if issubclass(w.category, WeightvizWarning))
    assert texts == ["skipped loop_a.npz: a symbolic link loop", "skipped loop_b.npz: a symbolic link loop",
                     "skipped step_5: a FIFO (named pipe), not a regular file",
                     f"skipped step_7.npy: a broken symbolic link (to {folder / 'gone.npy'})"]
    for name, fragment in [("step_5", "a FIFO (named pipe)"), ("step_7.npy", "a broken symbolic link"),
                           ("loop_a.npz", "a symbolic link loop")]:
        with pytest.raises(SnapshotFormatError, match=rf"{name}: {re.escape(fragment)}"):
            read_snapshots(folder / name)


# Every layout gives the same pixels as the same values in a C-order .npy: pooled in bands
# (tiny bands here, so every path runs in many pieces), blocks reduced in the same order.


def write_layouts(folder: Path, a: np.ndarray) -> dict[str, Path]:
    import torch

    folder.mkdir()
    paths = {"c.npy": a, "fortran.npy": np.asfortranarray(a)}
    out = {}
    for name, arr in paths.items():
        np.save(folder / name, arr)
        out[name] = folder / name
    np.savez_compressed(folder / "deflated.npz", w=a)
    np.savez_compressed(folder / "deflated_f.npz", w=np.asfortranarray(a))
    np.savez(folder / "stored_f.npz", w=np.asfortranarray(a))
    bf16 = (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    (folder / "bf16.safetensors").write_bytes(_bf16_safetensors(bf16))
    torch.save({"w": torch.from_numpy(a.astype(np.float32))}, folder / "f32.pt")
    reverse = tuple(range(a.ndim))[::-1]  # a tensor saved with Fortran-order strides
    torch.save({"w": torch.from_numpy(np.ascontiguousarray(a.T)).permute(reverse)}, folder / "strided.pt")
    torch.save({"w": torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)}, folder / "bf16.pt")
    for name in ("deflated.npz", "deflated_f.npz", "stored_f.npz", "bf16.safetensors", "f32.pt", "strided.pt",
                 "bf16.pt"):
        out[name] = folder / name
    return out


def _bf16_safetensors(bits: np.ndarray) -> bytes:
    header = json.dumps({"w": {"dtype": "BF16", "shape": list(bits.shape), "data_offsets": [0, bits.nbytes]}})
    raw = header.encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + bits.astype("<u2").tobytes()


@pytest.mark.parametrize("shape", [(61, 47), (9, 23, 14), (3, 5, 4, 6)])
def test_every_layout_pools_exactly_like_c_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 shape: tuple[int, ...]) -> None:
    from mlflow_weightviz import grid, snapshots
    from mlflow_weightviz.grid import finite_range, to_grid
    from mlflow_weightviz.options import Pool

    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(len(shape))
    a = rng.normal(size=shape).astype(np.float32)
    a[rng.random(shape) < 0.05] = np.nan
    monkeypatch.setattr(snapshots, "_LAZY_BYTES", 0)  # every convertible array becomes a LazyArray
    monkeypatch.setattr(grid, "_BAND_BYTES", 512)  # bands and pieces of a few values
    bf16_values = ((a.view(np.uint32) >> 16).astype(np.uint32) << 16).view(np.float32)
    rounded_bf16 = torch.from_numpy(a).to(torch.bfloat16).float().numpy()  # torch rounds to nearest
    for name, path in write_layouts(tmp_path / "files", a).items():
        snaps = read_snapshots(path)
        expected = {"bf16.safetensors": bf16_values, "bf16.pt": rounded_bf16}.get(name, a)
        lazy = name.endswith((".safetensors", ".pt")) or name.startswith("deflated")
        for snap in snaps:
            arr = snap.open()
            assert isinstance(arr, snapshots.LazyArray) == lazy, name
            frame = expected[snap.step] if len(snaps) > 1 else expected
            np.testing.assert_array_equal(snap.load(), frame, err_msg=name)
            assert finite_range(arr) == (np.nanmin(frame), np.nanmax(frame)), name
            for pool in Pool:
                got, _ = to_grid(arr, max_rows=4, max_cols=5, pool=pool)
                monkeypatch.setattr(grid, "_BAND_BYTES", 1 << 30)
                want, _ = to_grid(np.ascontiguousarray(frame), max_rows=4, max_cols=5, pool=pool)
                monkeypatch.setattr(grid, "_BAND_BYTES", 512)
                np.testing.assert_array_equal(got, want, err_msg=f"{name} {pool}")


def test_a_stack_in_a_deflated_member_is_streamed_forward_step_after_step(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow_weightviz import snapshots

    monkeypatch.setattr(snapshots, "_LAZY_BYTES", 0)
    stack = np.random.default_rng(3).normal(size=(6, 7, 9))
    np.savez_compressed(tmp_path / "chunk.npz", steps=np.arange(6) * 10, fc=stack)
    (fc,) = group_layers(read_snapshots(tmp_path / "chunk.npz")).values()
    assert [s.step for s in fc] == [0, 10, 20, 30, 40, 50]
    for i, snap in enumerate(fc):
        np.testing.assert_array_equal(snap.load(), stack[i])
    np.testing.assert_array_equal(fc[1].load(), stack[1])  # going back re-inflates from the start


def test_a_corrupt_deflated_stream_read_in_bands_is_one_clear_error(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow_weightviz import snapshots
    from mlflow_weightviz.grid import to_grid

    monkeypatch.setattr(snapshots, "_LAZY_BYTES", 0)
    np.savez_compressed(tmp_path / "bad.npz", w=np.random.default_rng(0).normal(size=(80, 90)))
    data = bytearray((tmp_path / "bad.npz").read_bytes())
    data[3000:3100] = b"\x00" * 100
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    (snap,) = read_snapshots(tmp_path / "bad.npz")
    with pytest.raises(SnapshotFormatError, match=r"cannot read bad.npz\[w\]"):
        to_grid(snap.open(), max_rows=8, max_cols=8)


def test_a_digit_in_a_folder_name_is_not_a_step_for_a_stacked_array(tmp_path: Path) -> None:
    (tmp_path / "w" / "fc1").mkdir(parents=True)
    np.save(tmp_path / "w" / "fc1" / "stack.npy", np.zeros((5, 3, 4), np.float32))
    layers = group_layers(read_snapshots(tmp_path / "w"))
    assert [s.step for s in layers["fc1"]] == [0, 1, 2, 3, 4]
    assert layers["fc1"][0].load().shape == (3, 4)


def test_a_step_file_named_on_its_own_is_one_step_not_a_stack(tmp_path: Path) -> None:
    path = tmp_path / "step_10.npz"
    np.savez(path, conv1=np.zeros((8, 3, 3, 3)), conv2=np.zeros((8, 8, 3, 3)))
    layers = group_layers(read_snapshots(path))
    assert {name: [s.step for s in snaps] for name, snaps in layers.items()} == {"conv1": [10], "conv2": [10]}


def test_a_stacked_npz_named_on_its_own_is_a_stack_even_with_digits_in_its_name(tmp_path: Path) -> None:
    path = tmp_path / "data_8x12_300_0.npz"
    np.savez(path, weights=np.zeros((4, 8, 12), np.float32))
    layers = group_layers(read_snapshots(path))
    assert [s.step for s in layers["weights"]] == [0, 1, 2, 3]
