"""Warm vs full on the real sample split into two dates.

    .venv/bin/python -m benchmarks.warm [--models mlp] [--new-share 0.15]
        [--out benchmarks/results/warm.md]

The shared sample's rows are split by a hash of the line into a base partition (``1 - new_share``)
and a next-day partition (``new_share``). Two homes, the same lake:

- **warm**: a full run on the base date (the champion), then the next night with ``mode=warm``;
- **full**: the same two partitions, the next night with ``mode=full`` (no champion).

Both challengers are scored on the next night's frozen test split (the same rows in both homes:
the split is a hash of ``listing_id``), as is the base-date champion (the warm arm's gate compares
with it). Everything else is the DAG defaults.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import cpu_name
from benchmarks.ingest import REAL

REPO = Path(__file__).resolve().parent.parent
BASE, NEXT = "2026-11-01", "2026-11-02"


def split_sample(out: Path, new_share: float) -> tuple[Path, Path, int, int]:
    base, night = out / "base.jsonl.gz", out / "night.jsonl.gz"
    n_base = n_night = 0
    with gzip.open(REAL, "rb") as src, gzip.open(base, "wb") as b, gzip.open(night, "wb") as n:
        for line in src:
            if not line.strip():
                continue
            if zlib.crc32(line) % 1000 < new_share * 1000:
                n.write(line)
                n_night += 1
            else:
                b.write(line)
                n_base += 1
    return base, night, n_base, n_night


def arm(home: Path, base: Path, night: Path, mode: str, models: list[str]) -> dict:
    os.environ["MELI_HOME"] = str(home)
    from pipelines.config import TrainConfig
    from pipelines.flows.retrain import run_all, step_ingest
    from pipelines.settings import get_settings

    s = get_settings()
    out = {"mode": mode}
    t0 = time.perf_counter()
    if mode == "warm":
        first = run_all(s, [str(base)], BASE, TrainConfig(models=models, mode="full"))
        out["base_challenger"] = first["challenger"]
        out["base_seconds"] = round(time.perf_counter() - t0, 1)
    else:
        step_ingest(s, [str(base)], BASE)
    t1 = time.perf_counter()
    second = run_all(s, [str(night)], NEXT, TrainConfig(models=models, mode=mode))
    out["night_seconds"] = round(time.perf_counter() - t1, 1)
    ev = json.loads((s.run_dir(NEXT) / "evaluation" / "evaluation.json").read_text())
    out["evaluation"] = {k: v for k, v in ev.items() if k != "predictions"}
    out["trained"] = [
        {k: r.get(k) for k in ("model_type", "mode", "parent_version", "train_rows", "val_macro_recall")}
        for r in second["trained"]
    ]
    out["decision"] = second["decision"]["decision"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mlp")
    p.add_argument("--new-share", type=float, default=0.15)
    p.add_argument("--work", type=Path, default=Path("/tmp/meli-warm-bench"))
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "warm.md")
    p.add_argument("--arm", choices=["warm", "full"], help="run one arm (in its own process) and print it")
    a = p.parse_args(argv)
    models = a.models.split(",")
    a.work.mkdir(parents=True, exist_ok=True)
    if a.arm:
        base, night = a.work / "base.jsonl.gz", a.work / "night.jsonl.gz"
        res = arm(a.work / a.arm, base, night, a.arm, models)
        (a.work / f"{a.arm}.json").write_text(json.dumps(res, indent=2, default=str))
        return 0
    import subprocess
    import sys

    started = datetime.now(UTC).isoformat(timespec="seconds")
    _, _, n_base, n_night = split_sample(a.work, a.new_share)
    for which in ("warm", "full"):  # one after the other: each arm's timings are its own
        cmd = [sys.executable, "-m", "benchmarks.warm", "--arm", which, "--models", a.models, "--work", str(a.work)]
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    res = {w: json.loads((a.work / f"{w}.json").read_text()) for w in ("warm", "full")}
    w, f = res["warm"]["evaluation"]["models"], res["full"]["evaluation"]["models"]
    lines = [
        "# Warm vs full on the real sample (CPU)",
        "",
        f"{started[:10]} on {cpu_name()} ({os.cpu_count()} cores). "
        f"`python -m benchmarks.warm --models {a.models} --new-share {a.new_share}`",
        "",
        f"`{REAL.name}` split by a hash of the line: {n_base:,} rows on {BASE}, {n_night:,} on {NEXT}. "
        f"Test macro-recall on the {NEXT} run's frozen test split "
        f"({res['warm']['evaluation']['test_rows']:,} rows, the same in both arms). DAG defaults otherwise.",
        "",
        "| model | test macro-recall | test accuracy | night wall s | trained rows |",
        "|---|---|---|---|---|",
        f"| champion of {BASE} (full, base rows only) | {w['champion']['macro_recall']:.4f} | "
        f"{w['champion']['accuracy']:.4f} | {res['warm']['base_seconds']:.0f} (its own night) | - |",
        f"| **warm** on {NEXT} (from that champion) | {w['challenger']['macro_recall']:.4f} | "
        f"{w['challenger']['accuracy']:.4f} | {res['warm']['night_seconds']:.0f} | "
        + ", ".join(f"{t['model_type']}: {t['train_rows']:,}" for t in res["warm"]["trained"] if t.get("train_rows"))
        + " |",
        f"| **full** on {NEXT} | {f['challenger']['macro_recall']:.4f} | {f['challenger']['accuracy']:.4f} | "
        f"{res['full']['night_seconds']:.0f} | "
        + ", ".join(f"{t['model_type']}: {t['train_rows']:,}" for t in res["full"]["trained"] if t.get("train_rows"))
        + " |",
        "",
        f"Warm - full: {100 * (w['challenger']['macro_recall'] - f['challenger']['macro_recall']):+.2f} points "
        f"(target: within 0.5). Warm gate decision: {res['warm']['decision']}.",
    ]
    a.out.write_text("\n".join(lines) + "\n")
    (a.out.with_suffix(".json")).write_text(json.dumps(res, indent=2, default=str))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
