"""Files written whole or not at all, and a full disk named for what was being written.

Every state change of the project ends in one of these: ``atomic_write_bytes``/``atomic_write_json``
(a small file: temp, fsync, rename), ``atomic_file`` (a temp path to write, renamed on success),
``atomic_tree`` (a directory swapped in whole). A write that meets a full disk raises ``NoSpaceLeft``
naming the file (``writing``)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class NoSpaceLeft(OSError):
    """A write that ran out of disk (ENOSPC, EDQUOT, or numpy's short write on a full disk), naming
    what was being written: ``no space left on device writing <path>``."""

    def __init__(self, path, detail: str = ""):
        super().__init__(errno.ENOSPC, "no space left on device", str(path))
        self.path, self.detail = str(path), detail

    def __str__(self) -> str:
        return f"no space left on device writing {self.path}"

    def __reduce__(self):  # crosses process pools whole (OSError pickles its args otherwise)
        return (type(self), (self.path, self.detail))


_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")  # numpy's tofile, errno lost


# what a C++ writer (torch.save's stream) says when a write fails: the errno is lost
_STREAM_FAILED = re.compile(r"iostream error|unexpected pos|PytorchStreamWriter failed|file write failed")
LOW_SPACE_BYTES = 1 << 20  # a failed write with less than this free beside it: the disk was full


def no_space_at(path) -> bool:
    """Whether the filesystem holding ``path`` (or its nearest existing parent) has next to no space
    left (``os.statvfs``: less than ``LOW_SPACE_BYTES`` free for an unprivileged writer, or no inodes)."""
    try:
        where = next(p for p in (Path(path), *Path(path).parents) if p.exists())
        st = os.statvfs(where)
    except (OSError, StopIteration):
        return False
    return st.f_bavail * st.f_frsize < LOW_SPACE_BYTES or (st.f_files > 0 and st.f_favail == 0)


def disk_full(exc: BaseException, path) -> bool:
    """Whether ``exc`` (raised writing ``path``) means the disk (or quota) is full."""
    if isinstance(exc, RuntimeError) and _STREAM_FAILED.search(str(exc)):  # torch.save on a full disk
        return no_space_at(path)
    if not isinstance(exc, OSError):
        return False
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(exc):
        return True
    m = _SHORT_WRITE.search(str(exc))
    if m is None:
        return False
    try:  # a short write says nothing of why: full only if the missing bytes do not fit any more
        free = shutil.disk_usage(next(p for p in Path(path).parents if p.exists())).free
    except (OSError, StopIteration):
        return False
    return free < int(m.group(1)) - int(m.group(2))


@contextmanager
def writing(path) -> Iterator[None]:
    """Re-raise a full disk met while writing ``path`` as NoSpaceLeft naming it (the innermost
    ``writing`` names the file; an outer one, e.g. a tree's, keeps that name)."""
    try:
        yield
    except NoSpaceLeft:
        raise
    except (OSError, RuntimeError) as exc:
        if disk_full(exc, path):
            raise NoSpaceLeft(path, str(exc)) from exc
        raise


def fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``path`` whole or not at all (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with writing(path), open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_json(path: Path, obj) -> Path:
    return atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path`` to write; renamed over ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with writing(path):
            yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_tree(final: Path) -> Iterator[Path]:
    """Yield a temp dir beside ``final`` (a work-dir output: an embedding, a model bundle); when the
    block succeeds it replaces ``final``, so no reader sees a half-written tree. Not for the lake,
    whose partitions are versioned (``commit_partition``)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with writing(final):
            yield tmp
            fsync_tree(tmp)
        old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when the file does not exist."""
    return json.loads(Path(path).read_text()) if Path(path).exists() else None


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class BundleCorrupt(ValueError):
    """A bundle file that cannot be read, in one line: ``model v2: bundle file encoder.json is corrupt:
    <reason>`` (the version is added by whoever knows it: ``for_version``)."""

    def __init__(self, file: str, reason: str, version: str | None = None):
        self.file, self.reason, self.version = file, reason, version
        super().__init__(str(self))

    def __str__(self) -> str:
        who = f"model v{self.version}: " if self.version else ""
        return f"{who}bundle file {self.file} is corrupt: {self.reason}"

    def __reduce__(self):
        return (type(self), (self.file, self.reason, self.version))

    def for_version(self, version: str) -> BundleCorrupt:
        return BundleCorrupt(self.file, self.reason, str(version))


@contextmanager
def reading(root: Path, path: Path) -> Iterator[None]:
    """Any failure to read or parse ``path`` (a file of the bundle at ``root``) as BundleCorrupt."""
    try:
        yield
    except (BundleCorrupt, ImportError):  # a missing package is not a corrupt file
        raise
    except Exception as exc:  # JSON, pickle/zip (torch), numpy headers, missing keys or shapes
        try:
            name = Path(path).relative_to(root).as_posix()
        except ValueError:
            name = str(path)
        if isinstance(exc, FileNotFoundError):
            reason = "the file is missing"
        else:
            first = next((line for line in str(exc).splitlines() if line.strip()), "")
            reason = f"{type(exc).__name__}: {' '.join(first.split())[:200]}" if first else type(exc).__name__
        raise BundleCorrupt(name, reason) from exc
