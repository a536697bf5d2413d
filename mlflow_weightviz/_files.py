"""Writing a local file so it appears complete or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mlflow_weightviz.errors import OutputError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: setting the umask later would race with threads creating files.
_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``target``; on success it is renamed to ``target``.

    On any error the temporary file is removed and ``target`` is left as it was.

    Raises:
        OutputError: The file cannot be created, written or renamed.
    """
    tmp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        msg = f"cannot write {target}: {exc.strerror or exc}"
        raise OutputError(msg) from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
