"""Atomic file writes: write to a temp name in the target's folder, then ``os.replace`` it.

Readers never see half a file (a crash leaves the old file or none), which is what lets checkpoints,
caches, manifests and results be written in place and long jobs resume.

Temp files never outlive their writer for long: one is removed when the write fails, is interrupted
(Ctrl-C) or terminated (SIGTERM, while no other handler owns that signal); one left by a writer that
was killed outright (kill -9, OOM) is removed by the next write beside it. A writer holds an
advisory lock (``flock``) on its temp file for as long as it writes, and the kernel drops the lock
when the process dies, so "unlocked" means "abandoned": a concurrent writer's temp file (another
rank, another shell) is never touched.

Files are created with mode ``0o666`` masked by the user's umask (0644 under umask 022), like any
file ``open()`` creates; ``tempfile.mkstemp`` would give 0600 and hide results from a group.
"""
from __future__ import annotations

import os
import re
import secrets
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: no flock; abandoned temp files are then left for the user
    fcntl = None

_TOKEN_CHARS = 12  # hex digits of the random part of a temp name


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[str]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_temps(path, suffix)
    fd, tmp = _create_temp(path, suffix)
    try:
        with terminate_raises_interrupt():
            yield tmp
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        os.close(fd)  # releases the lock; only after the temp name is gone


def remove_abandoned_temps(path: str | Path, suffix: str = "") -> list[Path]:
    """Delete temp files for ``path`` whose writer is gone (nobody holds their lock); return them."""
    if fcntl is None:
        return []
    path = Path(path)
    # Our names: 12 hex digits. Older cxrfm used mkstemp's 8 characters; those are only recognised with a
    # suffix (".tmp"), so that a user's own ".manifest.csv.backup_1" can never look like one.
    token = r"(?:[0-9a-f]{12}|[a-z0-9_]{8})" if suffix else r"[0-9a-f]{12}"
    pattern = re.compile(re.escape(f".{path.name}.") + token + re.escape(suffix) + r"\Z")
    removed = []
    try:
        candidates = [p for p in path.parent.iterdir() if pattern.match(p.name)]
    except FileNotFoundError:
        return []
    for p in candidates:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue  # already gone, or not ours to read
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live writer holds it (or the file system has no locks: then never guess)
        finally:
            os.close(fd)
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


@contextmanager
def terminate_raises_interrupt() -> Iterator[None]:
    """While active, SIGTERM raises KeyboardInterrupt, so ``finally`` blocks (temp-file removal) run.

    Only where SIGTERM would otherwise end the process on the spot (its default action) and only on
    the main thread (Python delivers signals there); a handler someone else installed (a training
    loop's graceful stop, a web server) is left in charge.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _create_temp(path: Path, suffix: str) -> tuple[int, str]:
    """A new, locked temp file beside ``path``: (fd holding the lock, its path)."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(_TOKEN_CHARS // 2)}{suffix}")
        try:
            # O_EXCL: never reuse a name; mode 0o666 lets the kernel apply the umask, as open() does.
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        if fcntl is None:
            return fd, tmp
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (NFS mounted nolock): write unlocked; cleaners skip it
            return fd, tmp
        try:
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except FileNotFoundError:
            pass
        # A cleaner saw the file in the instant before the lock and removed it: take another name.
        os.close(fd)
    raise FileExistsError(f"{path.parent}: could not create a unique temp file for {path.name}")
