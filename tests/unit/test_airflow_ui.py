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
