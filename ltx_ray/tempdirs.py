"""The job's node-local temporary folders, removed however the job ends.

Each is named `ltx-ray-<kind>-<pid>-<random>` in the system's temporary
folder. The process that made it removes it when the work that needed it is
done (`remove_all` in a `finally`, and at exit); one that was killed
outright (SIGKILL, a lost node) cannot, so `sweep` removes the folders of
processes that no longer exist when the next job starts on that node.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path

_OWNED: set[Path] = set()
_NAME = re.compile(r"ltx-ray-[a-z]+-(\d+)-[A-Za-z0-9_]+")


def make(kind: str) -> Path:
    """A new temporary folder of this process (`kind`: val, prep, pair, ckpt, generate, ...)."""
    path = Path(tempfile.mkdtemp(prefix=f"ltx-ray-{kind}-{os.getpid()}-"))
    _OWNED.add(path)
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    _OWNED.discard(path)


def remove_all() -> None:
    """Remove every temporary folder this process made and still holds."""
    for path in list(_OWNED):
        remove(path)


def sweep() -> list[Path]:
    """Remove the temporary folders of processes on this node that have died; returns them."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob("ltx-ray-*-*-*"):
        match = _NAME.fullmatch(path.name)
        if match and path.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM (`kill`, `ray job stop`, a pod's termination) exit through `finally` blocks and atexit.

    Only the main thread may set a handler; elsewhere (a driver run from a thread) nothing changes.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit)


def _exit(signum, frame):
    raise SystemExit(128 + signum)


atexit.register(remove_all)
