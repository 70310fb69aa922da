"""A run owns its directory: a marker says the folder is a halo_ray run, a lock says who runs it.

* **Marker** ``halo_ray_run.json``, written when a run starts in a folder: a run never writes
  into a non-empty folder without it or a checkpoint of its own (a user's folder is left
  untouched), and ``--resume`` refuses a folder with neither (an empty or mistyped path would
  otherwise start afresh).
* **Lock** ``.lock``, an advisory ``flock`` held for the run's lifetime: a second process is
  refused, naming the holder. The kernel drops it when its process dies, so a lock left by a
  killed run never blocks ``--resume``.
* **Leftovers**: temporary files of writes interrupted by a kill (``.<name>.<random>.tmp``,
  see :func:`halo_ray.results.atomic_write_bytes`) are removed when the run starts again.

Only what the run itself owns is cleaned: its own directory tree, under its lock.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from halo_ray.config import ConfigError

__all__ = [
    "LOCK_FILE", "MARKER_FILE", "RunDirectoryError", "check_not_under_a_file", "claim_run_directory",
    "is_run_directory", "remove_leftover_temp_files",
]

MARKER_FILE = "halo_ray_run.json"
LOCK_FILE = ".lock"


class RunDirectoryError(ConfigError):
    """A run directory that this run may not use (not a run, in use, nothing to resume)."""


def check_not_under_a_file(path: Path, flag: str) -> None:
    """Refuse a directory path that runs through a regular file (``--out file.txt/run``)."""
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise RunDirectoryError(f"{flag} {path}: {part} is a file, not a directory; choose another {flag}")


def is_run_directory(path: Path) -> bool:
    """Whether ``path`` holds a halo_ray run: its marker, or (runs started before markers, or by
    :class:`~halo_ray.run.ActiveLearningRun` directly) a round checkpoint of its own."""
    return (path / MARKER_FILE).is_file() or any((path / "checkpoints").glob("round_*.pt"))


def _holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process"


@contextmanager
def claim_run_directory(path: str | Path, *, resume: bool | None, flag: str = "--out") -> Iterator[Path]:
    """Own ``path`` for a run: check it, lock it, mark it, clean leftovers; release on exit.

    ``resume``: ``False`` starts a run and needs an empty or absent folder; ``True`` continues
    the run in ``path`` and needs its marker; ``None`` (a search trial restarted by Tune)
    continues a run if there is one and starts one otherwise. Errors are
    :class:`RunDirectoryError` (bad input: nothing was written).
    """
    path = Path(path)
    check_not_under_a_file(path, flag)
    marker = path / MARKER_FILE
    if resume is True and not is_run_directory(path):
        raise RunDirectoryError(
            f"--resume: {path} holds no halo_ray run to continue (no {MARKER_FILE}, no checkpoint); check the "
            "folder, or leave --resume out to start a run there"
        )
    if resume is False and path.is_dir() and any(path.iterdir()):
        if is_run_directory(path):
            raise RunDirectoryError(f"{path} already holds a halo_ray run; pass --resume to continue it or choose another {flag}")
        raise RunDirectoryError(
            f"{flag} {path} is a non-empty folder that is not a halo_ray run (no {MARKER_FILE}); "
            f"halo_ray writes only into its own runs: choose another {flag}"
        )
    created = [p for p in (path, *path.parents) if not p.exists()]  # this folder and the parents made for it
    path.mkdir(parents=True, exist_ok=True)
    lock_path = path / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirectoryError(
                f"{path} is in use by another halo_ray process ({_holder(lock_path)}); wait for it to "
                f"finish, or choose another {flag}"
            ) from None
        if resume is False and is_run_directory(path):  # another process started and finished here meanwhile
            raise RunDirectoryError(f"{path} already holds a halo_ray run; pass --resume to continue it or choose another {flag}")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        fresh = not marker.is_file()
        if fresh:
            _write_marker(marker)
        remove_leftover_temp_files(path)
        try:
            yield path
        except BaseException:
            if fresh and {p.name for p in path.iterdir()} <= {MARKER_FILE, LOCK_FILE}:
                _unclaim(path, made=created)  # failed before writing anything: leave no trace
            raise
    finally:
        os.close(fd)  # releases the lock


def _unclaim(path: Path, *, made: list[Path]) -> None:
    """Remove the marker and lock of a run that wrote nothing else, and the folders ``made``
    for it (the run's own, then its new parents), innermost first, each only while empty."""
    (path / MARKER_FILE).unlink(missing_ok=True)
    (path / LOCK_FILE).unlink(missing_ok=True)
    for folder in made:
        try:
            folder.rmdir()
        except OSError:  # something else is in it now: it stays, and so do its parents
            break


def _write_marker(marker: Path) -> None:
    from halo_ray import __version__
    from halo_ray.results import atomic_write_bytes

    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    body = json.dumps({"halo_ray_run": 1, "halo_ray_version": __version__, "created": created}, indent=2)
    atomic_write_bytes(marker, lambda tmp: tmp.write_text(body))


def remove_leftover_temp_files(path: Path) -> list[Path]:
    """Remove ``.<name>.<random>.tmp`` files that interrupted atomic writes left under ``path``."""
    removed = [p for p in path.rglob(".*.tmp") if p.is_file()]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed
