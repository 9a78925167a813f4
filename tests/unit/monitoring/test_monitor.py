"""pipelines/monitoring/batch.py on synthetic fixtures made by code: drift checks, the label-free estimate,
the report, the drift event (no Airflow, no trained model)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from pipelines.data.synthetic import CATEGORIES, generate_rows
from pipelines.features.text import TextConfig, tokenize
from pipelines.monitoring import batch as m
from pipelines.monitoring import drift as drift_mod
from pipelines.monitoring import history as history_mod
from pipelines.monitoring import reference as reference_mod
from pipelines.monitoring import report as report_mod
from pipelines.settings import Monitor

LABELS = sorted(CATEGORIES)
TEXT = TextConfig()


def _keyword_model(titles: list[str], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in classifier of the synthetic titles: the category whose product nouns the title
    names most; confident when one category is named, unsure otherwise."""
    nouns = {}
    for i, c in enumerate(LABELS):
        for words in CATEGORIES[c]:
            for w in words:
                for tok in tokenize(w, TEXT):
                    nouns.setdefault(tok, set()).add(i)
    rng = np.random.default_rng(seed)
    pred, prob = np.zeros(len(titles), np.int64), np.zeros(len(titles))
    for j, t in enumerate(titles):
        hits = np.zeros(len(LABELS))
        for tok in tokenize(t, TEXT):
            for i in nouns.get(tok, ()):
                hits[i] += 1
        if hits.sum() == 0:
            pred[j], prob[j] = rng.integers(len(LABELS)), rng.uniform(0.08, 0.3)
        else:
            pred[j] = int(np.argmax(hits + rng.uniform(0, 0.1, len(LABELS))))
            prob[j] = min(0.99, 0.45 + 0.5 * hits.max() / hits.sum() + rng.uniform(-0.05, 0.05))
    return pred, prob


@pytest.fixture(scope="module")
def reference():
    train = generate_rows(4000, seed=0)
    vocab = sorted({tok for r in train for tok in tokenize(r["title"], TEXT)})
    test = generate_rows(1500, seed=1)
    titles = [r["title"] for r in test]
    pred, prob = _keyword_model(titles, 1)
    true = np.array([LABELS.index(r["category"]) for r in test])
    return reference_mod.reference_from_predictions(LABELS, pred, prob, true, titles, TEXT, vocab)


def _batch(titles: list[str], seed: int = 2) -> pa.Table:
    pred, prob = _keyword_model(titles, seed)
    n = len(titles)
    return pa.table(
        {
            "listing_id": [f"id{i}" for i in range(n)],
            "title": titles,
            "predicted_category": [LABELS[p] for p in pred],
            "probability": prob,
            "status": ["scored"] * n,
            "model_version": ["1"] * n,
        }
    )


def _judge(reference, titles):
    ref, arrays = reference
    figures = drift_mod.compare(ref, arrays, _batch(titles), Monitor())
    return drift_mod.judge(figures, Monitor()), figures


def test_batch_drawn_like_training_is_within_thresholds(reference):
    (status, breached), figures = _judge(reference, [r["title"] for r in generate_rows(1500, seed=7)])
    assert status == "ok", drift_mod.reason_text(breached)
    assert figures["category"]["js_excess"] < 0.01 and figures["language_shift"] < 0.05
    assert abs(figures["estimate"]["macro_recall"] - figures["estimate"]["reference_macro_recall"]) < 0.03


def test_shifted_category_mix_breaches_on_the_category_check(reference):
    rows = [r for r in generate_rows(6000, seed=8) if r["category"] in ("CELLPHONES", "GUITARS", "DOG_FOOD")]
    (status, breached), figures = _judge(reference, [r["title"] for r in rows])
    assert status == "drift" and "category_mix" in [c["check"] for c in breached]
    assert {s["category"] for s in figures["category"]["top_shifts"][:3]} == {"CELLPHONES", "GUITARS", "DOG_FOOD"}


def test_batch_in_another_language_breaches_on_the_language_mix(reference):
    rows = generate_rows(1500, seed=9, portuguese_share=1.0)  # the reference: 30% Portuguese
    (status, breached), figures = _judge(reference, [r["title"] for r in rows])
    assert status == "drift" and "language" in [c["check"] for c in breached], figures["languages"]
    assert figures["languages"]["portuguese"] > 0.5 > figures["reference_languages"]["portuguese"] + 0.2


def test_english_titles_breach_on_language_and_vocabulary(reference):
    words = "wireless charger cable usb fast for phone with the and kit case cover new black blue pack".split()
    rng = random.Random(3)
    titles = [" ".join(rng.sample(words, 5)) + f" {rng.randint(1, 99)}" for _ in range(800)]
    (status, breached), _ = _judge(reference, titles)
    checks = {c["check"] for c in breached}
    assert status == "drift" and {"language", "oov"} <= checks


def test_corrupted_titles_breach_on_vocabulary_and_confidence(reference):
    rng = random.Random(4)

    def corrupt(t: str) -> str:
        chars = list(t)
        for i in range(len(chars)):
            if rng.random() < 0.35:
                chars[i] = rng.choice("qxzjkw#@0")
        return "".join(chars)

    titles = [corrupt(r["title"]) for r in generate_rows(1500, seed=10)]
    (status, breached), figures = _judge(reference, titles)
    checks = {c["check"] for c in breached}
    assert status == "drift" and "oov" in checks, drift_mod.reason_text(breached)
    assert "confidence" in checks or "low_confidence" in checks
    assert figures["oov_share"] > 0.3


def test_too_few_rows_are_reported_not_judged(reference):
    (status, breached), _ = _judge(reference, ["celular samsung"] * 20)
    assert status == "too_few_rows" and breached == []


# ---- the label-free estimate ------------------------------------------------------------
def _calibrated_draw(n: int, k: int, seed: int, difficulty: float = 0.0, prior=None):
    """Predictions of a calibrated model: each row is right with its top-1 probability p (which
    depends on its class's difficulty; ``difficulty`` lowers every p), and wrong rows go mostly to a
    neighbour class. Returns (true, pred, prob)."""
    rng = np.random.default_rng(seed)
    prior = np.full(k, 1 / k) if prior is None else prior
    true = rng.choice(k, n, p=prior)
    ease = np.linspace(2.0, 8.0, k)[true]
    prob = rng.beta(ease * (1 - difficulty), 2.0)
    prob = np.clip(prob, 1.5 / k, 0.999)
    right = rng.random(n) < prob
    wrong = np.where(rng.random(n) < 0.7, (true + 1) % k, rng.integers(0, k, n))
    wrong = np.where(wrong == true, (true + 2) % k, wrong)
    return true, np.where(right, true, wrong), prob


def _realised(true, pred) -> float:
    return drift_mod.realised_macro_recall(true.tolist(), pred.tolist())


def test_estimate_tracks_realised_macro_recall_on_held_out_and_shifted_draws():
    k = 60
    true, pred, prob = _calibrated_draw(30000, k, seed=0)
    cal = drift_mod.calibration(pred, prob, true, k)
    for seed, difficulty, prior in (
        (1, 0.0, None),  # like the test split
        (2, 0.35, None),  # harder listings: lower confidence, lower recall
        (3, 0.0, np.random.default_rng(9).dirichlet(np.full(k, 0.7))),  # another category mix
    ):
        t, p, q = _calibrated_draw(20000, k, seed=seed, difficulty=difficulty, prior=prior)
        est = drift_mod.estimate_macro_recall(p, q, cal["precision"], cal["confusion"], cal["true_counts"])[
            "macro_recall"
        ]
        real = _realised(t, p)
        assert abs(est - real) < 0.02, (seed, est, real)
    # the harder draw is estimated lower: the estimate moves with the confidence
    t2, p2, q2 = _calibrated_draw(20000, k, seed=2, difficulty=0.35)
    t1, p1, q1 = _calibrated_draw(20000, k, seed=1)
    e1 = drift_mod.estimate_macro_recall(p1, q1, cal["precision"], cal["confusion"], cal["true_counts"])["macro_recall"]
    e2 = drift_mod.estimate_macro_recall(p2, q2, cal["precision"], cal["confusion"], cal["true_counts"])["macro_recall"]
    assert e2 < e1 - 0.05


def test_divergences():
    a = np.array([10, 10, 10, 10])
    assert drift_mod.js_divergence(a, a) == pytest.approx(0) and drift_mod.psi(a, a) == pytest.approx(0)
    assert drift_mod.js_divergence(a, np.array([40, 0, 0, 0])) > 0.3
    assert drift_mod.js_divergence(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1)
    # sampling noise: two samples of one distribution over many categories differ by about js_noise
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(600))
    ref, cur = (
        np.bincount(rng.choice(600, 5000, p=p), minlength=600),
        np.bincount(rng.choice(600, 800, p=p), minlength=600),
    )
    assert drift_mod.js_divergence(ref, cur) == pytest.approx(drift_mod.js_noise(ref, cur), rel=0.5)


def test_language_detector():
    assert drift_mod.detect_language("Zapatillas Nike Nuevas Con Envio") == "spanish"
    assert drift_mod.detect_language("Tenis Nike Novo Com Frete Gratis") == "portuguese"
    assert drift_mod.detect_language("Capinha Samsung Vermelha") == "portuguese"
    assert drift_mod.detect_language("Samsung Galaxy S9 64gb") == "neither"


def test_html_report_is_self_contained(reference):
    ref, arrays = reference
    figures = drift_mod.compare(ref, arrays, _batch([r["title"] for r in generate_rows(600, seed=11)]), Monitor())
    status, breached = drift_mod.judge(figures, Monitor())
    report = {"model_name": "x", "version": "1", "run_date": "2030-01-01", "scored": "/tmp/s.parquet"}
    report |= {"status": status, "reason": drift_mod.reason_text(breached), **figures}
    history = [
        {
            "kind": "monitor",
            "report_json": f"r{i}",
            "run_date": f"2030-01-0{i}",
            "version": "1",
            "estimate": 0.8 - i / 50,
        }
        for i in range(1, 4)
    ] + [{"kind": "realised", "report_json": "r1", "realised": 0.79}]
    page = report_mod.render_html(report, history)
    assert page.count("<svg") == 3 and "<script" not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert report_mod.over_time(history)[0] == ("2030-01-01 v1", pytest.approx(0.78), 0.79)


def test_drift_event_only_on_breach_and_once_per_cooldown(tmp_path, monkeypatch):
    monkeypatch.setenv("MELI_HOME", str(tmp_path))
    from pipelines.settings import Settings

    s = Settings()
    base = {"version": "2", "run_date": "2030-01-01", "scored": "x", "report_json": "r.json", "reasons": []}
    assert m.drift_event(s, {**base, "status": "ok", "reason": ""}) is None
    drift = {**base, "status": "drift", "reasons": ["language"], "reason": "language: mix shifted"}
    now = datetime(2030, 1, 1, tzinfo=UTC)
    extra = m.drift_event(s, drift, now)
    assert extra["reason"] == "language: mix shifted" and extra["report"] == "r.json"
    assert m.drift_event(s, drift, now + timedelta(hours=1)) is None  # the retrain it asked for is coming
    assert m.drift_event(s, drift, now + timedelta(hours=25)) is not None
    assert json.loads((s.monitor_dir / "last_drift.json").read_text())["reasons"] == ["language"]


def test_monitor_batch_records_report_history_and_realised(tmp_path, monkeypatch, reference):
    """The step with a stubbed reference lookup: report JSON + HTML, an MLflow run, the history, and
    the realised macro-recall once labels of the scored listings are in the lake."""
    monkeypatch.setenv("MELI_HOME", str(tmp_path))
    from pipelines.settings import Settings

    s = Settings().ensure()
    monkeypatch.setattr(m, "load_reference", lambda settings, version, build=True: reference)
    rows = generate_rows(800, seed=12)
    table = _batch([r["title"] for r in rows])
    path = tmp_path / "scored.parquet"
    import pyarrow.parquet as pq

    pq.write_table(table, path)
    truth = pa.table({"listing_id": table["listing_id"], "category": [r["category"] for r in rows]})
    labels = {"calls": 0}

    def fake_labels(settings, since):
        labels["calls"] += 1
        return truth

    monkeypatch.setattr(m, "lake_labels", fake_labels)
    report = m.monitor_batch(s, path, run_date="2030-01-05")
    assert report["status"] == "ok" and report["mlflow_run_id"]
    assert (tmp_path / "monitor").exists() and report["report_html"].endswith(".html")
    page = open(report["report_html"]).read()
    assert "realised" in page
    real = report["realised"]["realised"]
    want = drift_mod.realised_macro_recall([r["category"] for r in rows], table["predicted_category"].to_pylist())
    assert real == pytest.approx(want) and report["realised"]["labelled_rows"] == 800
    kinds = [h["kind"] for h in history_mod.read_history(s)]
    assert kinds == ["monitor", "realised"]
    assert m.realise_pending(s) == []  # realised once
    import mlflow

    run = mlflow.MlflowClient().get_run(report["mlflow_run_id"])
    assert run.data.metrics["realised_macro_recall"] == pytest.approx(want)
    assert "estimated_macro_recall" in run.data.metrics
    assert m.summary(report)["status"] == "ok" and "OK" in m.one_line(report)


def test_labels_of_the_lake_take_each_listings_latest_category(settings, synthetic_jsonl):
    """The realised macro-recall's labels come from the lake itself (not a double): pyarrow refuses
    an ordered ("last") aggregation on threads, which failed every real realisation with "Using
    ordered aggregator in multiple threaded execution is not supported"."""
    from pipelines.data.ingest import ingest

    src = synthetic_jsonl(300, seed=3)
    ingest([str(src)], "2030-01-01", settings)
    ingest([str(src)], "2030-01-02", settings)  # the same listings again: one label each
    labels = m.lake_labels(settings, "2030-01-01")
    assert labels is not None and labels.column_names == ["listing_id", "category"]
    assert labels.num_rows == len(set(labels["listing_id"].to_pylist())) > 0
    assert m.lake_labels(settings, "2031-01-01") is None
