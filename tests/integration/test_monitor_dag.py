"""The monitor in the DAGs: meli_score monitors each scored batch against the champion's reference;
a drifted batch emits meli_drift, which queues and triggers a meli_retrain run. Also the nightly
run's deadline and its callback, and the HTML report in headless Chromium."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.monitoring import drift as drift_mod
from pipelines.monitoring import reference as reference_mod
from pipelines.monitoring import report as report_mod
from tests.integration.airflow_env import REPO, airflow_env, dag_test, migrate

FAST = {"epochs": 2, "embedding_epochs": 2, "patience": 2, "min_behaviour_pass": 0.5}
ARTIFACTS = REPO / "tests" / "artifacts"


def _parse(home: Path, code: str, **extra: str) -> dict:
    env = airflow_env(home) | {"MELI_RETRAIN_DEADLINE_H": "6", **extra}  # airflow_env turns it off for dag.test
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_retrain_is_scheduled_nightly_or_by_drift_with_a_deadline(tmp_path):
    """With MELI_RETRAIN_SCHEDULE set (the distributed profile's nightly cron); the embedded profile's
    drift-only schedule is tests/unit/flows/test_operator_view.py's."""
    code = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag({str(REPO / 'dags')!r})\n"
        "d = bag.dags['meli_retrain']\n"
        "tt = d.timetable\n"
        "(dl,) = d.deadline\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()},\n"
        " 'timetable': type(tt).__name__, 'cron': tt.timetable.expression, 'assets': str(tt.asset_condition),\n"
        " 'reference': type(dl.reference).__name__, 'hours': dl.interval.total_seconds() / 3600,\n"
        " 'callback': dl.callback.path, 'kwargs': dl.callback.kwargs,\n"
        " 'score_tasks': sorted(t.task_id for t in bag.dags['meli_score'].tasks),\n"
        " 'drift_outlets': [o.name for o in bag.dags['meli_score'].get_task('announce_drift').outlets]}))\n"
    )
    out = _parse(tmp_path / "home", code, MELI_RETRAIN_SCHEDULE="0 2 * * *")
    assert out["errors"] == {}
    assert out["timetable"] == "AssetOrTimeSchedule" and out["cron"] == "0 2 * * *"
    assert "meli_drift" in out["assets"]
    assert out["reference"] == "DagRunQueuedAtDeadline" and out["hours"] == 6.0
    assert out["callback"] == "pipelines.core.alerts.retrain_deadline_missed"
    assert out["kwargs"] == {"dag_id": "meli_retrain", "hours": 6.0}
    assert out["score_tasks"] == ["announce_drift", "monitor", "score"] and out["drift_outlets"] == ["meli_drift"]


def test_deadline_callback_logs_and_writes_a_notice(tmp_path, monkeypatch, caplog):
    import http.server
    import threading

    posted = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            posted.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MELI_HOME", str(tmp_path))
    monkeypatch.setenv("MELI_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hook")
    from pipelines.core.alerts import retrain_deadline_missed

    with caplog.at_level("WARNING", logger="pipelines.core.alerts"):
        path = asyncio.run(retrain_deadline_missed("meli_retrain", 6.0, context={"dag_run": {"run_id": "r1"}}))
    server.shutdown()
    notice = json.loads(Path(path).read_text())
    assert notice["kind"] == "deadline_missed" and notice["run_id"] == "r1"
    assert "meli_retrain run r1 has not finished 6 h after it was queued" in caplog.text
    assert posted and posted[0]["message"] == notice["message"]


@pytest.mark.slow
def test_drifted_batch_emits_meli_drift_which_triggers_meli_retrain(tmp_path_factory, tmp_path):
    home = tmp_path_factory.mktemp("afmon") / "meli"
    migrate(home)
    airflow = str(Path(sys.executable).parent / "airflow")
    for cmd in (["dags", "reserialize"], ["dags", "unpause", "meli_score"], ["dags", "unpause", "meli_retrain"]):
        r = subprocess.run([airflow, *cmd], env=airflow_env(home), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    from pipelines.data.synthetic import generate_rows, write_jsonl

    src = write_jsonl(tmp_path / "listings.jsonl.gz", 2000, seed=5)
    conf = {"sources": [str(src)], "models": ["mlp"], "ensemble": False, "refit": False, "sentence_encoder": "none"}
    res = dag_test(home, "meli_retrain", {**conf, **FAST})
    assert res["state"].endswith("success"), res
    (ref,) = (home / "work").glob("*/evaluation/monitor_reference.json")
    assert json.loads(ref.read_text())["version"] == "1"

    # the batch the retrain landed, scored by the champion: within thresholds, no drift event
    score = dag_test(home, "meli_score", {}, asset_triggered=True)
    assert score["state"].endswith("success"), score
    assert score["tasks"]["monitor"] == "success" and score["tasks"]["announce_drift"] == "skipped", score
    (ok,) = (home / "monitor" / "meli-title-classifier" / "v1").glob("*.json")
    assert json.loads(ok.read_text())["status"] == "ok", json.loads(ok.read_text())["reason"]

    # a batch in Portuguese only (the training mix is 30%): drift, and the event names why
    pt = tmp_path / "pt.jsonl"
    pt.write_text("".join(json.dumps(r) + "\n" for r in generate_rows(1500, seed=21, portuguese_share=1.0)))
    drifted = dag_test(home, "meli_score", {"input": str(pt), "run_date": "2030-02-01"})
    assert drifted["tasks"]["announce_drift"] == "success", drifted
    with sqlite3.connect(home / "airflow" / "airflow.db") as db:
        (extra,) = db.execute(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = 'meli_drift'"
        ).fetchone()
    extra = json.loads(extra)
    assert "language" in extra["reasons"] and Path(extra["report"]).exists() and extra["version"] == "1"
    html = Path(extra["report_html"])
    assert html.exists() and html.read_text().count("<svg") == 3

    # the event queues meli_retrain; the drift-triggered run consumes it. Nothing is in the landing,
    # so it skips with the reason rather than retrain on the unchanged lake.
    run = dag_test(home, "meli_retrain", {}, asset_triggered=True)
    assert run["queued_assets"] == ["meli_drift"], run
    assert any("language" in (e or {}).get("reasons", []) for e in run["consumed_events"])
    assert run["tasks"]["ingest"] == "skipped", run
    assert not run["state"].endswith("failed"), run
    log = Path(run["log"]).read_text()
    assert "triggered by meli_drift" in log and "nothing new to retrain on" in log


def test_html_report_renders_offline_in_headless_chromium(tmp_path):
    """A real report page (synthetic reference, a drifted batch) in headless Chromium: it renders
    its three plots, asks for nothing over the network; the screenshot is kept as an artifact."""
    import numpy as np

    from pipelines.data.synthetic import generate_rows
    from pipelines.features.text import tokenize
    from pipelines.settings import Monitor
    from tests.integration.cdp import Browser, chromium
    from tests.unit.monitoring.test_monitor import LABELS, TEXT, _batch, _keyword_model

    chromium()

    train = generate_rows(3000, seed=0)
    vocab = sorted({t for r in train for t in tokenize(r["title"], TEXT)})
    test = generate_rows(1200, seed=1)
    titles = [r["title"] for r in test]
    pred, prob = _keyword_model(titles, 1)
    true = np.array([LABELS.index(r["category"]) for r in test])
    ref, arrays = reference_mod.reference_from_predictions(LABELS, pred, prob, true, titles, TEXT, vocab)
    rows = [r for r in generate_rows(4000, seed=8, portuguese_share=0.9) if r["category"] < "G"]
    figures = drift_mod.compare(ref, arrays, _batch([r["title"] for r in rows]), Monitor())
    status, breached = drift_mod.judge(figures, Monitor())
    report = {"model_name": "meli-title-classifier", "version": "3", "run_date": "2030-01-04"}
    report |= {
        "scored": "/lake/scored/run_date=2030-01-04",
        "status": status,
        "reason": drift_mod.reason_text(breached),
    }
    report |= {**figures, "realised": {"realised": 0.71}, "mlflow_run_id": "abc"}
    history = []
    for i, (e, r) in enumerate([(0.81, 0.80), (0.79, 0.785), (0.74, 0.71)], start=2):
        history.append(
            {"kind": "monitor", "report_json": f"r{i}", "run_date": f"2030-01-0{i}", "version": "3", "estimate": e}
        )
        history.append({"kind": "realised", "report_json": f"r{i}", "realised": r})
    page = tmp_path / "monitor.html"
    page.write_text(report_mod.render_html(report, history))
    with Browser(tmp_path / "cdp") as b:
        b.call("Network.enable")
        b.open(page.as_uri())
        assert b.js("document.querySelectorAll('svg').length") == 3
        assert b.js("document.querySelectorAll('svg rect').length") > 20
        assert b.js("document.querySelectorAll('svg circle').length") == 6
        assert "DRIFT" in b.js("document.body.innerText")
        assert b.external_requests() == []
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        b.screenshot(ARTIFACTS / "monitor_report.png")
    assert (ARTIFACTS / "monitor_report.png").stat().st_size > 10_000
