"""The UI plugin's app: a DAG run's 'Data Docs' tab lands on that run's validation page."""

from __future__ import annotations

import urllib.parse

from fastapi import FastAPI
from fastapi.testclient import TestClient

from pipelines.airflow_ui import app
from pipelines.validate import link_run
from tests.unit.test_validate import METRICS, RUN_DATE, _table


def test_run_tab_redirects_to_that_runs_report_and_docs_are_served(settings):
    from pipelines.validate import validate_table

    report = validate_table(settings, RUN_DATE, _table(), METRICS, "crafted")
    run_id = "manual__2026-11-21T02:00:00+00:00"
    link_run(settings, "meli_retrain", run_id, report)
    root = FastAPI()
    root.mount("/meli", app())
    client = TestClient(root)
    url = f"/meli/runs/meli_retrain/{urllib.parse.quote(run_id, safe='')}"
    r = client.get(url, follow_redirects=False)
    assert r.status_code == 307
    target = urllib.parse.urljoin(url, r.headers["location"])
    assert target.startswith("/meli/docs/validations/listings_batch/") and target.endswith(".html")
    page = client.get(target)
    assert page.status_code == 200 and "Expectation Validation Result" in page.text
    assert client.get("/meli/docs/index.html").status_code == 200
    missing = client.get("/meli/runs/meli_retrain/nope")
    assert missing.status_code == 404 and "No validation report" in missing.text


def test_a_scoring_runs_drift_report_tab_and_note(settings, monkeypatch):
    import pipelines.airflow_ui as ui

    page = settings.home / "monitor" / "r.html"
    page.parent.mkdir(parents=True)
    page.write_text("<!doctype html><h1>drift report</h1>")
    report = {
        "status": "drift",
        "version": "3",
        "run_date": "2026-11-21",
        "scored_rows": 900,
        "estimate": {"macro_recall": 0.81},
        "reason": "language mix shifted",
        "report_html": str(page),
    }
    run_id = "asset_triggered__2026-11-21T02:30:00+00:00"
    ui.link_monitor_run(settings, run_id, report)
    notes = {}
    monkeypatch.setattr(ui, "set_run_note", lambda dag_id, rid, note: notes.update({rid: note}))
    root = FastAPI()
    root.mount("/meli", app())
    client = TestClient(root)
    q = urllib.parse.quote(run_id, safe="")
    r = client.get(f"/meli/runs/meli_score/{q}/monitor")
    assert r.status_code == 200 and "drift report" in r.text
    assert client.post(f"/meli/runs/meli_score/{q}/note").status_code == 200
    assert (
        notes[run_id].startswith("**DRIFT** monitor v3 2026-11-21: DRIFT") and "language mix shifted" in notes[run_id]
    )
    missing = client.get("/meli/runs/meli_score/other/monitor")
    assert missing.status_code == 404 and "No drift report" in missing.text
