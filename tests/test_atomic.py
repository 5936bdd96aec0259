"""atomic_path: replace-or-nothing writes, umask-respecting modes, no temp file outliving its writer."""
from __future__ import annotations

import fcntl
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from cxrfm.atomic import atomic_path, remove_abandoned_temps, terminate_raises_interrupt


def _write(path, text: str) -> None:
    with atomic_path(path, suffix=".tmp") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_new_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        _write(tmp_path / "out.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == mode


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, exc):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(exc):
        with atomic_path(target, suffix=".tmp") as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise exc("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_abandoned_temp_is_removed_and_a_live_writers_is_kept(tmp_path):
    target = tmp_path / "images-abc-128.npy"
    abandoned = tmp_path / ".images-abc-128.npy.k3j_x9qa.tmp"  # the mkstemp name an older cxrfm left
    abandoned.write_bytes(b"\0" * 1024)
    live = tmp_path / ".images-abc-128.npy.0123456789ab.tmp"
    live.write_bytes(b"\0" * 1024)
    unrelated = tmp_path / ".other.npy.k3j_x9qa.tmp"
    unrelated.write_bytes(b"x")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a concurrent writer (another rank) holds it
        _write(target, "new")
        assert target.read_text() == "new"
        assert not abandoned.exists() and live.exists() and unrelated.exists()
    finally:
        os.close(fd)
    assert remove_abandoned_temps(target, ".tmp") == [live]  # its writer is gone now


def test_sigterm_during_a_write_removes_the_temp_file(tmp_path):
    """A SIGTERM'd writer (cxrfm prepare killed by a scheduler) leaves neither temp file nor target."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from cxrfm.atomic import atomic_path
        try:
            with atomic_path(Path({str(tmp_path)!r}) / "big.npy", suffix=".tmp") as tmp:
                Path(tmp).write_bytes(b"0" * 1_000_000)
                print("writing", flush=True)
                time.sleep(60)
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # mid-write: the temp exists
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(tmp_path.iterdir()) == []


def test_sigterm_handler_is_restored_and_others_are_left_alone():
    def graceful(signum, frame):  # a training loop's "stop after this step"
        pass

    old = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # whatever the test runner set, start from the default
    try:
        with terminate_raises_interrupt():
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        signal.signal(signal.SIGTERM, graceful)
        with terminate_raises_interrupt():
            assert signal.getsignal(signal.SIGTERM) is graceful
    finally:
        signal.signal(signal.SIGTERM, old)


def test_files_that_only_look_like_temps_are_never_removed(tmp_path):
    keep = [tmp_path / ".m.csv.backup_1", tmp_path / ".m.csv.0123456789ab.bak", tmp_path / ".m.csv.0123456789"]
    for p in keep:
        p.write_text("user data")
    abandoned = tmp_path / ".m.csv.0123456789ab"
    abandoned.write_text("half")
    with atomic_path(tmp_path / "m.csv") as tmp, open(tmp, "w") as f:
        f.write("a,b\n")
    assert all(p.exists() for p in keep) and not abandoned.exists()


def test_file_system_without_locks_still_writes_and_never_deletes_temps(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(37, "No locks available")  # ENOLCK, as on an NFS mount with nolock

    left = tmp_path / ".out.json.k3j_x9qa.tmp"
    left.write_bytes(b"maybe another host's write in progress")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    _write(tmp_path / "out.json", "{}")
    assert (tmp_path / "out.json").read_text() == "{}" and left.exists()
