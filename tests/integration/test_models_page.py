"""Issue 33 items 3 and 8 in a browser: one real ``airflow api-server`` (the plugin mounted as in
production, a login through the ``_token`` cookie), a registry built cheaply (test_registry's lookup
doubles: v1 promoted, v2 approved by a reviewer, v3 waiting for approval) and runs of both DAGs in
Airflow's DB; headless Chromium opens Airflow's "Models" page and the run tabs, as a person does.
Screenshots in tests/artifacts/."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.parse
from pathlib import Path

import pytest

from tests.integration.airflow_env import airflow_env, migrate

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SCORING = "manual__2026-11-23T02:30:00+00:00"

# the text of the plugin page inside Airflow's iframe (same origin), once it has some
FRAME = (
    "(() => { const f = document.querySelector('iframe'); const d = f && f.contentDocument;"
    " return d && d.body && d.body.innerText; })()"
)


def _frame_has(b, text: str, timeout: float = 90) -> str:
    return b.wait_for(f"(() => {{ const t = {FRAME}; return t && t.includes({text!r}) && t; }})()", timeout=timeout)


def test_the_models_page_and_the_run_tabs_in_airflow(tmp_path, monkeypatch):
    from pipelines.settings import get_settings
    from tests.integration.cdp import Browser, chromium
    from tests.integration.test_approval import ApiServer
    from tests.unit.flows.test_airflow_ui import R3, XSS, _registry, _scoring_run

    chromium()
    home = tmp_path / "meli"
    monkeypatch.setenv("MELI_HOME", str(home))
    monkeypatch.setenv("MELI_MLFLOW_UI_URL", "http://127.0.0.1:5000")
    settings = get_settings().ensure()
    reg = _registry(settings, monkeypatch)  # champion v2 (approved by XSS), previous v1, v3 pending (run R3)
    _scoring_run(settings, SCORING, reg["v2"], reg["run_date"])
    migrate(home)
    airflow = str(Path(sys.executable).parent / "airflow")
    r = subprocess.run(
        [airflow, "dags", "reserialize"], env=airflow_env(home), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    server = ApiServer(home)  # its environment is this one's: MELI_HOME, MELI_MLFLOW_UI_URL
    try:
        server.start()
        # the runs the records belong to, in Airflow's DB (the DAGs are paused: nothing runs)
        for dag_id, run_id in (("meli_retrain", R3), ("meli_score", SCORING)):
            try:
                server.api(f"/dags/{dag_id}/dagRuns", "POST", {"dag_run_id": run_id, "logical_date": None})
            except urllib.error.HTTPError as exc:
                raise AssertionError(f"trigger {dag_id}: {exc.code} {exc.read().decode()[:2000]}") from exc
        q3, qs = urllib.parse.quote(R3, safe=""), urllib.parse.quote(SCORING, safe="")
        with Browser(tmp_path / "cdp") as b:
            b.call("Network.setCookie", name="_token", value=server.token, url=server.base)
            # the Models entry of Airflow's navigation
            b.open(f"{server.base}/plugin/meli_models", 3)
            text = _frame_has(b, "Waiting for approval")
            assert "Champion (serves)" in text and "v2" in text and "champion since" in text
            assert f"approved by {XSS}" in text  # the reviewer's name is text: no image made of it
            assert b.js("document.querySelector('iframe').contentDocument.querySelectorAll('img').length") == 0
            hrefs = b.js(
                "[...document.querySelector('iframe').contentDocument.querySelectorAll('#pending a')]"
                ".map(a => [a.textContent.trim(), a.href, a.target])"
            )
            links = {t: (h, tgt) for t, h, tgt in hrefs}
            assert links["Airflow run"] == (f"{server.base}/dags/meli_retrain/runs/{q3}", "_top")
            assert links["approve or reject"][0] == f"{server.base}/dags/meli_retrain/runs/{q3}/required_actions"
            assert links["card"][0] == f"{server.base}/meli/cards/3"
            assert links["decision"][0] == f"{server.base}/meli/runs/meli_retrain/{q3}/decision"
            assert links["MLflow"][0] == "http://127.0.0.1:5000/#/models/meli-title-classifier/versions/3"
            b.screenshot(ARTIFACTS / "models_page.png")
            # a scoring run's tabs: the card and the decision of the version that scored (v2)
            b.open(f"{server.base}/dags/meli_score/runs/{qs}/plugin/meli_model_card", 3)
            text = _frame_has(b, "meli-title-classifier v2")
            assert "Gate decision" in b.js("document.body.innerText")  # the tabs of the run page
            b.screenshot(ARTIFACTS / "run_tabs_score_model_card.png")
            b.open(f"{server.base}/dags/meli_score/runs/{qs}/plugin/meli_gate_decision", 3)
            text = _frame_has(b, "Scoring runs do not gate")
            assert "v2: PROMOTED" in text or "v2" in text
            b.open(f"{server.base}/dags/meli_score/runs/{qs}/plugin/meli_data_docs", 3)
            _frame_has(b, "Scoring runs do not validate")
            # a retrain run's Drift report tab: the champion's latest drift report
            b.open(f"{server.base}/dags/meli_retrain/runs/{q3}/plugin/meli_drift_report", 3)
            text = _frame_has(b, "Retrain runs do not score")
            assert "latest drift report" in text and SCORING in text
            b.screenshot(ARTIFACTS / "run_tabs_retrain_drift.png")
            assert not b.external_requests(), b.external_requests()
    finally:
        server.stop()
