"""The statistics of the monitor (``pipelines/monitoring/batch.py``): divergences of count vectors (PSI,
Jensen-Shannon and its sampling noise), the CBPE calibration and the label-free macro-recall estimate,
the text statistics of titles (tokens, OOV share, language), and the comparison of a scored batch
with a reference: every figure, one check per ``MELI_MONITOR_*`` threshold, and the verdict.

Pure numpy/pyarrow: no MLflow, no files.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.features.text import STOPWORDS_ES, STOPWORDS_PT, TextConfig, normalize, tokenize
from pipelines.settings import Monitor

CAL_BINS = 10  # calibration bins of the top-1 probability
HIST_BINS = 20  # confidence histogram bins
PRIOR = 5.0  # pseudo-rows shrinking a class's bin precision (and its error mix) toward all classes'
LANGUAGES = ("spanish", "portuguese", "neither")
_EPS = 1e-6

# Language of a title by markers that survive normalization: words used in one language only (the
# function words of one list and not the other, common listing words) and spelling (ñ; ç ã õ; the
# -cion / -cao endings; nh/lh inside a word). "neither": no marker or a tie (brand-and-model titles,
# another language). The same detector runs on the reference's test titles and on each batch.
_ES_WORDS = (STOPWORDS_ES - STOPWORDS_PT) | frozenset(
    "nuevo nueva nuevos nuevas envio negro negra blanco blanca rojo roja oferta ofertas liquidacion juego "
    "juegos mujer hombre talle ninos nino cuotas sin llanta zapatillas".split()
)
_PT_WORDS = (STOPWORDS_PT - STOPWORDS_ES) | frozenset(
    "novo nova novos novas frete preto preta branco branca vermelho vermelha promocao lancamento jogo jogos "
    "mulher homem tamanho criancas oculos relogio capinha racao".split()
)


# ------------------------------------------------------------------------------------------
# Small numeric pieces (pure, unit-tested)
# ------------------------------------------------------------------------------------------
def share_array(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts)


def psi(ref_counts: np.ndarray, cur_counts: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of two count vectors over the same bins."""
    a = np.clip(share_array(ref_counts), eps, None)
    b = np.clip(share_array(cur_counts), eps, None)
    return float(np.sum((b - a) * np.log(b / a)))


def js_divergence(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two count vectors."""
    a, b = share_array(ref_counts), share_array(cur_counts)
    m = (a + b) / 2

    def kl(x):
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return 0.5 * kl(a) + 0.5 * kl(b)


def js_noise(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """What the JS divergence of two samples of one distribution is on average: (k - 1) / (8 ln 2)
    * (1/n + 1/m) for k categories seen (the chi-square approximation). A batch of a few hundred rows
    over 632 categories differs from the reference by sampling alone; only the excess is drift."""
    n, m = float(np.sum(cur_counts)), float(np.sum(ref_counts))
    if n <= 0 or m <= 0:
        return 0.0
    k = int(np.count_nonzero((np.asarray(ref_counts) + np.asarray(cur_counts)) > 0))
    return max(k - 1, 0) / (8 * math.log(2)) * (1 / n + 1 / m)


def cal_bin(prob: np.ndarray) -> np.ndarray:
    return np.minimum((np.asarray(prob, dtype=np.float64) * CAL_BINS).astype(np.int64), CAL_BINS - 1).clip(0)


def calibration(pred: np.ndarray, prob: np.ndarray, true: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """The CBPE reference of test-split predictions (class indices; ``true`` = -1 for a category the
    model does not know): P(correct | predicted class, top-1 probability bin), shrunk toward all
    classes' precision in the bin, and where a predicted class's errors truly belong (row-normalized,
    shrunk toward all errors' mix; column ``n_classes`` = categories the model does not know)."""
    pred, true = np.asarray(pred, dtype=np.int64), np.asarray(true, dtype=np.int64)
    b = cal_bin(prob)
    correct = pred == true
    n_b = np.bincount(b, minlength=CAL_BINS).astype(np.float64)
    c_b = np.bincount(b[correct], minlength=CAL_BINS).astype(np.float64)
    mid = (np.arange(CAL_BINS) + 0.5) / CAL_BINS
    g = np.where(n_b > 0, c_b / np.maximum(n_b, 1), mid)
    cell = pred * CAL_BINS + b
    n_cb = np.bincount(cell, minlength=n_classes * CAL_BINS).reshape(n_classes, CAL_BINS)
    c_cb = np.bincount(cell[correct], minlength=n_classes * CAL_BINS).reshape(n_classes, CAL_BINS)
    precision = (c_cb + PRIOR * g[None, :]) / (n_cb + PRIOR)
    wrong = ~correct
    t = np.where(true[wrong] < 0, n_classes, true[wrong])
    errors = np.zeros((n_classes, n_classes + 1), dtype=np.float64)
    np.add.at(errors, (pred[wrong], t), 1.0)
    overall = errors.sum(0)
    overall = overall / overall.sum() if overall.sum() > 0 else np.full(n_classes + 1, 1.0 / (n_classes + 1))
    confusion = (errors + PRIOR * overall[None, :]) / (errors.sum(1, keepdims=True) + PRIOR)
    np.fill_diagonal(confusion[:, :n_classes], 0.0)  # an error is never its own predicted class
    confusion /= np.maximum(confusion.sum(1, keepdims=True), _EPS)
    true_counts = np.bincount(np.where(true < 0, n_classes, true), minlength=n_classes + 1)
    return {
        "precision": precision.astype(np.float32),
        "confusion": confusion.astype(np.float32),
        "true_counts": true_counts.astype(np.int64),
    }


def estimate_macro_recall(
    pred: np.ndarray,
    prob: np.ndarray,
    precision: np.ndarray,
    confusion: np.ndarray,
    true_counts: np.ndarray | None = None,
    iterations: int = 10,
) -> dict:
    """Label-free macro-recall of a batch: each row is right with its calibrated probability q; the
    expected hits of class k are the q of the rows predicted k, its expected rows those hits plus the
    errors of every predicted class that truly belong to k (the test split's confusion). Classes are
    weighted by the chance they occur at all (1 - exp(-expected rows)), as the realised macro-recall
    averages over the classes present.

    With ``true_counts`` (the test split's rows per true class) a shifted category mix is corrected
    for, EM-style (Saerens et al. 2002): the batch's class weights w = expected rows / test rows
    re-weight where errors come from and a predicted class's precision odds (by w of the class over
    the mean w of its error sources), until the expected rows settle."""
    n_classes = precision.shape[0]
    pred = np.asarray(pred, dtype=np.int64)
    if len(pred) == 0:
        return {"macro_recall": None, "accuracy": None, "classes": 0.0}
    base = np.clip(precision[pred, cal_bin(prob)].astype(np.float64), _EPS, 1 - _EPS)
    logit = np.log(base / (1 - base))
    conf = confusion.astype(np.float64)
    q, mix = base, conf
    ref = None
    if true_counts is not None and np.sum(true_counts) > 0:
        ref = np.zeros(n_classes + 1)
        ref[: len(true_counts)] = true_counts[: n_classes + 1]
        ref = ref / ref.sum() * len(pred)
    for _ in range(iterations if ref is not None else 1):
        hits = np.bincount(pred, weights=q, minlength=n_classes)
        misses = np.bincount(pred, weights=1.0 - q, minlength=n_classes)
        support = misses @ mix
        support[:n_classes] += hits
        if ref is None:
            break
        w = (support + 1.0) / (ref + 1.0)
        w[n_classes] = 1.0
        mix = conf * w[None, :]
        source = mix.sum(1)
        mix = mix / np.maximum(source[:, None], _EPS)
        shift = np.log(w[:n_classes] / np.maximum(source, _EPS))
        q = 1.0 / (1.0 + np.exp(-(logit + shift[pred])))
    recall = np.zeros(n_classes + 1)
    recall[:n_classes] = hits / np.maximum(support[:n_classes], _EPS)
    weight = 1.0 - np.exp(-support)
    return {
        "macro_recall": float(np.sum(weight * np.clip(recall, 0, 1)) / max(weight.sum(), _EPS)),
        "accuracy": float(q.mean()),
        "classes": float(weight.sum()),
    }


def realised_macro_recall(y_true: list, y_pred: list) -> float:
    from pipelines.model.metrics import macro_recall

    return macro_recall(y_true, y_pred)


def word_hashes(words) -> np.ndarray:
    """Stable 64-bit hashes of words (sorted, unique): the vocabulary kept in the reference."""
    return np.unique(
        np.fromiter(
            (int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little") for w in words),
            dtype=np.uint64,
        )
    )


def detect_language(title: str) -> str:
    """spanish / portuguese / neither, by markers (see ``_ES_WORDS``)."""
    raw = title.lower()
    es = raw.count("ñ")
    pt = raw.count("ç") + raw.count("ã") + raw.count("õ")
    for w in normalize(title).split():
        if w in _ES_WORDS or w.endswith(("cion", "ciones")):
            es += 1
        elif w in _PT_WORDS or w.endswith(("cao", "coes")) or (len(w) > 3 and ("nh" in w[1:] or "lh" in w[1:])):
            pt += 1
    return "spanish" if es > pt else "portuguese" if pt > es else "neither"


def text_stats(titles: list[str], text: TextConfig, vocab: np.ndarray) -> dict:
    """Tokens per title, the share of tokens outside the vocabulary (hashes), titles with no token,
    and the language mix, over ``titles``."""
    counts: dict[str, int] = {}
    langs = dict.fromkeys(LANGUAGES, 0)
    n_tokens = np.zeros(len(titles), dtype=np.int64)
    for i, t in enumerate(titles):
        toks = tokenize(t or "", text)
        n_tokens[i] = len(toks)
        for tok in toks:
            counts[tok] = counts.get(tok, 0) + 1
        langs[detect_language(t or "")] += 1
    total = int(n_tokens.sum())
    oov = 0
    if counts:
        words = list(counts)
        h = np.fromiter(
            (int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little") for w in words),
            dtype=np.uint64,
            count=len(words),
        )
        pos = np.searchsorted(vocab, h).clip(0, max(len(vocab) - 1, 0))
        known = (vocab[pos] == h) if len(vocab) else np.zeros(len(words), dtype=bool)
        freq = np.fromiter(counts.values(), dtype=np.int64, count=len(words))
        oov = int(freq[~known].sum())
    n = max(len(titles), 1)
    return {
        "rows": len(titles),
        "tokens": total,
        "oov_share": oov / total if total else 0.0,
        "mean_tokens": float(n_tokens.mean()) if len(titles) else 0.0,
        "no_token_share": float((n_tokens == 0).sum() / n),
        "languages": {k: v / n for k, v in langs.items()},
    }


def sample_indices(n: int, size: int, seed: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def title_lengths(titles: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.utf8_length(pc.utf8_trim_whitespace(titles)), 0).to_numpy(zero_copy_only=False)


def length_histogram(lengths: np.ndarray, edges) -> np.ndarray:
    return np.bincount(np.searchsorted(np.asarray(edges), lengths, side="right"), minlength=len(edges) + 1)


# ------------------------------------------------------------------------------------------
# Comparing a batch with the reference
# ------------------------------------------------------------------------------------------
def compare(ref: dict, arrays: dict, batch: pa.Table, rules: Monitor, seed: int = 13) -> dict:
    """Every figure of ``batch`` (SCORED_SCHEMA columns) against the reference, and the breaches."""
    labels = ref["labels"]
    k = len(labels)
    status = batch.column("status")
    scored_mask = pc.equal(status, "scored")
    rows = batch.num_rows
    scored = batch.filter(scored_mask)
    n = scored.num_rows
    idx = pc.index_in(scored.column("predicted_category"), value_set=pa.array(labels, pa.string()))
    known = pc.is_valid(idx).to_numpy(zero_copy_only=False)
    pred = pc.fill_null(idx, 0).to_numpy(zero_copy_only=False).astype(np.int64)[known]
    prob = pc.fill_null(scored.column("probability"), 0.0).to_numpy(zero_copy_only=False)[known]
    counts = np.bincount(pred, minlength=k)
    ref_counts = arrays["pred_counts"]
    ref_prob = arrays["prob"].astype(np.float64)
    low = rules.low_confidence
    conf = {
        "mean": float(prob.mean()) if n else None,
        "reference_mean": ref["confidence"]["mean"],
        "low_share": float((prob < low).mean()) if n else None,
        "reference_low_share": float((ref_prob < low).mean()) if len(ref_prob) else None,
        "hist": np.histogram(prob, bins=HIST_BINS, range=(0, 1))[0].tolist(),
        "reference_hist": ref["confidence"]["hist"],
    }
    titles = batch.column("title")
    edges = np.asarray(ref["text"]["length_edges"])
    lengths = title_lengths(titles.combine_chunks() if isinstance(titles, pa.ChunkedArray) else titles)
    length_hist = length_histogram(lengths, edges)
    sample = sample_indices(rows, rules.sample_rows, seed)
    sampled = titles.take(pa.array(sample)).to_pylist() if rows else []
    stats = text_stats([t or "" for t in sampled], TextConfig.from_dict(ref["text_config"]), arrays["vocab"])
    ref_lang = ref["text"]["languages"]
    lang_shift = 0.5 * sum(abs(stats["languages"].get(x, 0.0) - ref_lang.get(x, 0.0)) for x in LANGUAGES)
    est = estimate_macro_recall(pred, prob, arrays["precision"], arrays["confusion"], arrays.get("true_counts"))
    unscorable = (rows - n) / rows if rows else 0.0
    figures = {
        "rows": rows,
        "scored_rows": n,
        "unknown_category_rows": int(n - len(pred)),
        "category": _category(labels, ref_counts, counts),
        "confidence": conf,
        "oov_share": stats["oov_share"],
        "reference_oov_share": ref["text"]["oov_share"],
        "length": {
            "mean_chars": float(lengths.mean()) if rows else None,
            "reference_hist": ref["text"]["length_hist"],
            "hist": length_hist.tolist(),
            "edges": edges.tolist(),
            "psi": psi(np.asarray(ref["text"]["length_hist"]), length_hist),
            "mean_tokens": stats["mean_tokens"],
            "reference_mean_tokens": ref["text"]["mean_tokens"],
        },
        "languages": stats["languages"],
        "reference_languages": ref_lang,
        "language_shift": lang_shift,
        "unscorable_share": unscorable,
        "reference_unscorable_share": ref["unscorable_share"],
        "estimate": {
            "macro_recall": est["macro_recall"],
            "accuracy": est["accuracy"],
            "reference_macro_recall": ref["macro_recall"],
            "reference_estimate": ref.get("estimated_macro_recall"),
        },
        "text_sample_rows": int(len(sample)),
    }
    figures["checks"] = _checks(figures, rules)
    return figures


def _category(labels: list[str], ref_counts: np.ndarray, counts: np.ndarray) -> dict:
    """The predicted-category mix of a batch against the reference's: divergences and the top shifts."""
    js = js_divergence(ref_counts, counts)
    noise = js_noise(ref_counts, counts)
    shares, ref_shares = share_array(counts), share_array(ref_counts)
    top = np.argsort(-np.abs(shares - ref_shares), kind="stable")[:20]
    return {
        "js": js,
        "js_noise": noise,
        "js_excess": max(js - noise, 0.0),
        "psi": psi(ref_counts, counts),
        "top_shifts": [
            {"category": labels[i], "batch_share": float(shares[i]), "reference_share": float(ref_shares[i])}
            for i in top
            if shares[i] != ref_shares[i]
        ],
    }


def _checks(f: dict, r: Monitor) -> list[dict]:
    """One entry per check: its value, threshold and whether it breached."""
    c, e = f["confidence"], f["estimate"]

    def drop(ref, cur):
        return None if ref is None or cur is None else ref - cur

    rows = [
        ("category_mix", f["category"]["js_excess"], r.max_category_js, "predicted-category mix shifted (JS divergence "
         f"{f['category']['js']:.3f}, {f['category']['js_noise']:.3f} of it sampling noise)"),
        ("confidence", drop(c["reference_mean"], c["mean"]), r.max_confidence_drop, "mean top-1 probability fell"),
        ("low_confidence", drop(c["low_share"], c["reference_low_share"]), r.max_low_confidence_increase,
         f"more rows below {r.low_confidence:.2f} top-1 probability"),
        ("oov", f["oov_share"] - f["reference_oov_share"], r.max_oov_increase,
         "more tokens outside the model's vocabulary"),
        ("title_length", f["length"]["psi"], r.max_length_psi, "title-length distribution shifted (PSI)"),
        ("language", f["language_shift"], r.max_language_shift, "language mix shifted (total variation)"),
        ("unscorable", f["unscorable_share"] - f["reference_unscorable_share"], r.max_unscorable_increase,
         "more unscorable rows"),
        ("estimated_recall", drop(e["reference_macro_recall"], e["macro_recall"]), r.max_recall_drop,
         "estimated macro-recall fell below the champion's test macro-recall"),
    ]  # fmt: skip
    return [
        {
            "check": name,
            "value": None if v is None else float(v),
            "threshold": float(t),
            "breached": v is not None and v > t,
            "message": msg,
        }
        for name, v, t, msg in rows
    ]


def judge(figures: dict, rules: Monitor) -> tuple[str, list[dict]]:
    """("ok" | "drift" | "too_few_rows", the breached checks)."""
    if figures["scored_rows"] < rules.min_rows:
        return "too_few_rows", []
    breached = [c for c in figures["checks"] if c["breached"]]
    return ("drift" if breached else "ok"), breached


def reason_text(breached: list[dict]) -> str:
    return "; ".join(f"{c['check']}: {c['message']} ({c['value']:.3f} > {c['threshold']:.3f})" for c in breached)
