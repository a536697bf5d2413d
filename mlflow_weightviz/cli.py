"""The ``mlflow-weightviz`` command line: parse options, call the Python API, report.

Commands only parse their options into :class:`~mlflow_weightviz.options.RenderOptions`
and call the public API. Errors are turned into one line on stderr and an exit code in
one place, :func:`_errors`; ``--debug`` shows the traceback instead. Heavy packages are
imported inside the commands so ``--help`` stays fast.
"""

import contextlib
import functools
import inspect
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mlflow_weightviz import __version__
from mlflow_weightviz.errors import (
    EXIT_CRASH,
    EXIT_INTERRUPTED,
    EXIT_RUNS_FAILED,
    EXIT_TERMINATED,
    Terminated,
    WeightvizError,
)
from mlflow_weightviz.options import (
    DEFAULT_FRAME_MS,
    DEFAULT_HOLD_LAST_MS,
    GRID_MAX_PIXELS,
    GRID_MAX_WIDTH,
    Format,
    OverviewStat,
    Pool,
    RenderOptions,
    Scale,
    View,
)
from mlflow_weightviz.tags import Status

app = typer.Typer(
    name="mlflow-weightviz",
    help="Render MLflow runs' weight snapshots as annotated-heatmap GIFs and log them back to the run.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# ------------------------------------------------------------------ shared options

Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
TrackingUri = Annotated[Optional[str], typer.Option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", show_envvar=True,
    help="MLflow tracking URI; MLflow's default (sqlite:///mlflow.db) when unset.")]
Source = Annotated[str, typer.Option("--source", help="Artifact path of the snapshots in the run (file or folder).")]
AllowPickle = Annotated[bool, typer.Option(
    "--allow-pickle", help="Allow reading Python pickles. Unpickling can run arbitrary code: trusted files only.")]
Layer = Annotated[Optional[list[str]], typer.Option(
    "--layer", "-l", help="Layer name or glob to render (repeatable); all layers by default.")]


def _render_option_params(
    layer: Layer = None,
    scale: Annotated[Scale, typer.Option(help="One colour scale for all frames, or one per frame.")] = Scale.GLOBAL,
    vmin: Annotated[Optional[float], typer.Option(help="Fix the low end of the colour scale.")] = None,
    vmax: Annotated[Optional[float], typer.Option(help="Fix the high end of the colour scale.")] = None,
    cmap: Annotated[Optional[str], typer.Option(
        help="Matplotlib colormap; default RdBu_r (centred on 0) for signed layers, else YlGn.")] = None,
    annotate: Annotated[Optional[bool], typer.Option(
        "--annotate/--no-annotate", help="Write values in the cells; by default only when they fit.")] = None,
    fmt: Annotated[Optional[str], typer.Option(
        help="Value format such as '{x:.3f}'; by default precise enough to show change between frames.")] = None,
    max_rows: Annotated[int, typer.Option(help="Block-pool larger matrices down to this many rows.")] = 64,
    max_cols: Annotated[int, typer.Option(help="Block-pool larger matrices down to this many columns.")] = 64,
    pool: Annotated[Optional[Pool], typer.Option(
        help="How a pooled block becomes one cell: mean, maxabs or rms; default rms for pooled layers.")] = None,
    rows: Annotated[Optional[str], typer.Option(
        help="Draw only rows A:B of each layer's matrix, exactly (tick labels start at A).")] = None,
    cols: Annotated[Optional[str], typer.Option(
        help="Draw only columns C:D of each layer's matrix, exactly (tick labels start at C).")] = None,
    row_label: Annotated[str, typer.Option(help="Prefix of row tick labels, e.g. embed_dim_.")] = "",
    col_label: Annotated[str, typer.Option(help="Prefix of column tick labels, e.g. orig_dim_.")] = "",
    frame_ms: Annotated[int, typer.Option(
        help="Milliseconds per frame (GIF delays are 10 ms units).")] = DEFAULT_FRAME_MS,
    fps: Annotated[Optional[float], typer.Option(help="Frames per second; overrides --frame-ms.")] = None,
    hold_last_ms: Annotated[int, typer.Option(
        help="Milliseconds the last frame stays on screen.")] = DEFAULT_HOLD_LAST_MS,
    loop: Annotated[int, typer.Option(help="Times to loop: 0 forever; -1 plays once.")] = 0,
    max_frames: Annotated[Optional[int], typer.Option(
        help="Sample this many frames evenly (first and last always kept).")] = None,
    dpi: Annotated[int, typer.Option(help="Figure resolution.")] = 100,
    size: Annotated[Optional[str], typer.Option(
        help="Frame size in pixels, WIDTHxHEIGHT (e.g. 1500x1000); by default sized from the grid.")] = None,
    view: Annotated[View, typer.Option(help="Draw the weights, or their change since the start / last frame.")]
    = View.WEIGHTS,
    allow_pickle: AllowPickle = False,
    workers: Annotated[int, typer.Option(help="Processes drawing frames in parallel.")] = 1,
    output_format: Annotated[Optional[list[Format]], typer.Option(
        "--format", help="Files per layer, repeatable: gif, html (interactive player with exact values), mp4. "
        "Default gif.")] = None,
    step_images: Annotated[bool, typer.Option(
        "--step-images", help="(render) Also log the frames as MLflow step images, for the run's image slider.")]
    = False,
    step_images_every: Annotated[Optional[int], typer.Option(
        help="(render) Log every K-th frame (and the last) as a step image; implies --step-images.")] = None,
    caption_metric: Annotated[Optional[str], typer.Option(
        help="(render) A run metric, e.g. loss, whose value at each frame's step is written under the title.")]
    = None,
    grid: Annotated[bool, typer.Option(
        "--grid", help="Draw all layers side by side in one grid.gif, one frame per step.")] = False,
    metrics: Annotated[bool, typer.Option(
        "--metrics/--no-metrics", help="(render) Log each layer's norm, update ratio, drift, max |w|, RMS and "
        "non-finite fraction as run metrics weightviz/<layer>/<stat>.")] = True,
    grid_max_width: Annotated[int, typer.Option(
        help="Widest --grid frame in pixels; panels shrink to fit.")] = GRID_MAX_WIDTH,
    grid_max_pixels: Annotated[int, typer.Option(
        help="Most pixels of a --grid frame (about); panels shrink to fit.")] = GRID_MAX_PIXELS,
    overview: Annotated[Optional[bool], typer.Option(
        "--overview/--no-overview", help="Also make overview.png/.html (one row per layer, one column per step); "
        "by default only when logging to a run.")] = None,
    overview_stat: Annotated[OverviewStat, typer.Option(
        help="What the overview colours: update_ratio (log scale), drift, rms or norm.")]
    = OverviewStat.UPDATE_RATIO,
) -> RenderOptions:
    del allow_pickle, workers  # not render options: the commands pass them on (see _Options.run_args)
    return RenderOptions(
        layers=tuple(layer or ()), scale=scale, vmin=vmin, vmax=vmax, cmap=cmap, annotate=annotate, fmt=fmt,
        max_rows=max_rows, max_cols=max_cols, pool=pool, rows=rows, cols=cols, row_label=row_label,
        col_label=col_label, frame_ms=frame_ms, fps=fps, hold_last_ms=hold_last_ms, loop=None if loop < 0 else loop,
        max_frames=max_frames, dpi=dpi, size=size, view=view,
        formats=tuple(output_format or (Format.GIF,)), caption_metric=caption_metric, grid=grid, metrics=metrics,
        grid_max_width=grid_max_width, grid_max_pixels=grid_max_pixels, overview=overview, overview_stat=overview_stat,
        step_images=step_images_every if step_images_every is not None else (1 if step_images else None))


class _Options:
    """The shared render options of a command: ``options()`` builds :class:`RenderOptions`."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __call__(self) -> RenderOptions:
        return _render_option_params(**self._values)

    def run_args(self) -> dict[str, Any]:
        """``workers`` and ``allow_pickle``, which go to the render functions beside the options."""
        return {k: self._values[k] for k in ("workers", "allow_pickle") if k in self._values}


def with_render_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` every render option; it receives them as one ``options`` argument.

    The options are built inside the command's error handler, so a bad value is reported
    like any other error. A parameter the command declares itself replaces the shared
    option of the same name (``batch`` gives ``--workers`` its own meaning).
    """
    return _with_options(command, ())


def with_render_options_except(*left_out: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """:func:`with_render_options` without the options (parameter names) ``left_out``: they keep their defaults."""
    return lambda command: _with_options(command, left_out)


def _with_options(command: Callable[..., None], left_out: tuple[str, ...]) -> Callable[..., None]:
    own = [p for name, p in inspect.signature(command).parameters.items() if name != "options"]
    shared = {name: p for name, p in inspect.signature(_render_option_params).parameters.items()
              if name not in {o.name for o in own} and name not in left_out}

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        command(options=_Options({name: kwargs.pop(name) for name in shared}), **kwargs)

    params = own + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in shared.values()]
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


# ---------------------------------------------------------------- error handling


@contextlib.contextmanager
def _errors(debug: bool) -> Iterator[None]:
    """The CLI's one error handler: one line on stderr and the error's exit code.

    Exit codes: each :class:`~mlflow_weightviz.errors.WeightvizError` has its own (2-8, see
    :mod:`mlflow_weightviz.errors`); 1 is left to ``batch`` and ``watch`` for "some runs
    failed"; an unexpected exception is :data:`~mlflow_weightviz.errors.EXIT_CRASH` (70);
    Ctrl-C is 130, SIGTERM 143 (raised as :class:`~mlflow_weightviz.errors.Terminated`
    so that every ``finally`` runs; ``batch`` and ``watch`` install their own graceful
    handlers inside). The environment variables and the mlflow logger level set here for
    the command are put back when it ends (the CLI may be called in-process).
    """
    from mlflow_weightviz._signals import sigterm_raises
    from mlflow_weightviz._tracking import HTTP_DEFAULTS

    with _command_environment({
        **HTTP_DEFAULTS,
        # MLflow's own download bars and INFO lines would drown the one-line reports.
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # mlflow sets its logger's level from this when it is imported (later, lazily).
        "MLFLOW_LOGGING_LEVEL": "WARNING",
    }), warnings.catch_warnings(), sigterm_raises():
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning
        try:
            yield
        except (typer.Exit, typer.Abort):
            raise
        except WeightvizError as exc:
            if debug:
                raise
            _fail(str(exc), exc.exit_code)
        except Terminated:
            if debug:
                raise
            _fail("terminated by SIGTERM; temporary files removed, nothing was logged or written",
                  EXIT_TERMINATED)
        except KeyboardInterrupt:
            if debug:
                raise
            _fail("interrupted", EXIT_INTERRUPTED)
        except Exception as exc:
            if debug:
                raise
            _fail(f"unexpected {type(exc).__name__}: {exc} (run again with --debug for the traceback)", EXIT_CRASH)


@contextlib.contextmanager
def _command_environment(defaults: dict[str, str]) -> Iterator[None]:
    """Set ``defaults`` where the user has not, and quiet mlflow's logger, until the command ends."""
    added = [key for key in defaults if key not in os.environ]
    for key in added:
        os.environ[key] = defaults[key]
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
        logger.setLevel(level)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"error: {_one_line(message)}\n")
    raise typer.Exit(code)


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                  line: Any = None) -> None:
    from mlflow_weightviz.options import WeightvizWarning

    if issubclass(category, WeightvizWarning):
        sys.stderr.write(f"warning: {_one_line(str(message))}\n")


@contextlib.contextmanager
def _progress(quiet: bool, description: str) -> Iterator[Callable[[int, int], None]]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=quiet or not console.is_terminal, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _report(result: Any) -> None:
    if result.status == Status.UP_TO_DATE:
        typer.echo(f"run {result.run_id} is up to date: its GIFs match these snapshots and options "
                   "(--force renders again)")
        if not result.layers:  # local copies, when asked for, are listed below
            return
    elif result.status == Status.CLAIMED:
        typer.echo(f"run {result.run_id} is being rendered by another process "
                   f"({result.claimed_by or 'claim tag weightviz.claim'}); nothing done here")
        return
    for layer in result.layers:
        where = [str(w) for w in (layer.artifact_path, layer.local_path) if w]
        extra = [f for f in layer.files if f != layer.file_name]
        typer.echo(f"{layer.layer}: {layer.frames} frames, grid {layer.grid[0]}×{layer.grid[1]} → "
                   f"{', '.join(where) or layer.file_name}" + (f" (+ {', '.join(extra)})" if extra else ""))
    if result.extras:
        typer.echo(f"also: {', '.join(result.extras)}")


# ------------------------------------------------------------------------ commands


@app.command()
@with_render_options
def render(
    run_id: Annotated[str, typer.Argument(help="The MLflow run whose snapshots to render.")],
    options: _Options,
    source: Source = "weights",
    artifact_path: Annotated[str, typer.Option(help="Where the GIFs go in the run.")] = "weightviz",
    tracking_uri: TrackingUri = None,
    log: Annotated[bool, typer.Option("--log/--no-log", help="Log the GIFs to the run.")] = True,
    force: Annotated[bool, typer.Option(help="Render even if the run is up to date.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Local copy of the GIF (one layer).")] = None,
    output_dir: Annotated[Optional[Path], typer.Option(help="Folder for local copies, one GIF per layer.")] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Render a run's snapshots to one GIF per layer and log them to the run."""
    with _errors(debug):
        from mlflow_weightviz.pipeline import render_run

        opts = options()
        with _progress(quiet, "rendering") as progress:
            result = render_run(run_id, opts, source=source, artifact_path=artifact_path, tracking_uri=tracking_uri,
                                log=log, force=force, out=out, output_dir=output_dir, progress=progress,
                                **options.run_args())
        _report(result)


@app.command("render-file")
@with_render_options
def render_file(
    path: Annotated[Path, typer.Argument(help="A snapshot file or folder (.npz, .npy, .safetensors, .pt, pickle).")],
    options: _Options,
    out: Annotated[Optional[Path], typer.Option(help="Output GIF (one layer).")] = None,
    output_dir: Annotated[Optional[Path], typer.Option(
        help="Folder for the GIFs, one per layer; the current folder by default.")] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Render a local snapshot file or folder to GIFs; no MLflow needed."""
    with _errors(debug):
        from mlflow_weightviz.pipeline import render_file as render_file_api

        opts = options()
        with _progress(quiet, "rendering") as progress:
            result = render_file_api(path, opts, out=out, output_dir=output_dir, progress=progress,
                                     **options.run_args())
        _report(result)


@app.command()
@with_render_options_except("step_images", "step_images_every", "caption_metric", "grid", "workers", "metrics", "size",
                            "grid_max_width", "grid_max_pixels", "overview", "overview_stat")
def compare(
    run_ids: Annotated[list[str], typer.Argument(help="The runs to compare, 2 to 8, in panel order.")],
    options: _Options,
    layer: Annotated[str, typer.Option("--layer", "-l", help="The layer to compare (its exact name).")],
    diff: Annotated[bool, typer.Option(
        "--diff", help="Add a panel with the first run minus the second, on its own symmetric scale.")] = False,
    source: Source = "weights",
    out: Annotated[Optional[Path], typer.Option(help="The output file (other formats go beside it).")] = None,
    output_dir: Annotated[Optional[Path], typer.Option(
        help="Folder for the output; the current folder when neither this, --out nor --log-to is given.")] = None,
    log_to: Annotated[Optional[str], typer.Option(
        help="Also log the files to this run under weightviz/compare/ (its status is left alone).")] = None,
    tracking_uri: TrackingUri = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Draw one layer of several runs side by side, one frame per step, under one colour scale."""
    with _errors(debug):
        from mlflow_weightviz.pipeline import compare_runs

        opts = options()
        with _progress(quiet, "comparing") as progress:
            result = compare_runs(run_ids, layer, opts, diff=diff, source=source, tracking_uri=tracking_uri, out=out,
                                  output_dir=output_dir, log_to=log_to, progress=progress, **options.run_args())
        where = [str(p) for p in (*result.artifact_paths, *result.local_paths)]
        typer.echo(f"{result.layer}: {len(result.run_ids)} runs, {result.frames} frames, grid "
                   f"{result.grid[0]}×{result.grid[1]} → {', '.join(where)}")


@app.command("inspect")
def inspect_command(
    run_id: Annotated[str, typer.Argument(help="The MLflow run to inspect.")],
    source: Source = "weights",
    tracking_uri: TrackingUri = None,
    allow_pickle: AllowPickle = False,
    layer: Layer = None,
    debug: Debug = False,
) -> None:
    """List a run's snapshot layers: shape, dtype, count, steps and value range."""
    with _errors(debug):
        from rich.console import Console
        from rich.table import Table

        from mlflow_weightviz.grid import format_value
        from mlflow_weightviz.pipeline import inspect_run

        rows = inspect_run(run_id, source=source, tracking_uri=tracking_uri, allow_pickle=allow_pickle,
                           layers=tuple(layer or ()))
        table = Table(title=f"run {run_id}: {source}")
        for col in ("layer", "shape", "dtype", "snapshots", "first step", "last step", "min", "max"):
            table.add_column(col, justify="left" if col in {"layer", "shape", "dtype"} else "right")
        for r in rows:
            table.add_row(r.layer, "×".join(map(str, r.shape)) or "scalar", r.dtype, str(r.snapshots),
                          str(r.first_step), str(r.last_step), format_value("{x:.6g}", r.min),
                          format_value("{x:.6g}", r.max))
        Console(width=max(100, Console().width)).print(table)


Experiment = Annotated[str, typer.Option("--experiment", "-e", help="Experiment name or id.")]
RunFilter = Annotated[Optional[str], typer.Option(
    "--filter", help="MLflow search filter, e.g. \"params.model = 'mlp' and tags.team = 'vision'\".")]
ArtifactPath = Annotated[str, typer.Option(help="Where the GIFs go in each run.")]

_LABELS: dict[str, str] = {
    Status.RENDERED: "rendered", Status.WOULD_RENDER: "would render", Status.UP_TO_DATE: "up to date",
    Status.NO_SNAPSHOTS: "no snapshots", Status.RUNNING: "running (skipped)",
    Status.CLAIMED: "being rendered elsewhere", Status.FAILED: "failed", Status.ABANDONED: "abandoned",
    Status.CANCELLED: "cancelled (interrupted)"}


def _counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {_LABELS.get(s, s)}" for s, n in counts.items() if n) or "no runs"


def _warn_outcomes(outcomes: Any) -> None:
    for o in outcomes:
        for w in o.warnings:
            sys.stderr.write(f"warning: run {o.run_id}: {_one_line(w)}\n")


@app.command()
@with_render_options
def batch(
    options: _Options,
    experiment: Experiment,
    filter_string: RunFilter = None,
    max_runs: Annotated[Optional[int], typer.Option(help="Look at no more than this many matching runs, newest "
                                                         "first.")] = None,
    force: Annotated[bool, typer.Option(help="Render runs again even if they are up to date.")] = False,
    dry_run: Annotated[bool, typer.Option(help="List what would be done; change nothing.")] = False,
    include_running: Annotated[bool, typer.Option(
        help="Render RUNNING runs too (their status is left alone).")] = False,
    workers: Annotated[int, typer.Option(
        help="Runs rendered at once in local processes; each draws its run's frames in that one process.")] = 1,
    scheduler: Annotated[Optional[str], typer.Option(
        envvar="DASK_SCHEDULER_ADDRESS", show_envvar=True,
        help="Dask scheduler address (tcp://host:8786): render on that cluster instead (pip install "
             "'mlflow-weightviz[dask]').")] = None,
    source: Source = "weights",
    artifact_path: ArtifactPath = "weightviz",
    tracking_uri: TrackingUri = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Render every run of an experiment that has snapshots and is not rendered yet."""
    with _errors(debug):
        from rich.console import Console
        from rich.table import Table

        from mlflow_weightviz.automation import render_experiment, stop_on_signals

        opts = options()
        with stop_on_signals() as stop, _progress(quiet, "runs") as progress:
            report = render_experiment(
                experiment, opts, filter_string=filter_string, max_runs=max_runs, force=force, dry_run=dry_run,
                include_running=include_running, workers=workers, scheduler=scheduler, source=source,
                artifact_path=artifact_path, tracking_uri=tracking_uri, progress=progress, stop=stop,
                **options.run_args())
        _warn_outcomes(report.outcomes)
        console = Console(width=max(100, Console().width))
        title = f"{'dry run: ' if dry_run else ''}experiment {report.experiment_name} ({report.experiment_id})"
        if dry_run:
            plan = Table(title=title)
            plan.add_column("run", no_wrap=True)
            for col in ("name", "plan", "reason"):
                plan.add_column(col)
            for o in report.outcomes:
                plan.add_row(o.run_id, o.run_name, _LABELS.get(o.status, o.status), o.reason)
            console.print(plan)
        summary = Table(title=None if dry_run else title)
        summary.add_column("result")
        summary.add_column("runs", justify="right")
        always = {Status.UP_TO_DATE, Status.NO_SNAPSHOTS, Status.RUNNING, Status.FAILED,
                  Status.WOULD_RENDER if dry_run else Status.RENDERED}
        for status, n in report.counts().items():
            if n or status in always:
                summary.add_row(_LABELS.get(status, status), str(n))
        console.print(summary)
        if report.failed:
            failed = Table(title="failed runs")
            failed.add_column("run", no_wrap=True)
            for col in ("name", "reason"):
                failed.add_column(col)
            for o in report.failed:
                failed.add_row(o.run_id, o.run_name, o.reason)
            console.print(failed)
        typer.echo(f"{'dry run' if dry_run else 'batch'}: {_counts_line(report.counts())}")
        if report.interrupted:
            _fail(f"interrupted by {getattr(stop, 'signal_name', None) or 'a signal'}; runs in progress finished, "
                  "the rest were not started", EXIT_INTERRUPTED)
        if report.failed:
            raise typer.Exit(EXIT_RUNS_FAILED)


@app.command()
@with_render_options
def watch(
    options: _Options,
    experiment: Experiment,
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 30.0,
    since: Annotated[Optional[str], typer.Option(
        help="Only runs that finished after this: an ISO date-time (2024-05-01T12:00) or a duration (2h, 30m, "
             "7d).")] = None,
    once: Annotated[bool, typer.Option(help="Poll once and exit.")] = False,
    max_iterations: Annotated[Optional[int], typer.Option(help="Exit after this many polls.")] = None,
    filter_string: RunFilter = None,
    source: Source = "weights",
    artifact_path: ArtifactPath = "weightviz",
    tracking_uri: TrackingUri = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Render each FINISHED run with snapshots that is not rendered yet, polling until stopped."""
    with _errors(debug):
        from mlflow_weightviz.automation import RunOutcome, stop_on_signals, watch_experiment

        def started(run_id: str, name: str) -> None:
            if not quiet:
                sys.stderr.write(f"looking at run {run_id} ({name})\n")
                sys.stderr.flush()

        def finished(o: RunOutcome) -> None:
            _warn_outcomes([o])
            if o.status == Status.RENDERED:
                typer.echo(f"rendered {o.run_id} ({o.run_name}): {o.layers} GIFs, {o.frames} frames, "
                           f"{o.seconds:.1f} s")
            elif o.status in {Status.FAILED, Status.CLAIMED, Status.ABANDONED}:
                typer.echo(f"{_LABELS[o.status]} {o.run_id} ({o.run_name}): {o.reason}")

        def error(message: str) -> None:
            sys.stderr.write(f"watch: {_one_line(message)}\n")
            sys.stderr.flush()

        def watching(experiment_id: str, name: str) -> None:
            if not quiet:
                sys.stderr.write(f"watching experiment {name} ({experiment_id}) every {interval:g} s "
                                 "(Ctrl-C or SIGTERM stops)\n")
                sys.stderr.flush()

        opts = options()
        with stop_on_signals() as stop:
            report = watch_experiment(
                experiment, opts, interval=interval, since=since, once=once, max_iterations=max_iterations,
                filter_string=filter_string, source=source, artifact_path=artifact_path, tracking_uri=tracking_uri,
                stop=stop, on_start=started, on_outcome=finished, on_error=error, on_watching=watching,
                **options.run_args())
        how = f"stopped by {report.stopped_by}" if report.stopped_by else "done"
        sys.stderr.write(f"watch {how} after {report.polls} poll(s): {_counts_line(report.counts())}\n")
        if report.failed:
            raise typer.Exit(EXIT_RUNS_FAILED)


@app.command()
def demo(
    tracking_uri: TrackingUri = None,
    steps: Annotated[int, typer.Option(help="Training steps.")] = 300,
    every: Annotated[int, typer.Option(help="Take a snapshot every N steps.")] = 10,
    ui: Annotated[bool, typer.Option(
        "--ui", help="Then start the MLflow UI on the demo's store (127.0.0.1) and keep it running until "
                     "Ctrl-C.")] = False,
    port: Annotated[Optional[int], typer.Option(
        help="Port of the MLflow UI; default 5000, or with --ui a free port if 5000 is taken.")] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train a tiny numpy network, log its weight snapshots, render the GIFs and log them to the run."""
    with _errors(debug):
        from mlflow_weightviz.demo import DEFAULT_PORT, choose_port, is_remote, run_demo, serve_ui

        if ui and tracking_uri and is_remote(tracking_uri):
            _fail(f"--ui starts a UI on a local store; {tracking_uri} is a tracking server, its own UI", 2)
        if port is None:
            port = choose_port(DEFAULT_PORT) if ui else DEFAULT_PORT
        with _progress(quiet, "rendering") as progress:
            result = run_demo(tracking_uri=tracking_uri, steps=steps, every=every, progress=progress, port=port)
        typer.echo(f"run id:      {result.run_id}")
        typer.echo(f"experiment:  {result.experiment_id}")
        for path in result.artifact_paths:
            typer.echo(f"artifact:    {path}")
        typer.echo(f"local copy:  {result.local_dir}")
        if not ui:
            if result.ui_command:
                typer.echo(f"open the UI: {result.ui_command}")
            typer.echo(f"then visit:  {result.ui_url}")
            return

        def ready(server: Any) -> None:
            typer.echo(f"MLflow UI:   {server.url} (Ctrl-C stops it)")
            typer.echo(f"the GIF:     {result.ui_url}")

        if not quiet:
            sys.stderr.write(f"starting the MLflow UI on port {port}…\n")
            sys.stderr.flush()
        serve_ui(result, port, on_ready=ready)
        sys.stderr.write("stopped the MLflow UI\n")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mlflow-weightviz {__version__}")
        raise typer.Exit


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Render MLflow runs' weight snapshots as annotated-heatmap GIFs."""


def main() -> None:
    """Entry point of the ``mlflow-weightviz`` console script."""
    app()
