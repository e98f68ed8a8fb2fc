"""One way to write a file so that readers see the old file or the whole new one, never a part:
a temporary file in the same folder, flushed and fsynced, then ``os.replace``-d into place."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

_UMASK = os.umask(0o022)  # read the process umask (setting it is the only way), then restore it
os.umask(_UMASK)


def atomic_write(path: Union[str, Path], write: Callable[[BinaryIO], None]) -> Path:
    """``write(f)`` into a binary file object that becomes ``path`` (parent folders created, the
    usual permissions, temporary file removed on any error). Returns ``path`` as a Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
