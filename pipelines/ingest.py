"""Ingestion: MeLi listing files -> partitioned Parquet lake, with quarantine and a manifest.

Every row read ends either in ``lake/listings/ingest_date=D/`` or in ``lake/quarantine/ingest_date=D/``
with a reason code; the manifest records the counts and the conservation check
(rows read = rows written + rows quarantined). Files are streamed in chunks, so memory is bounded.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import sys
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipelines.lake import (
    LISTING_SCHEMA,
    QUARANTINE_SCHEMA,
    SCHEMA_VERSION,
    atomic_dir,
    atomic_write_json,
    partition_dir,
)
from pipelines.settings import Settings

log = logging.getLogger(__name__)

FORMATS = ("auto", "jsonl", "challenge_csv", "csv", "parquet")
MAX_TITLE_CHARS = 1000  # hard ingest limit; GX applies the (softer) configured bounds
CHUNK_ROWS = 65536
LANGUAGES = {
    "spanish": "spanish", "es": "spanish", "es-ar": "spanish", "es_ar": "spanish", "espanol": "spanish",
    "español": "spanish", "portuguese": "portuguese", "pt": "portuguese", "pt-br": "portuguese",
    "pt_br": "portuguese", "portugues": "portuguese", "português": "portuguese",
}
ID_FIELDS = ("listing_id", "id", "item_id")
FIELDS = ("title", "language", "label_quality", "category", "id")
SPLITS = (("test", 15), ("validation", 10))  # percent of hash space; the rest is train

# JSON fast path: parse a whole chunk in C++, ignoring the fields we do not use.
_JSON_SCHEMA = pa.schema([(f, pa.string()) for f in ("title", "language", "label_quality", "category")])
_JSON_PARSE = pajson.ParseOptions(explicit_schema=_JSON_SCHEMA, unexpected_field_behavior="ignore")

QUARANTINE_REASONS = (
    "bad_json", "not_an_object", "bad_encoding", "bad_csv_row", "bad_field_type", "blank_line",
    "missing_title", "empty_title", "title_too_long", "bad_characters", "unknown_language",
    "missing_category", "duplicate", "truncated_input",
)


class IngestError(ValueError):
    """A whole source cannot be read (missing file, missing required column, unknown format)."""


@dataclass
class Chunk:
    """Up to CHUNK_ROWS parsed records of one source, plus the rows rejected while parsing."""

    columns: dict[str, list]  # FIELDS -> values (str | None)
    rows: list[int]  # 1-based record numbers in the source
    raw: list[str]  # raw text of each parsed record (for quarantine)
    rejected: list[tuple[int, str, str, str]] = field(default_factory=list)  # row, reason, detail, raw


# ------------------------------------------------------------------------------------------
# Source opening and format detection
# ------------------------------------------------------------------------------------------
def _open_binary(path: Path) -> io.BufferedIOBase:
    fh = open(path, "rb")
    magic = fh.peek(2)[:2] if hasattr(fh, "peek") else b""
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[return-value]
    return fh


def detect_format(path: Path) -> str:
    """Format from content (not the file name): parquet, jsonl, challenge_csv (header) or csv."""
    with open(path, "rb") as fh:
        if fh.read(4) == b"PAR1":
            return "parquet"
    try:
        with _open_binary(path) as fh:
            head = fh.read(4096)
    except (OSError, EOFError, zlib.error) as exc:
        raise IngestError(f"{path}: cannot read the start of the file ({exc})") from exc
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text:
        return "jsonl"  # empty file: zero rows in any format
    if text[:1] in (b"{", b"["):
        return "jsonl"
    first = text.split(b"\n", 1)[0].decode("utf-8", "replace").lower()
    cols = [c.strip().strip('"') for c in next(csv.reader([first]), [])]
    return "challenge_csv" if "title" in cols else "csv"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes | None, str | None]]:
    """(line number, bytes, error). A truncated or corrupt gzip ends with one error record."""
    n = 0
    try:
        with _open_binary(path) as fh:
            for n, line in enumerate(fh, start=1):
                yield n, line.rstrip(b"\r\n"), None
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        yield n + 1, None, f"input ends early or is corrupt after record {n}: {exc}"


# ------------------------------------------------------------------------------------------
# Readers: each yields Chunks with the canonical FIELDS
# ------------------------------------------------------------------------------------------
def _empty_columns() -> dict[str, list]:
    return {f: [] for f in FIELDS}


def _as_str(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise TypeError(type(value).__name__)


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
    if not isinstance(obj, dict):
        chunk.rejected.append((n, "not_an_object", f"JSON {type(obj).__name__}, expected an object", text))
        return
    try:
        values = {f: _as_str(obj.get(f)) for f in FIELDS if f != "id"}
        values["id"] = next((_as_str(obj[k]) for k in ID_FIELDS if obj.get(k) is not None), None)
    except TypeError as exc:
        chunk.rejected.append((n, "bad_field_type", f"a field holds a JSON {exc}, expected a string", text))
        return
    for f in FIELDS:
        chunk.columns[f].append(values[f])
    chunk.rows.append(n)
    chunk.raw.append(text)


def _json_chunk(lines: list[tuple[int, bytes]]) -> Chunk:
    """Fast path: pyarrow parses the chunk; any problem falls back to per-line parsing."""
    chunk = Chunk(_empty_columns(), [], [])
    blob = b"\n".join(line for _, line in lines)
    if b'"id"' not in blob and b'"listing_id"' not in blob and b'"item_id"' not in blob:
        try:
            table = pajson.read_json(
                io.BytesIO(blob),
                read_options=pajson.ReadOptions(block_size=max(1 << 20, len(blob) + 1)),
                parse_options=_JSON_PARSE,
            )
            if table.num_rows == len(lines):
                for f in ("title", "language", "label_quality", "category"):
                    chunk.columns[f] = table.column(f).to_pylist()
                chunk.columns["id"] = [None] * len(lines)
                chunk.rows = [n for n, _ in lines]
                chunk.raw = _LazyRaw(lines)  # type: ignore[assignment]
                return chunk
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
    for n, line in lines:
        _parse_json_line(n, line, chunk)
    return chunk


class _LazyRaw(list):
    """Raw text decoded only for the few rows that end in quarantine."""

    def __init__(self, lines: list[tuple[int, bytes]]):
        super().__init__()
        self._lines = lines

    def __getitem__(self, i):  # type: ignore[override]
        return self._lines[i][1].decode("utf-8", "backslashreplace")

    def __len__(self):
        return len(self._lines)


def read_jsonl(path: Path, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
    buf: list[tuple[int, bytes]] = []
    for n, line, error in _iter_lines(path):
        if error is not None:
            if buf:
                yield _json_chunk(buf)
                buf = []
            yield Chunk(_empty_columns(), [], [], [(n, "truncated_input", error, "")])
            return
        buf.append((n, line))  # type: ignore[arg-type]
        if len(buf) >= chunk_rows:
            yield _json_chunk(buf)
            buf = []
    if buf:
        yield _json_chunk(buf)


class _TextStream(io.RawIOBase):
    """Bytes of a (maybe gzipped) file as a readable stream that turns a truncated gzip into a
    recorded error instead of an exception in the middle of csv parsing."""

    def __init__(self, path: Path):
        self._fh = _open_binary(path)
        self.error: str | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.error:
            return 0
        try:
            data = self._fh.read(len(b))
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
            self.error = f"input ends early or is corrupt: {exc}"
            return 0
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._fh.close()
        super().close()


def read_csv(path: Path, header: bool, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
    """Challenge CSV (header with at least ``title``) or headerless ``title,category``/``title``."""
    csv.field_size_limit(sys.maxsize)
    raw_stream = _TextStream(path)
    text = io.TextIOWrapper(io.BufferedReader(raw_stream), encoding="utf-8", errors="surrogateescape", newline="")
    reader = csv.reader(text)
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
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                n += 1
                chunk.rejected.append((n, "bad_csv_row", str(exc), ""))
                continue
            n += 1
            raw = ",".join(row)
            if any("\udc80" <= ch <= "\udcff" for field_ in row for ch in field_ if ch >= "\ud800"):
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
            chunk.rejected.append((n + 1, "truncated_input", raw_stream.error, ""))
        if chunk.rows or chunk.rejected:
            yield chunk
    finally:
        text.close()


def read_parquet(path: Path, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
    pf = pq.ParquetFile(path)
    names = set(pf.schema_arrow.names)
    if "title" not in names:
        raise IngestError(f"{path}: Parquet file has no 'title' column (columns: {sorted(names)})")
    id_col = next((k for k in ID_FIELDS if k in names), None)
    cols = [c for c in ("title", "language", "label_quality", "category") if c in names]
    start = 0
    for batch in pf.iter_batches(batch_size=chunk_rows, columns=cols + ([id_col] if id_col else [])):
        chunk = Chunk(_empty_columns(), [], [])
        n = batch.num_rows
        for f in ("title", "language", "label_quality", "category"):
            chunk.columns[f] = (
                pc.cast(batch.column(f), pa.string()).to_pylist() if f in cols else [None] * n
            )
        chunk.columns["id"] = pc.cast(batch.column(id_col), pa.string()).to_pylist() if id_col else [None] * n
        chunk.rows = list(range(start + 1, start + n + 1))
        chunk.raw = _ParquetRaw(chunk.columns)  # type: ignore[assignment]
        start += n
        yield chunk


class _ParquetRaw(list):
    def __init__(self, columns: dict[str, list]):
        super().__init__()
        self._c = columns

    def __getitem__(self, i):  # type: ignore[override]
        return json.dumps({k: v[i] for k, v in self._c.items()}, ensure_ascii=False)

    def __len__(self):
        return len(self._c["title"])


def read_source(path: str | Path, fmt: str = "auto", chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    if fmt not in FORMATS:
        raise IngestError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "jsonl":
        return read_jsonl(path, chunk_rows)
    if fmt == "parquet":
        return read_parquet(path, chunk_rows)
    return read_csv(path, header=(fmt == "challenge_csv"), chunk_rows=chunk_rows)


# ------------------------------------------------------------------------------------------
# Row checks (vectorized per chunk), ids and splits
# ------------------------------------------------------------------------------------------
_HASH_KEY = "meli-retrain-v1."  # 16 bytes: pandas' siphash key; changing it re-keys every id


def hash64(values: list[str]) -> np.ndarray:
    import pandas as pd

    return pd.util.hash_array(np.asarray(values, dtype=object), hash_key=_HASH_KEY, categorize=False)


def content_ids(titles: list[str], categories: list[str | None]) -> list[str]:
    """Stable id from normalized content (case/space-folded title + category)."""
    arr = pa.array(titles, pa.string())
    norm = pc.utf8_lower(pc.replace_substring_regex(pc.utf8_trim_whitespace(arr), r"\s+", " "))
    keys = [f"{t}\x1f{c or ''}" for t, c in zip(norm.to_pylist(), categories)]
    return [format(int(h), "016x") for h in hash64(keys)]


def assign_split(listing_ids: list[str]) -> list[str]:
    """Deterministic split from the id's hash: a listing keeps its split forever, so test rows
    never leak into training when new data arrives. Uniform, so every category with a few dozen
    rows lands in each split (checked by tests)."""
    buckets = hash64(listing_ids) % np.uint64(100)
    out = np.full(len(listing_ids), "train", dtype=object)
    lo = 0
    for name, pct in SPLITS:
        out[(buckets >= lo) & (buckets < lo + pct)] = name
        lo += pct
    return out.tolist()


@dataclass
class _Checked:
    good: pa.Table
    bad: list[tuple[int, str, str, str]]


class _Dedup:
    """Seen-id set as a sorted uint64 array: 8 bytes an id, merged in linear time per chunk."""

    def __init__(self) -> None:
        self.seen = np.empty(0, dtype=np.uint64)

    def mark(self, ids: list[str]) -> np.ndarray:
        """Boolean mask of ids already seen (in earlier chunks or earlier in this one)."""
        h = hash64(ids)
        dup = np.zeros(len(h), dtype=bool)
        if len(self.seen):
            pos = np.searchsorted(self.seen, h)
            pos[pos >= len(self.seen)] = 0
            dup |= self.seen[pos] == h
        _, first = np.unique(h, return_index=True)
        within = np.ones(len(h), dtype=bool)
        within[first] = False
        dup |= within
        self.seen = np.sort(np.concatenate([self.seen, np.unique(h[~dup])]), kind="stable")
        return dup


def check_chunk(chunk: Chunk, *, require_label: bool, dedup: _Dedup | None, source: str, run_date: str) -> _Checked:
    c = chunk.columns
    n = len(chunk.rows)
    reasons = np.full(n, None, dtype=object)
    details = np.full(n, "", dtype=object)

    def flag(mask, reason: str, detail: str) -> None:
        m = np.asarray(mask, dtype=bool) & (reasons == None)  # noqa: E711
        reasons[m] = reason
        details[m] = detail

    titles = pa.array(c["title"], pa.string())
    flag(pc.is_null(titles).to_numpy(zero_copy_only=False), "missing_title", "no title field")
    trimmed = pc.utf8_trim_whitespace(titles)
    lengths = pc.fill_null(pc.utf8_length(trimmed), 0).to_numpy()
    flag(lengths == 0, "empty_title", "title is empty or whitespace")
    flag(lengths > MAX_TITLE_CHARS, "title_too_long", f"title longer than {MAX_TITLE_CHARS} characters")
    ctrl = pc.fill_null(pc.match_substring_regex(titles, r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"), False)
    flag(ctrl.to_numpy(zero_copy_only=False), "bad_characters", "NUL or control characters in title")

    langs_raw = c["language"]
    langs = [None if v is None or not v.strip() else LANGUAGES.get(v.strip().lower(), "?" + v) for v in langs_raw]
    flag([lang is not None and lang.startswith("?") for lang in langs], "unknown_language", "language not es/pt")
    cats = [None if v is None or not v.strip() else v.strip() for v in c["category"]]
    if require_label:
        flag([v is None for v in cats], "missing_category", "labelled input without a category")
    lq = [None if v is None or not v.strip() else v.strip().lower() for v in c["label_quality"]]

    title_list = trimmed.to_pylist()
    ids = [given if given else None for given in c["id"]]
    need = [i for i, v in enumerate(ids) if v is None and title_list[i] is not None]
    if need:
        gen = content_ids([title_list[i] for i in need], [cats[i] for i in need])
        for i, g in zip(need, gen):
            ids[i] = g
    ids = [v if v is not None else f"row-{source}-{chunk.rows[i]}" for i, v in enumerate(ids)]
    if dedup is not None:
        ok = reasons == None  # noqa: E711
        ok_idx = np.flatnonzero(ok)
        dup = dedup.mark([ids[i] for i in ok_idx])
        m = np.zeros(n, dtype=bool)
        m[ok_idx[dup]] = True
        flag(m, "duplicate", "listing_id already ingested in this run")

    good_idx = np.flatnonzero(reasons == None)  # noqa: E711
    bad = list(chunk.rejected)
    for i in np.flatnonzero(reasons != None):  # noqa: E711
        bad.append((chunk.rows[i], reasons[i], details[i], chunk.raw[i]))
    gi = good_idx.tolist()
    good_ids = [ids[i] for i in gi]
    good = pa.table(
        {
            "listing_id": pa.array(good_ids, pa.string()),
            "title": pa.array([c["title"][i] for i in gi], pa.string()),
            "language": pa.array([langs[i] for i in gi], pa.string()),
            "label_quality": pa.array([lq[i] for i in gi], pa.string()),
            "category": pa.array([cats[i] for i in gi], pa.string()),
            "split": pa.array(assign_split(good_ids) if gi else [], pa.string()),
            "source_file": pa.array([source] * len(gi), pa.string()),
            "source_row": pa.array([chunk.rows[i] for i in gi], pa.int64()),
            "ingest_date": pa.array([run_date] * len(gi), pa.string()),
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

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def ingest(
    sources: Iterable[str | Path],
    run_date: str,
    settings: Settings,
    fmt: str = "auto",
    require_label: bool = True,
    chunk_rows: int = CHUNK_ROWS,
) -> IngestResult:
    """Ingest ``sources`` as the partition of ``run_date``, replacing it atomically if it exists."""
    sources = [Path(s).resolve() for s in sources]
    if not sources:
        raise IngestError("no source files given")
    for s in sources:
        if not s.is_file():
            raise IngestError(f"{s}: no such file")
    settings.ensure()
    t0 = time.perf_counter()
    dedup = _Dedup()
    per_source = []
    totals = {"rows_read": 0, "rows_written": 0, "rows_quarantined": 0}
    reasons_total: dict[str, int] = {}
    listing_final = partition_dir(settings.listings_dir, run_date)
    quarantine_final = partition_dir(settings.quarantine_dir, run_date)
    with atomic_dir(listing_final) as ltmp, atomic_dir(quarantine_final) as qtmp:
        lw = pq.ParquetWriter(ltmp / "part-00000.parquet", LISTING_SCHEMA, compression="zstd")
        qw = pq.ParquetWriter(qtmp / "part-00000.parquet", QUARANTINE_SCHEMA, compression="zstd")
        try:
            for src in sources:
                source_fmt = detect_format(src) if fmt == "auto" else fmt
                stats = {"read": 0, "written": 0, "quarantined": 0, "reasons": {}}
                for chunk in read_source(src, source_fmt, chunk_rows):
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
                    log.info("ingest %s: %d rows read, %d written, %d quarantined",
                             src.name, stats["read"], stats["written"], stats["quarantined"])
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
        finally:
            lw.close()
            qw.close()
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "ingest_date": run_date,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "sources": per_source,
            "totals": totals,
            "reasons": reasons_total,
            "conservation_ok": totals["rows_read"] == totals["rows_written"] + totals["rows_quarantined"],
            "seconds": round(time.perf_counter() - t0, 3),
            "partition": str(listing_final),
            "quarantine": str(quarantine_final),
        }
        atomic_write_json(ltmp / "_manifest.json", manifest)
        atomic_write_json(qtmp / "_manifest.json", manifest)
    log.info("ingest %s done: %s (%.1fs)", run_date, totals, manifest["seconds"])
    return IngestResult(
        run_date=run_date,
        partition=str(listing_final),
        quarantine=str(quarantine_final),
        manifest=str(listing_final / "_manifest.json"),
        rows_read=totals["rows_read"],
        rows_written=totals["rows_written"],
        rows_quarantined=totals["rows_quarantined"],
        reasons=reasons_total,
    )
