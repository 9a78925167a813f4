"""Ingestion: MeLi listing files -> partitioned Parquet lake, with quarantine and a manifest.

Every row read ends either in ``lake/listings/ingest_date=D/`` or in ``lake/quarantine/ingest_date=D/``
with a reason code; the manifest records the counts and the conservation check
(rows read = rows written + rows quarantined). Files are streamed in chunks, so memory is bounded.

Speed: files are read in multi-MiB blocks (gzip inflated on a helper thread), JSON chunks are parsed
by pyarrow in C++ (falling back to per-line parsing only for the part of a chunk holding a bad
line), and the row checks, content ids and splits run column-wise on Arrow arrays.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import queue
import re
import sys
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipelines.lake import (
    LISTING_SCHEMA,
    QUARANTINE_SCHEMA,
    SCHEMA_VERSION,
    atomic_write_json,
    commit_partition,
    current_version,
    partition_dir,
    read_manifest,
)
from pipelines.settings import Settings

log = logging.getLogger(__name__)

FORMATS = ("auto", "jsonl", "challenge_csv", "csv", "parquet")
MAX_TITLE_CHARS = 1000  # hard ingest limit; GX applies the (softer) configured bounds
CHUNK_ROWS = 65536
LANGUAGES = {
    "spanish": "spanish",
    "es": "spanish",
    "es-ar": "spanish",
    "es_ar": "spanish",
    "espanol": "spanish",
    "español": "spanish",
    "portuguese": "portuguese",
    "pt": "portuguese",
    "pt-br": "portuguese",
    "pt_br": "portuguese",
    "portugues": "portuguese",
    "português": "portuguese",
}
ID_FIELDS = ("listing_id", "id", "item_id")
FIELDS = ("title", "language", "label_quality", "category", "id")
SPLITS = (("test", 15), ("validation", 10))  # percent of hash space; the rest is train

# JSON fast path: parse a whole chunk in C++, ignoring the fields we do not use.
_JSON_SCHEMA = pa.schema([(f, pa.string()) for f in ("title", "language", "label_quality", "category") + ID_FIELDS])
_JSON_PARSE = pajson.ParseOptions(explicit_schema=_JSON_SCHEMA, unexpected_field_behavior="ignore")
_JSON_BLOCK = 1 << 20  # pyarrow parses a chunk in blocks of this size, in parallel
_FAST_MIN_LINES = 256  # a failing fast-path range is bisected down to this many lines, then parsed per line
BLOCK_BYTES = 8 << 20  # bytes read (inflated) at a time; a JSON chunk never spans two blocks
_BOM = b"\xef\xbb\xbf"
# header names that mark a CSV's first row as a header rather than a listing
_HEADER_NAMES = {"title", "label_quality", "category"}

QUARANTINE_REASONS = (
    "bad_json",
    "not_an_object",
    "bad_encoding",
    "bad_csv_row",
    "bad_field_type",
    "blank_line",
    "missing_title",
    "empty_title",
    "title_too_long",
    "bad_characters",
    "unknown_language",
    "missing_category",
    "duplicate",
    "truncated_input",
)


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


# ------------------------------------------------------------------------------------------
# Bytes: plain or gzip, in blocks; a truncated gzip ends early with a recorded error, a corrupt one fails
# ------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------
# Format detection
# ------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------
# JSONL
# ------------------------------------------------------------------------------------------
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


def _parse_json_line(n: int, line: bytes, chunk: Chunk) -> None:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        chunk.rejected.append((n, "bad_encoding", str(exc), line.decode("utf-8", "backslashreplace")))
        return
    if not text.strip():
        chunk.rejected.append((n, "blank_line", "empty line", text))
        return
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        chunk.rejected.append((n, "bad_json", str(exc), text))
        return
    except RecursionError:  # nested deeper than the parser's stack: broken like any other line
        chunk.rejected.append((n, "bad_json", "JSON nested too deeply to parse", text))
        return
    if not isinstance(obj, dict):
        chunk.rejected.append((n, "not_an_object", f"JSON {type(obj).__name__}, expected an object", text))
        return
    try:
        values = {f: _as_str(obj.get(f)) for f in FIELDS if f != "id"}
        values["id"] = next((_as_str(obj[k]) for k in ID_FIELDS if obj.get(k) is not None), None)
    except TypeError as exc:
        chunk.rejected.append((n, "bad_field_type", f"a field holds a JSON {exc}, expected a string", text))
        return
    if not all(v is None or _utf8_ok(v) for v in values.values()):
        chunk.rejected.append((n, "bad_encoding", "a field holds a lone UTF-16 surrogate escape", text))
        return
    for f in FIELDS:
        chunk.columns[f].append(values[f])
    chunk.rows.append(n)
    chunk.raw.append(text)


def _line_blobs(src: _Bytes, chunk_rows: int) -> Iterator[tuple[bytes, int, int, int]]:
    """(data, a, b, n): data[a:b] holds n complete lines, each ending in b"\\n", n <= chunk_rows.

    Regions never span two blocks (no copying of whole chunks); a line that does is carried into
    the next block. A leading BOM is dropped. The partial last line of a truncated input is not
    yielded; it is left in ``src.tail``."""
    carry = b""
    bom = True
    blocks = iter(_Prefetch(src))
    block = next(blocks, None)
    while block is not None:
        following = next(blocks, None)  # look ahead: the last block takes the last line along
        end = following is None
        data = carry + block if carry else block
        block = following
        if bom:
            if len(data) < len(_BOM) and not end:
                carry = data
                continue
            if data.startswith(_BOM):
                data = data[len(_BOM) :]
            bom = False
        if end and data and src.error is None and not data.endswith(b"\n"):
            data += b"\n"  # the last line needs no newline
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if cut == 0:
            continue
        n = data.count(b"\n", 0, cut)
        if n <= chunk_rows:
            yield data, 0, cut, n
            continue
        nl = _newlines(np.frombuffer(data, np.uint8, count=cut))
        for i in range(0, n, chunk_rows):
            j = min(i + chunk_rows, n)
            yield data, (int(nl[i - 1]) + 1 if i else 0), int(nl[j - 1]) + 1, j - i
    src.tail = carry


def _newlines(view: np.ndarray, step: int = 1 << 20) -> np.ndarray:
    """Positions of b"\\n" in a uint8 array, scanned in cache-sized slices."""
    if len(view) <= step:
        return np.flatnonzero(view == 10)
    parts = [np.flatnonzero(view[a : a + step] == 10) + a for a in range(0, len(view), step)]
    return np.concatenate(parts)


class _Lines:
    """The n lines of data[a:b]: line i is data[starts[i]:ends[i]] (ends point at the b"\\n")."""

    def __init__(self, data: bytes, a: int, b: int, n: int):
        self.blob = data
        self.bytes = np.frombuffer(data, np.uint8)
        self.ends = _newlines(self.bytes[a:b]) + a
        if len(self.ends) != n:  # pragma: no cover - _line_blobs guarantees it
            raise AssertionError(f"{len(self.ends)} lines in a region of {n}")
        self.starts = np.empty(n, dtype=np.int64)
        if n:
            self.starts[0] = a
            self.starts[1:] = self.ends[:-1] + 1

    def line(self, i: int) -> bytes:
        return self.blob[self.starts[i] : self.ends[i]].rstrip(b"\r")


class _LineRaw(list):
    """Raw text of parsed rows, decoded only for the few rows that end in quarantine."""

    def __init__(self, lines: _Lines, row_line: np.ndarray):
        super().__init__()
        self._lines = lines
        self._row_line = row_line

    def __getitem__(self, i):  # type: ignore[override]
        return self._lines.line(int(self._row_line[i])).decode("utf-8", "backslashreplace")

    def __len__(self) -> int:
        return len(self._row_line)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _utf8_valid(blob: bytes, a: int, b: int) -> bool:
    """Whether blob[a:b] is valid UTF-8, checked by Arrow without copying."""
    offsets = pa.py_buffer(np.array([a, b], dtype=np.int64))
    arr = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(blob)])
    try:
        arr.validate(full=True)
        return True
    except pa.ArrowInvalid:
        return False


def _fast_range(lines: _Lines, i: int, j: int, ascii_blob: bool) -> list[pa.Array] | None:
    """Parse lines [i, j) with pyarrow, or None when any of them needs the per-line path.

    Only ranges where every line starts with '{' qualify: together with the row count check this
    means one JSON object per line (blank lines, `null` lines and several values on one line all
    go the per-line way; pyarrow also crashes on a leading `null`). Invalid UTF-8 anywhere in a
    line, and values that are not strings (pyarrow rejects them against the string schema), also
    go the per-line way, so both paths give the same result. Returns title, language,
    label_quality, category and id (the first of listing_id, id, item_id that is not null).
    """
    if not (lines.bytes[lines.starts[i:j]] == 0x7B).all():
        return None
    blob = lines.blob
    a, b = int(lines.starts[i]), int(lines.ends[j - 1]) + 1
    if not ascii_blob and not _utf8_valid(blob, a, b):
        return None
    buf = pa.py_buffer(blob)[a:b]
    block = _JSON_BLOCK
    while True:
        try:
            table = pajson.read_json(
                pa.BufferReader(buf),
                read_options=pajson.ReadOptions(block_size=block),
                parse_options=_JSON_PARSE,
            )
            break
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            if "straddl" in str(exc) and block < b - a:  # a line longer than a block: one block
                block = b - a + 1
                continue
            return None
    if table.num_rows != j - i:
        return None
    cols = [table.column(f).combine_chunks() for f in ("title", "language", "label_quality", "category")]
    ids = [table.column(k).combine_chunks() for k in ID_FIELDS]
    given = [x for x in ids if x.null_count < len(x)]
    cols.append(pc.coalesce(*ids) if len(given) > 1 else given[0] if given else pa.nulls(j - i, pa.string()))
    return cols


def _parse_range(lines: _Lines, i: int, j: int, first: int, ascii_blob: bool, out: list) -> None:
    arrays = _fast_range(lines, i, j, ascii_blob)
    if arrays is not None:
        out.append((i, j, arrays, None))
        return
    if j - i > _FAST_MIN_LINES:  # isolate the bad lines, keep the C++ path for the rest
        mid = (i + j) // 2
        _parse_range(lines, i, mid, first, ascii_blob, out)
        _parse_range(lines, mid, j, first, ascii_blob, out)
        return
    slow = Chunk(_empty_columns(), [], [])
    for k in range(i, j):
        _parse_json_line(first + k, lines.line(k), slow)
    out.append((i, j, None, slow))


def _json_chunk(data: bytes, a: int, b: int, n: int, first: int, ascii_data: bool | None = None) -> Chunk:
    """Parse the n lines of data[a:b] (line numbers first..first+n-1) into a Chunk with Arrow columns."""
    lines = _Lines(data, a, b, n)
    pieces: list = []
    _parse_range(lines, 0, n, first, data.isascii() if ascii_data is None else ascii_data, pieces)
    if len(pieces) == 1 and pieces[0][2] is not None:
        columns = dict(zip(FIELDS, pieces[0][2], strict=True))
        return Chunk(columns, list(range(first, first + n)), _LineRaw(lines, np.arange(n)))  # type: ignore[arg-type]
    cols: dict[str, list] = {f: [] for f in FIELDS}
    row_line: list[np.ndarray] = []
    rejected: list[tuple[int, str, str, str]] = []
    for i, j, arrays, slow in pieces:
        if arrays is not None:
            for f, arr in zip(FIELDS, arrays, strict=True):
                cols[f].append(arr)
            row_line.append(np.arange(i, j))
        else:
            for f in FIELDS:
                cols[f].append(pa.array(slow.columns[f], pa.string()))
            row_line.append(np.asarray(slow.rows, dtype=np.int64) - first)
            rejected += slow.rejected
    lines_of_rows = np.concatenate(row_line) if row_line else np.empty(0, np.int64)
    columns = {f: pa.concat_arrays(v) for f, v in cols.items()}
    rows = (lines_of_rows + first).tolist()
    return Chunk(columns, rows, _LineRaw(lines, lines_of_rows), rejected)  # type: ignore[arg-type]


def _truncated(n: int, error: str, tail: bytes) -> Chunk:
    detail = f"input ends early or is corrupt after record {n - 1}: {error}"
    return Chunk(_empty_columns(), [], [], [(n, "truncated_input", detail, tail.decode("utf-8", "backslashreplace"))])


def _read_jsonl(path: Path, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
    src = _Bytes(path)
    first = 1
    seen, ascii_data = None, False
    for data, a, b, n in _line_blobs(src, chunk_rows):
        if data is not seen:  # one check per block
            seen, ascii_data = data, data.isascii()
        yield _json_chunk(data, a, b, n, first, ascii_data)
        first += n
    if src.error is not None:
        yield _truncated(first, src.error, src.tail)


def read_jsonl(path: Path, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
    for chunk in _read_jsonl(path, chunk_rows):
        yield _as_lists(chunk)


# ------------------------------------------------------------------------------------------
# CSV
# ------------------------------------------------------------------------------------------
class _TextStream(io.RawIOBase):
    """The bytes of a (maybe gzipped) file as a readable stream. After a truncated or corrupt gzip,
    the bytes after the last newline are held back (``src.tail``): no partial record is parsed."""

    def __init__(self, path: Path):
        self.src = _Bytes(path)
        self._blocks = iter(_Prefetch(self.src))
        self._hold = b""  # bytes after the last newline seen so far
        self._buf = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while not self._buf and not self._done:
            block = next(self._blocks, None)
            if block is None:
                self._done = True
                if self.src.error is None:
                    self._buf, self._hold = memoryview(self._hold), b""
                else:
                    self.src.tail, self._hold = self._hold, b""
                return
            data = self._hold + block if self._hold else block
            cut = data.rfind(b"\n") + 1
            self._buf, self._hold = memoryview(data)[:cut], data[cut:]

    def readinto(self, b) -> int:
        self._fill()
        k = min(len(b), len(self._buf))
        b[:k] = self._buf[:k]
        self._buf = self._buf[k:]
        return k

    @property
    def error(self) -> str | None:
        return self.src.error

    def close(self) -> None:
        if not self._done:
            self._done = True
            close = getattr(self._blocks, "close", None)
            if close:
                close()
        super().close()


def read_csv(path: Path, header: bool, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
    """Challenge CSV (header with at least ``title``) or headerless ``title,category``/``title``."""
    csv.field_size_limit(sys.maxsize)
    raw_stream = _TextStream(path)
    text = io.TextIOWrapper(
        io.BufferedReader(raw_stream, 1 << 20), encoding="utf-8-sig", errors="surrogateescape", newline=""
    )
    lines: list[str] = []  # the physical lines of the record being parsed
    # newline="" ends a line at \n, \r\n or a bare \r. In a file whose lines end in \n, a bare \r
    # is part of a record (a title pasted with one): read it as a space, so the record is neither
    # split into two rows (a cut title, then a title-only row) nor quarantined as two lines.
    # A file of old-Mac \r line endings has more bare \r than \n in its head (usually no \n).
    head, _ = _head(path, 1 << 16)
    lf = head.count(b"\n")
    lf_lines = lf > 0 and lf >= head.count(b"\r") - head.count(b"\r\n")

    def physical_lines() -> Iterator[str]:
        cut = ""  # the pieces of a record cut by bare \r (each piece's only \r is its last char)
        for line in text:
            if lf_lines and line.endswith("\r"):
                cut += line
                continue
            lines.append(cut + line)
            yield cut.replace("\r", " ") + line
            cut = ""
        if cut:  # the file ends in a bare \r
            lines.append(cut)
            yield cut.replace("\r", " ")

    reader = csv.reader(physical_lines())
    names: list[str]
    try:
        if header:
            names = [c.strip().lower().lstrip("\ufeff") for c in next(reader, [])]
            if "title" not in names:
                raise IngestError(f"{path}: CSV header {names} has no 'title' column")
        else:
            names = ["title", "category"]
        idx = {f: names.index(f) for f in ("title", "language", "label_quality", "category") if f in names}
        id_col = next((names.index(k) for k in ID_FIELDS if k in names), None)
        chunk = Chunk(_empty_columns(), [], [])
        n = 0
        while True:
            lines.clear()
            try:
                row = next(reader)
                error = f"one CSV record spans {len(lines)} lines (an unbalanced quote?)" if len(lines) > 1 else ""
            except StopIteration:
                break
            except csv.Error as exc:
                error = str(exc)
            if error:  # titles are one line: quarantine each line as it is, never a merged or split row
                for line in lines or [""]:
                    n += 1
                    chunk.rejected.append((n, "bad_csv_row", error, line.rstrip("\r\n")))
                continue
            n += 1
            raw = ",".join(row)
            if not _utf8_ok(raw):  # undecodable bytes became lone surrogates (surrogateescape)
                raw_b = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                chunk.rejected.append((n, "bad_encoding", "invalid UTF-8 bytes", raw_b))
            elif not any(c.strip() for c in row):
                chunk.rejected.append((n, "blank_line", "empty CSV row", raw))
            elif header and len(row) != len(names):
                chunk.rejected.append((n, "bad_csv_row", f"{len(row)} fields, header has {len(names)}", raw))
            elif not header and len(row) not in (1, 2):
                # headerless: a title with unquoted commas has >2 fields; the last is the category
                if len(row) > 2:
                    row = [",".join(row[:-1]), row[-1]]
                for f in FIELDS:
                    chunk.columns[f].append({"title": row[0], "category": row[-1]}.get(f))
                chunk.rows.append(n)
                chunk.raw.append(raw)
            else:
                for f in ("title", "language", "label_quality", "category"):
                    j = idx.get(f)
                    chunk.columns[f].append(row[j] if j is not None and j < len(row) else None)
                chunk.columns["id"].append(row[id_col] if id_col is not None else None)
                chunk.rows.append(n)
                chunk.raw.append(raw)
            if len(chunk.rows) + len(chunk.rejected) >= chunk_rows:
                yield chunk
                chunk = Chunk(_empty_columns(), [], [])
        if raw_stream.error:
            tail = raw_stream.src.tail.decode("utf-8", "backslashreplace")
            chunk.rejected.append(
                (n + 1, "truncated_input", f"input ends early or is corrupt after record {n}: {raw_stream.error}", tail)
            )
        if chunk.rows or chunk.rejected:
            yield chunk
    finally:
        text.close()


# ------------------------------------------------------------------------------------------
# Parquet
# ------------------------------------------------------------------------------------------
def _read_parquet(path: Path, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise IngestError(f"{path}: cannot read the file as Parquet ({exc})") from exc
    names = set(pf.schema_arrow.names)
    if "title" not in names:
        raise IngestError(f"{path}: Parquet file has no 'title' column (columns: {sorted(names)})")
    id_col = next((k for k in ID_FIELDS if k in names), None)
    cols = [c for c in ("title", "language", "label_quality", "category") if c in names]
    start = 0
    batches = pf.iter_batches(batch_size=chunk_rows, columns=cols + ([id_col] if id_col else []))
    while True:
        try:
            batch = next(batches, None)
            if batch is None:
                return
            n = batch.num_rows
            columns: dict = {}
            for f in ("title", "language", "label_quality", "category"):
                columns[f] = pc.cast(batch.column(f), pa.string()) if f in cols else pa.nulls(n, pa.string())
            columns["id"] = pc.cast(batch.column(id_col), pa.string()) if id_col else pa.nulls(n, pa.string())
        except (pa.ArrowException, OSError) as exc:
            raise IngestError(f"{path}: cannot read rows {start + 1}.. as text ({exc})") from exc
        chunk = Chunk(columns, list(range(start + 1, start + n + 1)), _ParquetRaw(columns))  # type: ignore[arg-type]
        start += n
        yield chunk


def read_parquet(path: Path, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
    for chunk in _read_parquet(path, chunk_rows):
        yield _as_lists(chunk)


class _ParquetRaw(list):
    def __init__(self, columns: dict):
        super().__init__()
        self._c = columns

    def __getitem__(self, i):  # type: ignore[override]
        return json.dumps(
            {k: v[i] if isinstance(v, list) else v[i].as_py() for k, v in self._c.items()}, ensure_ascii=False
        )

    def __len__(self) -> int:
        return len(self._c["title"])

    def __iter__(self):
        return (self[i] for i in range(len(self)))


# ------------------------------------------------------------------------------------------
# Dispatch
# ------------------------------------------------------------------------------------------
def _check_source(path: Path, fmt: str) -> str:
    check_input_file(path)
    if fmt not in FORMATS:
        raise IngestError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    return detect_format(path) if fmt == "auto" else fmt


def _read(path: Path, fmt: str, chunk_rows: int) -> Iterator[Chunk]:
    """Chunks with Arrow columns where the reader has them (ingest's path)."""
    fmt = _check_source(path, fmt)
    if fmt == "jsonl":
        return iter(_Prefetch(_read_jsonl(path, chunk_rows), depth=1, name="ingest-parse"))
    if fmt == "parquet":
        return _read_parquet(path, chunk_rows)
    return read_csv(path, header=(fmt == "challenge_csv"), chunk_rows=chunk_rows)


def read_source(path: str | Path, fmt: str = "auto", chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
    """Chunks of a source with plain-list columns (errors about the source itself raise here)."""
    chunks = _read(Path(path), fmt, chunk_rows)
    return (_as_lists(c) for c in chunks)


# ------------------------------------------------------------------------------------------
# Row checks (vectorized per chunk), ids and splits
# ------------------------------------------------------------------------------------------
_HASH_KEY = "meli-retrain-v1."  # 16 bytes: pandas' siphash key; changing it re-keys every id


def hash64(values: list[str]) -> np.ndarray:
    import pandas as pd

    return pd.util.hash_array(np.asarray(values, dtype=object), hash_key=_HASH_KEY, categorize=False)


def content_ids(titles: list[str], categories: list[str | None]) -> list[str]:
    """Stable id from normalized content (case/space-folded title + trimmed category), whatever
    padding the caller's values carry: ingest and scoring get the same id for the same row."""
    arr = pa.array(titles, pa.string())
    norm = pc.utf8_lower(pc.replace_substring_regex(pc.utf8_trim_whitespace(arr), r"\s+", " "))
    keys = [f"{t}\x1f{_strip_or_none(c) or ''}" for t, c in zip(norm.to_pylist(), categories)]
    return [format(int(h), "016x") for h in hash64(keys)]


_SPLIT_NAMES = pa.array(["train"] + [name for name, _ in SPLITS], pa.string())


def _split_codes(h: np.ndarray) -> np.ndarray:
    """Index into _SPLIT_NAMES for each id hash (0 = train)."""
    buckets = h % np.uint64(100)
    out = np.zeros(len(h), dtype=np.int8)
    lo = 0
    for k, (_, pct) in enumerate(SPLITS, start=1):
        out[(buckets >= lo) & (buckets < lo + pct)] = k
        lo += pct
    return out


def assign_split(listing_ids: list[str]) -> list[str]:
    """Deterministic split from the id's hash: a listing keeps its split forever, so test rows
    never leak into training when new data arrives. Uniform, so every category with a few dozen
    rows lands in each split (checked by tests)."""
    names = _SPLIT_NAMES.to_pylist()
    return [names[k] for k in _split_codes(hash64(listing_ids))]


_HEX = np.array([ord(f"{i:02x}"[0]) | ord(f"{i:02x}"[1]) << 8 for i in range(256)], dtype="<u2")


def _hex16(h: np.ndarray) -> np.ndarray:
    """uint64 -> 16 lowercase hex digits (numpy S16), as format(h, "016x")."""
    return _HEX[h.astype(">u8").view(np.uint8).reshape(-1, 8)].view("S16").ravel()


def _fixed_strings(values: np.ndarray) -> pa.Array:
    """A numpy S<k> array as an Arrow string array, without per-item Python objects."""
    k = values.dtype.itemsize
    offsets = np.arange(0, k * (len(values) + 1), k, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(values).tobytes())]
    )


def _string_offsets(arr: pa.Array) -> np.ndarray:
    return np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]


def _string_bytes(arr: pa.Array) -> np.ndarray:
    """The UTF-8 bytes of all values of a string array (no copy)."""
    if len(arr) == 0 or arr.buffers()[2] is None:
        return np.empty(0, dtype=np.uint8)
    offsets = _string_offsets(arr)
    return np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]


def _space_runs(arr: pa.Array, has_ctl_bytes: bool) -> np.ndarray:
    """Rows holding two spaces in a row or one of \\t\\n\\f\\r: the only rows that the \\s+ -> " "
    regex can change (RE2's \\s is [\\t\\n\\f\\r ])."""
    rows = np.zeros(len(arr), dtype=bool)
    b = _string_bytes(arr)
    if len(b) == 0:
        return rows
    offs = _string_offsets(arr) - _string_offsets(arr)[0]
    sp = b == 32
    pos = np.flatnonzero(sp[:-1] & sp[1:])
    if len(pos):
        r = np.searchsorted(offs, pos, side="right") - 1
        rows[r[pos + 1 < offs[r + 1]]] = True  # both spaces inside the same value
    if has_ctl_bytes:
        pos = np.flatnonzero((b == 9) | (b == 10) | (b == 12) | (b == 13))
        rows[np.searchsorted(offs, pos, side="right") - 1] = True
    return rows


_SPACE_RUN = re.compile(rb" {2,}")


def _content_hashes(trimmed: pa.Array, categories: pa.Array, has_ctl_bytes: bool) -> np.ndarray:
    """hash64 of content_ids' keys, for titles already trimmed; column-wise, same result.

    The \\s+ -> " " regex only runs on the titles it can change; keys are hashed as UTF-8 bytes
    (pandas hashes a str as its UTF-8 bytes, so the hash is the same and much faster).
    """
    if len(trimmed) == 0:
        return np.empty(0, dtype=np.uint64)
    mask = _space_runs(trimmed, has_ctl_bytes)
    x = trimmed
    if has_ctl_bytes and mask.any():
        m = pa.array(mask)
        x = pc.replace_with_mask(x, m, pc.replace_substring_regex(x.filter(m), r"\s+", " "))
    keys = pc.binary_join_element_wise(pc.utf8_lower(x), pc.fill_null(categories, ""), "\x1f")
    keys = keys.view(pa.binary()).to_pylist()
    if not has_ctl_bytes:  # only runs of spaces to fold: do it on the few keys that have them
        for i in np.flatnonzero(mask).tolist():
            title, sep, cat = keys[i].partition(b"\x1f")  # titles here hold no control bytes
            keys[i] = _SPACE_RUN.sub(b" ", title) + sep + cat
    return hash64(keys)


def _np_mask(arr) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _map_unique(arr: pa.Array, fn) -> tuple[pa.Array, np.ndarray, list]:
    """fn applied once per distinct value: (mapped array, per-row dictionary index, mapped dict)."""
    enc = pc.dictionary_encode(arr)
    mapped = [fn(v) for v in enc.dictionary.to_pylist()]
    idx = pc.fill_null(enc.indices, len(mapped)).to_numpy(zero_copy_only=False)
    out = pa.array(mapped + [None], pa.string()).take(pa.array(idx))
    return out, idx, mapped


def _strip_or_none(v: str | None) -> str | None:
    return None if v is None or not v.strip() else v.strip()


def _lower_or_none(v: str | None) -> str | None:
    return None if v is None or not v.strip() else v.strip().lower()


def _language(v: str | None) -> str | None:
    return None if v is None or not v.strip() else LANGUAGES.get(v.strip().lower(), "?" + v)


def _to_arrow(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values if values.type == pa.string() else values.cast(pa.string())
    return pa.array(values, pa.string())


@dataclass
class _Checked:
    good: pa.Table
    bad: list[tuple[int, str, str, str]]


class _Dedup:
    """Seen-id set as sorted uint64 arrays: 8 bytes an id. New ids are merged (in linear time) into
    an open sorted run; a run that reaches RUN ids is frozen, so no step copies the whole set."""

    RUN = 1 << 20

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []  # frozen sorted runs
        self.seen = np.empty(0, dtype=np.uint64)  # the open sorted run

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs) + len(self.seen)

    def mark(self, ids: list[str]) -> np.ndarray:
        """Boolean mask of ids already seen (in earlier chunks or earlier in this one)."""
        return self.mark_hashes(hash64(ids))

    @staticmethod
    def _lookup(run: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(run, keys)  # sorted keys: each search starts near the last one
        if not len(run):
            return np.zeros(len(keys), dtype=bool), pos
        return run[np.minimum(pos, len(run) - 1)] == keys, pos

    def mark_hashes(self, h: np.ndarray) -> np.ndarray:
        """mark() for ids already hashed with hash64."""
        if not len(h):
            return np.zeros(0, dtype=bool)
        uniq, first, inverse = np.unique(h, return_index=True, return_inverse=True)
        dup = np.ones(len(h), dtype=bool)
        dup[first] = False  # later copies within the chunk
        known, pos = self._lookup(self.seen, uniq)
        for run in self.runs:
            known |= self._lookup(run, uniq)[0]
        dup |= known[inverse.ravel()]
        self.seen = np.insert(self.seen, pos[~known], uniq[~known])
        if len(self.seen) >= self.RUN:
            self.runs.append(self.seen)
            self.seen = np.empty(0, dtype=np.uint64)
        return dup


_CHECKS = (
    None,
    ("missing_title", "no title field"),
    ("empty_title", "title is empty or whitespace"),
    ("title_too_long", f"title longer than {MAX_TITLE_CHARS} characters"),
    ("bad_characters", "NUL or control characters in title"),
    ("unknown_language", "language not es/pt"),
    ("missing_category", "labelled input without a category"),
    ("duplicate", "listing_id already ingested in this run"),
)
_CTRL_RE = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"


def check_chunk(chunk: Chunk, *, require_label: bool, dedup: _Dedup | None, source: str, run_date: str) -> _Checked:
    """Row checks, ids, dedupe and split for one chunk: (good rows as a LISTING_SCHEMA table,
    quarantined rows as (row, reason, detail, raw)). The first failing check names the reason."""
    n = len(chunk.rows)
    c = {f: _to_arrow(chunk.columns[f]) for f in FIELDS}
    code = np.zeros(n, dtype=np.int8)

    def flag(mask: np.ndarray, k: int) -> None:
        code[(code == 0) & mask] = k

    titles = c["title"]
    flag(_np_mask(titles.is_null()), 1)
    trimmed = pc.utf8_trim_whitespace(titles)
    lengths = pc.fill_null(pc.utf8_length(trimmed), 0).to_numpy(zero_copy_only=False)
    flag(lengths == 0, 2)
    flag(lengths > MAX_TITLE_CHARS, 3)
    tb = _string_bytes(titles)
    has_ctl_bytes = bool((tb < 0x20).any() or (tb == 0x7F).any())
    if has_ctl_bytes:  # exact check only when some title holds a control byte at all
        flag(_np_mask(pc.match_substring_regex(titles, _CTRL_RE)), 4)

    langs, lang_idx, lang_map = _map_unique(c["language"], _language)
    unknown = np.array([v is not None and v.startswith("?") for v in lang_map] + [False], dtype=bool)
    flag(unknown[lang_idx], 5)
    cats = _map_unique(c["category"], _strip_or_none)[0]
    if require_label:
        flag(_np_mask(cats.is_null()), 6)
    lq = _map_unique(c["label_quality"], _lower_or_none)[0]

    # ids of the rows still good: the given id when there is one, else the content id
    ok_idx = np.flatnonzero(code == 0)
    given = c["id"]
    has_given = _np_mask(pc.greater(pc.binary_length(given), 0)) if given.null_count < n else np.zeros(n, bool)
    if len(ok_idx) == n and not has_given.any():
        hexes = _hex16(_content_hashes(trimmed, cats, has_ctl_bytes))
        ids_arr = _fixed_strings(hexes)
        id_objs = hexes.astype(object)  # bytes hash like the equal str
    else:
        need = ~has_given[ok_idx]
        need_take = pa.array(ok_idx[need], pa.int64())
        hexes = _hex16(_content_hashes(trimmed.take(need_take), cats.take(need_take), has_ctl_bytes))
        id_objs = np.empty(len(ok_idx), dtype=object)
        id_objs[need] = [x.decode() for x in hexes]
        id_objs[~need] = given.take(pa.array(ok_idx[~need], pa.int64())).to_pylist()
        ids_arr = pa.array(id_objs.tolist(), pa.string())
    h2 = hash64(id_objs) if len(id_objs) else np.empty(0, dtype=np.uint64)  # hash64(listing_id)
    keep = np.ones(len(ok_idx), dtype=bool)
    if dedup is not None:
        dup = dedup.mark_hashes(h2)
        flag_mask = np.zeros(n, dtype=bool)
        flag_mask[ok_idx[dup]] = True
        flag(flag_mask, 7)
        keep = ~dup

    good_idx = ok_idx[keep]
    bad = list(chunk.rejected)
    for i in np.flatnonzero(code != 0):
        reason, detail = _CHECKS[code[i]]
        bad.append((chunk.rows[i], reason, detail, chunk.raw[i]))
    m = len(good_idx)
    if m == n:
        pick = lambda a: a  # noqa: E731
    else:
        take = pa.array(good_idx, pa.int64())
        pick = lambda a: a.take(take)  # noqa: E731
    kept = (lambda a: a) if keep.all() else (lambda a: a.filter(pa.array(keep)))
    rows = np.asarray(chunk.rows, dtype=np.int64)
    good = pa.table(
        {
            "listing_id": kept(ids_arr),
            "title": pick(titles),
            "language": pick(langs),
            "label_quality": pick(lq),
            "category": pick(cats),
            "split": _SPLIT_NAMES.take(pa.array(_split_codes(h2[keep]))),
            "source_file": pa.repeat(pa.scalar(source, pa.string()), m),
            "source_row": pa.array(rows[good_idx] if m != n else rows, pa.int64()),
            "ingest_date": pa.repeat(pa.scalar(run_date, pa.string()), m),
        },
        schema=LISTING_SCHEMA,
    )
    return _Checked(good, bad)


def quarantine_table(bad: list[tuple[int, str, str, str]], source: str, run_date: str) -> pa.Table:
    return pa.table(
        {
            "source_file": [source] * len(bad),
            "source_row": [b[0] for b in bad],
            "reason": [b[1] for b in bad],
            "detail": [b[2] for b in bad],
            "raw": [b[3] for b in bad],
            "ingest_date": [run_date] * len(bad),
        },
        schema=QUARANTINE_SCHEMA,
    )


# ------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------
@dataclass
class IngestResult:
    run_date: str
    partition: str
    quarantine: str
    manifest: str
    rows_read: int
    rows_written: int
    rows_quarantined: int
    reasons: dict[str, int]
    version: int = 0  # the partition version this ingest committed

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _Writer:
    """A ParquetWriter fed by a helper thread (encoding and zstd release the GIL), one table ahead.

    A write error is raised by the next write_table() or by close()."""

    _DICTIONARY = ["language", "label_quality", "category", "split", "source_file", "ingest_date", "reason"]

    def __init__(self, path: Path, schema: pa.Schema):
        dictionary = [c for c in self._DICTIONARY if c in schema.names]
        self._writer = pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=dictionary)
        self._q: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="ingest-write")
        self._thread.start()

    def _run(self) -> None:
        while (table := self._q.get()) is not None:
            if self._error is None:
                try:
                    self._writer.write_table(table)
                except BaseException as exc:  # raised in the caller's thread
                    self._error = exc

    def write_table(self, table: pa.Table) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(table)

    def close(self, discard: bool = False) -> None:
        """Finish the file; with discard=True (the run failed anyway) never raise."""
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()
        try:
            self._writer.close()
        except BaseException:
            if not discard:
                raise
        error, self._error = self._error, None
        if error is not None and not discard:
            raise error


def ingest(
    sources: Iterable[str | Path],
    run_date: str,
    settings: Settings,
    fmt: str = "auto",
    require_label: bool = True,
    chunk_rows: int = CHUNK_ROWS,
    allow_empty: bool = False,
) -> IngestResult:
    """Ingest ``sources`` as the partition of ``run_date``: a new version of it, committed atomically
    (listings, quarantine and manifest together), the previous one kept for time travel.

    A batch that reads no rows at all (zero-byte or header-only input) is refused unless
    ``allow_empty``: it would replace the partition with an empty one."""
    sources = [Path(s).resolve() for s in sources]
    if not sources:
        raise IngestError("no source files given")
    for s in sources:
        check_input_file(s)
    settings.ensure()
    t0 = time.perf_counter()
    listing_final = partition_dir(settings.listings_dir, run_date)
    with commit_partition(listing_final, settings.lake_keep_versions, settings.lock_timeout_s) as pending:
        try:
            manifest = _write_version(sources, run_date, settings, fmt, require_label, chunk_rows, pending, t0)
        except OSError as exc:
            if exc.filename is None:  # e.g. ENOSPC from a Parquet writer: say where it was writing
                raise OSError(exc.errno, exc.strerror or str(exc), str(pending.dir)) from exc
            raise
        totals = manifest["totals"]
        if totals["rows_read"] == 0 and not allow_empty:
            prior = current_version(listing_final)
            had = read_manifest(listing_final).get("totals", {}).get("rows_written") if prior else None
            raise IngestError(
                f"{', '.join(map(str, sources))}: no rows read (empty or header-only input); "
                + (
                    f"refusing to replace partition {run_date} ({had} rows) with an empty one"
                    if prior
                    else f"refusing to write an empty partition {run_date}"
                )
                + "; pass --allow-empty to do it anyway"
            )
    log.info("ingest %s done: %s (%.1fs), version %d", run_date, totals, manifest["seconds"], pending.number)
    return IngestResult(
        run_date=run_date,
        partition=str(listing_final),
        quarantine=manifest["quarantine"],
        manifest=str(pending.dir / "_manifest.json"),
        rows_read=totals["rows_read"],
        rows_written=totals["rows_written"],
        rows_quarantined=totals["rows_quarantined"],
        reasons=manifest["reasons"],
        version=pending.number,
    )


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


def _write_version(sources, run_date, settings, fmt, require_label, chunk_rows, pending, t0) -> dict:
    """Read every source into the pending version dir; return its manifest (written there too)."""
    dedup = _Dedup()
    per_source = []
    totals = {"rows_read": 0, "rows_written": 0, "rows_quarantined": 0}
    reasons_total: dict[str, int] = {}
    qdir = pending.dir / "quarantine"
    qdir.mkdir()
    lw = _Writer(pending.dir / "part-00000.parquet", LISTING_SCHEMA)
    qw = _Writer(qdir / "part-00000.parquet", QUARANTINE_SCHEMA)
    try:
        for src in sources:
            source_fmt = detect_format(src) if fmt == "auto" else fmt
            stats = {"read": 0, "written": 0, "quarantined": 0, "reasons": {}}
            with contextlib.closing(_read(src, source_fmt, chunk_rows)) as chunks:
                for chunk in chunks:
                    checked = check_chunk(
                        chunk, require_label=require_label, dedup=dedup, source=str(src), run_date=run_date
                    )
                    if checked.good.num_rows:
                        lw.write_table(checked.good)
                    if checked.bad:
                        qw.write_table(quarantine_table(checked.bad, str(src), run_date))
                    stats["read"] += len(chunk.rows) + len(chunk.rejected)
                    stats["written"] += checked.good.num_rows
                    stats["quarantined"] += len(checked.bad)
                    for b in checked.bad:
                        stats["reasons"][b[1]] = stats["reasons"].get(b[1], 0) + 1
                    log.info(
                        "ingest %s: %d rows read, %d written, %d quarantined",
                        src.name,
                        stats["read"],
                        stats["written"],
                        stats["quarantined"],
                    )
            if stats["read"] != stats["written"] + stats["quarantined"]:
                raise AssertionError(f"conservation broken for {src}: {stats}")
            per_source.append(
                {
                    "path": str(src),
                    "sha256": _sha256(src),
                    "bytes": src.stat().st_size,
                    "format": source_fmt,
                    "rows_read": stats["read"],
                    "rows_written": stats["written"],
                    "rows_quarantined": stats["quarantined"],
                    "reasons": stats["reasons"],
                }
            )
            totals["rows_read"] += stats["read"]
            totals["rows_written"] += stats["written"]
            totals["rows_quarantined"] += stats["quarantined"]
            for k, v in stats["reasons"].items():
                reasons_total[k] = reasons_total.get(k, 0) + v
    except BaseException:
        qw.close(discard=True)
        lw.close(discard=True)
        raise
    try:
        qw.close()
    finally:
        lw.close()
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "ingest_date": run_date,
        "version": pending.number,
        "created_at": datetime.now(UTC).isoformat(),
        "sources": per_source,
        "totals": totals,
        "reasons": reasons_total,
        "conservation_ok": totals["rows_read"] == totals["rows_written"] + totals["rows_quarantined"],
        "seconds": round(time.perf_counter() - t0, 3),
        "partition": str(pending.partition),
        "quarantine": str(qdir),
    }
    atomic_write_json(pending.dir / "_manifest.json", manifest)
    atomic_write_json(qdir / "_manifest.json", manifest)
    return manifest
