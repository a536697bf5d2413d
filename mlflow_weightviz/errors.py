"""The project's own exceptions, each knowing its CLI exit code and whether a retry may help.

::

    WeightvizError                                     retryable  (base class, never raised itself)
    ├── UsageError (ValueError)               exit 2   no         bad option combination or value
    ├── SnapshotError (ValueError)            exit 3   no         the data cannot be rendered
    │   ├── SnapshotsNotFoundError                                nothing at --source
    │   ├── SnapshotFormatError                                   a file cannot be read safely
    │   ├── PickleNotAllowedError                                 a pickle without --allow-pickle
    │   └── ShapeMismatchError                                    a layer changes shape over time
    ├── RunNotFoundError (LookupError)        exit 4   no         unknown run or experiment
    ├── TrackingServerError (ConnectionError) exit 5   yes        the tracking server cannot be reached
    ├── OutputError (OSError)                 exit 6   yes        a result could not be written or logged
    ├── MissingDependencyError (ImportError)  exit 7   yes        an optional package is not installed
    └── ClaimLostError                        exit 8   yes        another renderer took the run over
                                                                  (render_run reports the run as claimed)

Other exit codes of the command line: 0 success; :data:`EXIT_RUNS_FAILED` (1) ``batch`` or
``watch`` finished but some runs failed; :data:`EXIT_CRASH` (70, ``EX_SOFTWARE``) an
unexpected exception, a bug (``--debug`` shows the traceback); :data:`EXIT_INTERRUPTED`
(130) stopped by Ctrl-C (and ``batch``/``watch`` stopped by either signal);
:data:`EXIT_TERMINATED` (143) ``render``, ``render-file``, ``compare``, ``inspect`` or ``demo`` stopped
by SIGTERM. A command stopped by a signal cleans up as after Ctrl-C: its temporary
folders are removed, its claim released, and nothing partial is logged or written.

``retryable`` says whether the same call may succeed later without anyone changing the
input or the options: ``watch`` tries a failed run again at its next polls only then. A
missing package counts as retryable because it can be installed while a watcher runs.
"""

from __future__ import annotations

__all__ = [
    "EXIT_CRASH",
    "EXIT_INTERRUPTED",
    "EXIT_RUNS_FAILED",
    "EXIT_TERMINATED",
    "ClaimLostError",
    "MissingDependencyError",
    "OutputError",
    "PickleNotAllowedError",
    "RunNotFoundError",
    "ShapeMismatchError",
    "SnapshotError",
    "SnapshotFormatError",
    "SnapshotsNotFoundError",
    "Terminated",
    "TrackingServerError",
    "UsageError",
    "WeightvizError",
]


#: ``batch`` / ``watch``: the command ran to its end but at least one run failed.
EXIT_RUNS_FAILED = 1
#: An unexpected exception (a bug, not a problem of the input): ``EX_SOFTWARE`` of sysexits.h.
EXIT_CRASH = 70
#: Stopped by SIGINT (128 + SIGINT, as shells report it); ``batch``/``watch`` also after SIGTERM.
EXIT_INTERRUPTED = 130
#: ``render``, ``render-file``, ``compare``, ``inspect`` and ``demo`` stopped by SIGTERM (128 + SIGTERM).
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's ``KeyboardInterrupt``.

    Being a ``KeyboardInterrupt``, it passes every ``except Exception`` and runs every
    ``finally`` and context manager on its way out, so a stopped render cleans up as
    after Ctrl-C.
    """


class WeightvizError(Exception):
    """Base class of every error this package raises on purpose.

    Attributes:
        exit_code: The command line's exit code for this error.
        retryable: Whether trying the same thing again later may succeed (the cause is
            outside the input and options, e.g. a server that is down).
    """

    exit_code: int = 1
    retryable: bool = True


class UsageError(WeightvizError, ValueError):
    """An option has a bad value, or options that do not go together were given."""

    exit_code = 2
    retryable = False


class SnapshotError(WeightvizError, ValueError):
    """The snapshots cannot be turned into frames."""

    exit_code = 3
    retryable = False


class SnapshotsNotFoundError(SnapshotError):
    """No snapshot files were found where they were looked for."""


class SnapshotFormatError(SnapshotError):
    """A snapshot file is empty, corrupt, of an unknown format or of an unsafe kind."""


class PickleNotAllowedError(SnapshotFormatError):
    """A pickle was found but unpickling was not explicitly allowed."""


class ShapeMismatchError(SnapshotError):
    """The frames of one layer do not all have the same shape."""


class RunNotFoundError(WeightvizError, LookupError):
    """The MLflow run or experiment does not exist."""

    exit_code = 4
    retryable = False


class TrackingServerError(WeightvizError, ConnectionError):
    """The MLflow tracking server or artifact store could not be reached."""

    exit_code = 5
    retryable = True


class OutputError(WeightvizError, OSError):
    """A result could not be written locally or logged to the run."""

    exit_code = 6
    retryable = True


class MissingDependencyError(WeightvizError, ImportError):
    """An optional dependency is needed for this input or feature."""

    exit_code = 7


class ClaimLostError(WeightvizError):
    """Our claim on a run was overwritten by another renderer before we published.

    The render is abandoned without logging anything; the run is left to the new owner,
    and :func:`~mlflow_weightviz.pipeline.render_run` returns ``status="claimed"``.
    """

    exit_code = 8
