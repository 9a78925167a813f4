"""The UI plugin's app: a DAG run's 'Data Docs' tab lands on that run's validation page; every route
asks Airflow's own authentication (a real SimpleAuthManager, its JWTs and an empty metadata DB
here); no value from data comes back as markup."""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

import pipelines.monitoring.links as links
from pipelines.data.validate import link_run
from tests.unit.data.test_validate import METRICS, RUN_DATE, _table

XSS = "<img src=x onerror=alert(1)>"
ESCAPED = "&lt;img src=x onerror=alert(1)&gt;"


def _client() -> TestClient:
    from pipelines.flows.airflow_ui import app

    root = FastAPI()
    root.mount("/meli", app())
    return TestClient(root)


def test_run_tab_redirects_to_that_runs_report_and_docs_are_served(settings, airflow_tokens):
    from pipelines.data.validate import validate_table

    report = validate_table(settings, RUN_DATE, _table(), METRICS, "crafted")
    run_id = "manual__2026-11-21T02:00:00+00:00"
    link_run(settings, "meli_retrain", run_id, report)
    client = _client()
    client.headers.update(airflow_tokens["viewer"])
    url = f"/meli/runs/meli_retrain/{urllib.parse.quote(run_id, safe='')}"
    r = client.get(url, follow_redirects=False)
    assert r.status_code == 307
    target = urllib.parse.urljoin(url, r.headers["location"])
    assert target.startswith("/meli/docs/validations/listings_batch/") and target.endswith(".html")
    page = client.get(target)
    assert page.status_code == 200 and "Expectation Validation Result" in page.text
    # GX's pages run inline scripts from the site; they may not connect anywhere
    assert "connect-src 'none'" in page.headers["content-security-policy"]
    assert client.get("/meli/docs/index.html").status_code == 200
    assert client.get("/meli/docs/").status_code == 200
    assert client.get("/meli/docs/%2e%2e/%2e%2e/%2e%2e/secrets/note.key").status_code == 404
    missing = client.get("/meli/runs/meli_retrain/nope")
    assert missing.status_code == 404 and "No validation report" in missing.text


def test_a_scoring_runs_drift_report_tab_and_note(settings, monkeypatch, airflow_tokens):
    import pipelines.flows.airflow_ui as ui

    page = settings.monitor_dir / "r.html"
    page.parent.mkdir(parents=True, exist_ok=True)
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
    links.link_monitor_run(settings, run_id, report, dag_id="meli_score")
    notes = {}
    monkeypatch.setattr(ui, "set_run_note", lambda dag_id, rid, note: notes.update({rid: note}))
    client = _client()
    client.headers.update(airflow_tokens["admin"])  # the note needs edit access: an admin here
    q = urllib.parse.quote(run_id, safe="")
    r = client.get(f"/meli/runs/meli_score/{q}/monitor")
    assert r.status_code == 200 and "drift report" in r.text
    assert client.post(f"/meli/runs/meli_score/{q}/note").status_code == 200
    assert (
        notes[run_id].startswith("**DRIFT** monitor v3 2026-11-21: DRIFT") and "language mix shifted" in notes[run_id]
    )
    missing = client.get("/meli/runs/meli_score/other/monitor")
    assert missing.status_code == 404 and "No drift report" in missing.text
    # the same run id of another DAG is not this record: not its page (a retrain run's tab says that
    # retrain runs do not score), no note
    other = client.get(f"/meli/runs/meli_retrain/{q}/monitor").text
    assert "<h1>drift report</h1>" not in other and "Retrain runs do not score" in other
    assert client.post(f"/meli/runs/meli_retrain/{q}/note").status_code == 404


# ------------------------------------------------------------------------------------------
# Who may: issue 35 item 2
# ------------------------------------------------------------------------------------------
def _decision(run_id: str, dag_id: str = "meli_retrain", **over) -> dict:
    return {
        "decision": "promoted",
        "rule": "improved",
        "reason": "better",
        "model_name": "meli-title-classifier",
        "challenger_version": "2",
        "champion_version": "1",
        "challenger_macro_recall": 0.8,
        "champion_macro_recall": 0.7,
        "challenger_accuracy": 0.85,
        "champion_accuracy": 0.75,
        "delta": 0.1,
        "bootstrap": {"ci_low": 0.05, "ci_high": 0.15, "samples": 200},
        "test_rows": 100,
        "force_promote": False,
        "dry_run": False,
        "require_approval": True,
        "run_date": "2026-11-21",
        "dag_run_id": run_id,
        "dag_id": dag_id,
        "decided_at": "2026-11-21T03:00:00+00:00",
        "data_manifest": "lake@v1",
        **over,
    }


def _record_decision(settings, d: dict) -> None:
    """What registry._record leaves for the UI: decision.json/.md and the run's link."""
    from pipelines.registry.records import decision_markdown, run_link_path

    out = settings.home / "work" / d["run_date"] / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    (out / "decision.json").write_text(json.dumps(d))
    (out / "decision.md").write_text(decision_markdown(d))
    link = run_link_path(settings, d["dag_run_id"])
    link.parent.mkdir(parents=True, exist_ok=True)
    link.write_text(json.dumps({"decision_json": str(out / "decision.json"), "decision_md": str(out / "decision.md")}))


RUN = "scheduled__2026-11-21T02:00:00+00:00"
Q = urllib.parse.quote(RUN, safe="")
READ_ROUTES = [
    f"/meli/runs/meli_retrain/{Q}",
    f"/meli/runs/meli_retrain/{Q}/decision",
    f"/meli/runs/meli_retrain/{Q}/card",
    f"/meli/runs/meli_retrain/{Q}/monitor",
    "/meli/cards/2",
    "/meli/docs/index.html",
    "/meli/docs",
]


def test_every_route_needs_an_airflow_user_and_the_note_edit_access(settings, monkeypatch, airflow_tokens):
    import pipelines.flows.airflow_ui as ui

    _record_decision(settings, _decision(RUN))
    (settings.gx_root / "gx" / "uncommitted" / "data_docs" / "local_site").mkdir(parents=True, exist_ok=True)
    (settings.gx_root / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").write_text("<p>docs</p>")
    notes = {}
    monkeypatch.setattr(ui, "set_run_note", lambda dag_id, rid, note: notes.update({(dag_id, rid): note}))
    client = _client()
    for url in READ_ROUTES:  # anonymous: 401, a forged token 403, whatever the route
        assert client.get(url, follow_redirects=False).status_code == 401, url
        forged = {"Authorization": "Bearer not-a-jwt"}
        assert client.get(url, headers=forged, follow_redirects=False).status_code == 403, url
        assert client.get(url, headers=airflow_tokens["viewer"], follow_redirects=False).status_code in (200, 307, 404)
    assert client.get("/meli/openapi.json").status_code == 404  # no schema of its own
    # the browser's session cookie (what the run page's iframes carry) is a login too
    cookie_client = _client()
    cookie_client.cookies.set("_token", airflow_tokens["viewer"]["Authorization"].removeprefix("Bearer "))
    assert cookie_client.get(f"/meli/runs/meli_retrain/{Q}/decision").status_code == 200
    # the note: not anonymous, not a viewer; a user who may edit the DAG's runs may
    note = f"/meli/runs/meli_retrain/{Q}/note"
    assert client.post(note).status_code == 401
    assert client.post(note, headers=airflow_tokens["viewer"]).status_code == 403
    assert notes == {}
    assert client.post(note, headers=airflow_tokens["admin"]).status_code == 200
    assert notes[("meli_retrain", RUN)].startswith("**PROMOTED** v2 by rule `improved`")
    # the record is meli_retrain's: the same run id under another DAG reads and writes nothing
    other = f"/meli/runs/meli_score/{Q}"
    assert client.post(f"{other}/note", headers=airflow_tokens["admin"]).status_code == 404
    assert client.get(f"{other}/decision", headers=airflow_tokens["admin"]).status_code == 404
    assert list(notes) == [("meli_retrain", RUN)]


def test_the_tasks_sign_their_note_request(settings, monkeypatch, airflow_tokens):
    """The gate's credential: an HMAC of (time, dag_id, run_id) under the per-$MELI_HOME key,
    through post_run_note over real HTTP to the app served by uvicorn."""
    import uvicorn

    import pipelines.flows.airflow_ui as ui

    _record_decision(settings, _decision(RUN))
    notes = {}
    monkeypatch.setattr(ui, "set_run_note", lambda dag_id, rid, note: notes.update({(dag_id, rid): note}))
    root = FastAPI()
    root.mount("/meli", ui.app())
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(root, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            thread.join(0.05)
            assert thread.is_alive()
        assert ui.post_run_note("meli_retrain", RUN, base_url=f"http://127.0.0.1:{port}") is True
    finally:
        server.should_exit = True
        thread.join(10)
    assert notes[("meli_retrain", RUN)].startswith("**PROMOTED** v2")
    key = settings.home / "secrets" / "note.key"
    assert key.stat().st_mode & 0o077 == 0 and len(key.read_text()) == 64
    client = _client()
    url = f"/meli/runs/meli_retrain/{Q}/note"
    good = ui.note_signature(settings, "meli_retrain", RUN)
    assert client.post(url, headers={ui.NOTE_HEADER: good}).status_code == 200
    for bad in (
        ui.note_signature(settings, "meli_retrain", "another_run"),  # signed for another run
        ui.note_signature(settings, "meli_retrain", RUN, now=1_000_000_000),  # long expired
        good[:-4] + "0000",
        "nonsense",
    ):
        assert client.post(url, headers={ui.NOTE_HEADER: bad}).status_code == 403, bad
    # a signature for another DAG's run of the same id is valid, but that run has no record
    sig = ui.note_signature(settings, "meli_score", RUN)
    assert client.post(f"/meli/runs/meli_score/{Q}/note", headers={ui.NOTE_HEADER: sig}).status_code == 404
    # MELI_NOTE_SECRET, when set, is the key (api-server and workers without a shared $MELI_HOME)
    monkeypatch.setenv("MELI_NOTE_SECRET", "shared-by-the-deployment")
    from pipelines.settings import get_settings

    assert ui.note_signature(get_settings(), "d", "r", now=1) != ui.note_signature(settings, "d", "r", now=1)


def test_without_an_api_server_the_note_is_one_info_line(settings, monkeypatch, caplog):
    """`airflow dags test` (make demo) runs with no api-server: nothing a person should act on, so no
    warning (issue 33 item 5); a server that answers with an error is one warning."""
    import http.server

    import pipelines.flows.airflow_ui as ui

    monkeypatch.setenv("MELI_AIRFLOW_API_URL", f"http://127.0.0.1:{_free_port()}")  # nobody listens
    with caplog.at_level(logging.INFO, logger="pipelines.flows.airflow_ui"):
        assert ui.post_run_note("meli_retrain", RUN, timeout_s=5) is False
    records = [r for r in caplog.records if r.name == "pipelines.flows.airflow_ui"]
    assert [r.levelname for r in records] == ["INFO"] and "no Airflow api-server at" in records[0].message

    class Refuses(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            self.send_response(403)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Refuses)
    threading.Thread(target=server.handle_request, daemon=True).start()
    caplog.clear()
    monkeypatch.setenv("MELI_AIRFLOW_API_URL", f"http://127.0.0.1:{server.server_port}")
    try:
        with caplog.at_level(logging.INFO, logger="pipelines.flows.airflow_ui"):
            assert ui.post_run_note("meli_retrain", RUN, timeout_s=5) is False
    finally:
        server.server_close()
    records = [r for r in caplog.records if r.name == "pipelines.flows.airflow_ui"]
    assert [r.levelname for r in records] == ["WARNING"] and "could not set the run note" in records[0].message


def test_tasks_reach_the_api_server_at_the_execution_api_host(settings, monkeypatch):
    """docker/compose.yaml: the browser's base_url is localhost (the worker's own container); the
    tasks post where they reach the execution API (the api-server service)."""
    import pipelines.flows.airflow_ui as ui

    monkeypatch.delenv("MELI_AIRFLOW_API_URL", raising=False)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://localhost:8080")
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "http://airflow-apiserver:8080/execution/")
    assert ui.task_api_url() == "http://airflow-apiserver:8080"
    assert ui.api_base_url() == "http://localhost:8080"  # the links people click stay the browser's
    monkeypatch.setenv("MELI_AIRFLOW_API_URL", "http://api.internal:9000/")
    assert ui.task_api_url() == "http://api.internal:9000"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------
# No markup from data: issue 35 item 3
# ------------------------------------------------------------------------------------------
def _no_markup(text: str) -> None:
    assert "<img" not in text and "onerror=alert(1)>" not in text.replace(ESCAPED, ""), text[-2000:]


def test_a_run_id_in_the_url_comes_back_as_text(settings, airflow_tokens):
    client = _client()
    client.headers.update(airflow_tokens["viewer"])
    q = urllib.parse.quote(XSS, safe="")
    for url in (
        f"/meli/runs/{q}/r1/decision",
        f"/meli/runs/meli_retrain/{q}",
        f"/meli/runs/meli_retrain/{q}/decision",
        f"/meli/runs/meli_retrain/{q}/card",
        f"/meli/runs/meli_score/{q}/monitor",
        f"/meli/cards/{q}",
        f"/meli/docs/{q}",
    ):
        r = client.get(url)
        assert r.status_code == 404, url
        _no_markup(r.text)
        assert ESCAPED in r.text, (url, r.text)
        csp = r.headers["content-security-policy"]
        assert "script-src" not in csp or "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]


def test_a_reason_and_a_reviewer_name_on_the_decision_page_stay_text(settings, airflow_tokens):
    approval = {"response": "approved", "by": XSS, "at": "2026-11-21T04:00:00", "via": "cli", "reason": XSS}
    _record_decision(settings, _decision(RUN, reason=f"better {XSS}", approval=approval))
    client = _client()
    client.headers.update(airflow_tokens["viewer"])
    r = client.get(f"/meli/runs/meli_retrain/{Q}/decision")
    assert r.status_code == 200 and r.text.count("&lt;img") >= 3
    _no_markup(r.text)
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    # raw HTML in the Markdown record itself (a decision.md from before) is shown as text too
    (settings.home / "work" / "2026-11-21" / "evaluation" / "decision.md").write_text(f"# x\n\n{XSS}\n")
    _no_markup(client.get(f"/meli/runs/meli_retrain/{Q}/decision").text)


def _card_ctx() -> dict:
    return {
        "name": "meli-title-classifier",
        "version": "7",
        "tags": {"meli.decision": "promoted"},
        "aliases": [],
        "run_date": "2026-11-21",
        "run_id": "abc",
        "params": {},
        "run_tags": {},
        "decision": {
            "rule": "improved",
            "reason": XSS,
            "approval": {"response": "approved", "by": XSS, "at": "t", "via": "cli", "reason": XSS},
        },
        "validation": {"passed": 1, "evaluated": 2, "warnings": [f"title {XSS} [x](javascript:alert(1))"]},
        "per_class": {"challenger": {f"CAT {XSS}": 0.5, "OK": 0.9}},
        "test_support": {f"CAT {XSS}": 3},
        "confusions": [{"true": f"CAT {XSS}", "predicted": "OK", "count": 2}],
    }


def test_a_title_a_category_and_a_reviewer_on_the_model_card_stay_text(settings, monkeypatch, airflow_tokens):
    import pipelines.registry.card as card

    md = card.markdown(_card_ctx())
    page = card.render_html(md, "meli-title-classifier v7")
    _no_markup(page)
    assert page.count("&lt;img") >= 5 and "javascript:" not in page.replace("javascript:alert(1))", "")
    assert "<a href" not in page
    # the card route renders the card of a version from its records, writing nothing
    monkeypatch.setattr(card, "gather", lambda settings, version: _card_ctx())
    client = _client()
    client.headers.update(airflow_tokens["viewer"])
    r = client.get("/meli/cards/7")
    assert r.status_code == 200 and "&lt;img" in r.text
    _no_markup(r.text)
    assert not card.card_paths(settings, "7")["html"].parent.exists()


def test_a_category_and_a_reason_in_the_drift_report_stay_text(settings, airflow_tokens):
    from pipelines.monitoring.report import render_html

    report = {
        "model_name": "m",
        "version": "1",
        "run_date": "2026-11-21",
        "scored": f"/x/{XSS}",
        "status": "drift",
        "reason": XSS,
        "checks": [{"check": XSS, "value": 0.5, "threshold": 0.1, "breached": True, "message": XSS}],
        "category": {"top_shifts": [{"category": XSS, "reference_share": 0.1, "batch_share": 0.3}]},
        "languages": {XSS: 1.0},
    }
    history = [{"kind": "monitor", "report_json": "r", "run_date": XSS, "version": "1", "estimate": 0.8}]
    page = render_html(report, history)
    _no_markup(page)
    assert page.count("&lt;img") >= 6 and page.count("<svg") == 3
    path = settings.monitor_dir / "r.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    links.link_monitor_run(settings, RUN, {**report, "report_html": str(path)}, dag_id="meli_score")
    r = _client().get(f"/meli/runs/meli_score/{Q}/monitor", headers=airflow_tokens["viewer"])
    assert r.status_code == 200 and "default-src 'none'" in r.headers["content-security-policy"]
    _no_markup(r.text)
    note = json.loads(links.monitor_link_path(settings, RUN).read_text())["note"]
    _no_markup_md(note)


def _no_markup_md(md: str) -> None:
    """Markdown that even a renderer letting raw HTML through shows as text."""
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    _no_markup(html)
    assert 'href="javascript' not in html.lower()


def test_the_approval_body_quotes_data_as_text(settings, monkeypatch):
    import pipelines.registry.card as card
    from pipelines.flows.approval import approval_body

    ctx = _card_ctx()
    ctx["tags"]["meli.model_type"] = XSS
    ctx["per_class"]["champion"] = {f"CAT {XSS}": 0.9, "OK": 0.1}
    ctx["dataset"] = {"lineage": [{"ingest_date": XSS}], "counts": {}, "data_version": XSS}
    monkeypatch.setattr(card, "gather", lambda settings, version: ctx)
    d = _decision(RUN, reason=f"better [click](javascript:alert(1)) {XSS}")
    links = {"Model card": "http://127.0.0.1:8080/meli/cards/2", XSS: "http://x/a>b)<img src=x>"}
    body = approval_body(settings, d, links)
    _no_markup_md(body)
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark", {"html": True}).render(body)
    assert html.count("&lt;img") >= 5 and '<a href="http://127.0.0.1:8080/meli/cards/2">Model card</a>' in html


# ------------------------------------------------------------------------------------------
# Issue 33 item 8: the "Models" page; item 3: a scoring run's tabs, a retrain run's drift tab
# ------------------------------------------------------------------------------------------
R1, R2, R3 = (f"manual__2026-11-2{i}T02:00:00+00:00" for i in (1, 2, 3))


def _registry(settings, monkeypatch) -> dict:
    """A real (SQLite) registry, cheaply (test_registry's lookup doubles): v1 promoted by run R1, v2
    gated for approval by R2 then approved by a reviewer whose name and reason are markup, v3 waiting
    for approval (R3). Every gate of RUN_DATE: its decision record is v3's."""
    import pandas as pd

    from pipelines.registry import gate as registry
    from tests.unit.registry.test_registry import CLASSES, RUN_DATE, make_version, run_gate

    monkeypatch.setenv("MELI_GATE_MIN_BEHAVIOUR_PASS", "0")
    rows = [{"listing_id": f"id{c}{k}", "title": f"{c} item {k}", "category": c} for c in CLASSES for k in range(10)]
    df = pd.DataFrame(rows)
    (settings.run_dir(RUN_DATE) / "dataset").mkdir(parents=True)
    df.to_parquet(settings.run_dir(RUN_DATE) / "dataset" / "test.parquet", index=False)
    v1 = make_version(settings, df, 0.7)
    run_gate(settings, v1, dag_run_id=R1, dag_id="meli_retrain")
    v2 = make_version(settings, df, 0.8)
    run_gate(settings, v2, dag_run_id=R2, dag_id="meli_retrain", require_approval=True)
    registry.respond(settings, v2, approve=True, reason=f"flips checked {XSS}", by=XSS, via="airflow")
    v3 = make_version(settings, df, 0.9)
    run_gate(settings, v3, dag_run_id=R3, dag_id="meli_retrain", require_approval=True)
    return {"v1": v1, "v2": v2, "v3": v3, "run_date": RUN_DATE}


def test_the_models_page_says_what_serves_since_when_and_what_waits(settings, monkeypatch, airflow_tokens):
    import re

    monkeypatch.setenv("MELI_MLFLOW_UI_URL", "http://mlflow.internal:5000/")
    reg = _registry(settings, monkeypatch)
    client = _client()
    assert client.get("/meli/models").status_code == 401
    r = client.get("/meli/models", headers=airflow_tokens["viewer"])
    assert r.status_code == 200 and r.headers["content-security-policy"].startswith("default-src 'none'")
    page = r.text
    _no_markup(page)
    champion = page.split('id="champion"')[1].split('id="previous"')[0]
    assert ">v2<" in champion and "macro-recall <b>0.8000</b>" in champion
    assert "champion since <b>" in champion and f"approved by {ESCAPED}" in champion
    assert 'href="cards/2"' in champion and 'href="../dags/meli_retrain/runs/' in champion
    assert 'href="http://mlflow.internal:5000/#/models/meli-title-classifier/versions/2"' in champion
    previous = page.split('id="previous"')[1].split('id="pending"')[0]
    assert ">v1<" in previous and "macro-recall <b>0.7000</b>" in previous
    pending = page.split('id="pending"')[1].split('id="decisions"')[0]
    q3 = urllib.parse.quote(R3, safe="")
    assert ">v3<" in pending and "0.9000 (0.8000)" in pending
    assert f'href="../dags/meli_retrain/runs/{q3}/required_actions" target="_top"' in pending
    assert f'href="runs/meli_retrain/{q3}/decision"' in pending  # the run's Gate decision tab
    assert 'href="../required_actions?response_received=false" target="_top"' in pending
    decisions = page.split('id="decisions"')[1]
    rows = re.findall(r'<td class="decision ([a-z_]+)">', decisions)
    assert rows == ["pending_approval", "promoted", "pending_approval", "promoted"]  # newest first
    assert f"approved {ESCAPED}" in decisions and f"flips checked {ESCAPED}" in decisions
    for v in (reg["v1"], reg["v2"], reg["v3"]):
        assert f'href="cards/{v}"' in decisions and f"versions/{v}" in decisions
    # the links lead where they say: the card and the decision answer from /meli/
    assert client.get(f"/meli/cards/{reg['v3']}", headers=airflow_tokens["viewer"]).status_code == 200
    d = client.get(f"/meli/runs/meli_retrain/{q3}/decision", headers=airflow_tokens["viewer"])
    assert d.status_code == 200 and "PENDING_APPROVAL" in d.text


def test_the_models_page_without_a_registry_says_so(settings, airflow_tokens):
    r = _client().get("/meli/models", headers=airflow_tokens["viewer"])
    assert r.status_code == 200 and "No champion yet" in r.text and "No decision recorded yet" in r.text
    assert "MELI_MLFLOW_UI_URL" in r.text  # how to get the MLflow links


def _scoring_run(settings, run_id: str, version: str, run_date: str) -> None:
    """What the monitor task of a meli_score run leaves: the report and the run's link."""

    page = settings.monitor_dir / f"v{version}" / f"{run_date}.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("<!doctype html><h1>the drift report</h1>")
    report = {"status": "ok", "version": version, "run_date": run_date, "report_html": str(page)}
    page.with_suffix(".json").write_text(json.dumps(report))
    links.link_monitor_run(settings, run_id, {**report, "report_json": str(page.with_suffix(".json"))}, "meli_score")


def test_a_scoring_runs_tabs_show_the_version_that_scored(settings, monkeypatch, airflow_tokens):
    import pipelines.flows.airflow_ui as ui

    reg = _registry(settings, monkeypatch)
    scoring = "asset_triggered__2026-11-23T02:30:00+00:00"
    _scoring_run(settings, scoring, reg["v3"], reg["run_date"])
    # the listings partition of that date was validated: its Data Docs page
    docs = settings.gx_root / "gx" / "uncommitted" / "data_docs" / "local_site" / "validations" / "p.html"
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text("<p>validation</p>")
    report = settings.home / "validation" / reg["run_date"] / "report.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({"data_docs_pages": {"listings_partition": str(docs)}}))
    client = _client()
    client.headers.update(airflow_tokens["viewer"])
    base = f"/meli/runs/meli_score/{urllib.parse.quote(scoring, safe='')}"
    # Model card: the card of the version that scored (not "no gated version")
    r = client.get(f"{base}/card", follow_redirects=False)
    assert r.status_code == 307 and urllib.parse.urljoin(f"{base}/card", r.headers["location"]) == "/meli/cards/3"
    # Gate decision: scoring runs do not gate; the decision on record for that version
    r = client.get(f"{base}/decision")
    assert r.status_code == 200 and "Scoring runs do not gate" in r.text and "v3: PENDING_APPROVAL" in r.text
    assert 'href="../../../cards/3"' in r.text and 'target="_top"' in r.text
    # Data Docs: scoring runs do not validate; the validation of the scored partition
    r = client.get(base)
    assert r.status_code == 200 and "Scoring runs do not validate" in r.text
    assert urllib.parse.urljoin(base, "../../docs/validations/p.html") == "/meli/docs/validations/p.html"
    assert 'href="../../docs/validations/p.html"' in r.text
    assert client.get("/meli/docs/validations/p.html").status_code == 200
    # a scoring run whose monitor has not run: its score task's result (XCom) names the version
    monkeypatch.setattr(ui, "score_result", lambda dag_id, run_id: {"model_version": "2", "run_date": "2026-11-20"})
    r = client.get("/meli/runs/meli_score/another/card", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"].endswith("/cards/2")
    # a run of a DAG that neither gates nor scores says so (test_a_tune_runs_tabs_say_plainly_what_it_never_does)
    monkeypatch.setattr(ui, "score_result", lambda dag_id, run_id: None)
    r = client.get("/meli/runs/meli_tune/t1/card")
    assert r.status_code == 404 and "runs register and score no version" in r.text


def test_a_retrain_runs_drift_tab_points_to_the_champions_latest_report(settings, monkeypatch, airflow_tokens):
    reg = _registry(settings, monkeypatch)  # champion v2
    client = _client()
    client.headers.update(airflow_tokens["viewer"])
    url = f"/meli/runs/meli_retrain/{urllib.parse.quote(R1, safe='')}/monitor"
    r = client.get(url)
    assert r.status_code == 200 and "Retrain runs do not score" in r.text and "v2" in r.text
    assert "No scoring run of the champion" in r.text
    _scoring_run(settings, "scored_by_v1", reg["v1"], "2026-11-20")  # an older champion's: not this one
    _scoring_run(settings, "scored_by_v2", reg["v2"], "2026-11-22")
    r = client.get(url)
    assert "The champion&#39;s latest drift report" in r.text and "2026-11-22" in r.text and "OK" in r.text
    assert 'href="../../../runs/meli_score/scored_by_v2/monitor"' in r.text
    assert 'href="../../../../dags/meli_score/runs/scored_by_v2" target="_top"' in r.text
    assert client.get("/meli/runs/meli_score/scored_by_v2/monitor").text.endswith("the drift report</h1>")


def test_the_score_tasks_result_is_read_from_airflows_db(settings, airflow_tokens):
    """score_result: the return value of a run's ``score`` task, as the api-server reads XComs."""
    import pendulum
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import text

    import pipelines.flows.airflow_ui as ui

    run_id = "manual__2026-11-24T02:00:00+00:00"
    with create_session() as session:
        # the XCom row alone (no task instance row): SQLite checks no foreign key on this connection
        session.execute(text("PRAGMA foreign_keys=OFF"))
        dr = DagRun(dag_id="meli_score", run_id=run_id, run_type="manual", run_after=pendulum.now("UTC"))
        session.add(dr)
        session.flush()
        session.add(
            XComModel(
                dag_run_id=dr.id,
                key="return_value",
                value=XComModel.serialize_value({"model_version": "4", "run_date": "2026-11-24"}),
                dag_id="meli_score",
                task_id="score",
                run_id=run_id,
                map_index=-1,
            )
        )
    assert ui.score_result("meli_score", run_id)["model_version"] == "4"
    assert ui.score_result("meli_retrain", run_id) is None and ui.score_result("meli_score", "nope") is None


# ------------------------------------------------------------------------------------------
# Polish (issue 33): plain "not found" answers, MLflow links in the drift report and the notes
# ------------------------------------------------------------------------------------------
def test_a_tune_runs_tabs_say_plainly_what_it_never_does(settings, monkeypatch, airflow_tokens):
    import pipelines.flows.airflow_ui as ui

    monkeypatch.setattr(ui, "score_result", lambda dag_id, run_id: None)
    client = _client()
    client.headers.update(airflow_tokens["viewer"])
    base = "/meli/runs/meli_tune/manual__t1"
    said = {
        "": "<b>meli_tune</b> runs do not validate: <b>meli_retrain</b> validates",
        "/decision": "<b>meli_tune</b> runs do not gate: <b>meli_retrain</b> gates",
        "/card": "<b>meli_tune</b> runs register and score no version",
        "/monitor": "<b>meli_tune</b> runs do not score: <b>meli_score</b> scores",
    }
    for tab, text in said.items():
        r = client.get(base + tab)
        assert r.status_code == 404 and text in r.text and "or this DAG does not" not in r.text, (tab, r.text)
    # the DAGs that do record it: not yet, without a hedge; a DAG the project does not know: hedged
    r = client.get("/meli/runs/meli_retrain/manual__r1/decision")
    assert "(the gate has not run yet)." in r.text
    r = client.get("/meli/runs/meli_score/manual__s1/monitor")
    assert "(the monitor task has not run)." in r.text
    assert "or this DAG does not gate" in client.get("/meli/runs/someone_elses/x/decision").text


MLFLOW_UI = "http://mlflow.internal:5000"


def test_the_drift_report_links_its_mlflow_run_and_only_to_http(settings):
    from pipelines.monitoring.report import render_html

    report = {"model_name": "m", "version": "1", "run_date": "2026-11-21", "status": "ok", "mlflow_run_id": "abc123"}
    url = f"{MLFLOW_UI}/#/experiments/1/runs/abc123"
    page = render_html({**report, "mlflow_run_url": url}, [])
    assert f'MLflow run <a href="{url}" target="_blank" rel="noopener noreferrer"><code>abc123</code></a>' in page
    assert "<code>abc123</code>" in render_html(report, []) and "<a href" not in render_html(report, [])
    for bad in ("javascript:alert(1)", "//evil.example/x", "data:text/html,x"):
        page = render_html({**report, "mlflow_run_url": bad}, [])
        assert "<a href" not in page and "<code>abc123</code>" in page, bad
    page = render_html({**report, "mlflow_run_url": f'{MLFLOW_UI}/"><img/src=x/onerror=alert(1)>'}, [])
    assert "<img" not in page and "&#34;&gt;&lt;img" in page  # an attribute value, escaped


def test_the_run_notes_link_the_version_in_mlflow_when_its_ui_url_is_set(settings, monkeypatch, airflow_tokens):
    import pipelines.flows.airflow_ui as ui
    from pipelines.registry.decisions import decision_note
    from pipelines.settings import get_settings

    d = _decision(RUN, reason=f"better {XSS}")
    assert "MLflow" not in decision_note(d) and "MLflow" not in decision_note(d, settings)  # no UI URL: no link
    monkeypatch.setenv("MELI_MLFLOW_UI_URL", MLFLOW_UI + "/")
    linked = get_settings()
    version_link = f"[v2 in MLflow]({MLFLOW_UI}/#/models/meli-title-classifier/versions/2)"
    assert decision_note(d, linked).endswith("\n\n" + version_link)
    _no_markup_md(decision_note(d, linked))
    long = decision_note({**d, "reason": "x" * 2000}, linked)  # the note's 1000 characters keep the link whole
    assert len(long) <= 1000 and long.endswith(version_link)
    # the gate's note, through the plugin's note route
    _record_decision(settings, d)
    notes = {}
    monkeypatch.setattr(ui, "set_run_note", lambda dag_id, rid, note: notes.update({rid: note}))
    client = _client()
    assert client.post(f"/meli/runs/meli_retrain/{Q}/note", headers=airflow_tokens["admin"]).status_code == 200
    assert notes[RUN].startswith("**PROMOTED** v2") and notes[RUN].endswith(version_link)
    # a scoring run's note: the version that scored and the monitor's MLflow run
    run_url = f"{MLFLOW_UI}/#/experiments/4/runs/9f00"
    report = {"status": "drift", "version": "3", "run_date": "2026-11-21", "reason": "shift", "mlflow_run_url": run_url}
    links.link_monitor_run(linked, "scoring1", report)
    note = links.monitor_link(linked, "scoring1")["note"]
    assert note.startswith("**DRIFT** monitor v3 2026-11-21: DRIFT")
    assert note.endswith(
        f"[v3 in MLflow]({MLFLOW_UI}/#/models/meli-title-classifier/versions/3) · [the monitor's MLflow run]({run_url})"
    )
    # a UI URL that is not http(s), or a report's URL that is not: no link
    monkeypatch.setenv("MELI_MLFLOW_UI_URL", "javascript:alert(1)")
    assert "MLflow" not in decision_note(d, get_settings())
    links.link_monitor_run(get_settings(), "scoring2", {**report, "mlflow_run_url": "javascript:alert(1)"})
    assert "](" not in links.monitor_link(settings, "scoring2")["note"]


def test_a_tab_quoting_another_dags_record_asks_for_that_dag_too(settings, monkeypatch, airflow_tokens):
    """Security item 5: a scoring run's "Gate decision" tab quotes meli_retrain's decision and a retrain
    run's "Drift report" tab meli_score's report: each needs read access on that other DAG as well (a
    user allowed on one DAG only sees the page without the other's data)."""
    from airflow.api_fastapi.app import get_auth_manager

    reg = _registry(settings, monkeypatch)  # champion v2, v3 waiting (decided by R3)
    scoring = "asset_triggered__2026-11-23T02:30:00+00:00"
    _scoring_run(settings, scoring, reg["v3"], reg["run_date"])
    _scoring_run(settings, "scored_by_v2", reg["v2"], "2026-11-22")
    manager = get_auth_manager()
    allowed = manager.is_authorized_dag
    denied: set[str] = set()

    def is_authorized_dag(*, method, access_entity=None, details=None, user):
        if user.get_name() == "viewer" and details is not None and details.id in denied:
            return False
        return allowed(method=method, access_entity=access_entity, details=details, user=user)

    monkeypatch.setattr(manager, "is_authorized_dag", is_authorized_dag)
    client = _client()
    client.headers.update(airflow_tokens["viewer"])
    decision = f"/meli/runs/meli_score/{urllib.parse.quote(scoring, safe='')}/decision"
    drift = f"/meli/runs/meli_retrain/{urllib.parse.quote(R1, safe='')}/monitor"
    assert "v3: PENDING_APPROVAL" in client.get(decision).text  # allowed on both: the decision
    assert "scored_by_v2" in client.get(drift).text
    denied.add("meli_retrain")  # a viewer of meli_score only
    r = client.get(decision)
    assert r.status_code == 200 and "whose runs you may not read" in r.text
    assert "PENDING_APPROVAL" not in r.text and "dags/meli_retrain/runs" not in r.text
    assert client.get(drift).status_code == 403  # the retrain run's own tab: its own DAG
    denied.clear()
    denied.add("meli_score")  # a viewer of meli_retrain only
    r = client.get(drift)
    assert r.status_code == 200 and "whose runs you may not read" in r.text
    assert "scored_by_v2" not in r.text and "2026-11-22" not in r.text
    assert client.get(decision).status_code == 403
    # the admin is not affected
    assert "scored_by_v2" in client.get(drift, headers=airflow_tokens["admin"]).text


def test_data_docs_are_sandboxed_and_a_category_is_text_on_them(settings, airflow_tokens):
    """Security item 1: GX writes data values into its pages raw; validate escapes them before GX
    renders, and the pages are served in a CSP sandbox (scripts, no same origin) with their static
    assets public (a sandboxed page's requests carry no cookie) and the pages themselves not."""
    import pytest

    from pipelines.data.validate import ValidationFailed, validate_table
    from tests.unit.data.test_validate import _with

    evil = 'CAT<img src=x onerror="alert(document.cookie)">'
    with pytest.raises(ValidationFailed) as err:
        validate_table(settings, RUN_DATE, _with(_table(), "category", [evil] * 200), METRICS, "crafted")
    report = err.value.report
    assert any(evil in line for line in report["critical_failures"])  # the report keeps the value
    page = report["data_docs_pages"]["listings_partition"]
    rel = str(Path(page).relative_to(report["data_docs_dir"]))
    client = _client()
    assert client.get(f"/meli/docs/{rel}").status_code == 401
    r = client.get(f"/meli/docs/{rel}", headers=airflow_tokens["viewer"])
    assert r.status_code == 200 and "<img src=x onerror" not in r.text and "CAT&lt;img src=x onerror=" in r.text
    csp = r.headers["content-security-policy"]
    assert csp.startswith("sandbox allow-scripts") and "allow-same-origin" not in csp and "connect-src 'none'" in csp
    css = client.get("/meli/docs/static/meli-vendor/bootstrap.min.css")  # anonymous
    assert css.status_code == 200 and css.headers["access-control-allow-origin"] == "*"
    assert "sandbox" in css.headers["content-security-policy"]
    font = next((Path(report["data_docs_dir"]) / "static").rglob("*.woff2")).relative_to(report["data_docs_dir"])
    assert client.get(f"/meli/docs/{font}").status_code == 200
    (Path(report["data_docs_dir"]) / "static" / "p.html").write_text("<p>a page</p>")
    for path in ("static/p.html", "static/../index.html", "static/%2e%2e/index.html", "static/nope.css"):
        assert client.get(f"/meli/docs/{path}").status_code in (401, 404), path
