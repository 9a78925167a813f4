"""Scoring benchmark: titles/s and peak RSS of batch scoring on 1M and 5M titles (CPU here), side
by side with the TF-IDF word+char LinearSVC baseline's predict rate, in the same run.

    .venv/bin/python -m benchmarks.score [--sizes 1000000,5000000] [--models mlp,cnn,bilstm]
        [--sentence use,none] [--unseen 0.1]

A model is trained (few epochs: throughput, not quality, is measured here) on the real sample when
present (../shared/data/meli2019/spanish.sample.jsonl.gz), else on synthetic listings, and promoted.
Inputs are unlabelled jsonl.gz files made by replicating those titles. Each measurement runs in a
fresh process; peak RSS is that process's ru_maxrss. ``--sentence``: one champion per
sentence_encoder variant (each in its own MELI_HOME), each scoring every size. ``--unseen F``: one more
input of the first size where a share F of the titles carries a word no run has seen (a unique token:
for the pretrained word vectors, the worst case: each is encoded when scored). Writes
benchmarks/results/score.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
REAL = REPO.parent / "shared" / "data" / "meli2019" / "spanish.sample.jsonl.gz"


def _run(args: list[str], env: dict) -> tuple[dict, float]:
    """Run a child, return (its JSON result, its peak RSS in MiB)."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.score", *args], env=env, stdout=subprocess.PIPE)
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed ({proc.returncode}): {out[-2000:]}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024


def make_input(titles: list[str], n: int, path: Path, unseen: float = 0.0) -> None:
    """``n`` titles cycling through ``titles``; a share ``unseen`` of them (evenly spread) gets a
    unique never-seen word appended."""
    every = round(1 / unseen) if unseen > 0 else 0
    with gzip.open(path, "wt", compresslevel=1) as fh:
        for i in range(n):
            title = titles[i % len(titles)]
            if every and i % every == 0:
                title += f" zqx{i:x}"
            fh.write(json.dumps({"id": f"L{i}", "title": title}, ensure_ascii=False) + "\n")


def child_score(path: str) -> dict:
    import mlflow

    from pipelines.core.tracking import configure
    from pipelines.serving.score import score
    from pipelines.settings import get_settings

    settings = get_settings()
    t0 = time.perf_counter()
    # shadow off: the served path's throughput, comparable with earlier results
    r = score(settings, path, Path(os.environ["MELI_HOME"]) / "out.parquet", progress=False)
    seconds = time.perf_counter() - t0
    configure(settings)
    mv = mlflow.MlflowClient().get_model_version(settings.model_name, r.model_version)
    kind = mv.tags.get("meli.model_type")
    if mv.tags.get("meli.members"):
        kind += f" of {mv.tags['meli.members']}"
    return {"rows": r.rows, "seconds": seconds, "model_version": r.model_version, "type": kind}


def child_baseline(train: str, path: str, limit: int) -> dict:
    import pandas as pd
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion, make_pipeline
    from sklearn.svm import LinearSVC

    df = pd.read_parquet(train)
    feats = FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True, min_df=1)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, lowercase=True)),
        ]
    )
    clf = make_pipeline(feats, LinearSVC(C=0.5))
    clf.fit(df["title"], df["category"])
    rows, t0, batch = 0, time.perf_counter(), []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            batch.append(json.loads(line)["title"])
            if len(batch) == 65536:
                clf.predict(batch)
                rows += len(batch)
                batch = []
                if rows >= limit:
                    break
    if batch and rows < limit:
        clf.predict(batch)
        rows += len(batch)
    return {"rows": rows, "seconds": time.perf_counter() - t0}


def train_champion(env: dict, models: str, tmp: Path, sentence: str) -> tuple[list[str], str]:
    from pipelines.data.synthetic import write_jsonl

    src = REAL if REAL.exists() else write_jsonl(tmp / "synthetic.jsonl.gz", 20000, seed=1)
    cmd = [
        sys.executable,
        "-m",
        "pipelines",
        "retrain",
        str(src),
        "--run-date",
        "2026-01-01",
        "--models",
        models,
        "--epochs",
        "2",
        "--embedding-epochs",
        "2",
        "--min-macro-recall",
        "0",
        "--sentence-encoder",
        sentence,
    ]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    titles = [json.loads(line)["title"] for line in gzip.open(src, "rt")]
    train = Path(env["MELI_HOME"]) / "work" / "2026-01-01" / "dataset" / "train.parquet"
    return titles, str(train)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-score":
        print(json.dumps(child_score(sys.argv[2])))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--child-baseline":
        print(json.dumps(child_baseline(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000000,5000000")
    ap.add_argument(
        "--models",
        default="mlp,cnn,bilstm",
        help="model types the retraining trains (as the nightly run); the promoted one (a single type, or "
        "the ensemble when it is best on validation) scores",
    )
    ap.add_argument("--baseline-rows", type=int, default=500_000, help="titles the baseline predicts")
    ap.add_argument("--sentence", default="use,none", help="sentence_encoder of each champion (comma-separated)")
    ap.add_argument("--unseen", type=float, default=0.1, help="share of titles with a never-seen word (0 = skip)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        for variant in [v.strip() for v in args.sentence.split(",") if v.strip()]:
            env = {**os.environ, "MELI_HOME": str(tmp / f"home-{variant}"), "PYTHONPATH": str(REPO)}
            env["MELI_DEVICE"] = "cpu"
            env.pop("MLFLOW_TRACKING_URI", None)
            titles, train = train_champion(env, args.models, tmp, variant)
            inputs = [(n, 0.0) for n in sizes] + ([(sizes[0], args.unseen)] if args.unseen > 0 else [])
            for n, unseen in inputs:
                path = tmp / f"titles_{n}_{unseen}.jsonl.gz"
                if not path.exists():
                    make_input(titles, n, path, unseen)
                res, rss = _run(["--child-score", str(path)], env)
                what = f"{n:,}" + (f" ({unseen:.0%} with a never-seen word)" if unseen else "")
                rows_out.append(
                    (
                        f"meli champion v{res['model_version']}: {res['type']} (trained: {args.models}; "
                        f"sentence_encoder={variant})",
                        what,
                        res["rows"],
                        res["rows"] / res["seconds"],
                        rss,
                    )
                )
                print(rows_out[-1], flush=True)
        path = tmp / f"titles_{sizes[0]}_0.0.jsonl.gz"
        res, rss = _run(["--child-baseline", train, str(path), str(args.baseline_rows)], env)
        rate = res["rows"] / res["seconds"]
        rows_out.append(("TF-IDF word+char LinearSVC (predict only)", f"{sizes[0]:,}", res["rows"], rate, rss))
        print(rows_out[-1], flush=True)
    table = "| scorer | input titles | titles scored | titles/s | peak RSS (MiB) |\n|---|---|---|---|---|\n"
    table += "".join(f"| {a} | {b} | {c:,} | {d:,.0f} | {e:,.0f} |\n" for a, b, c, d, e in rows_out)
    text = (
        f"# Scoring benchmark (CPU)\n\n{date.today()} on {platform.node()} ({os.cpu_count()} cores), "
        f"`.venv/bin/python -m benchmarks.score --sizes {args.sizes} --models {args.models} "
        f"--sentence {args.sentence} --unseen {args.unseen}`\n\n"
        "Ours: `pipelines.serving.score.score()` end to end (read jsonl.gz, tokenize, batched inference, write Parquet "
        "with top-3). Baseline: sklearn pipeline `predict` on in-memory batches of 65,536 titles (no I/O, no "
        "output), fitted on the same training split; its RSS includes the fitted vectorizers. No GPU here.\n\n" + table
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "score.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
