"""A source file: its bytes (plain or gzip, read in blocks on a helper thread), its format
(detected from content), its checksum, and the ``Chunk`` of records every format reader yields."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import queue
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

CHUNK_ROWS = 65536
ID_FIELDS = ("listing_id", "id", "item_id")
FIELDS = ("title", "language", "label_quality", "category", "id")
BLOCK_BYTES = 8 << 20  # bytes read (inflated) at a time; a JSON chunk never spans two blocks
# header names that mark a CSV's first row as a header rather than a listing
_HEADER_NAMES = {"title", "label_quality", "category"}


class IngestError(ValueError):
    """A whole source cannot be read (missing file, missing required column, unknown format)."""


@dataclass
class Chunk:
    """Up to CHUNK_ROWS parsed records of one source, plus the rows rejected while parsing.

    ``read_source`` (and read_jsonl/read_csv/read_parquet) yield plain lists in ``columns``;
    ingest's internal readers may hold pyarrow string arrays there instead (check_chunk takes both).
    """

    columns: dict[str, list]  # FIELDS -> values (str | None)
    rows: list[int]  # 1-based record numbers in the source
    raw: list[str]  # raw text of each parsed record (for quarantine)
    rejected: list[tuple[int, str, str, str]] = field(default_factory=list)  # row, reason, detail, raw


def _as_lists(chunk: Chunk) -> Chunk:
    for f, v in chunk.columns.items():
        if not isinstance(v, list):
            chunk.columns[f] = v.to_pylist()
    return chunk


def _empty_columns() -> dict[str, list]:
    return {f: [] for f in FIELDS}


def _as_str(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON's NaN/Infinity (Python writes them): missing, not the text "nan"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise TypeError(type(value).__name__)


def _utf8_ok(text: str) -> bool:
    """False for strings holding lone surrogates (JSON escapes like \\ud800 that are not text)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class _Bytes:
    """The (inflated) bytes of a file, in blocks of about ``block`` bytes.

    Gzip is recognised by its magic bytes (not the file name); multi-member files and zero padding
    are read like gzip.open does. A truncated gzip does not raise: the blocks end with every byte
    that could be inflated, and ``error`` says why (``tail`` is set by line readers to the partial
    last line of such an input). Corrupt compressed data raises IngestError.
    """

    def __init__(self, path: Path, block: int = BLOCK_BYTES):
        self.path = Path(path)
        self.block = block
        self.error: str | None = None
        self.tail = b""

    def __iter__(self) -> Iterator[bytes]:
        with open(self.path, "rb") as fh:
            magic = fh.read(2)
            fh.seek(0)
            if magic != b"\x1f\x8b":
                while data := fh.read(self.block):
                    yield data
                return
            yield from self._gunzip(fh)

    def _gunzip(self, fh) -> Iterator[bytes]:
        size = self.block
        d = zlib.decompressobj(wbits=31)
        started = False  # inside a member
        buf = b""
        while True:
            if not buf:
                buf = fh.read(size)
                if not buf:
                    if started:
                        while out := d.decompress(b"", size):  # what zlib still holds
                            yield out
                        if not d.eof:
                            self.error = "compressed input ends before its end-of-stream marker"
                    return
            if not started:
                buf = buf.lstrip(b"\x00")  # zero padding after a member
                if not buf:
                    continue
                started = True
            try:
                out = d.decompress(buf, size)
            except zlib.error as exc:
                # Deflate output is only checked by the member's CRC at its end, so the rows already
                # inflated may be garbled (a flipped byte decodes to wrong text, then fails later):
                # none of them can be trusted. A clean truncation (above) is different: every byte
                # inflated before the end is exact.
                raise IngestError(
                    f"{self.path}: corrupt compressed data ({exc}); rows inflated before the damage cannot be "
                    "trusted, so nothing from this file is written: fetch it again"
                ) from exc
            buf = d.unconsumed_tail
            if out:
                yield out
            if d.eof:
                buf = d.unused_data
                d = zlib.decompressobj(wbits=31)
                started = False


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


class _Prefetch:
    """Run an iterator on a helper thread, ``depth`` items ahead: inflating (blocks) and JSON parsing
    (chunks) release the GIL, so they overlap with the row checks of the chunk before."""

    _END = object()

    def __init__(self, items: Iterable, depth: int = 2, name: str = "ingest-read"):
        self._items = items
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._name = name

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterable) -> None:
        it = iter(items)
        try:
            for item in it:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer
            self._put(_Failed(exc))
        finally:
            close = getattr(it, "close", None)
            if close:
                close()

    def __iter__(self) -> Iterator:
        # the thread starts with the iteration, so an iterator that is never used leaks nothing
        thread = threading.Thread(target=self._run, args=(self._items,), daemon=True, name=self._name)
        thread.start()
        try:
            while True:
                item = self._q.get()
                if item is self._END:
                    return
                if isinstance(item, _Failed):
                    raise item.exc
                yield item
        finally:
            self._stop.set()
            thread.join()


def _head(path: Path, size: int = 4096) -> tuple[bytes, str | None]:
    src = _Bytes(path, block=1 << 16)
    head = b""
    gen = iter(src)
    try:
        for block in gen:
            head += block
            if len(head) >= size:
                break
    finally:
        gen.close()  # type: ignore[attr-defined]
    return head[:size], src.error


def check_input_file(path: Path) -> None:
    """A one-line error for an input that is not a readable regular file."""
    path = Path(path)
    if not path.exists():
        raise IngestError(f"{path}: no such file")
    if path.is_dir():
        raise IngestError(f"{path}: is a directory, not an input file")
    if not path.is_file():
        raise IngestError(f"{path}: not a regular file (a FIFO, socket or device); give a file")
    if not os.access(path, os.R_OK):
        raise IngestError(f"{path}: permission denied")


def detect_format(path: Path) -> str:
    """Format from content (not the file name): parquet, jsonl, challenge_csv (header) or csv."""
    with open(path, "rb") as fh:
        if fh.read(4) == b"PAR1":
            return "parquet"
    try:
        head, error = _head(Path(path))
    except OSError as exc:
        raise IngestError(f"{path}: cannot read the start of the file ({exc})") from exc
    if not head and error:
        raise IngestError(f"{path}: cannot read the start of the file ({error})")
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text:
        return "jsonl"  # empty file: zero rows in any format
    lines = [ln.strip() for ln in text.splitlines()[:50] if ln.strip()]  # \n, \r\n or old-Mac \r
    if _json_object(lines[0]):  # not just a leading '{' or '[': "[NUEVO] Celular,CELLPHONES" is CSV
        return "jsonl"
    if sum(ln[:1] == b"{" for ln in lines) * 2 > len(lines):  # JSON objects after a bad first line
        return "jsonl"
    if _json_array(text, lines[0]):  # a JSON array file: read as lines, quarantined as not objects
        return "jsonl"
    first = lines[0].decode("utf-8", "replace").lower()
    try:
        cols = {c.strip().strip('"') for c in next(csv.reader([first]), [])}
    except csv.Error:  # e.g. a bare carriage return in the first line: not a header
        cols = set()
    # a header names the columns; a header without `title` is still a header (and an error later)
    return "challenge_csv" if cols & _HEADER_NAMES else "csv"


def _json_array(text: bytes, first_line: bytes) -> bool:
    """A JSON array (of objects or arrays), not a CSV title that starts with '[' ("[NUEVO] ...")."""
    if text[:1] != b"[":
        return False
    if text[1:].lstrip()[:1] in (b"{", b"[", b"]"):
        return True
    try:
        return isinstance(json.loads(first_line), list)
    except (ValueError, RecursionError):
        return False


def _json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):  # not JSON (or cut by the head's size: the majority rule decides)
        return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
