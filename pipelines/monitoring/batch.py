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

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.core.fs import atomic_write_bytes, atomic_write_json
from pipelines.core.tracking import tracking_client
from pipelines.monitoring.drift import (
    compare,
    judge,
    realised_macro_recall,
    reason_text,
)
from pipelines.monitoring.history import append_history, read_history, record_monitor_run
from pipelines.monitoring.reference import (
    load_reference,
)
from pipelines.monitoring.report import fmt4, render_html
from pipelines.settings import Settings

# The batch step; the statistics live in monitoring/drift.py, the reference in reference.py, the records in
# history.py, the page in report.py. ``load_reference`` and ``lake_labels`` are looked up on this module by
# ``monitor_batch`` and ``_realise`` (tests patch them here).

log = logging.getLogger(__name__)

DRIFT_EXIT = 3  # the CLI's exit code for a drifted batch


# ------------------------------------------------------------------------------------------
# The step: one scored batch -> report (JSON + HTML), MLflow, history, realised recall
# ------------------------------------------------------------------------------------------
_BATCH_COLUMNS = ["listing_id", "title", "predicted_category", "probability", "status", "model_version"]


def read_scored(path: str | Path) -> tuple[pa.Table, Path]:
    """A scored file, or the committed data file(s) of a lake/scored partition."""
    from pipelines.data.lake import resolve

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
    report = record_monitor_run(settings, report, stem)
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
    parts = [f"{report.get('scored_rows', 0)} scored rows", f"estimated macro-recall {fmt4(est)}"]
    if report.get("reason"):
        parts.append(report["reason"])
    if report.get("report_html"):
        parts.append(f"report {report['report_html']}")
    return f"{head} ({'; '.join(parts)})"


# ------------------------------------------------------------------------------------------
# Realised macro-recall once labels of scored listings arrive
# ------------------------------------------------------------------------------------------
def lake_labels(settings: Settings, since: str) -> pa.Table | None:
    """listing_id -> category of the lake's labelled listings, partitions from ``since`` on."""
    from pipelines.data.lake import list_partitions, read_partition

    parts = []
    for d, p in list_partitions(settings.listings_dir):
        if d >= since:
            t = read_partition(p, columns=["listing_id", "category"])
            parts.append(t.filter(pc.and_(pc.is_valid(t["listing_id"]), pc.is_valid(t["category"]))))
    if not parts:
        return None
    t = pa.concat_tables(parts)
    return (
        t.group_by("listing_id", use_threads=False)
        .aggregate([("category", "last")])
        .rename_columns(["listing_id", "category"])
    )


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
    labels = lake_labels(settings, h["run_date"])
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
    append_history(settings, entry)
    from pipelines.core.paths import linked

    # the history's report paths are followed (read, rewritten) only under $MELI_HOME/monitor
    p = linked(h["report_json"], settings.home / "monitor")
    html = None
    if p is not None and p.exists():
        report = json.loads(p.read_text())
        html = linked(report.get("report_html"), settings.home / "monitor")
        report["realised"] = {k: entry[k] for k in ("realised", "labelled_rows", "at")}
        atomic_write_json(p, report)
        if html is not None:
            atomic_write_bytes(html, render_html(report, read_history(settings)).encode())
    try:
        client = tracking_client(settings)
        client.log_metric(h["mlflow_run_id"], "realised_macro_recall", float(realised))
        client.log_metric(h["mlflow_run_id"], "labelled_rows", float(joined.num_rows))
        if html is not None:
            client.log_artifact(h["mlflow_run_id"], str(p))
            client.log_artifact(h["mlflow_run_id"], str(html))
    except Exception as exc:
        log.warning("monitor: logging the realised macro-recall to MLflow failed: %s", exc)
    log.info(
        "monitor: v%s %s realised macro-recall %.4f on %d labelled rows (estimate %s)",
        h["version"],
        h["run_date"],
        realised,
        joined.num_rows,
        fmt4(h["estimate"]),
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
