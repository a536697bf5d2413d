"""The one place that wires source → snapshots → frames → encoder → sink.

:func:`render_run` and :func:`render_file` are the public entry points; both end in
:func:`render_layers`, which turns grouped snapshots into finished GIFs in a staging
folder. Sinks then publish them: renamed into place locally, or logged to the run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from mlflow_weightviz import __version__, _tracking, outputs
from mlflow_weightviz.automation import claims
from mlflow_weightviz.encoders import GifEncoder
from mlflow_weightviz.errors import ClaimLostError, OutputError, UsageError
from mlflow_weightviz.frames import HeatmapRenderer
from mlflow_weightviz.grid import PreparedLayer, finite_range, prepare_layer, sample_indices
from mlflow_weightviz.options import Format, RenderOptions, View
from mlflow_weightviz.sinks import LocalSink, RunSink, Sink, unique_names
from mlflow_weightviz.snapshots import Snapshot, group_layers, read_snapshots
from mlflow_weightviz.sources import LocalSource, RunSource, SnapshotSource
from mlflow_weightviz.tags import TAG_FINGERPRINT, TAG_PREFIX, Status, fingerprint

__all__ = ["LayerResult", "LayerSummary", "RenderResult", "inspect_file", "inspect_run", "render_file",
           "render_layers", "render_run"]

ProgressCallback = Callable[[int, int], None]

#: The ``--caption-metric`` line of a frame, by step.
Caption = Callable[[int], str]


@dataclass(frozen=True)
class LayerResult:
    """What was rendered for one layer."""

    layer: str
    frames: int
    steps: tuple[int, ...]
    shape: tuple[int, ...]
    grid: tuple[int, int]
    file_name: str
    artifact_path: str | None = None
    local_path: Path | None = None
    files: tuple[str, ...] = ()  # every file written for the layer, one per format; file_name is the first


@dataclass(frozen=True)
class RenderResult:
    """The outcome of a render: ``rendered``, or ``up_to_date`` when nothing had changed.

    ``claimed`` means another renderer holds the run's claim (see ``automation/claims.py``) and
    nothing was done here; ``claimed_by`` says who.
    """

    status: Status
    layers: tuple[LayerResult, ...] = ()
    run_id: str | None = None
    fingerprint: str | None = None
    artifact_paths: tuple[str, ...] = field(default=())
    claimed_by: str | None = None


@dataclass(frozen=True)
class LayerSummary:
    """One row of ``inspect``: a layer's shape, dtype, snapshot count, steps and value range."""

    layer: str
    shape: tuple[int, ...]
    dtype: str
    snapshots: int
    first_step: int
    last_step: int
    min: float
    max: float


# ---------------------------------------------------------------------------- public


def render_run(run_id: str, options: RenderOptions | None = None, *, source: str = "weights",
               artifact_path: str = "weightviz", tracking_uri: str | None = None, log: bool = True,
               force: bool = False, out: str | os.PathLike[str] | None = None,
               output_dir: str | os.PathLike[str] | None = None,
               progress: ProgressCallback | None = None) -> RenderResult:
    """Render a run's weight snapshots to one GIF per layer and log them back to the run.

    Args:
        run_id: The MLflow run.
        options: How to select, draw and encode; defaults to ``RenderOptions()``.
        source: Artifact path of the snapshots in the run (a file or a folder).
        artifact_path: Where the GIFs are logged in the run.
        tracking_uri: Defaults to ``MLFLOW_TRACKING_URI`` or MLflow's own default.
        log: Log the GIFs and tags to the run; ``False`` only writes local copies.
        force: Render even if the run's tags say it is up to date.
        out: Local copy of the GIF (only when one layer is rendered).
        output_dir: Folder for local copies, one ``<layer>.gif`` per layer.
        progress: Called as ``progress(i, n)`` after each frame.

    Returns:
        What was rendered, or ``status="up_to_date"`` when the run already has GIFs for
        these snapshots and options, or ``status="claimed"`` when another process is
        rendering the run right now (nothing is done here).

    Raises:
        RunNotFoundError: The run does not exist.
        TrackingServerError: The tracking server cannot be reached.
        SnapshotError: No snapshots at ``source``, or they cannot be rendered.
        OutputError: The results cannot be written or logged.
    """
    options = options or RenderOptions()
    _check_outputs(log=log, out=out, output_dir=output_dir)
    if options.step_images is not None and not log:
        msg = "--step-images logs images to the run, so it cannot be used with --no-log"
        raise UsageError(msg)
    client = _tracking.client(tracking_uri)
    run = _tracking.get_run(client, run_id)
    src = RunSource(client, run.info.run_id, source)
    digest = fingerprint(src, options, source=source, artifact_path=artifact_path)
    if log and not force and run.data.tags.get(TAG_FINGERPRINT) == digest:
        if out is None and output_dir is None:
            return RenderResult(Status.UP_TO_DATE, run_id=run_id, fingerprint=digest)
        # The run has its GIFs; the local copies asked for are drawn here, nothing is logged.
        local = _render_source(src, options, out=out, output_dir=output_dir, progress=progress)
        return RenderResult(Status.UP_TO_DATE, local.layers, run_id, digest)
    # One renderer per run at a time (see automation/claims.py); local-only renders need no claim.
    with claims.claim_run(client, run_id, enabled=log) as claim:
        if log and not force and claim.tags.get(TAG_FINGERPRINT) == digest:
            return RenderResult(Status.UP_TO_DATE, run_id=run_id, fingerprint=digest)  # done while we claimed
        if not claim.held:
            return RenderResult(Status.CLAIMED, run_id=run_id, fingerprint=digest,
                                claimed_by=claim.holder.describe() if claim.holder else None)
        sink = RunSink(client, run_id, artifact_path) if log else None
        caption = src.metric_history(options.caption_metric).caption if options.caption_metric else None
        try:
            result = _render_source(src, options, out=out, output_dir=output_dir, progress=progress, run_sink=sink,
                                    publish=claim.guard(sink) if sink is not None else None,
                                    tags_base={"source": source, "fingerprint": digest}, caption=caption)
        except ClaimLostError as lost:
            return RenderResult(Status.CLAIMED, run_id=run_id, fingerprint=digest, claimed_by=str(lost))
    return RenderResult(Status.RENDERED, result.layers, run_id, digest, result.artifact_paths)


def render_file(path: str | os.PathLike[str], options: RenderOptions | None = None, *,
                out: str | os.PathLike[str] | None = None, output_dir: str | os.PathLike[str] | None = None,
                progress: ProgressCallback | None = None) -> RenderResult:
    """Render snapshots from a local file or folder to GIFs; needs no MLflow.

    With neither ``out`` nor ``output_dir``, GIFs go to the current folder as ``<layer>.gif``.

    Raises:
        SnapshotError: No snapshots at ``path``, or they cannot be rendered.
        OutputError: The GIFs cannot be written.
    """
    options = options or RenderOptions()
    if options.caption_metric is not None or options.step_images is not None:
        msg = ("--caption-metric and --step-images read from and log to an MLflow run, and render-file has none; "
               "log the snapshots to a run and use render RUN_ID")
        raise UsageError(msg)
    if out is None and output_dir is None:
        output_dir = Path.cwd()
    _check_outputs(log=False, out=out, output_dir=output_dir)
    return _render_source(LocalSource(Path(path)), options, out=out, output_dir=output_dir, progress=progress)


def inspect_run(run_id: str, *, source: str = "weights", tracking_uri: str | None = None,
                allow_pickle: bool = False, layers: Sequence[str] = ()) -> list[LayerSummary]:
    """Summarise a run's snapshots per layer without rendering anything."""
    client = _tracking.client(tracking_uri)
    run = _tracking.get_run(client, run_id)
    with tempfile.TemporaryDirectory(prefix="weightviz-") as tmp:
        src = RunSource(client, run.info.run_id, source)
        return _summaries(read_snapshots(src.fetch(Path(tmp)), allow_pickle=allow_pickle, root_name=src.name), layers)


def inspect_file(path: str | os.PathLike[str], *, allow_pickle: bool = False,
                 layers: Sequence[str] = ()) -> list[LayerSummary]:
    """Summarise the snapshots in a local file or folder per layer."""
    return _summaries(read_snapshots(path, allow_pickle=allow_pickle), layers)


# ---------------------------------------------------------------------------- wiring


def _check_outputs(*, log: bool, out: object, output_dir: object) -> None:
    if out is not None and output_dir is not None:
        msg = "give either --out (one layer) or --output-dir, not both"
        raise UsageError(msg)
    if not log and out is None and output_dir is None:
        msg = "--no-log needs somewhere to write: give --out or --output-dir"
        raise UsageError(msg)


def _render_source(src: SnapshotSource, options: RenderOptions, *, out: str | os.PathLike[str] | None,
                   output_dir: str | os.PathLike[str] | None,
                   progress: ProgressCallback | None, run_sink: RunSink | None = None,
                   publish: Sink | None = None, tags_base: Mapping[str, str] | None = None,
                   caption: Callable[[int], str] | None = None) -> RenderResult:
    with tempfile.TemporaryDirectory(prefix="weightviz-") as tmp:
        workdir = Path(tmp)
        local = src.fetch(workdir)
        layers = group_layers(read_snapshots(local, allow_pickle=options.allow_pickle, root_name=src.name),
                              options.layers)
        if out is not None and len(layers) != 1 and not options.grid:
            msg = (f"--out writes one GIF but {len(layers)} layers were found ({', '.join(layers)}); "
                   "pick one with --layer or use --output-dir")
            raise UsageError(msg)
        staging = workdir / "out"
        staging.mkdir()
        results = _render_outputs(layers, options, staging, workdir=workdir, progress=progress, caption=caption)
        gifs = staging
        if Format.GIF not in options.formats:  # drawn only as the source of the MP4s or step images
            gifs = workdir / "gifs"
            gifs.mkdir()
            for r in results:
                drawn = staging / f"{Path(r.file_name).stem}.gif"
                if drawn.exists():
                    drawn.rename(gifs / drawn.name)
        staged = {r.layer: staging / r.file_name for r in results}
        outputs.warn_if_too_big([staging / f for r in results for f in r.files])
        local_paths = LocalSink(Path(out) if out is not None else None,
                                Path(output_dir) if output_dir is not None else None).deliver(staged)
        outputs.copy_extras({f: staging / f for r in results for f in r.files if f != r.file_name},
                            out=Path(out) if out is not None else None,
                            output_dir=Path(output_dir) if output_dir is not None else None)
        artifact_paths: list[str] = []
        if run_sink is not None:
            tags = {TAG_PREFIX + k: v for k, v in (tags_base or {}).items()}
            tags.update({
                TAG_PREFIX + "layers": json.dumps([r.layer for r in results]),
                TAG_PREFIX + "frames": str(sum(r.frames for r in results)),
                TAG_PREFIX + "artifact_path": run_sink.artifact_path,
                TAG_PREFIX + "version": __version__,
                TAG_PREFIX + "status": Status.RENDERED.value,
            })
            # Step images go after the claim check and the GIFs, before the final tags.
            step_images = (functools.partial(_log_step_images, run_sink, results, gifs, options)
                           if options.step_images is not None else None)
            # Everything in staging goes to the run, one file per format of each layer.
            published = (publish or run_sink).deliver({p.name: p for p in staging.iterdir() if p.is_file()}, tags,
                                                      then=step_images)
            artifact_paths = sorted(str(a) for a in published.values())
        final = tuple(
            LayerResult(r.layer, r.frames, r.steps, r.shape, r.grid, r.file_name,
                        artifact_path=f"{run_sink.artifact_path}/{r.file_name}" if run_sink else None,
                        local_path=local_paths.get(r.layer), files=r.files)
            for r in results)
        return RenderResult(Status.RENDERED, final, artifact_paths=tuple(artifact_paths))


def render_layers(layers: Mapping[str, Sequence[Snapshot]], options: RenderOptions, staging: Path, *,
                  workdir: Path | None = None, progress: ProgressCallback | None = None,
                  caption: Caption | None = None) -> list[LayerResult]:
    """Render each layer's snapshots to ``staging/<safe layer name>.gif``.

    Each layer is prepared (loaded, reshaped, pooled, scaled) into a stack on disk, then
    drawn frame by frame on one reused figure and streamed into the GIF encoder.
    """
    _check_cmap(options.cmap)
    names = unique_names(layers)
    total = sum(len(sample_indices(len(s), options.max_frames)) for s in layers.values())
    if options.workers > 1 and total > options.workers:
        return _render_layers_parallel(layers, options, staging, names, total, workdir=workdir, progress=progress,
                                       caption=caption)
    done = 0
    results = []
    for layer, snaps in layers.items():
        prepared = prepare_layer(layer, snaps, options, workdir or staging)
        renderer = _renderer_for(prepared, options, caption)
        target = staging / f"{names[layer]}.gif"
        stack = prepared.stack()
        count = len(prepared.steps)
        try:
            with target.open("wb") as fh, GifEncoder(fh, frame_ms=options.frame_ms, hold_last_ms=options.hold_last_ms,
                                                      loop=options.loop,
                                                      palette_colors=renderer.palette_colors()) as gif:
                for i, step in enumerate(prepared.steps):
                    frame = renderer.render(np.asarray(stack[i]), _title(prepared, options, i, step, caption),
                                            prepared.limits(i), copy=False)
                    gif.add_frame(frame, renderer.changed_boxes)
                    done += 1
                    if progress is not None:
                        progress(done, total)
        except OSError as exc:
            target.unlink(missing_ok=True)
            msg = f"cannot write {target.name}: {exc.strerror or exc}"
            raise OutputError(msg) from exc
        finally:
            renderer.close()
            del stack
            prepared.stack_path.unlink(missing_ok=True)
        results.append(LayerResult(layer, count, prepared.steps, prepared.info.shape, prepared.info.grid,
                                   target.name))
    return results


def _render_layers_parallel(layers: Mapping[str, Sequence[Snapshot]], options: RenderOptions, staging: Path,
                            names: Mapping[str, str], total: int, *, workdir: Path | None,
                            progress: ProgressCallback | None, caption: Caption | None) -> list[LayerResult]:
    """:func:`render_layers` with frames drawn and encoded by ``options.workers`` processes.

    Whole layers go to workers while there are at least as many layers left as workers
    (each worker writes its layers' GIFs itself); the remaining layers are split into
    chunks of frames shared by all workers. Layers are prepared just ahead of the
    workers, so preparing overlaps drawing; the GIFs are byte for byte those of one process.
    """
    from mlflow_weightviz.parallel import FramePool, GifSpec, LayerJob

    prepared_by_key: dict[str, PreparedLayer] = {}
    items = list(layers.items())
    whole = len(items) - len(items) % options.workers if len(items) >= options.workers else 0
    writing: set[Path] = set()

    def jobs(part: Sequence[tuple[str, Sequence[Snapshot]]]) -> Iterator[LayerJob]:
        for layer, snaps in part:
            prepared = prepare_layer(layer, snaps, options, workdir or staging)
            prepared_by_key[layer] = prepared
            yield LayerJob(layer, str(prepared.stack_path), _renderer_kwargs(prepared, options, caption),
                           tuple(_title(prepared, options, i, step, caption) for i, step in enumerate(prepared.steps)),
                           tuple(prepared.limits(i) for i in range(len(prepared.steps))))

    def whole_layers() -> Iterator[tuple[LayerJob, GifSpec]]:
        for job in jobs(items[:whole]):
            path = staging / f"{names[job.key]}.gif"
            writing.add(path)
            yield job, GifSpec(str(path), options.frame_ms, options.hold_last_ms, options.loop)

    results: list[LayerResult] = []
    done = 0
    fh: IO[bytes] | None = None
    gif: GifEncoder | None = None
    target: Path | None = None
    try:
        with FramePool(options.workers) as pool:
            for job in pool.write_layers(whole_layers()):
                target = staging / f"{names[job.key]}.gif"
                writing.discard(target)
                done += job.frames
                if progress is not None:
                    progress(done, total)
                prepared = prepared_by_key.pop(job.key)
                prepared.stack_path.unlink(missing_ok=True)
                results.append(LayerResult(job.key, job.frames, prepared.steps, prepared.info.shape,
                                           prepared.info.grid, target.name))
            for frame in pool.frames(jobs(items[whole:])):
                if frame.index == 0:
                    target = staging / f"{names[frame.job.key]}.gif"
                    fh = target.open("wb")
                    gif = GifEncoder(fh, frame_ms=options.frame_ms, hold_last_ms=options.hold_last_ms,
                                     loop=options.loop)
                    assert frame.palette is not None
                    gif.start(frame.palette, frame.size)
                assert gif is not None
                assert fh is not None
                assert target is not None
                gif.add_block(frame.block)
                done += 1
                if progress is not None:
                    progress(done, total)
                if frame.index == frame.job.frames - 1:
                    gif.finish()
                    fh.close()
                    fh, gif = None, None
                    prepared = prepared_by_key.pop(frame.job.key)
                    prepared.stack_path.unlink(missing_ok=True)
                    results.append(LayerResult(frame.job.key, frame.job.frames, prepared.steps,
                                               prepared.info.shape, prepared.info.grid, target.name))
    except OSError as exc:
        name = target.name if target is not None else "the GIF"
        msg = f"cannot write {name}: {exc.strerror or exc}"
        raise OutputError(msg) from exc
    finally:
        if fh is not None:  # a GIF left half-written by an error
            fh.close()
            if target is not None:
                target.unlink(missing_ok=True)
        for prepared in prepared_by_key.values():
            prepared.stack_path.unlink(missing_ok=True)
        for path in writing:  # GIFs whose worker did not finish
            path.unlink(missing_ok=True)
    return results


# ------------------------------------------------- other formats, grid, step images


def _render_outputs(layers: Mapping[str, Sequence[Snapshot]], options: RenderOptions, staging: Path, *,
                    workdir: Path, progress: ProgressCallback | None, caption: Caption | None) -> list[LayerResult]:
    """Every requested file into ``staging``: the GIFs (or the grid GIF), then the other formats.

    ``file_name`` of each result is its first format's file and ``files`` lists all of them.
    """
    _check_cmap(options.cmap)
    if Format.MP4 in options.formats:
        from mlflow_weightviz.video import check_available

        check_available()  # before any drawing: a missing imageio should not waste the render
    if options.grid:
        results = [_render_grid(layers, options, staging, workdir=workdir, progress=progress, caption=caption)]
    elif outputs.gif_needed(options):
        results = render_layers(layers, options, staging, workdir=workdir, progress=progress, caption=caption)
    else:
        results = []
    by_layer = {r.layer: r for r in results}
    if Format.HTML in options.formats:
        names = unique_names(layers)
        for layer, snaps in layers.items():
            prepared = prepare_layer(layer, snaps, options, workdir)
            try:
                outputs.write_player(prepared, options, staging / f"{names[layer]}.html",
                                     title=functools.partial(_title, caption=caption),
                                     renderer_kwargs=_renderer_kwargs(prepared, options, caption))
            finally:
                prepared.stack_path.unlink(missing_ok=True)
            by_layer.setdefault(layer, LayerResult(layer, len(prepared.steps), prepared.steps, prepared.info.shape,
                                                   prepared.info.grid, f"{names[layer]}.html"))
    if Format.MP4 in options.formats:
        outputs.write_videos([staging / f"{Path(r.file_name).stem}.gif" for r in by_layer.values()], options)
    final = []
    for r in by_layer.values():
        files = tuple(f"{Path(r.file_name).stem}.{f.value}" for f in options.formats)
        final.append(dataclasses.replace(r, file_name=files[0], files=files))
    return final


def _render_grid(layers: Mapping[str, Sequence[Snapshot]], options: RenderOptions, staging: Path, *,
                 workdir: Path, progress: ProgressCallback | None, caption: Caption | None) -> LayerResult:
    from mlflow_weightviz.montage import render_grid

    target = staging / "grid.gif"
    grid = render_grid(layers, options, target, workdir=workdir,
                       make_renderer=lambda prepared: _renderer_for(prepared, options, caption), caption=caption,
                       progress=progress)
    return LayerResult("grid", len(grid.steps), grid.steps, (len(grid.layers),), grid.panels, target.name)


def _log_step_images(sink: RunSink, results: Sequence[LayerResult], gifs: Path, options: RenderOptions) -> None:
    from mlflow_weightviz.sinks import image_key

    assert options.step_images is not None
    for r in results:
        stem = Path(r.file_name).stem
        sink.log_step_images(image_key(stem), outputs.step_frames(gifs / f"{stem}.gif", r.steps,
                                                                  frame_ms=options.frame_ms,
                                                                  every=options.step_images))


def _check_cmap(name: str | None) -> None:
    if name is None:
        return
    import matplotlib as mpl

    if name not in mpl.colormaps:
        msg = f"unknown colormap {name!r}; try viridis, magma, YlGn, RdBu_r or any matplotlib colormap name"
        raise UsageError(msg)


def _renderer_for(prepared: PreparedLayer, options: RenderOptions, caption: Caption | None = None) -> HeatmapRenderer:
    kwargs = _renderer_kwargs(prepared, options, caption)
    return HeatmapRenderer(kwargs.pop("grid"), **kwargs)


def _renderer_kwargs(prepared: PreparedLayer, options: RenderOptions, caption: Caption | None = None) -> dict[str, Any]:
    """The renderer's arguments (``grid`` included) as plain values, so worker processes can build it."""
    rows, cols = prepared.info.grid
    br, bc = prepared.info.block
    cmap = options.cmap or ("RdBu_r" if prepared.diverging else "YlGn")
    last = len(prepared.steps)
    sample = _title(prepared, options, last - 1, max(prepared.steps, key=lambda s: len(str(s))))
    if caption is not None:  # size the figure for this layer's longest caption
        sample = sample.rsplit("\n", 1)[0] + "\n" + max((caption(s) for s in prepared.steps), key=len)
    return {"grid": prepared.info.grid, "cmap": cmap, "vmin": prepared.vmin, "vmax": prepared.vmax,
            "fmt": prepared.fmt, "annotate": options.annotate,
            "row_labels": [f"{options.row_label}{i * br}" for i in range(rows)],
            "col_labels": [f"{options.col_label}{j * bc}" for j in range(cols)],
            "title_sample": sample, "dpi": options.dpi}


def _title(prepared: PreparedLayer, options: RenderOptions, index: int, step: int,
           caption: Caption | None = None) -> str:
    head = f"{prepared.name}  ·  step {step}  ·  frame {index + 1}/{len(prepared.steps)}"
    notes = [prepared.info.note()]
    if options.view is View.DELTA_INIT:
        notes.append(f"change since step {prepared.steps[0]}")
    elif options.view is View.DELTA_STEP:
        notes.append("change since the previous frame")
    note = "; ".join(n for n in notes if n)
    lines = [head, note] if note else [head]
    if caption is not None:
        lines.append(caption(step))
    return "\n".join(lines)


def _summaries(snapshots: list[Snapshot], layers: Sequence[str]) -> list[LayerSummary]:
    out = []
    for name, snaps in group_layers(snapshots, layers).items():
        first = snaps[0].load()
        ranges = [r for r in (finite_range(s.load()) for s in snaps) if r is not None]
        lo = min((r[0] for r in ranges), default=float("nan"))
        hi = max((r[1] for r in ranges), default=float("nan"))
        out.append(LayerSummary(name, tuple(first.shape), str(first.dtype), len(snaps), snaps[0].step,
                                snaps[-1].step, lo, hi))
    return out
