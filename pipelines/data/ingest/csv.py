"""CSV: the challenge CSV (a header naming ``title``) or headerless ``title,category`` rows; a
record that spans lines or breaks the CSV grammar is quarantined line by line, never merged; lines
and records are capped (``Limits``)."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterator
from pathlib import Path

from pipelines.data.ingest.sources import (
    CHUNK_ROWS,
    FIELDS,
    ID_FIELDS,
    Bytes,
    Chunk,
    IngestError,
    Limits,
    LongLine,
    empty_columns,
    head_bytes,
    line_regions,
    utf8_ok,
)


class _Cut(Exception):
    """The record being read is cut: it met a line longer than the cap, or ran past the record cap."""


class _Record:
    """The physical lines the csv module reads, one record at a time (``lines``: the record's lines,
    raw), from the line regions of a source (see ``line_regions``).

    A line is what a text stream with newline="" gives (its line end kept); undecodable bytes become
    lone surrogates (surrogateescape). In a file of \\n lines (``lf``) the pieces of a line cut by a
    bare \\r are joined, the \\r read as a space. Raises _Cut at a line longer than the line cap
    (``long``), and when a record runs past ``max_lines`` lines or ``max_chars`` characters (an open
    quote swallowing the rows after it); the next call starts a fresh record at the next line."""

    def __init__(self, regions: Iterator, lf: bool, max_lines: int, max_chars: int):
        self._regions = regions
        self._text: Iterator[str] = iter(())
        self._lf = lf
        self.max_lines = max_lines
        self.max_chars = max_chars
        self.lines: list[str] = []
        self.long: LongLine | None = None

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self._text, None)
        if line is None:
            line = self._next_region()
        raw = line
        if self._lf and line[-1] == "\r":
            raw, line = self._joined(line)
        lines = self.lines
        lines.append(raw)
        if len(lines) > 1 and (len(lines) > self.max_lines or sum(map(len, lines)) > self.max_chars):
            raise _Cut
        return line

    def _next_region(self) -> str:
        while True:
            item = next(self._regions)  # StopIteration: the end of the input
            if item.__class__ is LongLine:
                self.long = item
                raise _Cut
            data, a, b = item
            self._text = iter(io.StringIO(str(memoryview(data)[a:b], "utf-8", "surrogateescape"), newline=""))
            line = next(self._text, None)
            if line is not None:
                return line

    def _joined(self, piece: str) -> tuple[str, str]:
        """(raw, parsed) of a line whose pieces end in bare \\r (a region ends in \\n: they are all in it)."""
        while (line := next(self._text, None)) is not None:
            if line[-1] != "\r":
                return piece + line, piece.replace("\r", " ") + line
            piece += line
        return piece, piece.replace("\r", " ")  # the file ends in a bare \r


def read_csv(path: Path, header: bool, chunk_rows: int = CHUNK_ROWS, limits: Limits | None = None) -> Iterator[Chunk]:
    """Challenge CSV (header with at least ``title``) or headerless ``title,category``/``title``.

    Bounded: a line longer than MELI_MAX_LINE_BYTES is quarantined as ``line_too_long`` without being
    held; a record whose quoted field is left open (a stray quote) is read for at most
    MELI_MAX_RECORD_LINES lines and MELI_MAX_LINE_BYTES characters: past that its lines so far are
    quarantined as ``record_too_long`` and reading starts afresh at the next line, so the rows after
    it are kept (shorter spans are quarantined line by line as ``bad_csv_row``, as always)."""
    limits = limits or Limits()
    csv.field_size_limit(sys.maxsize)  # the record cap bounds fields
    src = Bytes(path, limits=limits)
    # newline="" ends a line at \n, \r\n or a bare \r. In a file whose lines end in \n, a bare \r
    # is part of a record (a title pasted with one): read it as a space, so the record is neither
    # split into two rows (a cut title, then a title-only row) nor quarantined as two lines.
    # A file of old-Mac \r line endings has more bare \r than \n in its head (usually no \n).
    head, _ = head_bytes(path, 1 << 16)
    lf = head.count(b"\n")
    lf_lines = lf > 0 and lf >= head.count(b"\r") - head.count(b"\r\n")

    # after a truncated or corrupt gzip the bytes after the last line end are held back (src.tail):
    # no partial record is parsed
    regions = line_regions(src, limits.max_line_bytes, cr=not lf_lines, final_newline=False)
    record = _Record(regions, lf_lines, limits.max_record_lines, limits.max_line_bytes)
    reader = csv.reader(record)
    lines = record.lines
    names: list[str]
    try:
        if header:
            try:
                names = [c.strip().lower().lstrip("\ufeff") for c in next(reader, [])]
            except _Cut:
                raise IngestError(
                    f"{path}: the CSV header runs past MELI_MAX_LINE_BYTES ({limits.max_line_bytes}) bytes "
                    f"or MELI_MAX_RECORD_LINES ({limits.max_record_lines}) lines"
                ) from None
            if "title" not in names:
                raise IngestError(f"{path}: CSV header {names} has no 'title' column")
        else:
            names = ["title", "category"]
        idx = {f: names.index(f) for f in ("title", "language", "label_quality", "category") if f in names}
        id_col = next((names.index(k) for k in ID_FIELDS if k in names), None)
        chunk = Chunk(empty_columns(), [], [])
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
            except _Cut:
                n = _cut_record(chunk, n, record, limits)
                error = None
            if error:  # titles are one line: quarantine each line as it is, never a merged or split row
                for line in lines or [""]:
                    n += 1
                    chunk.rejected.append((n, "bad_csv_row", error, line.rstrip("\r\n")))
            elif error == "":
                n += 1
                _add_record(chunk, n, row, header, names, idx, id_col)
            if len(chunk.rows) + len(chunk.rejected) >= chunk_rows:
                yield chunk
                chunk = Chunk(empty_columns(), [], [])
        if src.error:
            tail = src.tail.decode("utf-8", "backslashreplace")
            detail = f"input ends early or is corrupt after record {n}: {src.error}"
            chunk.rejected.append((n + 1, "truncated_input", detail, tail, src.tail_bytes))
        if chunk.rows or chunk.rejected:
            yield chunk
    finally:
        regions.close()


def _cut_record(chunk: Chunk, n: int, record: _Record, limits: Limits) -> int:
    """Quarantine a cut record line by line; return the last row number used. Reading goes on at
    the line after the cut: the csv module starts a fresh record at its next call."""
    cap = limits.max_line_bytes
    if record.long is not None:
        detail = f"a quoted field left open runs into a line longer than MELI_MAX_LINE_BYTES ({cap})"
        reason = "bad_csv_row"
    else:
        detail = (
            f"one CSV record runs past MELI_MAX_RECORD_LINES ({limits.max_record_lines}) lines or "
            f"MELI_MAX_LINE_BYTES ({cap}) characters (an unbalanced quote?): its lines so far are quarantined "
            "and reading starts afresh at the next line"
        )
        reason = "record_too_long"
    for line in record.lines:
        n += 1
        chunk.rejected.append((n, reason, detail, line.rstrip("\r\n")))
    if record.long is not None:
        n += 1
        chunk.rejected.append((n, "line_too_long", record.long.detail(cap), record.long.text(), record.long.nbytes))
        record.long = None
    return n


def _add_record(chunk: Chunk, n: int, row: list[str], header: bool, names: list[str], idx: dict, id_col) -> None:
    """Record ``n`` (one CSV row) into ``chunk``: its fields, or its quarantine reason."""
    raw = ",".join(row)
    if not utf8_ok(raw):  # undecodable bytes became lone surrogates (surrogateescape)
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
