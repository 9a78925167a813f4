"""The stage: every source of a run read, checked and written as one new version of its partition
(listings, quarantine and manifest committed together), with the conservation check."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.fs import atomic_write_json, sha256_file, writing
from pipelines.data.ingest.ids import Dedup
from pipelines.data.ingest.read import read_chunks
from pipelines.data.ingest.rules import check_chunk, quarantine_table
from pipelines.data.ingest.sources import CHUNK_ROWS, IngestError, Limits, check_input_file, detect_format
from pipelines.data.lake import (
    LISTING_SCHEMA,
    QUARANTINE_SCHEMA,
    SCHEMA_VERSION,
    commit_partition,
    current_version,
    partition_dir,
    read_manifest,
)
from pipelines.settings import Settings

log = logging.getLogger(__name__)


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
        self._path = path
        self._writer = pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=dictionary)
        self._q: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="ingest-write")
        self._thread.start()

    def _run(self) -> None:
        while (table := self._q.get()) is not None:
            if self._error is None:
                try:
                    with writing(self._path):  # a full disk: one line naming the file
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
            with writing(self._path):
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


def _write_version(sources, run_date, settings, fmt, require_label, chunk_rows, pending, t0) -> dict:
    """Read every source into the pending version dir; return its manifest (written there too)."""
    dedup = Dedup()
    per_source = []
    totals = {"rows_read": 0, "rows_written": 0, "rows_quarantined": 0}
    reasons_total: dict[str, int] = {}
    qdir = pending.dir / "quarantine"
    qdir.mkdir()
    limits = Limits.of(settings)
    lw = _Writer(pending.dir / "part-00000.parquet", LISTING_SCHEMA)
    qw = _Writer(qdir / "part-00000.parquet", QUARANTINE_SCHEMA)
    try:
        for src in sources:
            source = _write_source(src, fmt, chunk_rows, require_label, dedup, run_date, lw, qw, limits)
            per_source.append(source)
            totals["rows_read"] += source["rows_read"]
            totals["rows_written"] += source["rows_written"]
            totals["rows_quarantined"] += source["rows_quarantined"]
            for k, v in source["reasons"].items():
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


def _write_source(
    src: Path, fmt, chunk_rows, require_label, dedup: Dedup, run_date, lw: _Writer, qw: _Writer, limits: Limits
) -> dict:
    """One source's chunks checked and handed to the listing and quarantine writers; its manifest entry."""
    source_fmt = detect_format(src) if fmt == "auto" else fmt
    stats = {"read": 0, "written": 0, "quarantined": 0, "reasons": {}}
    with contextlib.closing(read_chunks(src, source_fmt, chunk_rows, limits)) as chunks:
        for chunk in chunks:
            checked = check_chunk(chunk, require_label=require_label, dedup=dedup, source=str(src), run_date=run_date)
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
    return {
        "path": str(src),
        "sha256": sha256_file(src),
        "bytes": src.stat().st_size,
        "format": source_fmt,
        "rows_read": stats["read"],
        "rows_written": stats["written"],
        "rows_quarantined": stats["quarantined"],
        "reasons": stats["reasons"],
    }
