"""JSON Lines: blocks cut into line regions, parsed by pyarrow in C++; a range holding a bad line
is bisected down to a few hundred lines, which are parsed (and quarantined) one by one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from pipelines.data.ingest.sources import (
    CHUNK_ROWS,
    FIELDS,
    ID_FIELDS,
    MAX_LINE_BYTES,
    Bytes,
    Chunk,
    Limits,
    LongLine,
    as_lists,
    as_str,
    empty_columns,
    line_regions,
    utf8_ok,
)

# JSON fast path: parse a whole chunk in C++, ignoring the fields we do not use.
_JSON_SCHEMA = pa.schema([(f, pa.string()) for f in ("title", "language", "label_quality", "category") + ID_FIELDS])
_JSON_PARSE = pajson.ParseOptions(explicit_schema=_JSON_SCHEMA, unexpected_field_behavior="ignore")
_JSON_BLOCK = 1 << 20  # pyarrow parses a chunk in blocks of this size, in parallel
_FAST_MIN_LINES = 256  # a failing fast-path range is bisected down to this many lines, then parsed per line


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
        values = {f: as_str(obj.get(f)) for f in FIELDS if f != "id"}
        values["id"] = next((as_str(obj[k]) for k in ID_FIELDS if obj.get(k) is not None), None)
    except TypeError as exc:
        chunk.rejected.append((n, "bad_field_type", f"a field holds a JSON {exc}, expected a string", text))
        return
    if not all(v is None or utf8_ok(v) for v in values.values()):
        chunk.rejected.append((n, "bad_encoding", "a field holds a lone UTF-16 surrogate escape", text))
        return
    for f in FIELDS:
        chunk.columns[f].append(values[f])
    chunk.rows.append(n)
    chunk.raw.append(text)


def _line_blobs(src: Bytes, chunk_rows: int, cap: int = MAX_LINE_BYTES) -> Iterator:
    """(data, a, b, n): data[a:b] holds n complete lines, each ending in b"\n", n <= chunk_rows; and a
    ``LongLine`` in the place of each line longer than ``cap`` (see ``line_regions``).

    Regions never span two blocks (no copying of whole chunks); a line that does is carried into
    the next block. A leading BOM is dropped. The partial last line of a truncated input is not
    yielded; it is left in ``src.tail``."""
    for item in line_regions(src, cap):
        if isinstance(item, LongLine):
            yield item
            continue
        data, a, b = item
        n = data.count(b"\n", a, b)
        if n <= chunk_rows:
            yield data, a, b, n
            continue
        nl = _newlines(np.frombuffer(data, np.uint8, count=b - a, offset=a)) + a
        for i in range(0, n, chunk_rows):
            j = min(i + chunk_rows, n)
            yield data, (int(nl[i - 1]) + 1 if i else a), int(nl[j - 1]) + 1, j - i


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
    slow = Chunk(empty_columns(), [], [])
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
    rejected: list[tuple] = []
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


def _truncated(n: int, src: Bytes) -> Chunk:
    detail = f"input ends early or is corrupt after record {n - 1}: {src.error}"
    raw = src.tail.decode("utf-8", "backslashreplace")
    return Chunk(empty_columns(), [], [], [(n, "truncated_input", detail, raw, src.tail_bytes)])


def read_jsonl_chunks(path: Path, chunk_rows: int = CHUNK_ROWS, limits: Limits | None = None) -> Iterator[Chunk]:
    limits = limits or Limits()
    src = Bytes(path, limits=limits)
    first = 1
    seen, ascii_data = None, False
    long: list = []  # line_too_long rows, handed over with the next chunk
    for item in _line_blobs(src, chunk_rows, limits.max_line_bytes):
        if isinstance(item, LongLine):
            long.append((first, "line_too_long", item.detail(limits.max_line_bytes), item.text(), item.nbytes))
            first += 1
            if len(long) >= chunk_rows:
                yield Chunk(empty_columns(), [], [], long)
                long = []
            continue
        data, a, b, n = item
        if data is not seen:  # one check per block
            seen, ascii_data = data, data.isascii()
        chunk = _json_chunk(data, a, b, n, first, ascii_data)
        if long:
            chunk.rejected += long
            long = []
        yield chunk
        first += n
    if long:
        yield Chunk(empty_columns(), [], [], long)
    if src.error is not None:
        yield _truncated(first, src)


def read_jsonl(path: Path, chunk_rows: int = CHUNK_ROWS, limits: Limits | None = None) -> Iterator[Chunk]:
    for chunk in read_jsonl_chunks(path, chunk_rows, limits):
        yield as_lists(chunk)
