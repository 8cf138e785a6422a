"""One run per run folder: an exclusive `flock` on RUN_DIR/.repfusion.lock, held for the run's whole life.

The kernel releases the lock when the process ends, however it ends (a SIGKILL included), so a killed run
never leaves a stale lock behind and `--resume` can always take it again. The lock file holds the holder's
process id, for the refusal's sentence; it is never removed (removing it would let a third run lock a new
file while the second still holds the old one).
"""

from __future__ import annotations

import fcntl
import os
import weakref
from pathlib import Path
from typing import Any

from ..errors import RepFusionError

LOCK_NAME = ".repfusion.lock"

_HELD: dict[str, tuple[int, object]] = {}  # real path of a run folder -> (open lock file, token of this hold)


def _still_ours(key: str, path: Path) -> bool:
    """The held lock is on the file now at `path` (the folder was not deleted and made again since)."""
    try:
        return os.fstat(_HELD[key][0]).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def lock_run_dir(run_dir: str | os.PathLike, owner: Any = None) -> None:
    """Take the run folder's lock (creating the folder), or refuse in one sentence if another run holds it.

    Re-entrant within a process (a resume run in the same process takes it again). With `owner`, the lock is
    released when that object is garbage-collected (the run's module); otherwise when the process ends."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    key = os.path.realpath(run_dir)
    if key in _HELD:
        if _still_ours(key, path):
            return
        release_run_dir(run_dir)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)  # 0666 less the umask, as a plain open
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        who = f" (process {holder})" if holder.isdigit() else ""
        raise RepFusionError(f"Another repfusion run{who} is using {run_dir}; wait for it to end or give "
                             "another --run-dir.") from None
    except OSError:  # a file system without flock (ENOLCK, EOPNOTSUPP): run unlocked, as before this lock existed
        os.close(fd)
        return
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    token = object()
    _HELD[key] = (fd, token)
    if owner is not None:
        weakref.finalize(owner, _release, key, token)


def _release(key: str, token: object) -> None:
    held = _HELD.get(key)
    if held is not None and held[1] is token:  # this hold, not a later one that reused the descriptor number
        del _HELD[key]
        os.close(held[0])  # closing the last descriptor of the open file releases the flock


def release_run_dir(run_dir: str | os.PathLike) -> None:
    """Give the lock back before the process ends (nothing happens if this process does not hold it)."""
    key = os.path.realpath(run_dir)
    if key in _HELD:
        _release(key, _HELD[key][1])
