"""Drift monitoring of scored batches against the champion's reference, and a label-free estimate of
macro-recall (confidence-based performance estimation, CBPE).

The *reference* of a model version is built when the version is evaluated (``try_build_reference``,
called by ``retrain.step_evaluate``) from its run's frozen test split: the predictions with their
top-1 probabilities, a per-predicted-class calibration (binned top-1 probability -> observed
precision, shrunk toward all classes' precision in that bin), the expected confusion of its errors,
and the statistics a batch is compared on: the predicted-category mix, the confidence histogram, the
share of tokens outside the model's vocabulary, the title-length distribution and the language mix.
It is written beside the evaluation (``work/<date>/evaluation/monitor_reference.json|.npz``), logged
to the version's MLflow run and tagged on the version (``meli.monitor_reference``). An old champion
without one gets it built on its first monitor while its run dir exists; else "no reference".

``monitor_batch`` compares a scored Parquet file (or lake/scored partition) with it: category
Jensen-Shannon divergence (and PSI), mean top-1 probability and the share below
``MELI_MONITOR_LOW_CONFIDENCE``, OOV-token share, title-length PSI, language mix, unscorable share,
and the estimated macro-recall; each check has a ``MELI_MONITOR_*`` threshold. The report is a JSON
plus a self-contained HTML page (inline SVG, no network) in ``$MELI_HOME/monitor/<model>/v<N>/``, a
run in the ``<experiment>-monitor`` MLflow experiment and tags on the version. When labels of scored
listings arrive in a lake partition, ``realise_pending`` computes the realised macro-recall beside
the estimate (history.jsonl, MLflow metric), drawn as "estimate vs realised over time".

Everything here is numpy/pyarrow over whole columns; only the text statistics (tokens, OOV,
language) read a uniform sample of at most ``MELI_MONITOR_SAMPLE_ROWS`` titles.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.lake import atomic_write_bytes, atomic_write_json
from pipelines.settings import Monitor, Settings
from pipelines.text import STOPWORDS_ES, STOPWORDS_PT, TextConfig, normalize, tokenize

log = logging.getLogger(__name__)

REFERENCE_JSON, REFERENCE_NPZ = "monitor_reference.json", "monitor_reference.npz"
REFERENCE_TAG = "meli.monitor_reference"
DRIFT_EXIT = 3  # the CLI's exit code for a drifted batch
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
def _shares(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts)


def psi(ref_counts: np.ndarray, cur_counts: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of two count vectors over the same bins."""
    a = np.clip(_shares(ref_counts), eps, None)
    b = np.clip(_shares(cur_counts), eps, None)
    return float(np.sum((b - a) * np.log(b / a)))


def js_divergence(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two count vectors."""
    a, b = _shares(ref_counts), _shares(cur_counts)
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
    from pipelines.evaluate import macro_recall

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


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def _lengths(titles: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.utf8_length(pc.utf8_trim_whitespace(titles)), 0).to_numpy(zero_copy_only=False)


# ------------------------------------------------------------------------------------------
# The reference of a model version
# ------------------------------------------------------------------------------------------
def reference_from_predictions(
    labels: list[str],
    pred: np.ndarray,
    prob: np.ndarray,
    true: np.ndarray,
    titles: list[str],
    text: TextConfig,
    vocab_words,
    unscorable: int = 0,
    train_languages: dict | None = None,
    sample_rows: int = 200_000,
    seed: int = 13,
) -> tuple[dict, dict]:
    """(JSON part, arrays) of a reference from a test split's predictions (``pred``/``true`` class
    indices, -1 = unknown category; ``titles`` all the split's titles, ``unscorable`` of them had no
    token and are not in ``pred``)."""
    from pipelines.evaluate import macro_recall

    pred, prob, true = np.asarray(pred, np.int64), np.asarray(prob, np.float64), np.asarray(true, np.int64)
    k = len(labels)
    cal = calibration(pred, prob, true, k)
    vocab = word_hashes(vocab_words)
    lengths = _lengths(pa.array(titles, pa.string()))
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, 11)[1:-1])) if len(lengths) else np.array([])
    idx = _sample(len(titles), sample_rows, seed)
    stats = text_stats([titles[i] for i in idx], text, vocab)
    n_scored = len(pred)
    # realised macro-recall over the scored test rows (a row with no token is never right)
    y_names = [labels[t] if t >= 0 else f"__unknown_{t}" for t in true]
    ref = {
        "labels": list(labels),
        "test_rows": int(n_scored + unscorable),
        "scored_rows": int(n_scored),
        "macro_recall": macro_recall(y_names, [labels[p] for p in pred]) if n_scored else None,
        "estimated_macro_recall": estimate_macro_recall(
            pred, prob, cal["precision"], cal["confusion"], cal["true_counts"]
        )["macro_recall"],
        "confidence": {
            "mean": float(prob.mean()) if n_scored else None,
            "hist": np.histogram(prob, bins=HIST_BINS, range=(0, 1))[0].tolist(),
        },
        "unscorable_share": float(unscorable / max(n_scored + unscorable, 1)),
        "text": {**stats, "length_edges": edges.tolist(), "length_hist": _length_hist(lengths, edges).tolist()},
        "text_config": text.to_dict(),
        "train_languages": train_languages or {},
        "vocab_size": int(len(vocab)),
    }
    arrays = {
        "pred_counts": np.bincount(pred, minlength=k).astype(np.int64),
        "precision": cal["precision"],
        "confusion": cal["confusion"],
        "true_counts": cal["true_counts"],
        "vocab": vocab,
        "prob": prob.astype(np.float32),
    }
    return ref, arrays


def _length_hist(lengths: np.ndarray, edges) -> np.ndarray:
    return np.bincount(np.searchsorted(np.asarray(edges), lengths, side="right"), minlength=len(edges) + 1)


def reference_paths(settings: Settings, run_date: str) -> tuple[Path, Path]:
    d = settings.run_dir(run_date) / "evaluation"
    return d / REFERENCE_JSON, d / REFERENCE_NPZ


def build_reference(settings: Settings, run_date: str, version: str, bundle=None) -> dict:
    """Score the run's test split with ``version`` and write, log and tag its reference; returns its
    JSON part (with ``path``)."""
    name = settings.model_name
    dataset = settings.run_dir(run_date) / "dataset"
    test = pq.read_table(dataset / "test.parquet", columns=["title", "category"])
    if bundle is None:
        from pipelines.score import load_bundle

        bundle = load_bundle(name, version)
    titles = [t or "" for t in test.column("title").to_pylist()]
    cats = [str(c) for c in test.column("category").to_pylist()]
    keys = bundle.encode_keys(titles)
    ok = [i for i, k in enumerate(keys) if k]
    labels = [str(x) for x in bundle.labels]
    index = {c: i for i, c in enumerate(labels)}
    pred = np.zeros(0, np.int64)
    prob = np.zeros(0)
    if ok:
        top, top_p = bundle.predict_topk_keys([keys[i] for i in ok], k=1)
        pred, prob = top[:, 0], top_p[:, 0]
    true = np.array([index.get(cats[i], -1) for i in ok], dtype=np.int64)
    train_languages = {}
    train = dataset / "train.parquet"
    if train.exists() and "language" in pq.read_schema(train).names:
        vc = pc.value_counts(pq.read_table(train, columns=["language"]).column(0).combine_chunks())
        total = sum(v["counts"].as_py() for v in vc) or 1
        train_languages = {str(v["values"].as_py()): v["counts"].as_py() / total for v in vc}
    ref, arrays = reference_from_predictions(
        labels,
        pred,
        prob,
        true,
        titles,
        bundle.encoder.text,
        [w for w in bundle.encoder.itos if not (w.startswith("<") and w.endswith(">"))],
        unscorable=len(titles) - len(ok),
        train_languages=train_languages,
        sample_rows=settings.monitor.sample_rows,
        seed=settings.seed,
    )
    ref.update(model_name=name, version=str(version), run_date=run_date, created_at=datetime.now(UTC).isoformat())
    jpath, npath = reference_paths(settings, run_date)
    buf = _npz_bytes(arrays)
    atomic_write_bytes(npath, buf)
    atomic_write_json(jpath, ref)
    client = _client(settings)
    mv = client.get_model_version(name, str(version))
    try:  # the version's training run holds it too (readable from any machine that reaches MLflow)
        client.log_artifact(mv.run_id, str(jpath), "monitor")
        client.log_artifact(mv.run_id, str(npath), "monitor")
    except Exception as exc:
        log.warning("monitor reference of v%s not logged to its MLflow run: %s", version, exc)
    client.set_model_version_tag(name, str(version), REFERENCE_TAG, str(jpath))
    log.info(
        "monitor reference of v%s: %d test rows, macro-recall %.4f (estimate %.4f), OOV %.2f%%",
        version,
        ref["test_rows"],
        ref["macro_recall"] or 0.0,
        ref["estimated_macro_recall"] or 0.0,
        100 * ref["text"]["oov_share"],
    )
    return {**ref, "path": str(jpath)}


def try_build_reference(settings: Settings, run_date: str, version: str) -> str | None:
    """``build_reference`` for the evaluate step: a failure is logged, never raised (the monitor then
    builds it on first use, or reports "no reference"); returns the JSON path or None."""
    try:
        return build_reference(settings, run_date, version)["path"]
    except Exception as exc:
        log.warning("monitor reference of v%s not built (the monitor will retry): %s", version, exc)
        log.debug("monitor reference of v%s", version, exc_info=True)
        return None


def _npz_bytes(arrays: dict) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _read_reference(jpath: Path) -> tuple[dict, dict]:
    ref = json.loads(jpath.read_text())
    with np.load(jpath.with_name(REFERENCE_NPZ)) as z:
        arrays = {k: z[k] for k in z.files}
    return ref, arrays


def load_reference(settings: Settings, version: str, build: bool = True) -> tuple[dict, dict] | str:
    """The reference of ``version``: from the path its tag names, else its MLflow run's artifacts,
    else built now from its run dir (old champions); a one-line reason when there is none."""
    client = _client(settings)
    name = settings.model_name
    mv = client.get_model_version(name, str(version))
    tagged = (mv.tags or {}).get(REFERENCE_TAG)
    if tagged and Path(tagged).exists() and Path(tagged).with_name(REFERENCE_NPZ).exists():
        return _read_reference(Path(tagged))
    try:
        import tempfile

        import mlflow

        tmp = Path(tempfile.mkdtemp(prefix="meli-ref-"))
        got = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="monitor", dst_path=str(tmp)))
        if (got / REFERENCE_JSON).exists() and (got / REFERENCE_NPZ).exists():
            return _read_reference(got / REFERENCE_JSON)
    except Exception:
        pass  # not logged there: build it below
    run_date = (mv.tags or {}).get("meli.run_date")
    if build and run_date and (settings.run_dir(run_date) / "dataset" / "test.parquet").exists():
        log.info("v%s has no monitor reference yet: building it from the test split of %s", version, run_date)
        return _read_reference(Path(build_reference(settings, run_date, str(version))["path"]))
    return (
        f"no reference for {name} v{version}: it was registered before monitoring and its run dir "
        f"({settings.run_dir(run_date) if run_date else 'unknown run date'}) is gone; the next champion will have one"
    )


# ------------------------------------------------------------------------------------------
# Comparing a batch with the reference
# ------------------------------------------------------------------------------------------
_BATCH_COLUMNS = ["listing_id", "title", "predicted_category", "probability", "status", "model_version"]


def read_scored(path: str | Path) -> tuple[pa.Table, Path]:
    """A scored file, or the committed data file(s) of a lake/scored partition."""
    from pipelines.lake import resolve

    p = Path(path)
    if p.is_dir():
        d = resolve(p)
        files = sorted(d.glob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"{d} holds no .parquet files")
        cols = [c for c in _BATCH_COLUMNS if c in pq.read_schema(files[0]).names]
        return pa.concat_tables(pq.read_table(f, columns=cols) for f in files), files[0]
    if not p.exists():
        raise FileNotFoundError(f"scored batch {p} does not exist")
    cols = [c for c in _BATCH_COLUMNS if c in pq.read_schema(p).names]
    return pq.read_table(p, columns=cols), p


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
    js = js_divergence(ref_counts, counts)
    noise = js_noise(ref_counts, counts)
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
    lengths = _lengths(titles.combine_chunks() if isinstance(titles, pa.ChunkedArray) else titles)
    length_hist = _length_hist(lengths, edges)
    sample = _sample(rows, rules.sample_rows, seed)
    sampled = titles.take(pa.array(sample)).to_pylist() if rows else []
    stats = text_stats([t or "" for t in sampled], TextConfig.from_dict(ref["text_config"]), arrays["vocab"])
    ref_lang = ref["text"]["languages"]
    lang_shift = 0.5 * sum(abs(stats["languages"].get(x, 0.0) - ref_lang.get(x, 0.0)) for x in LANGUAGES)
    est = estimate_macro_recall(pred, prob, arrays["precision"], arrays["confusion"], arrays.get("true_counts"))
    unscorable = (rows - n) / rows if rows else 0.0
    shares, ref_shares = _shares(counts), _shares(ref_counts)
    top = np.argsort(-np.abs(shares - ref_shares), kind="stable")[:20]
    figures = {
        "rows": rows,
        "scored_rows": n,
        "unknown_category_rows": int(n - len(pred)),
        "category": {
            "js": js,
            "js_noise": noise,
            "js_excess": max(js - noise, 0.0),
            "psi": psi(ref_counts, counts),
            "top_shifts": [
                {"category": labels[i], "batch_share": float(shares[i]), "reference_share": float(ref_shares[i])}
                for i in top
                if shares[i] != ref_shares[i]
            ],
        },
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


# ------------------------------------------------------------------------------------------
# The step: one scored batch -> report (JSON + HTML), MLflow, history, realised recall
# ------------------------------------------------------------------------------------------
def monitor_batch(settings: Settings, scored: str | Path, run_date: str | None = None, record: bool = True) -> dict:
    """Monitor one scored batch; returns the report (``status`` ok / drift / too_few_rows /
    no_reference, ``reasons``, the figures, and with ``record`` its paths and MLflow run)."""
    table, data_file = read_scored(scored)
    versions = pc.value_counts(pc.drop_null(table.column("model_version")).combine_chunks()).to_pylist()
    if not versions:
        raise ValueError(f"{scored}: no model_version in the scored batch")
    version = str(max(versions, key=lambda v: v["counts"])["values"])
    run_date = run_date or datetime.now(UTC).date().isoformat()
    base = {
        "model_name": settings.model_name,
        "version": version,
        "run_date": run_date,
        "scored": str(Path(scored).resolve()),
        "scored_file": str(data_file.resolve()),
        "rows": table.num_rows,
        "created_at": datetime.now(UTC).isoformat(),
    }
    got = load_reference(settings, version)
    if isinstance(got, str):
        log.warning("monitor: %s", got)
        return {**base, "status": "no_reference", "reasons": [], "reason": got}
    ref, arrays = got
    rules = settings.monitor
    figures = compare(ref, arrays, table, rules, settings.seed)
    status, breached = judge(figures, rules)
    report = {
        **base,
        "status": status,
        "reasons": [c["check"] for c in breached],
        "reason": reason_text(breached) if breached else "",
        "reference": {"run_date": ref.get("run_date"), "test_rows": ref["test_rows"]},
        "thresholds": {k: getattr(rules, k) for k in rules.__dataclass_fields__},
        **figures,
    }
    if not record:
        return report
    stem = run_date if Path(scored).is_dir() else f"{run_date}.{Path(scored).stem}"
    report = _record(settings, report, stem)
    realise_pending(settings)
    return json.loads(Path(report["report_json"]).read_text())


def summary(report: dict) -> dict:
    """The small dict for XCom and the task log."""
    keys = ("status", "reasons", "reason", "version", "run_date", "rows", "scored", "report_json", "report_html")
    out = {k: report.get(k) for k in keys}
    out["estimated_macro_recall"] = (report.get("estimate") or {}).get("macro_recall")
    out["mlflow_run_id"] = report.get("mlflow_run_id")
    return out


def one_line(report: dict) -> str:
    est = (report.get("estimate") or {}).get("macro_recall")
    head = f"monitor v{report.get('version')} {report.get('run_date')}: {report['status'].upper()}"
    if report["status"] == "no_reference":
        return f"{head}: {report['reason']}"
    parts = [f"{report.get('scored_rows', 0)} scored rows", f"estimated macro-recall {_f(est)}"]
    if report.get("reason"):
        parts.append(report["reason"])
    if report.get("report_html"):
        parts.append(f"report {report['report_html']}")
    return f"{head} ({'; '.join(parts)})"


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _client(settings: Settings):
    import mlflow

    from pipelines.tracking import configure

    configure(settings)
    return mlflow.MlflowClient()


def _experiment(settings: Settings, client) -> str:
    from pipelines.tracking import side_experiment

    return side_experiment(settings, "monitor", client)


def history_path(settings: Settings) -> Path:
    return settings.monitor_dir / "history.jsonl"


def read_history(settings: Settings) -> list[dict]:
    p = history_path(settings)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _append_history(settings: Settings, entry: dict) -> None:
    p = history_path(settings)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as fh:  # one short line per write: appends do not interleave
        fh.write(json.dumps(entry) + "\n")


def _record(settings: Settings, report: dict, stem: str) -> dict:
    from pipelines.tracking import finished_run, log_report

    client = _client(settings)
    folder = settings.monitor_dir / f"v{report['version']}"
    report = {**report, "report_json": str(folder / f"{stem}.json"), "report_html": str(folder / f"{stem}.html")}
    run = client.create_run(
        _experiment(settings, client),
        run_name=f"monitor-v{report['version']}-{report['run_date']}",
        tags={
            "meli.model_name": report["model_name"],
            "meli.version": report["version"],
            "meli.run_date": report["run_date"],
            "meli.monitor_status": report["status"],
            "meli.monitor_reasons": ",".join(report["reasons"]),
            "meli.scored": report["scored"][:4000],
            "mlflow.note.content": report.get("reason") or "within thresholds",
        },
    )
    report["mlflow_run_id"] = run.info.run_id
    with finished_run(client, run.info.run_id):
        atomic_write_json(Path(report["report_json"]), report)
        _append_history(
            settings,
            {
                "kind": "monitor",
                "report_json": report["report_json"],
                "scored_file": report["scored_file"],
                "run_date": report["run_date"],
                "version": report["version"],
                "status": report["status"],
                "estimate": report["estimate"]["macro_recall"],
                "mlflow_run_id": run.info.run_id,
                "at": report["created_at"],
            },
        )
        atomic_write_bytes(Path(report["report_html"]), render_html(report, read_history(settings)).encode())
        metrics = {
            "category_js": report["category"]["js"],
            "category_psi": report["category"]["psi"],
            "mean_confidence": report["confidence"]["mean"],
            "low_confidence_share": report["confidence"]["low_share"],
            "oov_share": report["oov_share"],
            "title_length_psi": report["length"]["psi"],
            "language_shift": report["language_shift"],
            "unscorable_share": report["unscorable_share"],
            "estimated_macro_recall": report["estimate"]["macro_recall"],
            "drift": 1.0 if report["status"] == "drift" else 0.0,
            "rows": report["rows"],
        }
        log_report(client, run.info.run_id, metrics, [report["report_json"], report["report_html"]])
    for key, v in {
        "meli.monitor_status": report["status"],
        "meli.monitor_report": report["report_json"],
        "meli.monitor_mlflow_run": run.info.run_id,
    }.items():
        try:
            client.set_model_version_tag(report["model_name"], report["version"], key, v)
        except Exception as exc:  # a deleted version: the report stands
            log.warning("monitor: tagging v%s failed: %s", report["version"], exc)
    return report


# ------------------------------------------------------------------------------------------
# Realised macro-recall once labels of scored listings arrive
# ------------------------------------------------------------------------------------------
def _labels(settings: Settings, since: str) -> pa.Table | None:
    """listing_id -> category of the lake's labelled listings, partitions from ``since`` on."""
    from pipelines.lake import list_partitions, read_partition

    parts = []
    for d, p in list_partitions(settings.listings_dir):
        if d >= since:
            t = read_partition(p, columns=["listing_id", "category"])
            parts.append(t.filter(pc.and_(pc.is_valid(t["listing_id"]), pc.is_valid(t["category"]))))
    if not parts:
        return None
    t = pa.concat_tables(parts)
    return t.group_by("listing_id").aggregate([("category", "last")]).rename_columns(["listing_id", "category"])


def realise_pending(settings: Settings, min_rows: int | None = None) -> list[dict]:
    """For each monitored batch without a realised macro-recall yet, join its scored rows with the
    labels in the lake (by listing_id); where enough are labelled, log the realised macro-recall
    beside the estimate (history, report JSON, MLflow metric). Returns the new entries."""
    min_rows = settings.monitor.min_rows if min_rows is None else min_rows
    hist = read_history(settings)
    done = {h["report_json"] for h in hist if h.get("kind") == "realised"}
    out = []
    for h in hist:
        if h.get("kind") != "monitor" or h["report_json"] in done or not Path(h["scored_file"]).exists():
            continue
        try:
            entry = _realise(settings, h, min_rows)
        except Exception as exc:
            log.warning("monitor: realised macro-recall of %s failed: %s", h["scored_file"], exc)
            continue
        if entry is not None:
            out.append(entry)
            done.add(h["report_json"])
    return out


def _realise(settings: Settings, h: dict, min_rows: int) -> dict | None:
    labels = _labels(settings, h["run_date"])
    if labels is None:
        return None
    scored = pq.read_table(h["scored_file"], columns=["listing_id", "predicted_category", "status"])
    scored = scored.filter(pc.equal(scored["status"], "scored")).select(["listing_id", "predicted_category"])
    joined = scored.join(labels, "listing_id", join_type="inner")
    if joined.num_rows < max(min_rows, 1):
        return None
    realised = realised_macro_recall(joined["category"].to_pylist(), joined["predicted_category"].to_pylist())
    entry = {
        "kind": "realised",
        "report_json": h["report_json"],
        "run_date": h["run_date"],
        "version": h["version"],
        "estimate": h["estimate"],
        "realised": realised,
        "labelled_rows": joined.num_rows,
        "at": datetime.now(UTC).isoformat(),
    }
    _append_history(settings, entry)
    p = Path(h["report_json"])
    if p.exists():
        report = json.loads(p.read_text())
        report["realised"] = {k: entry[k] for k in ("realised", "labelled_rows", "at")}
        atomic_write_json(p, report)
        atomic_write_bytes(Path(report["report_html"]), render_html(report, read_history(settings)).encode())
    try:
        client = _client(settings)
        client.log_metric(h["mlflow_run_id"], "realised_macro_recall", float(realised))
        client.log_metric(h["mlflow_run_id"], "labelled_rows", float(joined.num_rows))
        if p.exists():
            client.log_artifact(h["mlflow_run_id"], str(p))
            client.log_artifact(h["mlflow_run_id"], report["report_html"])
    except Exception as exc:
        log.warning("monitor: logging the realised macro-recall to MLflow failed: %s", exc)
    log.info(
        "monitor: v%s %s realised macro-recall %.4f on %d labelled rows (estimate %s)",
        h["version"],
        h["run_date"],
        realised,
        joined.num_rows,
        _f(h["estimate"]),
    )
    return entry


# ------------------------------------------------------------------------------------------
# The meli_drift asset event: only on a breach, at most once per cooldown
# ------------------------------------------------------------------------------------------
def drift_event(settings: Settings, report: dict, now: datetime | None = None) -> dict | None:
    """The extra of the ``meli_drift`` event this report calls for, or None (within thresholds, or
    an event was emitted less than ``MELI_MONITOR_DRIFT_COOLDOWN_H`` ago: that retrain is coming)."""
    if report.get("status") != "drift":
        return None
    now = now or datetime.now(UTC)
    marker = settings.monitor_dir / "last_drift.json"
    if marker.exists():
        last = json.loads(marker.read_text())
        if now - datetime.fromisoformat(last["at"]) < timedelta(hours=settings.monitor.drift_cooldown_h):
            log.info("monitor: drift, but a meli_drift event was emitted at %s (cooldown): none now", last["at"])
            return None
    extra = {
        "reason": report["reason"],
        "reasons": list(report["reasons"]),
        "report": report.get("report_json"),
        "report_html": report.get("report_html"),
        "version": report["version"],
        "run_date": report["run_date"],
        "scored": report["scored"],
    }
    atomic_write_json(marker, {**extra, "at": now.isoformat()})
    return extra


# ------------------------------------------------------------------------------------------
# The HTML page: inline SVG, no script, no network
# ------------------------------------------------------------------------------------------
def _svg_bars(series: list[tuple[str, list[float], str]], names: list[str], width: int = 720, height: int = 220) -> str:
    """Grouped vertical bars, one group per name, one colour per series."""
    pad_l, pad_b, pad_t = 60, 70, 24
    n = max(len(names), 1)
    top = max([max(v, default=0) for _, v, _ in series] + [1e-9])
    gw = (width - pad_l - 10) / n
    bw = gw / (len(series) + 1)
    h = height - pad_b - pad_t
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for frac in (0, 0.5, 1):
        y = pad_t + h * (1 - frac)
        out.append(f'<line x1="{pad_l}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{pad_l - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{top * frac:.2f}</text>')
    for gi, name in enumerate(names):
        x0 = pad_l + gi * gw
        for si, (_, values, colour) in enumerate(series):
            v = values[gi] if gi < len(values) else 0
            bh = h * v / top
            out.append(
                f'<rect x="{x0 + bw * (si + 0.5):.1f}" y="{pad_t + h - bh:.1f}" width="{bw:.1f}" '
                f'height="{bh:.1f}" fill="{colour}"><title>{html.escape(name)}: {v:.4f}</title></rect>'
            )
        tx, ty = x0 + gw / 2, height - pad_b + 12
        out.append(
            f'<text x="{tx:.1f}" y="{ty:.1f}" font-size="9" text-anchor="end" '
            f'transform="rotate(-40 {tx:.1f} {ty:.1f})">{html.escape(name[:22])}</text>'
        )
    for si, (label, _, colour) in enumerate(series):
        out.append(f'<rect x="{pad_l + 8 + 160 * si}" y="4" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{pad_l + 22 + 160 * si}" y="13" font-size="11">{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _svg_lines(points: list[tuple[str, float | None, float | None]], width: int = 720, height: int = 220) -> str:
    """Estimate (blue) and realised (orange) macro-recall per monitored batch, in time order."""
    pad_l, pad_b, pad_t = 60, 60, 24
    vals = [v for _, e, r in points for v in (e, r) if v is not None]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    lo, hi = max(0.0, lo - 0.05), min(1.0, hi + 0.05)
    hi = hi if hi > lo else lo + 0.1
    w, h = width - pad_l - 10, height - pad_b - pad_t
    n = len(points)

    def xy(i, v):
        x = pad_l + (w * i / (n - 1) if n > 1 else w / 2)
        return x, pad_t + h * (1 - (v - lo) / (hi - lo))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for frac in (0, 0.5, 1):
        y = pad_t + h * (1 - frac)
        out.append(f'<line x1="{pad_l}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(
            f'<text x="{pad_l - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{lo + (hi - lo) * frac:.2f}</text>'
        )
    for col, colour, label in ((1, "#1f77b4", "estimate"), (2, "#ff7f0e", "realised")):
        pts = [(i, p[col]) for i, p in enumerate(points) if p[col] is not None]
        if len(pts) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in pts))
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for i, v in pts:
            x, y = xy(i, v)
            out.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"><title>{label} {v:.4f}</title></circle>'
            )
        lx = pad_l + 8 + (col - 1) * 110
        out.append(f'<rect x="{lx}" y="4" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{lx + 14}" y="13" font-size="11">{label}</text>')
    for i, (name, _, _) in enumerate(points):
        x, _ = xy(i, lo)
        ty = height - pad_b + 12
        out.append(
            f'<text x="{x:.1f}" y="{ty}" font-size="9" text-anchor="end" '
            f'transform="rotate(-40 {x:.1f} {ty})">{html.escape(name[:24])}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def over_time(history: list[dict], model_name: str | None = None) -> list[tuple[str, float | None, float | None]]:
    """(label, estimate, realised) per monitored batch, oldest first."""
    realised = {h["report_json"]: h["realised"] for h in history if h.get("kind") == "realised"}
    mons = [h for h in history if h.get("kind") == "monitor"]
    return [(f"{h['run_date']} v{h['version']}", h.get("estimate"), realised.get(h["report_json"])) for h in mons[-30:]]


def _check_row(c: dict) -> str:
    e = html.escape
    value = "n/a" if c["value"] is None else f"{c['value']:.4f}"
    return (
        f'<tr class="{"bad" if c["breached"] else ""}"><td>{e(c["check"])}</td><td>{value}</td>'
        f"<td>{c['threshold']:.4f}</td><td>{'BREACH' if c['breached'] else 'ok'}</td><td>{e(c['message'])}</td></tr>"
    )


def render_html(r: dict, history: list[dict]) -> str:
    """The report as one self-contained page."""
    e = html.escape
    status = r["status"]
    colour = {"ok": "#2e7d32", "drift": "#c62828"}.get(status, "#666")
    rows = "".join(_check_row(c) for c in r.get("checks", []))
    shifts = r.get("category", {}).get("top_shifts", [])[:20]
    cat_svg = _svg_bars(
        [
            ("reference (test split)", [s["reference_share"] for s in shifts], "#9e9e9e"),
            ("this batch", [s["batch_share"] for s in shifts], "#1f77b4"),
        ],
        [s["category"] for s in shifts],
    )
    conf = r.get("confidence", {})
    ref_hist = _shares(np.asarray(conf.get("reference_hist") or [0] * HIST_BINS)).tolist()
    cur_hist = _shares(np.asarray(conf.get("hist") or [0] * HIST_BINS)).tolist()
    conf_svg = _svg_bars(
        [("reference", ref_hist, "#9e9e9e"), ("this batch", cur_hist, "#1f77b4")],
        [f"{i / HIST_BINS:.2f}" for i in range(HIST_BINS)],
    )
    time_svg = _svg_lines(over_time(history))
    est = r.get("estimate", {})
    realised = (r.get("realised") or {}).get("realised")
    lang = " / ".join(f"{k} {v:.1%}" for k, v in r.get("languages", {}).items())
    ref_lang = " / ".join(f"{k} {v:.1%}" for k, v in r.get("reference_languages", {}).items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Monitor {e(r["model_name"])} v{e(r["version"])} {e(r["run_date"])}</title>
<style>body{{font-family:sans-serif;margin:24px;max-width:900px;color:#222}}h1{{font-size:20px}}
.status{{color:#fff;background:{colour};padding:2px 8px;border-radius:4px}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}}
tr.bad td{{background:#fdecea}}h2{{font-size:16px;margin-top:24px}}</style>
</head><body>
<h1>Monitor: {e(r["model_name"])} v{e(r["version"])}, batch of {e(r["run_date"])}
<span class="status">{e(status.upper())}</span></h1>
<p>{e(r.get("reason") or "All checks within thresholds.")}</p>
<ul><li>{r.get("rows", 0)} rows, {r.get("scored_rows", 0)} scored; input <code>{e(r["scored"])}</code></li>
<li>estimated macro-recall (label-free, CBPE) <b>{_f(est.get("macro_recall"))}</b>; champion's test macro-recall
{_f(est.get("reference_macro_recall"))}; realised on labelled rows: <b>{_f(realised)}</b></li>
<li>language mix: {e(lang)} (reference {e(ref_lang)})</li>
<li>MLflow run <code>{e(str(r.get("mlflow_run_id", "")))}</code></li></ul>
<h2>Checks</h2>
<table><tr><th>check</th><th>value</th><th>threshold</th><th></th><th>meaning</th></tr>{rows}</table>
<h2>Predicted-category shift (top 20 by share difference)</h2>{cat_svg}
<h2>Confidence (top-1 probability) histogram</h2>{conf_svg}
<h2>Estimated vs realised macro-recall over time</h2>{time_svg}
</body></html>
"""
