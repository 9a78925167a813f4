"""Parquet: row batches cast to text; the raw text of a quarantined row is its JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.data.ingest.sources import CHUNK_ROWS, ID_FIELDS, Chunk, IngestError, as_lists


def read_parquet_chunks(path: Path, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
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
    for chunk in read_parquet_chunks(path, chunk_rows):
        yield as_lists(chunk)


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
