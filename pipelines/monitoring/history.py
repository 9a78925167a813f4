"""What the monitor (``pipelines/monitoring/batch.py``) records: its MLflow client and experiment
(``<experiment>-monitor``), ``history.jsonl`` (one line per monitored batch and per realised
macro-recall), and a report's run, files and tags on the model version (``record_monitor_run``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipelines.core.fs import atomic_write_bytes, atomic_write_json
from pipelines.core.tracking import side_experiment, tracking_client
from pipelines.monitoring.report import render_html
from pipelines.settings import Settings

log = logging.getLogger(__name__)


def history_path(settings: Settings) -> Path:
    return settings.monitor_dir / "history.jsonl"


def read_history(settings: Settings) -> list[dict]:
    p = history_path(settings)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def append_history(settings: Settings, entry: dict) -> None:
    p = history_path(settings)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as fh:  # one short line per write: appends do not interleave
        fh.write(json.dumps(entry) + "\n")


def record_monitor_run(settings: Settings, report: dict, stem: str) -> dict:
    from pipelines.core.tracking import finished_run, log_report

    client = tracking_client(settings)
    folder = settings.monitor_dir / f"v{report['version']}"
    report = {**report, "report_json": str(folder / f"{stem}.json"), "report_html": str(folder / f"{stem}.html")}
    run = client.create_run(
        side_experiment(settings, "monitor", client),
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
    from pipelines.core.tracking import ui_run_url

    report["mlflow_run_url"] = ui_run_url(settings, run.info.run_id, run.info.experiment_id)  # "" without a UI URL
    with finished_run(client, run.info.run_id):
        atomic_write_json(Path(report["report_json"]), report)
        append_history(
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
