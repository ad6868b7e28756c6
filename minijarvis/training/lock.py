"""One writer per output folder: ``OUTPUT/.lock`` names the process that writes there.

train.py, eval.py, probe.py and study.py take it on their output folder before writing
anything (:func:`output_lock`); a second run into the same folder stops with one line naming
the first (pid and host). The lock file appears whole (written aside, then hard-linked into
place, which fails if one exists), and is removed when the run ends, however it ends short of
a kill. A lock left by a killed run is taken over: same host and ``os.kill(pid, 0)`` finds no
such process. A lock from another host cannot be checked: the run refuses and says which file
to delete if that run is gone.
"""
from __future__ import annotations

import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

from minijarvis.errors import InputError

LOCK = ".lock"


def _holder(path: Path) -> tuple[int, str] | None:
    """(pid, host) written in a lock file; None if it is gone or unreadable."""
    try:
        pid, host = path.read_text().split()
        return int(pid), host
    except (OSError, ValueError):
        return None


def _alive(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return True  # cannot tell from here: assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _create(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` unless it exists (atomically: no reader sees it empty)."""
    aside = path.with_name(f"{path.name}.{os.getpid()}")
    aside.write_text(text)
    try:
        os.link(aside, path)
        return True
    except FileExistsError:
        return False
    finally:
        aside.unlink(missing_ok=True)


@contextmanager
def output_lock(folder, flag: str = "--output-dir"):
    """Hold ``folder/.lock`` while the block runs (the folder is created if needed, and removed
    again if it is still empty at the end). InputError if a live process holds it."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path, mine = folder / LOCK, f"{os.getpid()} {socket.gethostname()}\n"
    for _ in range(3):
        if _create(path, mine):
            break
        holder = _holder(path)
        if holder is not None and _alive(*holder):
            pid, host = holder
            raise InputError(f"{folder}: another run is writing here (pid {pid} on {host}); wait for it "
                             f"or use another {flag} (if no such run exists, delete {path})")
        if _holder(path) == holder:  # still the dead one: take it over
            print(f"warning: {path}: taking over the lock of a run that is gone "
                  f"({'pid %d' % holder[0] if holder else 'unreadable'})", file=sys.stderr)
            path.unlink(missing_ok=True)
    else:
        raise InputError(f"{path}: could not take the lock (other runs keep taking it)")
    try:
        yield path
    finally:
        try:
            if path.read_text() == mine:
                path.unlink()
            if created and not any(folder.iterdir()):
                folder.rmdir()
        except OSError:
            pass
