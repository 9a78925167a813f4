"""The Parquet lake: partition paths, atomic partition swaps, and reading the labelled dataset."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
LISTING_SCHEMA = pa.schema(
    [
        ("listing_id", pa.string()),
        ("title", pa.string()),
        ("language", pa.string()),
        ("label_quality", pa.string()),
        ("category", pa.string()),
        ("split", pa.string()),
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
        ("ingest_date", pa.string()),
    ],
    metadata={"meli_schema_version": str(SCHEMA_VERSION)},
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("raw", pa.string()),
        ("ingest_date", pa.string()),
    ]
)


def partition_dir(root: Path, run_date: str) -> Path:
    return Path(root) / f"ingest_date={run_date}"


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp dir beside ``final``; on success swap it into place, on error remove it.

    The swap is two renames (old aside, new in); readers never see a half-written partition,
    only, for an instant, none. Temp dirs start with '.' so dataset readers skip them.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _recover(final)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
    if final.exists():
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old.exists() and not final.exists():
            os.replace(old, final)  # put the previous version back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _recover(final: Path) -> None:
    """Leftovers of a writer killed mid-way: its temp dirs are removed; a previous version set aside
    (killed between the two renames, so ``final`` is missing) is put back first, never deleted."""
    for tmp in final.parent.glob(f".tmp-{final.name}-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for old in sorted(final.parent.glob(f".old-{final.name}-*"), key=lambda p: p.stat().st_mtime, reverse=True):
        if not final.exists():
            os.replace(old, final)
        else:
            shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def atomic_write_json(path: Path, obj) -> Path:
    return atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def list_partitions(root: Path, upto: str | None = None) -> list[tuple[str, Path]]:
    root = Path(root)
    if not root.exists():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and p.name.startswith("ingest_date="):
            d = p.name.split("=", 1)[1]
            if upto is None or d <= upto:
                out.append((d, p))
    return out


def read_manifest(partition: Path) -> dict:
    path = Path(partition) / "_manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def read_partition(partition: Path, columns: list[str] | None = None) -> pa.Table:
    files = sorted(Path(partition).glob("part-*.parquet"))
    if not files:
        return LISTING_SCHEMA.empty_table().select(columns or LISTING_SCHEMA.names)
    return pa.concat_tables(pq.read_table(f, columns=columns) for f in files)


def load_listings(root: Path, upto: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """All listing partitions up to ``upto`` (inclusive), deduplicated by listing_id keeping the
    newest ingest_date (re-delivered rows are recognised, never counted twice)."""
    parts = list_partitions(root, upto)
    if not parts:
        raise FileNotFoundError(f"no listing partitions under {root}" + (f" up to {upto}" if upto else ""))
    need = list(dict.fromkeys((columns or LISTING_SCHEMA.names) + ["listing_id", "ingest_date"]))
    table = pa.concat_tables(read_partition(p, need) for _, p in parts)
    if len(parts) > 1:
        # newest first, then keep the first occurrence of each id
        order = pc.sort_indices(table, sort_keys=[("ingest_date", "descending")])
        table = table.take(order)
        ids = table.column("listing_id").to_pylist()
        seen: set[str] = set()
        keep = [i for i, x in enumerate(ids) if not (x in seen or seen.add(x))]
        table = table.take(pa.array(keep, type=pa.int64()))
    return table.select(columns) if columns else table


def partitions_lineage(root: Path, upto: str | None = None) -> list[dict]:
    """Manifest summaries of the partitions a dataset read up to ``upto`` is made of."""
    out = []
    for d, p in list_partitions(root, upto):
        m = read_manifest(p)
        out.append(
            {
                "ingest_date": d,
                "path": str(p),
                "rows": m.get("totals", {}).get("rows_written"),
                "sources": [{"path": s.get("path"), "sha256": s.get("sha256")} for s in m.get("sources", [])],
            }
        )
    return out
