"""One run per output folder: a lock that names its holder and dies with its process.

A run clears what a killed run left under ``.partial`` and staging names before it starts, and
writes its own files under those names; a second run started on the same folder would delete the
first one's files in flight (and the first the second's), and both would fail with "No such file or
directory". So every run holds ``<folder>/.clay-run.lock`` for as long as it may touch a file
there: an exclusive ``fcntl.flock`` on that file, which the kernel drops when the process ends,
however it ends (``kill -9`` included), so a killed run never blocks the next one. The file holds
the holder's pid, host and start time, for the refusal's one line. The holder removes it before it
lets go (so a run leaves no trace in a folder it wrote nothing to); a process that locked a file
which was meanwhile removed or replaced lets go of it and tries again, so two processes never hold
two different lock files of one folder.

Within one process the lock is shared: ``flock`` locks belong to an open file, so a process that
opened the lock file twice would lock itself out; instead each folder's lock is taken once and
counted (the CLI, ``ClayEmbedder.embed_scenes`` and the Ray driver nest). Two calls of one process
writing the same scene at once (a service's threads) are refused by :func:`claim_scenes`.

``flock`` on NFS is emulated with POSIX locks by Linux (since 2.6.12) and holds across hosts; on
file systems without locks the run is refused with the reason rather than run unguarded.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from .publish import OutputError

LOCK_NAME = ".clay-run.lock"

_held: dict[Path, list] = {}  # folder → [open lock file, holders in this process]
_claimed: set[Path] = set()  # chip files being written by a call of this process
_guard = threading.Lock()


def lock_path(folder: Path) -> Path:
    return folder / LOCK_NAME


def holder(folder: Path) -> str:
    """Who holds the folder's lock, as the lock file says (``pid 12, host h, since 2026-…``)."""
    try:
        record = json.loads(lock_path(folder).read_text(encoding="utf-8"))
        return f"pid {record['pid']} on {record['host']}, started {record['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet written its name"


def _acquire(folder: Path):
    """The open, exclusively locked lock file of ``folder``, its holder's record written in it."""
    path = lock_path(folder)
    for _ in range(100):  # another run removing its lock file between our open and our lock: rare, bounded
        try:
            handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held until released
        except OSError as exc:
            raise OutputError(f"{path}: cannot create the output folder's lock file ({exc.strerror or exc})") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise OutputError(f"{folder}: output folder in use by another run ({holder(folder)}); wait for it "
                              "to finish or give another --out") from None  # fmt: skip
        except OSError as exc:
            handle.close()
            raise OutputError(f"{path}: cannot lock the output folder ({exc.strerror or exc}); two runs into it "
                              "would delete each other's files") from None  # fmt: skip
        if _same_file(handle, path):
            break
        handle.close()  # locked a file its holder removed on the way out: lock the one there now
    else:
        raise OutputError(f"{path}: the output folder's lock file keeps being replaced; is another program removing it?")
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(record) + "\n")
        handle.flush()
    except OSError:
        pass  # the lock holds without the record; a refusal then names no holder
    return handle


def _same_file(handle, path: Path) -> bool:
    try:
        here, there = os.fstat(handle.fileno()), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _release(folder: Path, handle) -> None:
    """Remove the lock file while still holding it, then let go (closing drops the flock)."""
    try:
        lock_path(folder).unlink(missing_ok=True)
    except OSError:
        pass  # a read-only folder by now: the file stays, unlocked, and the next run takes it
    handle.close()


@contextmanager
def hold_folders(folders: Iterable[Path]) -> Iterator[None]:
    """Hold the lock of every folder (each once, in a fixed order) for the ``with`` block. Raises
    :class:`OutputError` naming the folder and its holder when another process holds one."""
    taken: list[Path] = []
    try:
        for folder in sorted({Path(os.path.realpath(f)) for f in folders}):  # one entry per folder, links resolved
            with _guard:
                if folder in _held:
                    _held[folder][1] += 1
                else:
                    _held[folder] = [_acquire(folder), 1]
            taken.append(folder)
        yield
    finally:
        with _guard:
            for folder in taken:
                entry = _held[folder]
                entry[1] -= 1
                if not entry[1]:
                    del _held[folder]
                    _release(folder, entry[0])


@contextmanager
def claim_scenes(chip_files: Iterable[Path]) -> Iterator[None]:
    """Mark scenes (by their chip file) as being written by this call, for the ``with`` block.
    Raises :class:`OutputError` when another call of this process is writing one of them."""
    wanted = [Path(os.path.realpath(Path(p).parent)) / Path(p).name for p in chip_files]
    with _guard:
        busy = next((p for p in wanted if p in _claimed), None)
        if busy is not None:
            raise OutputError(f"{busy}: being written by another call in this process; wait for it or write elsewhere")
        _claimed.update(wanted)
    try:
        yield
    finally:
        with _guard:
            _claimed.difference_update(wanted)
