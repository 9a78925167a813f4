"""CSV: the challenge CSV (a header naming ``title``) or headerless ``title,category`` rows; a
record that spans lines or breaks the CSV grammar is quarantined line by line, never merged."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterator
from pathlib import Path

from pipelines.ingest.sources import (
    CHUNK_ROWS,
    FIELDS,
    ID_FIELDS,
    Chunk,
    IngestError,
    _Bytes,
    _empty_columns,
    _head,
    _Prefetch,
    _utf8_ok,
)


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

    reader = csv.reader(_physical_lines(text, lf_lines, lines))
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
            _add_record(chunk, n, row, header, names, idx, id_col)
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


def _physical_lines(text, lf_lines: bool, lines: list[str]) -> Iterator[str]:
    """The lines the CSV parser reads, each also appended to ``lines`` (the record's raw lines)."""
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


def _add_record(chunk: Chunk, n: int, row: list[str], header: bool, names: list[str], idx: dict, id_col) -> None:
    """Record ``n`` (one CSV row) into ``chunk``: its fields, or its quarantine reason."""
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
