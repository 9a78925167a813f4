"""One source as chunks of records, whatever its format (the format readers' dispatch)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipelines.config import INPUT_FORMATS
from pipelines.data.ingest.csv import read_csv
from pipelines.data.ingest.jsonl import read_jsonl_chunks
from pipelines.data.ingest.parquet import read_parquet_chunks
from pipelines.data.ingest.sources import (
    CHUNK_ROWS,
    Chunk,
    IngestError,
    Limits,
    Prefetch,
    as_lists,
    check_input_file,
    detect_format,
)

FORMATS = INPUT_FORMATS  # one list for the readers, the CLI and the DAG Params


def _check_source(path: Path, fmt: str) -> str:
    check_input_file(path)
    if fmt not in FORMATS:
        raise IngestError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    return detect_format(path) if fmt == "auto" else fmt


def read_chunks(path: Path, fmt: str, chunk_rows: int, limits: Limits | None = None) -> Iterator[Chunk]:
    """Chunks with Arrow columns where the reader has them (ingest's path). ``limits``: the line,
    record and inflation caps (default: the environment's settings)."""
    fmt = _check_source(path, fmt)
    limits = limits or Limits.of()
    if fmt == "jsonl":
        return iter(Prefetch(read_jsonl_chunks(path, chunk_rows, limits), depth=1, name="ingest-parse"))
    if fmt == "parquet":
        return read_parquet_chunks(path, chunk_rows)
    return read_csv(path, header=(fmt == "challenge_csv"), chunk_rows=chunk_rows, limits=limits)


def read_source(
    path: str | Path, fmt: str = "auto", chunk_rows: int = CHUNK_ROWS, limits: Limits | None = None
) -> Iterator[Chunk]:
    """Chunks of a source with plain-list columns (errors about the source itself raise here)."""
    chunks = read_chunks(Path(path), fmt, chunk_rows, limits)
    return (as_lists(c) for c in chunks)
