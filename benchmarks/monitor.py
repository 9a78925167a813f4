"""Monitor benchmark (issue 22): does the label-free macro-recall estimate track the realised one on
real data, and which drift checks fire on shifted copies?

Trains a quick real model on the real sample (mlp, 3 epochs, no ensemble/refit/pretrained vectors)
in a temp MELI_HOME, then on its test split (the lake's hash split):

- ``in-sample``: the reference's own calibration, estimated on the whole test split (what the
  monitor reports for a batch like the test split);
- ``held-out``: calibration on half A of the test split, estimate on half B (honest);
- shifted copies of half B, estimated with half A's calibration: a resampled category mix
  (Dirichlet 0.5 weights), Portuguese-like titles (rule-based es->pt spelling), corrupted titles
  (15% of characters replaced), titles cut to their first two words.

    .venv/bin/python -m benchmarks.monitor [--data PATH] [--epochs 3]

Writes benchmarks/results/monitor.md.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks.common import cpu_name
from pipelines.monitoring import drift as drift_mod
from pipelines.monitoring import reference as reference_mod

REAL = Path("/work/shared/data/meli2019/spanish.sample.jsonl.gz")
RESULTS = Path(__file__).parent / "results" / "monitor.md"
RUN_DATE = "2019-06-01"

_PT = [
    (r"ciones\b", "ções"),
    (r"ción\b", "ção"),
    (r"cion\b", "cao"),
    (r"ñ", "nh"),
    (r"\bcon\b", "com"),
    (r"\bsin\b", "sem"),
    (r"\bnuevo\b", "novo"),
    (r"\bnueva\b", "nova"),
    (r"\by\b", "e"),
    (r"\bel\b", "o"),
    (r"\bla\b", "a"),
    (r"\blos\b", "os"),
    (r"\blas\b", "as"),
    (r"\bpara\b", "pra"),
    (r"\bnegro\b", "preto"),
    (r"\benvio\b", "frete"),
    (r"ll", "lh"),
    (r"\bdel\b", "do"),
]


def portuguese_like(title: str) -> str:
    t = title.lower()
    for pat, rep in _PT:
        t = re.sub(pat, rep, t)
    return t


def corrupt(title: str, rng: random.Random, share: float = 0.15) -> str:
    return "".join(rng.choice("qxzjkw#@0") if rng.random() < share else ch for ch in title)


def _score(bundle, titles: list[str], labels_index: dict, cats: list[str]):
    keys = bundle.encode_keys(titles)
    ok = [i for i, k in enumerate(keys) if k]
    top, top_p = bundle.predict_topk_keys([keys[i] for i in ok], k=1)
    true = np.array([labels_index.get(cats[i], -1) for i in ok])
    return top[:, 0], top_p[:, 0], true, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REAL))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--home", default=None, help="MELI_HOME (default: a temp dir)")
    args = ap.parse_args(argv)
    if not Path(args.data).exists():
        print(f"{args.data} not found", file=sys.stderr)
        return 2
    home = Path(args.home or tempfile.mkdtemp(prefix="meli-monitor-bench-"))
    os.environ["MELI_HOME"] = str(home)
    os.environ.setdefault("MELI_GATE_MIN_BEHAVIOUR_PASS", "0.5")
    from pipelines.flows.cli import main as cli
    from pipelines.model.metrics import macro_recall
    from pipelines.settings import Settings

    s = Settings()
    t0 = time.perf_counter()
    if not (s.run_dir(RUN_DATE) / "evaluation" / reference_mod.REFERENCE_JSON).exists():
        rc = cli(
            ["retrain", args.data, "--run-date", RUN_DATE, "--models", "mlp", "--epochs", str(args.epochs)]
            + ["--no-ensemble", "--no-refit", "--sentence-encoder", "none"]
        )
        assert rc == 0, rc
    train_s = time.perf_counter() - t0
    import json

    import pyarrow.parquet as pq

    ref_json = json.loads((s.run_dir(RUN_DATE) / "evaluation" / reference_mod.REFERENCE_JSON).read_text())
    version = ref_json["version"]
    ref, arrays = reference_mod.load_reference(s, version)
    from pipelines.serving.score import load_bundle

    bundle = load_bundle(s.model_name, version)
    labels = [str(x) for x in bundle.labels]
    index = {c: i for i, c in enumerate(labels)}
    test = pq.read_table(s.run_dir(RUN_DATE) / "dataset" / "test.parquet", columns=["title", "category"])
    titles, cats = test["title"].to_pylist(), [str(c) for c in test["category"].to_pylist()]
    rng = np.random.default_rng(0)
    half = rng.random(len(titles)) < 0.5
    a = [i for i in range(len(titles)) if half[i]]
    b = [i for i in range(len(titles)) if not half[i]]
    rows = []

    def realised(true, pred):
        names = [labels[t] if t >= 0 else f"?{t}" for t in true]
        return macro_recall(names, [labels[p] for p in pred])

    # in-sample: the stored reference on the whole test split
    pred, prob, true, _ = _score(bundle, titles, index, cats)
    est = drift_mod.estimate_macro_recall(pred, prob, arrays["precision"], arrays["confusion"], arrays["true_counts"])
    rows.append(
        ("in-sample (whole test split, the stored reference)", len(pred), est["macro_recall"], realised(true, pred))
    )
    pa_, qa, ta, _ = _score(bundle, [titles[i] for i in a], index, [cats[i] for i in a])
    cal = drift_mod.calibration(pa_, qa, ta, len(labels))

    def run(name: str, ts: list[str], cs: list[str]):
        p, q, t, _ = _score(bundle, ts, index, cs)
        e = drift_mod.estimate_macro_recall(p, q, cal["precision"], cal["confusion"], cal["true_counts"])[
            "macro_recall"
        ]
        e0 = drift_mod.estimate_macro_recall(p, q, cal["precision"], cal["confusion"])["macro_recall"]
        rows.append((name, len(p), e, realised(t, p), e0))
        return ts

    tb, cb = [titles[i] for i in b], [cats[i] for i in b]
    run("held-out (calibrated on half A, half B)", tb, cb)
    # a resampled category mix
    w = dict(zip(sorted(set(cb)), rng.dirichlet(np.full(len(set(cb)), 0.5))))
    pw = np.array([w[c] for c in cb])
    pick = rng.choice(len(cb), len(cb), p=pw / pw.sum())
    run("half B, resampled category mix (Dirichlet 0.5)", [tb[i] for i in pick], [cb[i] for i in pick])
    run("half B, Portuguese-like spelling", [portuguese_like(t) for t in tb], cb)
    r = random.Random(1)
    run("half B, corrupted titles (15% of characters)", [corrupt(t, r) for t in tb], cb)
    run("half B, first two words only", [" ".join(t.split()[:2]) for t in tb], cb)

    # which checks fire: each copy as a scored batch against the stored reference
    import pyarrow as pa

    checks = []
    for name, ts in (
        ("held-out half B", tb),
        ("resampled category mix", [tb[i] for i in pick]),
        ("Portuguese-like", [portuguese_like(t) for t in tb]),
        ("corrupted titles", [corrupt(t, random.Random(1)) for t in tb]),
        ("first two words", [" ".join(t.split()[:2]) for t in tb]),
    ):
        p, q, _, ok = _score(bundle, ts, index, cb if name != "resampled category mix" else [cb[i] for i in pick])
        status = ["unscorable"] * len(ts)
        pc_, pp = [None] * len(ts), [None] * len(ts)
        for j, i in enumerate(ok):
            status[i], pc_[i], pp[i] = "scored", labels[p[j]], float(q[j])
        batch = pa.table(
            {
                "title": ts,
                "predicted_category": pc_,
                "probability": pp,
                "status": status,
                "model_version": [version] * len(ts),
            }
        )
        f = drift_mod.compare(ref, arrays, batch, s.monitor)
        st, breached = drift_mod.judge(f, s.monitor)
        checks.append((name, st, ", ".join(c["check"] for c in breached) or "-", f))

    lines = [
        "# Monitor: label-free macro-recall estimate vs realised (real sample)",
        "",
        f"{date.today().isoformat()}, {cpu_name()}; `.venv/bin/python -m benchmarks.monitor`. Model: mlp, "
        f"{args.epochs} epochs, no ensemble/refit/pretrained vectors, trained on `{Path(args.data).name}` "
        f"({ref['test_rows']} test rows, {len(labels)} categories; training took {train_s:.0f} s).",
        "",
        "Estimate: `pipelines.monitoring.drift.estimate_macro_recall` (per predicted class, binned top-1 "
        "probability -> "
        "precision on the calibration rows, expected confusion, EM correction of the category mix); "
        "'without EM' is the plain CBPE-style estimate.",
        "",
        "| batch | rows | estimate | realised | estimate - realised | without EM |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        name, n, e, real = row[:4]
        e0 = f"{row[4]:.4f}" if len(row) > 4 else "-"
        lines.append(f"| {name} | {n} | {e:.4f} | {real:.4f} | {e - real:+.4f} | {e0} |")
    lines += [
        "",
        "## Drift checks on the same copies (against the stored reference, default thresholds)",
        "",
        "| batch | status | breached | category JS (noise) | mean conf | OOV | language (es/pt/neither) | length PSI |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, st, br, f in checks:
        lg = "/".join(f"{f['languages'][k]:.2f}" for k in drift_mod.LANGUAGES)
        lines.append(
            f"| {name} | {st} | {br} | {f['category']['js']:.3f} ({f['category']['js_noise']:.3f}) | "
            f"{f['confidence']['mean']:.3f} | {f['oov_share']:.3f} | {lg} | {f['length']['psi']:.3f} |"
        )
    lines += ["", f"Reference: test OOV {ref['text']['oov_share']:.3f}, languages {ref['text']['languages']}.", ""]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
