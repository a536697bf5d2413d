"""The one place that wires source → snapshots → frames → encoder → sink.

:func:`render_run` and :func:`render_file` are the public entry points; both end in
:func:`render_layers`, which turns grouped snapshots into finished GIFs in a staging
folder. Sinks then publish them: renamed into place locally, or logged to the run.
:func:`compare_runs` draws one layer of several runs side by side through the same
frame loop, writers and sinks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import os
import tempfile
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlflow_weightviz import __version__, _tracking, outputs, stats
from mlflow_weightviz.automation import claims
from mlflow_weightviz.encoders import (
    Animation,
    Frame,
    FrameEncoder,
    FrameWriter,
    GifWriter,
    StepImageWriter,
    build_palette,
    encode_next,
    saving,
)
from mlflow_weightviz.errors import ClaimLostError, SnapshotsNotFoundError, UsageError
from mlflow_weightviz.frames import NAME_CHARS, shorten
from mlflow_weightviz.grid import PreparedLayer, finite_range, prepare_layer, sample_indices
from mlflow_weightviz.options import Format, RenderOptions, View
from mlflow_weightviz.parallel import build_renderer
from mlflow_weightviz.sinks import LocalSink, RunSink, Sink, safe_name, unique_names
from mlflow_weightviz.snapshots import Reduced, Snapshot, group_layers, read_snapshots
from mlflow_weightviz.sources import LocalSource, RunSource, SnapshotSource
from mlflow_weightviz.tags import LAYERS_FILE, TAG_FINGERPRINT, TAG_PREFIX, Status, fingerprint, layers_tag

if TYPE_CHECKING:
    from mlflow_weightviz.frames import HeatmapRenderer
    from mlflow_weightviz.outputs.metrics import MetricsBatch

__all__ = ["COMPARE_ARTIFACT_PATH", "CompareResult", "LayerResult", "LayerSummary", "RenderResult", "compare_runs",
           "draw_layer", "inspect_file", "inspect_run", "render_file", "render_layers", "render_run", "write_frames"]

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
    extras: tuple[str, ...] = ()  # the render's own files besides the layers': overview.png, grid-legend.json...


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


@dataclass(frozen=True)
class CompareResult:
    """What :func:`compare_runs` made: one layer of several runs, side by side, one frame per step.

    ``files`` are the file names written (one per format); ``local_paths`` where local
    copies went, ``artifact_paths`` where they were logged (``log_to``).
    """

    layer: str
    run_ids: tuple[str, ...]
    frames: int
    steps: tuple[int, ...]
    grid: tuple[int, int]
    files: tuple[str, ...]
    local_paths: tuple[Path, ...] = ()
    artifact_paths: tuple[str, ...] = ()


#: Where :func:`compare_runs` logs its files in the ``log_to`` run.
COMPARE_ARTIFACT_PATH = "weightviz/compare"


# ---------------------------------------------------------------------------- public


def render_run(run_id: str, options: RenderOptions | None = None, *, source: str = "weights",
               artifact_path: str = "weightviz", tracking_uri: str | None = None, log: bool = True,
               force: bool = False, out: str | os.PathLike[str] | None = None,
               output_dir: str | os.PathLike[str] | None = None,
               progress: ProgressCallback | None = None, workers: int = 1,
               allow_pickle: bool = False) -> RenderResult:
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
        workers: Processes drawing frames in parallel (a warning says when an output cannot use them).
        allow_pickle: Allow reading Python pickles, which can run arbitrary code.

    Returns:
        What was rendered, or ``status="up_to_date"`` when the run already has GIFs for
        these snapshots and options, or ``status="claimed"`` when another process is
        rendering the run right now (nothing is done here).

    Raises:
        UsageError: Bad options, e.g. a ``source`` or ``artifact_path`` that is not a
            relative artifact folder, or a bad ``MLFLOW_WEIGHTVIZ_CLAIM_LEASE``; nothing
            was done then.
        RunNotFoundError: The run does not exist, or its id is malformed.
        TrackingServerError: The tracking server cannot be reached.
        SnapshotError: No snapshots at ``source``, or they cannot be rendered.
        OutputError: The results cannot be written or logged.
    """
    options = options or RenderOptions()
    _check_outputs(log=log, out=out, output_dir=output_dir)
    if options.outputs.step_images is not None and not log:
        msg = "--step-images logs images to the run, so it cannot be used with --no-log"
        raise UsageError(msg)
    # Checked before any work: a render that could not log must not touch the run.
    source = _tracking.artifact_folder(source, "--source")
    artifact_path = _tracking.artifact_folder(artifact_path, "--artifact-path")
    if log:
        claims.lease_from_env()
    client = _tracking.client(tracking_uri)
    run = _tracking.get_run(client, run_id)
    src = RunSource(client, run.info.run_id, source)
    listing = fingerprint(src, options, source=source, artifact_path=artifact_path)
    # An artifact listing has paths and sizes only, so whether the run is up to date is decided on the
    # downloaded bytes (needed to draw anyway): a snapshot logged again with new values of the same size
    # is rendered again. Nothing is drawn or logged when the contents are unchanged.
    with tempfile.TemporaryDirectory(prefix="weightviz-") as tmp:
        fetched = src.fetch(Path(tmp))
        digest = fingerprint(src, options, local=fetched, source=source, artifact_path=artifact_path)
        if log and not force and run.data.tags.get(TAG_FINGERPRINT) == digest:
            if out is None and output_dir is None:
                return RenderResult(Status.UP_TO_DATE, run_id=run_id, fingerprint=digest)
            # The run has its GIFs; the local copies asked for are drawn here, nothing is logged.
            local = _render_source(src, options, out=out, output_dir=output_dir, progress=progress,
                                   workers=workers, allow_pickle=allow_pickle, fetched=fetched)
            return RenderResult(Status.UP_TO_DATE, local.layers, run_id, digest, extras=local.extras)
        # One renderer per run at a time (see automation/claims.py); local-only renders need no claim.
        with claims.claim_run(client, run_id, enabled=log) as claim:
            if log and not force and claim.tags.get(TAG_FINGERPRINT) == digest:
                return RenderResult(Status.UP_TO_DATE, run_id=run_id, fingerprint=digest)  # done while we claimed
            if not claim.held:
                return RenderResult(Status.CLAIMED, run_id=run_id, fingerprint=digest,
                                    claimed_by=claim.holder.describe() if claim.holder else None)
            sink = RunSink(client, run_id, artifact_path) if log else None
            metric = options.outputs.caption_metric
            caption = src.metric_history(metric).caption if metric else None
            try:
                result = _render_source(src, options, out=out, output_dir=output_dir, progress=progress,
                                        run_sink=sink, publish=claim.guard(sink) if sink is not None else None,
                                        tags_base={"source": source, "fingerprint": digest, "listing": listing},
                                        caption=caption, workers=workers, allow_pickle=allow_pickle,
                                        fetched=fetched)
            except ClaimLostError as lost:
                return RenderResult(Status.CLAIMED, run_id=run_id, fingerprint=digest, claimed_by=str(lost))
    return RenderResult(Status.RENDERED, result.layers, run_id, digest, result.artifact_paths, extras=result.extras)


def render_file(path: str | os.PathLike[str], options: RenderOptions | None = None, *,
                out: str | os.PathLike[str] | None = None, output_dir: str | os.PathLike[str] | None = None,
                progress: ProgressCallback | None = None, workers: int = 1,
                allow_pickle: bool = False) -> RenderResult:
    """Render snapshots from a local file or folder to GIFs; needs no MLflow.

    With neither ``out`` nor ``output_dir``, GIFs go to the current folder as ``<layer>.gif``.
    ``workers`` and ``allow_pickle`` are as in :func:`render_run`.

    Raises:
        SnapshotError: No snapshots at ``path``, or they cannot be rendered.
        OutputError: The GIFs cannot be written.
    """
    options = options or RenderOptions()
    if options.outputs.caption_metric is not None or options.outputs.step_images is not None:
        msg = ("--caption-metric and --step-images read from and log to an MLflow run, and render-file has none; "
               "log the snapshots to a run and use render RUN_ID")
        raise UsageError(msg)
    if out is None and output_dir is None:
        output_dir = Path.cwd()
    _check_outputs(log=False, out=out, output_dir=output_dir)
    return _render_source(LocalSource(Path(path)), options, out=out, output_dir=output_dir, progress=progress,
                          workers=workers, allow_pickle=allow_pickle)


def compare_runs(run_ids: Sequence[str], layer: str, options: RenderOptions | None = None, *, diff: bool = False,
                 source: str = "weights", tracking_uri: str | None = None,
                 out: str | os.PathLike[str] | None = None, output_dir: str | os.PathLike[str] | None = None,
                 log_to: str | None = None, progress: ProgressCallback | None = None,
                 allow_pickle: bool = False) -> CompareResult:
    """Draw one layer of 2 to 8 runs side by side, one frame per step, under one shared colour scale.

    Frames run over the union of the runs' snapshot steps; at each step a run shows its
    latest snapshot at or before it, or an empty grey panel before its first. Panels are
    titled with the run name and the first 8 characters of the run id. The options apply
    as in :func:`render_run` (``view``, ``scale``, ``vmin``/``vmax``, ``max_frames``,
    formats: the HTML page has one slider for all panels); ``step_images``,
    ``caption_metric`` and ``grid`` do not.

    Args:
        run_ids: The runs, 2 to 8, in panel order.
        layer: The layer's exact name.
        options: How to draw and encode; defaults to ``RenderOptions()``.
        diff: Add a panel with the first run minus the second, on its own symmetric scale.
        source: Artifact path of the snapshots in every run.
        tracking_uri: Defaults to ``MLFLOW_TRACKING_URI`` or MLflow's own default.
        out: The local file (other formats go beside it, with their own suffix).
        output_dir: Folder for the local files; with neither this, ``out`` nor ``log_to``,
            the current folder.
        log_to: Also log the files to this run under ``weightviz/compare/`` (its status
            and render tags are left alone).
        progress: Called as ``progress(i, n)`` after each frame.
        allow_pickle: Allow reading Python pickles, which can run arbitrary code.

    Returns:
        The layer, runs, frame count and steps, and where the files went.

    Raises:
        UsageError: Fewer than 2 or more than 8 runs, a run given twice, both ``out`` and
            ``output_dir``, or an option compare does not take.
        RunNotFoundError: A run (or ``log_to``) does not exist.
        SnapshotsNotFoundError: A run has no snapshots at ``source``, or not of ``layer``.
        ShapeMismatchError: The layer's shape differs between runs (unless pooled to the same grid).
        OutputError: The files cannot be written or logged.
    """
    from mlflow_weightviz.outputs.compare import MAX_RUNS

    options = options or RenderOptions()
    ids = [str(r) for r in run_ids]
    if not 2 <= len(ids) <= MAX_RUNS:
        msg = f"compare needs 2 to {MAX_RUNS} runs; got {len(ids)}"
        raise UsageError(msg)
    if len(set(ids)) != len(ids):
        twice = sorted({r for r in ids if ids.count(r) > 1})
        msg = f"each run can be compared once; given more than once: {', '.join(twice)}"
        raise UsageError(msg)
    unsupported = [name for name, given in (("--step-images", options.outputs.step_images is not None),
                                            ("--caption-metric", options.outputs.caption_metric is not None),
                                            ("--grid", options.outputs.grid)) if given]
    if unsupported:
        msg = f"compare draws one layer of several runs; {', '.join(unsupported)} cannot be used with it"
        raise UsageError(msg)
    if out is not None and output_dir is not None:
        msg = "give either --out or --output-dir, not both"
        raise UsageError(msg)
    source = _tracking.artifact_folder(source, "--source")
    if out is None and output_dir is None and log_to is None:
        output_dir = Path.cwd()
    if Format.MP4 in options.outputs.formats:
        from mlflow_weightviz.outputs.video import check_available

        check_available()
    client = _tracking.client(tracking_uri)
    runs = [_tracking.get_run(client, r) for r in ids]
    target = _tracking.get_run(client, log_to).info.run_id if log_to is not None else None
    labels = [_run_label(run) for run in runs]
    if len(set(labels)) < len(labels):  # two ids sharing their first 8 characters, and their names
        labels = [f"{label} ({run.info.run_id})" for label, run in zip(labels, runs, strict=True)]
    with tempfile.TemporaryDirectory(prefix="weightviz-") as tmp:
        work = Path(tmp)
        found: dict[str, list[Snapshot]] = {}
        for k, (label, run) in enumerate(zip(labels, runs, strict=True)):
            src = RunSource(client, run.info.run_id, source)
            fetched = src.fetch(work / f"run-{k}")
            layers = group_layers(read_snapshots(fetched, allow_pickle=allow_pickle, root_name=src.name))
            if layer not in layers:
                names = list(layers)
                listing = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
                msg = f"run {label} has no layer {layer!r} at {source!r}; its layers: {listing}"
                raise SnapshotsNotFoundError(msg)
            found[label] = layers[layer]
        stem = safe_name(f"{layer}_{'-'.join(r.info.run_id[:8] for r in runs)}")
        staging = work / "out"
        staging.mkdir()
        frames, steps, grid = _render_comparison(layer, found, options, staging, work, stem, diff=diff,
                                                 progress=progress)
        files = _files(options.outputs.formats, stem)
        staged = {f: staging / f for f in files}
        outputs.warn_if_too_big(list(staged.values()))
        artifact_paths: tuple[str, ...] = ()
        if target is not None:  # logged first: a failure then leaves no local file either
            sink = RunSink(client, target, COMPARE_ARTIFACT_PATH, pending=False)
            artifact_paths = tuple(str(a) for a in sink.deliver(staged).values())
        local: dict[str, Path] = {}
        if out is not None or output_dir is not None:
            out_path = Path(out) if out is not None else None
            dir_path = Path(output_dir) if output_dir is not None else None
            local.update(LocalSink(out_path, dir_path).deliver({files[0]: staged[files[0]]}))
            local.update(outputs.copy_extras({f: staged[f] for f in files[1:]}, out=out_path, output_dir=dir_path))
    return CompareResult(layer, tuple(r.info.run_id for r in runs), frames, steps, grid, files,
                         tuple(local[f] for f in files if f in local), artifact_paths)


def inspect_run(run_id: str, *, source: str = "weights", tracking_uri: str | None = None,
                allow_pickle: bool = False, layers: Sequence[str] = ()) -> list[LayerSummary]:
    """Summarise a run's snapshots per layer without rendering anything."""
    source = _tracking.artifact_folder(source, "--source")
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
                   caption: Callable[[int], str] | None = None, workers: int = 1,
                   allow_pickle: bool = False, fetched: Path | None = None) -> RenderResult:
    with tempfile.TemporaryDirectory(prefix="weightviz-") as tmp:
        workdir = Path(tmp)
        local = fetched if fetched is not None else src.fetch(workdir)
        snapshots = read_snapshots(local, allow_pickle=allow_pickle, root_name=src.name)
        layers = group_layers(snapshots, options.layers)
        if options.outputs.grid:  # panels in model order, as the overview's rows
            from mlflow_weightviz.outputs.overview import model_order

            layers = {name: layers[name] for name in model_order(list(layers), [s.layer for s in snapshots])}
        if out is not None and len(layers) != 1 and not options.outputs.grid:
            msg = (f"--out writes one GIF but {len(layers)} layers were found ({', '.join(layers)}); "
                   "pick one with --layer or use --output-dir")
            raise UsageError(msg)
        staging = workdir / "out"
        staging.mkdir()
        if _uses_workers(layers, options, workers):
            from mlflow_weightviz.parallel import prestart

            prestart()  # a forkserver's imports overlap the statistics and the first layer's preparation
        # Statistics of every snapshot (not only the frames drawn), computed once; only for a run.
        batch = _metrics_batch(run_sink, layers) if run_sink is not None and options.outputs.metrics else None
        results, step_writers = _render_all(layers, options, staging, workdir=workdir, progress=progress,
                                            caption=caption, workers=workers, metrics=batch)
        # The overview shows the same statistics the metrics log: one stats.collect per render
        # (where record() logged them while training they are read back, not recomputed).
        if options.outputs.overview or (options.outputs.overview is None and run_sink is not None):
            layer_stats = batch.stats if batch is not None else None
            if layer_stats is None:
                logged = None
                if isinstance(src, RunSource):
                    with _tracking.translate(f"reading the metrics of run {src.run_id}"):
                        logged = stats.read_logged(src.client, src.run_id, layers)
                layer_stats = stats.collect(layers, logged)
            _write_overview(layer_stats, options, [s.layer for s in snapshots], staging, results)
        del snapshots
        staged = {r.layer: staging / r.file_name for r in results}
        outputs.warn_if_too_big([staging / f for r in results for f in r.files])
        local_paths = LocalSink(Path(out) if out is not None else None,
                                Path(output_dir) if output_dir is not None else None).deliver(staged)
        outputs.copy_extras({f: staging / f for r in results for f in r.files if f != r.file_name},
                            out=Path(out) if out is not None else None,
                            output_dir=Path(output_dir) if output_dir is not None else None)
        # The render's own files (overview, grid legend) go into --output-dir, or beside --out.
        owned = {f for r in results for f in r.files}
        extras = sorted(p.name for p in staging.iterdir() if p.is_file() and p.name not in owned)
        if out is not None or output_dir is not None:
            folder = Path(output_dir) if output_dir is not None else Path(out or ".").parent
            LocalSink(output_dir=folder).deliver({name: staging / name for name in extras})
        artifact_paths: list[str] = []
        if run_sink is not None:
            tags = {TAG_PREFIX + k: v for k, v in (tags_base or {}).items()}
            names, cut = layers_tag([r.layer for r in results])
            if cut:  # the tag holds the first names; the full list goes with the results
                (staging / LAYERS_FILE).write_text(json.dumps([r.layer for r in results]), encoding="utf-8")
            tags.update({
                TAG_PREFIX + "layers": names,
                TAG_PREFIX + "frames": str(sum(r.frames for r in results)),
                TAG_PREFIX + "artifact_path": run_sink.artifact_path,
                TAG_PREFIX + "version": __version__,
                TAG_PREFIX + "status": Status.RENDERED.value,
            })
            # Step images and metrics go after the claim check and the GIFs, before the final tags.
            more = functools.partial(_log_more, run_sink, step_writers, batch) if step_writers or batch else None
            # Everything in staging goes to the run, one file per format of each layer.
            published = (publish or run_sink).deliver({p.name: p for p in staging.iterdir() if p.is_file()}, tags,
                                                      then=more)
            artifact_paths = sorted(str(a) for a in published.values())
        final = tuple(
            LayerResult(r.layer, r.frames, r.steps, r.shape, r.grid, r.file_name,
                        artifact_path=f"{run_sink.artifact_path}/{r.file_name}" if run_sink else None,
                        local_path=local_paths.get(r.layer), files=r.files)
            for r in results)
        return RenderResult(Status.RENDERED, final, artifact_paths=tuple(artifact_paths), extras=tuple(extras))


def render_layers(layers: Mapping[str, Sequence[Snapshot]], options: RenderOptions, staging: Path, *,
                  workdir: Path | None = None, progress: ProgressCallback | None = None,
                  caption: Caption | None = None, workers: int = 1) -> list[LayerResult]:
    """Render each layer's snapshots to ``staging/<safe layer name>.<format>``, one file per format.

    Each layer is prepared (loaded, reshaped, pooled, scaled) into a stack on disk, then
    drawn frame by frame on one reused figure (or by ``workers`` processes) and sent to
    every writer (see :func:`write_frames`). With ``options.grid`` all layers go into one
    ``grid`` montage instead.

    ``file_name`` of each result is its first format's file and ``files`` lists all of them.
    """
    return _render_all(layers, options, staging, workdir=workdir, progress=progress, caption=caption,
                       workers=workers)[0]


def write_frames(animation: Animation, frames: Iterable[Frame], writers: Sequence[FrameWriter],
                 tick: Callable[[], None] | None = None) -> int:
    """The one frame loop: set every writer up, send it every frame, and finish (or, on error, abort) them all.

    Returns:
        The number of frames.
    """
    count = 0
    with saving(writers):
        for frame in frames:
            if count == 0:
                first = dataclasses.replace(animation, size=animation.size or _size(frame), palette=frame.palette)
                for writer in writers:
                    writer.setup(first)
            for writer in writers:
                writer.add_frame(frame)
            count += 1
            if tick is not None:
                tick()
    return count


def _size(frame: Frame) -> tuple[int, int] | None:
    return None if frame.indices is None else (frame.indices.shape[1], frame.indices.shape[0])


def draw_layer(prepared: PreparedLayer, titles: Sequence[str], renderer: HeatmapRenderer | None) -> Iterator[Frame]:
    """A prepared layer's frames in order: its values, and with a ``renderer`` their GIF block and pixels."""
    stack = prepared.stack()
    encoder: FrameEncoder | None = None
    try:
        for i, step in enumerate(prepared.steps):
            values, limits = np.asarray(stack[i]), prepared.limits(i)
            if renderer is None:
                yield Frame(i, step, titles[i], values, limits)
                continue
            encoder, block = encode_next(renderer, encoder, values, titles[i], limits)
            yield Frame(i, step, titles[i], values, limits, block, encoder.previous, encoder.table)
    finally:
        del stack


def _writers(stem: str, options: RenderOptions, staging: Path, steps_dir: Path | None,
             player: Callable[[], dict[str, Any]] | None, metrics: MetricsBatch | None = None,
             layers: Sequence[str] = (),
             html: Callable[[Path], FrameWriter] | None = None) -> tuple[list[FrameWriter], StepImageWriter | None]:
    """The writers of one layer (or the montage, or a comparison): one per format, plus the step images and metrics.

    ``html`` builds the HTML writer when it is not one layer's player (a comparison's page).
    """
    writers: list[FrameWriter] = []
    for fmt in options.outputs.formats:
        target = staging / f"{stem}.{fmt.value}"
        if fmt is Format.GIF:
            writers.append(GifWriter(target, options.gif))
        elif fmt is Format.MP4:
            from mlflow_weightviz.outputs.video import Mp4Writer

            writers.append(Mp4Writer(target, options.gif))
        elif html is not None:
            writers.append(html(target))
        else:
            from mlflow_weightviz.outputs.html_player import HtmlWriter

            assert player is not None
            writers.append(HtmlWriter(target, **player()))
    steps = None
    if options.outputs.step_images is not None and steps_dir is not None:
        steps = StepImageWriter(steps_dir / stem, options.outputs.step_images)
        writers.append(steps)
    if metrics is not None:
        from mlflow_weightviz.outputs.metrics import MetricsWriter

        writers.append(MetricsWriter(metrics, layers))
    return writers, steps


def _render_all(layers: Mapping[str, Sequence[Snapshot]], options: RenderOptions, staging: Path, *,
                workdir: Path | None, progress: ProgressCallback | None, caption: Caption | None,
                workers: int, metrics: MetricsBatch | None = None) -> tuple[list[LayerResult],
                                                                             dict[str, StepImageWriter]]:
    if workers < 1:
        msg = f"workers must be at least 1; got {workers}"
        raise UsageError(msg)
    if Format.MP4 in options.outputs.formats:
        from mlflow_weightviz.outputs.video import check_available

        check_available()  # before any drawing: a missing imageio should not waste the render
    work = workdir or staging
    steps_dir = work / "step-images" if workdir is not None else None
    step_writers: dict[str, StepImageWriter] = {}
    formats = options.outputs.formats
    files = functools.partial(_files, formats)
    if options.outputs.grid:
        _warn_workers(workers, "--grid draws the montage in one process")
        return [_render_grid(layers, options, staging, work, steps_dir, step_writers, progress, caption,
                             metrics)], step_writers
    names = unique_names(layers)
    drawn = _drawn(options)
    if not drawn:
        _warn_workers(workers, "the HTML player alone needs no drawing")
    total = _total_frames(layers, options)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    def result(prepared: PreparedLayer) -> LayerResult:
        stem = names[prepared.name]
        return LayerResult(prepared.name, len(prepared.steps), prepared.steps, prepared.info.shape,
                           prepared.info.grid, files(stem)[0], files=files(stem))

    def writers_for(prepared: PreparedLayer, spec: Mapping[str, Any]) -> list[FrameWriter]:
        stem = names[prepared.name]
        writers, steps = _writers(stem, options, staging, steps_dir, lambda: _player(prepared, options, spec),
                                  metrics, (prepared.name,))
        if steps is not None:
            step_writers[stem] = steps
        return writers

    results: list[LayerResult] = []
    if _uses_workers(layers, options, workers):
        # closing(): on an error the pool stops and the stacks go at once, not when collected.
        with contextlib.closing(_parallel_frames(layers, options, work, caption, workers)) as stream:
            for prepared, spec, size, frames in stream:
                write_frames(Animation(prepared.name, prepared.steps, size), frames, writers_for(prepared, spec),
                             tick)
                results.append(result(prepared))
        return results, step_writers
    for layer, snaps in layers.items():
        prepared = prepare_layer(layer, snaps, options, work)
        try:
            spec = _renderer_kwargs(prepared, options, caption)
            titles = [_title(prepared, options, i, step, caption) for i, step in enumerate(prepared.steps)]
            renderer = build_renderer(spec) if drawn else None
            try:
                write_frames(Animation(layer, prepared.steps), draw_layer(prepared, titles, renderer),
                             writers_for(prepared, spec), tick)
            finally:
                if renderer is not None:
                    renderer.close()
        finally:
            prepared.stack_path.unlink(missing_ok=True)
        results.append(result(prepared))
    return results, step_writers


def _drawn(options: RenderOptions) -> bool:
    """Whether frames are drawn at all (the HTML player alone needs none)."""
    return any(f is not Format.HTML for f in options.outputs.formats) or options.outputs.step_images is not None


def _total_frames(layers: Mapping[str, Sequence[Snapshot]], options: RenderOptions) -> int:
    return sum(len(sample_indices(len(s), options.max_frames)) for s in layers.values())


def _uses_workers(layers: Mapping[str, Sequence[Snapshot]], options: RenderOptions, workers: int) -> bool:
    """Whether the layers' frames go to worker processes (not the grid montage, not HTML alone, enough frames)."""
    return (workers > 1 and not options.outputs.grid and _drawn(options)
            and _total_frames(layers, options) > workers)


def _files(formats: Sequence[Format], stem: str) -> tuple[str, ...]:
    return tuple(f"{stem}.{f.value}" for f in formats)


def _warn_workers(workers: int, why: str) -> None:
    if workers > 1:
        import warnings

        from mlflow_weightviz.options import WeightvizWarning

        warnings.warn(f"--workers {workers} is ignored here: {why}", WeightvizWarning, stacklevel=4)


def _parallel_frames(layers: Mapping[str, Sequence[Snapshot]], options: RenderOptions, work: Path,
                     caption: Caption | None, workers: int) -> Generator[
                         tuple[PreparedLayer, Mapping[str, Any], tuple[int, int], Iterator[Frame]], None, None]:
    """Each layer with its frames drawn and encoded by ``workers`` processes, in order.

    Whole layers go to workers while there are at least as many layers left as workers;
    the remaining layers are split into chunks of frames shared by all workers. Layers
    are prepared just ahead of the workers, so preparing overlaps drawing; the frames
    are byte for byte those of one process.
    """
    from mlflow_weightviz.parallel import EncodedFrame, FramePool, LayerJob

    prepared_by_key: dict[str, PreparedLayer] = {}
    items = list(layers.items())
    shown = Format.MP4 in options.outputs.formats or options.outputs.step_images is not None
    # Whole layers would bring every frame's pixels back at once; with pictures wanted, chunks only.
    whole = len(items) - len(items) % workers if len(items) >= workers and not shown else 0

    def jobs() -> Iterator[LayerJob]:
        for layer, snaps in items:
            prepared = prepare_layer(layer, snaps, options, work)
            prepared_by_key[layer] = prepared
            yield LayerJob(layer, str(prepared.stack_path), _renderer_kwargs(prepared, options, caption),
                           tuple(_title(prepared, options, i, step, caption) for i, step in enumerate(prepared.steps)),
                           tuple(prepared.limits(i) for i in range(len(prepared.steps))))

    def layer_frames(first: EncodedFrame, rest: Iterator[EncodedFrame], steps: Sequence[int],
                     stack: np.ndarray) -> Iterator[Frame]:
        for encoded in itertools.chain([first], rest):
            i, job = encoded.index, encoded.job
            yield Frame(i, steps[i], job.titles[i], np.asarray(stack[i]), job.limits[i], encoded.block,
                        encoded.indices, first.palette)

    try:
        with FramePool(workers) as pool:
            stream = pool.frames(jobs(), whole=whole, indices=shown)
            for key, group in itertools.groupby(stream, key=lambda f: f.job.key):
                prepared = prepared_by_key[key]
                first = next(group)
                stack = prepared.stack()
                try:
                    frames = layer_frames(first, group, prepared.steps, stack)  # noqa: B031 (consumed before the next)
                    yield prepared, first.job.renderer, first.size, frames
                finally:
                    del stack
                    prepared_by_key.pop(key).stack_path.unlink(missing_ok=True)
    finally:
        for prepared in prepared_by_key.values():
            prepared.stack_path.unlink(missing_ok=True)


def _render_grid(layers: Mapping[str, Sequence[Snapshot]], options: RenderOptions, staging: Path, work: Path,
                 steps_dir: Path | None, step_writers: dict[str, StepImageWriter], progress: ProgressCallback | None,
                 caption: Caption | None, metrics: MetricsBatch | None = None) -> LayerResult:
    """All layers side by side (``--grid``) through the same frame loop and writers."""
    from mlflow_weightviz.outputs.montage import LEGEND_FILE, Montage

    writers, steps = _writers("grid", options, staging, steps_dir, None, metrics, tuple(layers))
    if steps is not None:
        step_writers["grid"] = steps
    montage = Montage(layers, options, workdir=work, caption=caption,
                      make_renderer=lambda prepared: build_renderer(_renderer_kwargs(prepared, options, caption)))
    with montage:
        def frames() -> Iterator[Frame]:
            encoder: FrameEncoder | None = None
            for i, (step, rgb) in enumerate(montage.frames()):
                if encoder is None:
                    encoder = FrameEncoder(build_palette(rgb, montage.palette_colors))
                block = encoder.encode(rgb)
                yield Frame(i, step, block=block, indices=encoder.previous, palette=encoder.table)

        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, len(montage.steps))

        write_frames(Animation("grid", montage.steps, montage.size), frames(), writers, tick)
        legend = montage.legend()
    (staging / LEGEND_FILE).write_text(json.dumps(legend, indent=1), encoding="utf-8")
    names = _files(options.outputs.formats, "grid")
    return LayerResult("grid", len(montage.steps), montage.steps, (len(montage.names),), montage.panels, names[0],
                       files=names)


def _run_label(run: Any) -> str:
    """A panel's name for a run: its name (when it has one) and the first 8 characters of its id."""
    name = run.info.run_name or run.data.tags.get("mlflow.runName") or ""
    short = run.info.run_id[:8]
    return f"{shorten(name, 40)}  ·  {short}" if name else short


def _render_comparison(layer: str, runs: Mapping[str, Sequence[Snapshot]], options: RenderOptions, staging: Path,
                       work: Path, stem: str, *, diff: bool,
                       progress: ProgressCallback | None) -> tuple[int, tuple[int, ...], tuple[int, int]]:
    """One layer of several runs side by side (``compare``) through the same frame loop and writers."""
    from mlflow_weightviz.outputs.compare import CompareFrame, ComparePlayerWriter, Comparison

    comparison = Comparison(layer, runs, options, workdir=work, diff=diff,
                            spec=lambda prepared: _renderer_kwargs(prepared, options),
                            player=lambda prepared, spec: _player(prepared, options, spec))
    with comparison:
        page_title = f"{layer} · {len(runs)} runs · weightviz"
        writers, _ = _writers(stem, options, staging, None, None,
                              html=lambda path: ComparePlayerWriter(path, comparison.players, page_title))

        def frames() -> Iterator[Frame]:
            encoder: FrameEncoder | None = None
            for i, (step, rgb, panels) in enumerate(comparison.frames()):
                if encoder is None:
                    encoder = FrameEncoder(build_palette(rgb, comparison.palette_colors))
                block = encoder.encode(rgb)
                yield CompareFrame(i, step, comparison.frame_title(i), block=block, indices=encoder.previous,
                                   palette=encoder.table, panels=panels)

        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, len(comparison.steps))

        count = write_frames(Animation(layer, comparison.steps, comparison.size), frames(), writers, tick)
    return count, comparison.steps, comparison.grid


def _write_overview(layer_stats: Mapping[str, Sequence[stats.StepStats]], options: RenderOptions,
                    first_seen: Sequence[str], staging: Path, results: Sequence[LayerResult]) -> None:
    """``overview.png`` and ``overview.html`` into staging, unless a layer's own file has the name."""
    from mlflow_weightviz.outputs.overview import (
        OVERVIEW_HTML,
        OVERVIEW_PNG,
        model_order,
        overview_data,
        write_overview,
    )

    taken = {f for r in results for f in r.files} & {OVERVIEW_PNG, OVERVIEW_HTML}
    if taken:
        import warnings

        from mlflow_weightviz.options import WeightvizWarning

        warnings.warn(f"no overview: a layer's own file is called {', '.join(sorted(taken))}; use --no-overview "
                      "or rename the layer", WeightvizWarning, stacklevel=4)
        return
    order = model_order(list(layer_stats), first_seen)
    write_overview(overview_data(layer_stats, options.outputs.overview_stat, order), staging)


def _player(prepared: PreparedLayer, options: RenderOptions, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The HTML player's arguments: the GIF renderer's colormap, scale, format and labels, so it shows the same."""
    return {"name": prepared.name, "grid": prepared.info.grid, "cmap": spec["cmap"], "vmin": prepared.vmin,
            "vmax": prepared.vmax, "fmt": prepared.fmt, "row_labels": spec["row_labels"],
            "col_labels": spec["col_labels"], "frame_ms": options.gif.frame_ms,
            "hold_last_ms": options.gif.hold_last_ms, "annotate": options.look.annotate,
            "note": prepared.info.note(), "block": prepared.info.block, "matrix": prepared.info.matrix}


def _log_more(sink: RunSink, step_writers: Mapping[str, StepImageWriter], metrics: MetricsBatch | None) -> None:
    """What goes to the run after the files and before the final tags: step images, then metrics."""
    from mlflow_weightviz.sinks import image_key

    for stem, writer in step_writers.items():
        sink.log_step_images(image_key(stem), writer.frames())
    if metrics is not None and metrics.staged:
        sink.log_metrics(metrics.staged)


def _metrics_batch(sink: RunSink, layers: Mapping[str, Sequence[Snapshot]]) -> MetricsBatch:
    """Every layer's statistics, and the metrics the run already has (``record()`` logs them while training)."""
    from mlflow_weightviz import stats
    from mlflow_weightviz.outputs.metrics import MetricsBatch

    with _tracking.translate(f"reading the metrics of run {sink.run_id}"):
        have = sink.client.get_run(sink.run_id).data.metrics
        history = stats.logged_history(sink.client, sink.run_id, layers, have)
    logged = stats.read_logged(sink.client, sink.run_id, layers, history=history)
    return MetricsBatch(stats.collect(layers, logged), history)


def _renderer_kwargs(prepared: PreparedLayer, options: RenderOptions, caption: Caption | None = None) -> dict[str, Any]:
    """The renderer's arguments (``grid`` included) as plain values, so worker processes can build it."""
    info = prepared.info
    rows, cols = info.grid
    cmap = options.look.cmap or ("RdBu_r" if prepared.diverging else "YlGn")
    last = len(prepared.steps)
    sample = _title(prepared, options, last - 1, max(prepared.steps, key=lambda s: len(str(s))))
    if caption is not None:  # size the figure for this layer's longest caption
        sample = sample.rsplit("\n", 1)[0] + "\n" + max((caption(s) for s in prepared.steps), key=len)
    return {"grid": prepared.info.grid, "cmap": cmap, "vmin": prepared.vmin, "vmax": prepared.vmax,
            "fmt": prepared.fmt, "annotate": options.look.annotate,
            "row_labels": [f"{options.look.row_label}{info.row_index(i)}" for i in range(rows)],
            "col_labels": [f"{options.look.col_label}{info.col_index(j)}" for j in range(cols)],
            "title_sample": sample, "dpi": options.look.dpi, "size": options.look.size}


def _title(prepared: PreparedLayer, options: RenderOptions, index: int, step: int,
           caption: Caption | None = None) -> str:
    head = f"{shorten(prepared.name, NAME_CHARS)}  ·  step {step}  ·  frame {index + 1}/{len(prepared.steps)}"
    notes = [prepared.info.note()]
    if options.look.view is View.DELTA_INIT:
        notes.append(f"change since step {prepared.steps[0]}")
    elif options.look.view is View.DELTA_STEP:
        notes.append("change since the previous frame")
    note = "; ".join(n for n in notes if n)
    lines = [head, note] if note else [head]
    if caption is not None:
        lines.append(caption(step))
    return "\n".join(lines)


def _summaries(snapshots: list[Snapshot], layers: Sequence[str]) -> list[LayerSummary]:
    out = []
    for name, snaps in group_layers(snapshots, layers).items():
        meta = snaps[0].meta
        if isinstance(meta, Reduced):  # the range of the stored block max-abs values is the layer's range
            ranges = [r for r in (finite_range(np.asarray(s.meta.stats["maxabs"]())) for s in snaps
                                  if isinstance(s.meta, Reduced)) if r is not None]
            shape, dtype = meta.shape, meta.dtype
        else:
            first = snaps[0].open()
            shape, dtype = tuple(first.shape), str(first.dtype)
            ranges = [r for r in (finite_range(s.open()) for s in snaps) if r is not None]
        lo = min((r[0] for r in ranges), default=float("nan"))
        hi = max((r[1] for r in ranges), default=float("nan"))
        out.append(LayerSummary(name, shape, dtype, len(snaps), snaps[0].step, snaps[-1].step, lo, hi))
    return out
