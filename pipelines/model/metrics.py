"""Metrics: macro-recall (balanced accuracy over the classes present in y_true), accuracy,
per-class recall, and a paired bootstrap confidence interval of a macro-recall difference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _codes(y_true, *preds):
    classes = np.unique(np.asarray(y_true, dtype=object).astype(str))
    index = {c: i for i, c in enumerate(classes)}
    t = np.array([index[str(v)] for v in y_true], dtype=np.int64)
    ps = [np.array([index.get(str(v), -1) for v in p], dtype=np.int64) for p in preds]
    return classes, t, ps


def per_class_recall(y_true, y_pred) -> dict[str, float]:
    classes, t, (p,) = _codes(y_true, y_pred)
    support = np.bincount(t, minlength=len(classes))
    hits = np.bincount(t[p == t], minlength=len(classes))
    return {c: float(h / s) for c, h, s in zip(classes, hits, support)}


def macro_recall(y_true, y_pred) -> float:
    if len(y_true) == 0:
        raise ValueError("macro-recall of an empty test set is undefined")
    return float(np.mean(list(per_class_recall(y_true, y_pred).values())))


def accuracy(y_true, y_pred) -> float:
    return float(np.mean(np.asarray(y_true, dtype=object) == np.asarray(y_pred, dtype=object)))


@dataclass
class Comparison:
    challenger: float
    champion: float
    delta: float
    ci_low: float
    ci_high: float
    samples: int


def paired_bootstrap(y_true, pred_a, pred_b, samples: int = 500, seed: int = 0, alpha: float = 0.05) -> Comparison:
    """CI of macro_recall(a) - macro_recall(b) by resampling test rows (the same rows for both)."""
    classes, t, (a, b) = _codes(y_true, pred_a, pred_b)
    k = len(classes)
    rng = np.random.default_rng(seed)
    n = len(t)
    hit_a, hit_b = (a == t), (b == t)

    def mr(idx):
        support = np.bincount(t[idx], minlength=k)
        present = support > 0
        ra = np.bincount(t[idx][hit_a[idx]], minlength=k)[present] / support[present]
        rb = np.bincount(t[idx][hit_b[idx]], minlength=k)[present] / support[present]
        return ra.mean() - rb.mean()

    full = np.arange(n)
    point = mr(full)
    diffs = np.array([mr(rng.integers(0, n, n)) for _ in range(samples)]) if samples else np.array([point])
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    ma = macro_recall(y_true, pred_a)
    return Comparison(
        challenger=ma, champion=ma - point, delta=float(point), ci_low=float(lo), ci_high=float(hi), samples=samples
    )


def confusion_summary(y_true, y_pred, top: int = 30) -> list[dict]:
    """The most frequent (true, predicted) mistakes."""
    from collections import Counter

    pairs = Counter((str(t), str(p)) for t, p in zip(y_true, y_pred) if str(t) != str(p))
    return [{"true": t, "predicted": p, "count": c} for (t, p), c in pairs.most_common(top)]
