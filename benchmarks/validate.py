"""Validation speed: GX checkpoints on a 1M-row listings partition (target: under 5 s here).

    .venv/bin/python -m benchmarks.validate [--rows 1000000]

Builds a synthetic-title partition with the canonical schema in a temp MELI_HOME, then times
validate_partition() (read partition + metrics + both GX checkpoints + Data Docs), best of 3.
Writes benchmarks/results/validate.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def build_partition(settings, run_date: str, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.core.fs import atomic_write_json
    from pipelines.data.lake import LISTING_SCHEMA, commit_partition, partition_dir
    from pipelines.data.synthetic import CATEGORIES, generate_rows

    base = generate_rows(5000, seed=1)
    idx = np.arange(rows) % len(base)
    cats = sorted(CATEGORIES)
    table = pa.table(
        {
            "listing_id": [f"{i:016x}" for i in range(rows)],
            "title": [f"{base[j]['title']} {i}" for i, j in enumerate(idx)],
            "language": [base[j]["language"] for j in idx],
            "label_quality": [base[j]["label_quality"] for j in idx],
            "category": [cats[j % len(cats)] for j in idx],
            "split": np.where(idx % 10 == 0, "test", "train").tolist(),
            "source_file": ["bench.jsonl"] * rows,
            "source_row": np.arange(1, rows + 1),
            "ingest_date": [run_date] * rows,
        },
        schema=LISTING_SCHEMA,
    )
    with commit_partition(partition_dir(settings.listings_dir, run_date)) as pending:
        pq.write_table(table, pending.dir / "part-00000.parquet")
        atomic_write_json(
            pending.dir / "_manifest.json",
            {"schema_version": 1, "totals": {"rows_read": rows, "rows_written": rows, "rows_quarantined": 0}},
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MELI_HOME"] = tmp
        from pipelines.data.validate import validate_partition
        from pipelines.settings import get_settings

        settings = get_settings().ensure()
        build_partition(settings, "2026-01-01", args.rows)
        validate_partition(settings, "2026-01-01")  # warm-up: GX imports, context creation
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            report = validate_partition(settings, "2026-01-01")
            times.append(time.perf_counter() - t0)
    best = min(times)
    runs = ", ".join(f"{t:.2f}" for t in times)
    table = (
        f"| rows | expectations | best of {args.repeat} (s) | all runs (s) | target |\n|---|---|---|---|---|\n"
        f"| {args.rows} | {report['evaluated']} | {best:.2f} | {runs} | < 5 s |\n"
    )
    text = (
        f"# Validation benchmark\n\n{date.today()} on {platform.node()} ({os.cpu_count()} cores), "
        f"`.venv/bin/python -m benchmarks.validate --rows {args.rows}`\n\n"
        "validate_partition(): read the Parquet partition, batch metrics, both GX checkpoints "
        "(16 expectations), Data Docs update.\n\n" + table
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "validate.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
