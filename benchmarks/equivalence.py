"""A move with no behaviour change, checked: the same inputs through a base revision and through this
checkout give the same outputs (issue 24's layout move; any later refactor of ingest or training).

Both checkouts (the base as a temporary git worktree) run, side by side, one process pinned to one
core each, with ``PYTHONHASHSEED=0``: a single-threaded run is deterministic, so "the same" means
byte-equal, not close.

- **ingest**: the real sample, the challenge CSV head (``../shared/data/meli2019/`` when present), a
  dirty synthetic file, and generated edge cases (every quarantine reason, a truncated gzip, CSV
  quirks): each partition's listing rows, quarantined rows and manifest counts.
- **retrain**: ``python -m pipelines retrain`` on the real sample (synthetic when absent), a short
  recipe: the embedding, the encoded arrays, each model's served weights (sha256), the challenger
  and its validation macro-recall, the test metrics and the gate decision.

``.venv/bin/python -m benchmarks.equivalence --base 86ff59e`` (~10 min on 2 cores);
writes ``benchmarks/results/equivalence.md``; exit 1 when anything differs.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "meli2019"
OUT = REPO / "benchmarks" / "results" / "equivalence.md"
RUN_DATE = "2026-01-01"


def edge_inputs(d: Path) -> list[Path]:
    """Files holding every quarantine reason a reader or a row check can give."""
    lines = [
        b'{"title": "ok uno", "category": "A"}',
        b"{bad json",
        b"",
        b"[1,2]",
        b'{"title": "\xff\xfe", "category": "B"}',
        b'{"title": {"x": 1}, "category": "C"}',
        b'{"title": "  ", "category": "D"}',
        b'{"title": "dos", "language": "klingon", "category": "E"}',
        b'{"title": "tres\\u0001", "category": "F"}',
        b'{"title": "cuatro"}',
        b'{"title": "ok uno", "category": "A"}',
        b'{"title": "x' + b"y" * 1200 + b'", "category": "G"}',
    ]
    (d / "edge.jsonl").write_bytes(b"\n".join(lines * 50) + b"\n")
    data = gzip.compress(b"\n".join(lines * 200) + b"\n")
    (d / "truncated.jsonl.gz").write_bytes(data[: len(data) * 2 // 3])
    (d / "edge.csv").write_text('title,category\n"ok, coma",X\n"abierto,Y\nplain,Z\n,W\nuno,dos,tres\n')
    return [d / "edge.jsonl", d / "truncated.jsonl.gz", d / "edge.csv"]


def run(repo: Path, home: Path, args: list[str], core: int, log: Path) -> None:
    env = {
        **os.environ,
        "MELI_HOME": str(home),
        "PYTHONPATH": str(repo),
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "PYTHONWARNINGS": "ignore",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "ab") as fh:
        rc = subprocess.run(
            [sys.executable, "-m", "pipelines", *args],
            cwd=repo,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, {core}),
        ).returncode
    if rc:
        raise SystemExit(f"{repo}: pipelines {args[0]} failed (rc {rc}); log: {log}")


def sha(obj) -> str:
    if isinstance(obj, Path):
        return hashlib.sha256(obj.read_bytes()).hexdigest()[:16]
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def ingest_outputs(home: Path) -> dict[str, str]:
    import pyarrow.parquet as pq

    out = {}
    for current in sorted((home / "lake" / "listings").glob("ingest_date=*/_CURRENT")):
        version = current.parent / json.loads(current.read_text())["dir"]  # the commit pointer
        date = current.parent.name.split("=")[1]
        manifest = json.loads((version / "_manifest.json").read_text())
        listings = [r for p in sorted(version.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
        quarantine = [
            r for p in sorted((version / "quarantine").glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()
        ]
        out[f"{date} counts"] = json.dumps(manifest["totals"], sort_keys=True)
        out[f"{date} reasons"] = json.dumps(manifest["reasons"], sort_keys=True)
        out[f"{date} listing rows"] = f"{len(listings)} rows, {sha(listings)}"
        out[f"{date} quarantined rows"] = f"{len(quarantine)} rows, {sha(quarantine)}"
    return out


def retrain_outputs(home: Path) -> dict[str, str]:
    work = home / "work" / RUN_DATE
    out = {"encoder.json": sha(work / "embedding" / "encoder.json")}
    for f in sorted((work / "encoded").glob("*.npy")):
        out[f"encoded/{f.name}"] = sha(f)
    for w in sorted((work / "models").glob("**/bundle/**/weights.pt")):
        out[str(w.relative_to(work / "models")).replace("/bundle", "")] = sha(w)
    challenger = json.loads((work / "challenger.json").read_text())
    out["challenger"] = f"{challenger['model_type']} (val macro-recall {challenger['val_macro_recall']})"
    evaluation = json.loads((work / "evaluation" / "evaluation.json").read_text())
    for role, m in sorted(evaluation["models"].items()):
        metrics = {k: v for k, v in m.items() if isinstance(v, (int, float)) and "second" not in k}
        out[f"test metrics, {role}"] = json.dumps(metrics, sort_keys=True)[:200]
    decision = json.loads((work / "evaluation" / "decision.json").read_text())
    out["gate decision"] = f"{decision['decision']} ({decision['rule']}): {decision['reason']}"
    return out


def one_checkout(repo: Path, home: Path, inputs: list[Path], train_file: Path, core: int, epochs: int) -> dict:
    """Every input ingested into one home, then the retrain in a home of its own."""
    (home / "ingest").mkdir(parents=True)
    log = home / "run.log"
    for i, f in enumerate(inputs, start=2):
        run(repo, home / "ingest", ["ingest", str(f), "--run-date", f"2026-02-{i:02d}"], core, log)
    t0 = time.perf_counter()
    retrain = ["retrain", str(train_file), "--run-date", RUN_DATE, "--models", "mlp,cnn", "--epochs", str(epochs)]
    run(repo, home / "retrain", retrain + ["--embedding-epochs", "2", "--min-behaviour-pass", "0"], core, log)
    seconds = time.perf_counter() - t0
    return {**ingest_outputs(home / "ingest"), **retrain_outputs(home / "retrain"), "_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the git revision to compare this checkout with")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rows", type=int, default=20000, help="rows of the dirty synthetic input")
    args = ap.parse_args(argv)
    base = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=REPO, capture_output=True, text=True)
    if base.returncode:
        print(f"error: unknown revision {args.base!r}", file=sys.stderr)
        return 2
    base_rev = base.stdout.strip()
    head_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    with tempfile.TemporaryDirectory(prefix="meli-equivalence-") as tmp:
        tmp = Path(tmp)
        tree = tmp / "base"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), base_rev], cwd=REPO, check=True)
        try:
            inputs_dir = tmp / "inputs"
            inputs_dir.mkdir()
            synthetic = inputs_dir / "dirty.jsonl.gz"
            gen = [sys.executable, "-m", "pipelines", "demo-data", str(synthetic), "--rows", str(args.rows)]
            subprocess.run(gen + ["--seed", "7", "--dirty", "4"], cwd=REPO, check=True, capture_output=True)
            real = [SHARED / "spanish.sample.jsonl.gz", SHARED / "challenge_train_head.csv"]
            inputs = [p for p in real if p.exists()] + [synthetic] + edge_inputs(inputs_dir)
            train_file = real[0] if real[0].exists() else synthetic
            print(f"base {base_rev} vs this checkout: {len(inputs)} ingests and one retrain each, side by side")
            with ThreadPoolExecutor(2) as pool:
                jobs = [
                    pool.submit(one_checkout, repo, tmp / name, inputs, train_file, core, args.epochs)
                    for name, repo, core in (("base-home", tree, 0), ("head-home", REPO, 1 % os.cpu_count()))
                ]
                before, after = (j.result() for j in jobs)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)
    keys = [k for k in before if not k.startswith("_")] + [k for k in after if k not in before]
    rows = [(k, before.get(k, "(absent)"), after.get(k, "(absent)")) for k in keys]
    differ = [k for k, a, b in rows if a != b]
    from benchmarks.common import cpu_name

    lines = [
        "# Equivalence: base vs this checkout",
        "",
        f"Base `{base_rev}`, this checkout `{head_rev.stdout.strip()}` (plus uncommitted changes, if any). "
        f"Machine: {cpu_name()}, {os.cpu_count()} cores; the two runs side by side, one core each "
        f"(retrain {before['_seconds']:.0f} s / {after['_seconds']:.0f} s). Training data: `{train_file.name}`; "
        f"recipe: mlp and cnn, {args.epochs} epochs, 2 embedding epochs (+ the ensemble).",
        "",
        f"**{'Identical' if not differ else f'{len(differ)} of {len(rows)} outputs differ'}**: "
        f"{len(rows)} outputs compared (sha256 prefixes of rows and files; counts and metrics as they are).",
        "",
        "| output | base | this checkout | same |",
        "|---|---|---|---|",
        *(f"| {k} | {a} | {b} | {'yes' if a == b else '**no**'} |" for k, a, b in rows),
        "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
