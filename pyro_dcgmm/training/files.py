"""Crash-safe file writing."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from pyro_dcgmm.errors import ConfigError


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it over ``path``.

    A crash at any point leaves either the old file or the new one, never a partial file.  The file
    gets the permissions of a plainly created one (``0o666`` less the umask), not the owner-only
    ones of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~umask)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def writing_into(folder: str | Path, label: str = ""):
    """Within the block, an ``OSError`` (a file where a folder should be, no permission, a
    read-only file system) becomes one :class:`~pyro_dcgmm.errors.ConfigError` line naming
    ``folder`` (after ``label``, such as ``"--out"``)."""
    try:
        yield
    except OSError as error:
        where = f"{label} {str(folder)!r}" if label else repr(str(folder))
        raise ConfigError(f"cannot write into {where}: {error.strerror or error}") from None
