"""The reference of a model version for the monitor (``pipelines/monitoring/batch.py``): built from its run's
frozen test split when the version is evaluated (``try_build_reference``), written beside the
evaluation, logged to the version's MLflow run and tagged on the version; loaded from the tag, the
run's artifacts, or built on first use for an old champion (``load_reference``).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.core.fs import atomic_write_bytes, atomic_write_json
from pipelines.core.tracking import tracking_client
from pipelines.features.text import TextConfig
from pipelines.monitoring.drift import (
    HIST_BINS,
    calibration,
    estimate_macro_recall,
    length_histogram,
    sample_indices,
    text_stats,
    title_lengths,
    word_hashes,
)
from pipelines.settings import Settings

log = logging.getLogger(__name__)

REFERENCE_JSON, REFERENCE_NPZ = "monitor_reference.json", "monitor_reference.npz"
REFERENCE_TAG = "meli.monitor_reference"


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
    from pipelines.model.metrics import macro_recall

    pred, prob, true = np.asarray(pred, np.int64), np.asarray(prob, np.float64), np.asarray(true, np.int64)
    k = len(labels)
    cal = calibration(pred, prob, true, k)
    vocab = word_hashes(vocab_words)
    lengths = title_lengths(pa.array(titles, pa.string()))
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, 11)[1:-1])) if len(lengths) else np.array([])
    idx = sample_indices(len(titles), sample_rows, seed)
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
        "text": {**stats, "length_edges": edges.tolist(), "length_hist": length_histogram(lengths, edges).tolist()},
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
        from pipelines.serving.score import load_bundle

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
    client = tracking_client(settings)
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
    client = tracking_client(settings)
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
