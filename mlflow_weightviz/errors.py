"""The project's own exceptions, each knowing the CLI exit code it maps to.

::

    WeightvizError
    ├── UsageError (ValueError)             exit 2  bad option combination or value
    ├── SnapshotError (ValueError)          exit 3  the data cannot be rendered
    │   ├── SnapshotsNotFoundError                  nothing at --source
    │   ├── SnapshotFormatError                     a file cannot be read safely
    │   ├── PickleNotAllowedError                   a pickle without --allow-pickle
    │   └── ShapeMismatchError                      a layer changes shape over time
    ├── RunNotFoundError (LookupError)      exit 4  unknown run or experiment
    ├── TrackingServerError (ConnectionError) exit 5  the tracking server cannot be reached
    ├── OutputError (OSError)               exit 6  a result could not be written or logged
    └── MissingDependencyError (ImportError) exit 7 an optional package is not installed
"""

from __future__ import annotations

__all__ = [
    "MissingDependencyError",
    "OutputError",
    "PickleNotAllowedError",
    "RunNotFoundError",
    "ShapeMismatchError",
    "SnapshotError",
    "SnapshotFormatError",
    "SnapshotsNotFoundError",
    "TrackingServerError",
    "UsageError",
    "WeightvizError",
]


class WeightvizError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code: int = 1


class UsageError(WeightvizError, ValueError):
    """An option has a bad value, or options that do not go together were given."""

    exit_code = 2


class SnapshotError(WeightvizError, ValueError):
    """The snapshots cannot be turned into frames."""

    exit_code = 3


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


class TrackingServerError(WeightvizError, ConnectionError):
    """The MLflow tracking server or artifact store could not be reached."""

    exit_code = 5


class OutputError(WeightvizError, OSError):
    """A result could not be written locally or logged to the run."""

    exit_code = 6


class MissingDependencyError(WeightvizError, ImportError):
    """An optional dependency is needed for this input or feature."""

    exit_code = 7
