"""Which drift report a scoring run wrote: a small link file per run (``$MELI_HOME/monitor/by_run/``)
that the run page's "Drift report" tab, its note and the Models page read."""

from __future__ import annotations

from pathlib import Path

MONITOR_DAG_ID = "meli_score"  # the DAG whose monitor task writes drift reports (links made before they named it)


def monitor_link_path(settings, run_id: str) -> Path:
    import re

    return settings.home / "monitor" / "by_run" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id) + ".json")


def link_monitor_run(settings, run_id: str, report: dict, dag_id: str = MONITOR_DAG_ID) -> None:
    """Name a scoring run's drift report (for its "Drift report" tab and its note)."""
    from pipelines.core.fs import atomic_write_json
    from pipelines.core.render import md_link, md_text
    from pipelines.core.tracking import ui_version_url
    from pipelines.monitoring.batch import one_line

    note = md_text(one_line(report))  # the note is Markdown in Airflow's UI: the report's text stays text
    head = "**DRIFT** " if report.get("status") == "drift" else ""
    # with MELI_MLFLOW_UI_URL: the version that scored and the monitor's run, as links to the MLflow UI
    version = report.get("version")
    urls = [
        (f"v{version} in MLflow", ui_version_url(settings, str(version)) if version not in (None, "") else ""),
        ("the monitor's MLflow run", report.get("mlflow_run_url") or ""),
    ]
    links = " · ".join(x for x in (md_link(t, u) for t, u in urls if len(u) <= 400) if x)
    room = 1000 - len(head) - (len(links) + 2 if links else 0)
    atomic_write_json(
        monitor_link_path(settings, run_id),
        {
            "dag_id": dag_id,
            "run_id": run_id,
            "report_html": report.get("report_html"),
            "report_json": report.get("report_json"),
            # the version that scored the batch and its date: the run's other tabs show that version's
            # card and decision, and the validation of that partition
            "version": None if report.get("version") is None else str(report["version"]),
            "run_date": report.get("run_date"),
            "note": head + note[: min(900, room)] + (f"\n\n{links}" if links else ""),
        },
    )


def monitor_link(settings, run_id: str, dag_id: str | None = None) -> dict | None:
    """The drift report link of a run (of ``dag_id`` when given: run ids are unique per DAG only)."""
    import json

    p = monitor_link_path(settings, run_id)
    if not p.exists():
        return None
    from pipelines.core.paths import linked

    link = json.loads(p.read_text())
    # honoured only when the reports it names lie under $MELI_HOME/monitor (pipelines/core/paths.py)
    if any(link.get(k) and linked(link[k], settings.home / "monitor") is None for k in ("report_html", "report_json")):
        return None
    if link.get("run_id") != run_id or (dag_id is not None and link.get("dag_id", MONITOR_DAG_ID) != dag_id):
        return None
    return link
