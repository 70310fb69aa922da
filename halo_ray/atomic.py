"""Atomic file writes: a temporary file beside the target, then a rename onto it.

Readers see the old file or the whole new one, and a killed writer leaves a ``.tmp`` file
only. No dependencies beyond the standard library, so every layer (data, results, runs)
writes through it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# read once at import: setting the umask to read it is not thread-safe (the superpixel cache
# writes from worker threads), so it is set and restored here, before any thread runs
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so readers never see half a file.

    The file gets the mode a plain ``open`` would give (``0o666 & ~umask``): mkstemp's 0600
    would hide results and caches from others on shared storage.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["atomic_write_bytes"]
