"""Ingest throughput and memory benchmark.

    .venv/bin/python -m benchmarks.ingest [--rows 1000000,5000000] [--out benchmarks/results/ingest.md]

For each size it writes a DiploDatos jsonl.gz input into a temp dir (real titles from the shared
MeLi 2019 sample replicated, each copy's titles suffixed with a copy counter so every row has a
unique content id; SYNTHETIC titles when the sample is absent), then measures, each in a fresh
subprocess (peak RSS from os.wait4's rusage of that one child):

* ``ours``: ``pipelines.data.ingest.ingest()`` of the file into a temp lake (checks, ids, dedupe, split,
  quarantine, manifest);
* ``raw pyarrow``: ``pyarrow.json.open_json`` streaming the same gzip in blocks with the same four
  string columns, each batch written with a ``ParquetWriter`` (zstd), and no logic at all.

The inputs are deleted afterwards. The table is written to ``--out`` (Markdown).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import cpu_name

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MELI_SHARED_DATA", REPO.parent / "shared" / "data" / "meli2019"))
REAL = SHARED / "spanish.sample.jsonl.gz"
TARGET_RATIO = 0.5


# ------------------------------------------------------------------------------------------
# Input generation
# ------------------------------------------------------------------------------------------
def _templates() -> tuple[list[tuple[bytes, bytes, bytes]], str]:
    """(prefix up to the title's closing quote, title-end, suffix) per template line."""
    out = []
    if REAL.exists():
        with gzip.open(REAL, "rb") as fh:
            lines = [ln.rstrip(b"\r\n") for ln in fh if ln.strip()]
        origin = f"real titles from {REAL.name} ({len(lines)} rows)"
    else:
        from pipelines.data.synthetic import generate_rows

        rows = generate_rows(50_000, seed=1)
        lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() for r in rows]
        origin = "SYNTHETIC titles (real sample absent)"
    for line in lines:
        obj = json.loads(line)
        enc = json.dumps(obj["title"]).encode()  # the sample is ASCII-escaped, compact JSON
        key = b'"title":' + enc
        at = line.find(key)
        if at < 0:  # unusual spacing: re-serialise the line compactly
            line = json.dumps(obj, separators=(",", ":")).encode()
            key = b'"title":' + enc
            at = line.find(key)
        head = line[: at + len(key) - 1]  # up to (not including) the closing quote of the title
        out.append((head, b'"', line[at + len(key) :]))
    return out, origin


def make_input(path: Path, rows: int) -> str:
    """Write ``rows`` lines of DiploDatos jsonl.gz; copy k>0 appends ' k' to every title."""
    templates, origin = _templates()
    n = len(templates)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as gz:
        written = 0
        copy = 0
        while written < rows:
            take = min(n, rows - written)
            tag = b"" if copy == 0 else b" %d" % copy
            gz.write(b"".join(h + tag + q + s + b"\n" for h, q, s in templates[:take]))
            written += take
            copy += 1
    return origin


# ------------------------------------------------------------------------------------------
# Measurements (each one runs as `python -m benchmarks.ingest --child KIND FILE WORKDIR`)
# ------------------------------------------------------------------------------------------
def _child_ours(src: Path, work: Path) -> dict:
    os.environ["MELI_HOME"] = str(work / "home")
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MELI_LAKE_URI"):
        os.environ.pop(var, None)
    from pipelines.data.ingest import ingest
    from pipelines.settings import get_settings

    settings = get_settings()
    t0 = time.perf_counter()
    r = ingest([src], "2019-01-01", settings)
    secs = time.perf_counter() - t0
    return {
        "rows": r.rows_read,
        "written": r.rows_written,
        "quarantined": r.rows_quarantined,
        "reasons": r.reasons,
        "seconds": secs,
    }


def _child_raw(src: Path, work: Path) -> dict:
    import pyarrow as pa
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    schema = pa.schema([(f, pa.string()) for f in ("title", "language", "label_quality", "category")])
    t0 = time.perf_counter()
    reader = pajson.open_json(
        pa.input_stream(str(src), compression="gzip"),
        read_options=pajson.ReadOptions(block_size=16 << 20),
        parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
    )
    rows = 0
    with pq.ParquetWriter(work / "raw.parquet", schema, compression="zstd") as w:
        for batch in reader:
            w.write_batch(batch)
            rows += batch.num_rows
    secs = time.perf_counter() - t0
    return {"rows": rows, "written": rows, "quarantined": 0, "reasons": {}, "seconds": secs}


CHILDREN = {"ours": _child_ours, "raw": _child_raw}


def measure(kind: str, src: Path, tmp: Path) -> dict:
    """Run one measurement in a fresh interpreter; peak RSS is that child's own ru_maxrss."""
    work = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=tmp))
    out = work / "result.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "benchmarks.ingest", "--child", kind, str(src), str(work), str(out)]
    wall0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} measurement failed (exit {proc.returncode})")
    res = json.loads(out.read_text())
    res["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    res["process_seconds"] = time.perf_counter() - wall0
    res["rows_per_s"] = res["rows"] / res["seconds"]
    shutil.rmtree(work, ignore_errors=True)
    return res


def _machine() -> str:
    cpu = cpu_name()
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} CPUs visible{mem}, {system}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1000000,5000000", help="comma-separated input sizes")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ingest.md"))
    ap.add_argument("--tmp", default=None, help="where to put the generated inputs (default: system temp)")
    ap.add_argument("--child", nargs=4, metavar=("KIND", "SRC", "WORK", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        kind, src, work, out = args.child
        res = CHILDREN[kind](Path(src), Path(work))
        Path(out).write_text(json.dumps(res))
        return 0

    import pyarrow

    sizes = [int(s.replace("_", "")) for s in args.rows.split(",") if s.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="meli-ingest-bench-", dir=args.tmp))
    results = []
    origin = ""
    try:
        for rows in sizes:
            src = tmp / f"bench-{rows}.jsonl.gz"
            t0 = time.perf_counter()
            origin = make_input(src, rows)
            mib = src.stat().st_size / 2**20
            print(
                f"[bench] {rows:,} rows: input {mib:.0f} MiB gz written in {time.perf_counter() - t0:.0f}s", flush=True
            )
            raw = measure("raw", src, tmp)
            print(f"[bench]   raw pyarrow: {raw['rows_per_s']:,.0f} rows/s, {raw['peak_rss_mib']:.0f} MiB", flush=True)
            ours = measure("ours", src, tmp)
            print(
                f"[bench]   ours:        {ours['rows_per_s']:,.0f} rows/s, {ours['peak_rss_mib']:.0f} MiB "
                f"({ours['written']:,} written, {ours['quarantined']:,} quarantined {ours['reasons']})",
                flush=True,
            )
            results.append({"rows": rows, "input_mib": mib, "raw": raw, "ours": ours})
            src.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    cmd = ".venv/bin/python -m benchmarks.ingest --rows " + ",".join(str(s) for s in sizes)
    lines = [
        "# Ingest benchmark",
        "",
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {_machine()} (shared with other jobs; timings are indicative)",
        f"- Command: `{cmd}`",
        f"- Input: DiploDatos jsonl.gz (gzip level 1), {origin}, replicated; copy k>0 appends ' k' to each "
        "title so content ids are unique (rows that are duplicates inside the sample stay duplicates).",
        f"- Versions: pyarrow {pyarrow.__version__}, Python {platform.python_version()}",
        "- `raw pyarrow`: `pyarrow.json.open_json` streaming the gzip (16 MiB blocks, the same 4 string columns) "
        "+ `ParquetWriter` (zstd), no logic. `ours`: `pipelines.data.ingest.ingest()` (checks, content ids, dedupe, "
        "split, quarantine, manifest with sha256). Each in a fresh subprocess; rows/s over the work itself "
        "(imports excluded); peak RSS is that subprocess's `ru_maxrss` (from `os.wait4`).",
        "",
        "| rows | input (MiB gz) | raw pyarrow rows/s | raw peak RSS (MiB) | ours rows/s | ours peak RSS (MiB) "
        "| ours / raw | written | quarantined |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        raw, ours = r["raw"], r["ours"]
        lines.append(
            f"| {r['rows']:,} | {r['input_mib']:.0f} | {raw['rows_per_s']:,.0f} | {raw['peak_rss_mib']:.0f} "
            f"| {ours['rows_per_s']:,.0f} | {ours['peak_rss_mib']:.0f} "
            f"| {ours['rows_per_s'] / raw['rows_per_s']:.0%} | {ours['written']:,} | {ours['quarantined']:,} |"
        )
    ok_rate = all(r["ours"]["rows_per_s"] >= TARGET_RATIO * r["raw"]["rows_per_s"] for r in results)
    lines += [
        "",
        f"Target: ours >= {TARGET_RATIO:.0%} of the raw pyarrow rate: {'met' if ok_rate else 'NOT met'} at every size.",
    ]
    if len(results) > 1:
        first, last = results[0]["ours"]["peak_rss_mib"], results[-1]["ours"]["peak_rss_mib"]
        lines.append(
            f"Peak RSS of ours from {results[0]['rows']:,} to {results[-1]['rows']:,} rows: "
            f"{first:.0f} -> {last:.0f} MiB ({last / first - 1:+.0%})."
        )
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
