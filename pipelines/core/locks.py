"""Locks where two writers can meet: a lake partition, the registry's champion alias.

* ``file_lock``: an exclusive ``flock`` on a file (local disks, a volume shared by the containers of
  one host). The kernel drops it when the holder dies, so a killed writer never leaves it stuck.
* ``advisory_lock``: a Postgres session advisory lock, for writers on several hosts (distributed
  profile, ``MELI_LOCK_URI``); also released by the server when the holder's connection drops.

Both wait up to ``timeout_s`` (logging who holds the lock), then raise ``LockTimeout`` with a one-line
message naming the lock.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

POLL_S = 0.05


class LockTimeout(RuntimeError):
    pass


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(UTC).isoformat()}


@contextmanager
def file_lock(path: Path, timeout_s: float, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` body."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline, warned = time.monotonic() + timeout_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            held_by = _read_holder(path)
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"{what} is locked by {held_by or 'another process'} ({path}); gave up after {timeout_s:g} s"
                )
            if not warned:
                log.info("waiting for %s, held by %s", what, held_by or "another process")
                warned = True
            time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _read_holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return ""
    return f"pid {h['pid']} on {h['host']} since {h['since'][:19]}" if h.get("pid") else ""


def _key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock`` from a lock name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def advisory_lock(uri: str, name: str, timeout_s: float, what: str) -> Iterator[None]:
    """Hold Postgres advisory lock ``name`` (a session lock on its own connection) for the body."""
    import psycopg2

    dsn = uri.replace("postgresql+psycopg2://", "postgresql://", 1)
    try:
        conn = psycopg2.connect(dsn, connect_timeout=10)
    except psycopg2.Error as exc:
        raise LockTimeout(f"cannot reach the lock database for {what}: {str(exc).strip()}") from exc
    conn.autocommit = True
    try:
        deadline, warned = time.monotonic() + timeout_s, False
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (_key(name),))
                if cur.fetchone()[0]:
                    break
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"{what} is locked by another session (advisory lock {name!r}); gave up after {timeout_s:g} s"
                    )
                if not warned:
                    log.info("waiting for %s (advisory lock %r)", what, name)
                    warned = True
                time.sleep(POLL_S * 4)
        try:
            yield
        finally:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (_key(name),))
    finally:
        conn.close()
