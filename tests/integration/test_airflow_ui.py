"""A new user's first minutes in the Airflow UI, for real: `make airflow-ui` on a chosen port from a
shell without an activated virtualenv, every DAG paused at creation, each trigger form submitted with
its defaults in headless Chromium (Debian's package) and the run queued; the run page has the
"Gate decision", "Model card" and "Data Docs" tabs; a task of a triggered run reaches the execution API on that port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.integration.cdp import Browser, chromium

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UI:
    def __init__(self, home: Path, port: int):
        self.base = f"http://127.0.0.1:{port}"
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",  # no virtualenv on PATH, as in a fresh shell
            "HOME": str(home / "user"),
            "MELI_HOME": str(home),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # no login form in the test
            "LANG": "C.UTF-8",
        }
        self.log = home / "airflow-ui.log"
        home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["make", "-C", str(REPO), "--no-print-directory", "airflow-ui", f"AIRFLOW_PORT={port}"],
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.token = ""

    def wait_healthy(self, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"make airflow-ui exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                health = json.loads(urllib.request.urlopen(f"{self.base}/api/v2/monitor/health", timeout=5).read())
                if all(health.get(k, {}).get("status") == "healthy" for k in ("scheduler", "dag_processor")):
                    self.token = json.loads(urllib.request.urlopen(f"{self.base}/auth/token", timeout=5).read())[
                        "access_token"
                    ]
                    return health
            except OSError:
                pass
            time.sleep(1)
        raise AssertionError(f"Airflow UI not healthy in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def api(self, path: str) -> dict:
        req = urllib.request.Request(f"{self.base}/api/v2{path}", headers={"Authorization": f"Bearer {self.token}"})
        return json.loads(urllib.request.urlopen(req, timeout=20).read())

    def wait_for(self, what, timeout: float = 120, step: float = 1.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = what()
            if value:
                return value
            time.sleep(step)
        raise AssertionError(f"timed out: {what}")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def ui(tmp_path):
    chromium()
    server = UI(tmp_path / "home", _free_port())
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


# the trigger dialog (the page has other [role=dialog] popovers)
DIALOG = "[...document.querySelectorAll('[role=dialog]')].find(d => d.innerText.includes('Trigger Dag'))"
TRIGGER = f"[...{DIALOG}.querySelectorAll('button')].filter(x => x.innerText.trim() === 'Trigger').pop()"


def open_trigger_form(b: Browser, base: str, dag_id: str) -> None:
    """Open the DAG's page in Airflow's UI at ``base`` and its "Trigger Dag" dialog (the form drawn)."""
    b.open(f"{base}/dags/{dag_id}", settle=2)
    b.wait_for("!!document.querySelector('button[aria-label=\"Trigger Dag\"]')")
    b.js("document.querySelector('button[aria-label=\"Trigger Dag\"]').click()")
    # the params' form (an accordion: "Run Parameters" or the Params' sections, then "Advanced Options")
    b.wait_for(f"!!{DIALOG} && !!{DIALOG}.querySelector('[data-testid=config-form]')")
    b.pump(1.5)


def _submit_trigger_form(b: Browser, ui: UI, dag_id: str) -> None:
    open_trigger_form(b, ui.base, dag_id)
    # with every default the form is valid: no field flagged, the dialog's Trigger button enabled
    invalid = b.js(f"{DIALOG}.querySelectorAll('[aria-invalid=true], [data-invalid]').length")
    assert invalid == 0, f"{dag_id}: {invalid} fields flagged invalid with the defaults"
    assert b.js(f"!{TRIGGER}.disabled"), f"{dag_id}: Trigger is disabled with the defaults"
    b.screenshot(ARTIFACTS / f"trigger_form_{dag_id}.png")
    b.js(f"{TRIGGER}.click()")


def manual_runs(ui: UI, dag_id: str) -> list[dict]:
    return [r for r in ui.api(f"/dags/{dag_id}/dagRuns")["dag_runs"] if r["run_type"] == "manual"]


def test_first_minutes_in_the_airflow_ui(ui, tmp_path):
    dags = ui.wait_for(
        lambda: {d["dag_id"]: d for d in ui.api("/dags")["dags"]} if len(ui.api("/dags")["dags"]) >= 3 else None
    )
    assert {k: d["is_paused"] for k, d in dags.items()} == {"meli_retrain": True, "meli_score": True, "meli_tune": True}
    assert ui.api("/dags/meli_retrain/dagRuns")["total_entries"] == 0  # opening the UI started nothing
    with Browser(tmp_path / "cdp") as b:
        for dag_id in ("meli_score", "meli_tune", "meli_retrain"):
            _submit_trigger_form(b, ui, dag_id)
            # (the form unpauses the DAG by default: meli_retrain's nightly run may be created too)
            runs = ui.wait_for(lambda dag_id=dag_id: manual_runs(ui, dag_id), timeout=60)
            assert len(runs) == 1, runs
            conf = runs[0]["conf"]
            assert conf.get("run_date") is None and conf.get("model", "champion") == "champion", conf
        run = manual_runs(ui, "meli_retrain")[0]
        b.open(f"{ui.base}/dags/meli_retrain/runs/{run['dag_run_id']}", settle=3)
        text = b.wait_for("document.body.innerText.includes('Gate decision') && document.body.innerText")
        assert "Data Docs" in text and "Model card" in text and "Drift report" in text
        b.screenshot(ARTIFACTS / "run_page_tabs.png")
    # the triggered meli_score run ran its task: the worker reached the execution API on this port
    # (an empty lake: the task fails, saying why, in its log)
    score_run = manual_runs(ui, "meli_score")[0]["dag_run_id"]
    path = f"/dags/meli_score/dagRuns/{urllib.request.quote(score_run, safe='')}/taskInstances/score"
    ti = ui.wait_for(
        lambda: (
            (t := ui.api(path))
            and t["try_number"] >= 1
            and t["state"] not in ("queued", "scheduled", "running", None)
            and t
        ),
        timeout=180,
    )
    log = json.dumps(ui.api(f"{path}/logs/1"))
    assert "nothing to score" in log, (ti, log[-2000:])


@pytest.mark.slow
def test_the_reports_need_an_airflow_login_and_echo_no_markup(tmp_path, monkeypatch):
    """One real `airflow api-server` (the plugin mounted as in production, SimpleAuthManager with a
    login): anonymous -> 401/403 on every /meli route; an admin token from POST /auth/token sees the
    pages, with the data's markup escaped; the note takes an editor or the tasks' signature."""
    from pipelines.flows.airflow_ui import NOTE_HEADER, note_signature
    from pipelines.settings import get_settings
    from tests.integration.airflow_env import PY, airflow_env, migrate
    from tests.unit.flows.test_airflow_ui import ESCAPED, READ_ROUTES, RUN, XSS, Q, _decision, _record_decision

    home = tmp_path / "home"
    monkeypatch.setenv("MELI_HOME", str(home))
    settings = get_settings().ensure()
    approval = {"response": "approved", "by": XSS, "at": "2026-11-21T04:00:00", "via": "cli", "reason": XSS}
    _record_decision(settings, _decision(RUN, reason=f"better {XSS}", approval=approval))
    migrate(home)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = airflow_env(home) | {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API__BASE_URL": base,
    }
    log = home / "api-server.log"
    proc = subprocess.Popen(
        [str(Path(PY).parent / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def call(path: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None):
        req = urllib.request.Request(f"{base}{path}", data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.headers, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode()

    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if call("/api/v2/monitor/health")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(1)
        passwords = json.loads((home / "airflow" / "simple_auth_manager_passwords.json.generated").read_text())

        def login(user: str) -> dict:
            body = json.dumps({"username": user, "password": passwords[user]}).encode()
            status, _, text = call("/auth/token", "POST", {"Content-Type": "application/json"}, body)
            assert status == 201, text
            return {"Authorization": f"Bearer {json.loads(text)['access_token']}"}

        admin, viewer = login("admin"), login("viewer")
        assert call("/api/v2/dags")[0] == 401  # Airflow's own API, for comparison
        for path in [*READ_ROUTES, "/meli/cards/5"]:
            assert call(path)[0] in (401, 403), path
            assert call(path, headers={"Authorization": "Bearer forged"})[0] in (401, 403), path
        note = f"/meli/runs/meli_retrain/{Q}/note"
        assert call(note, "POST")[0] in (401, 403)
        # a logged-in user reads the decision page; the reason and the reviewer are text
        status, headers, page = call(f"/meli/runs/meli_retrain/{Q}/decision", headers=viewer)
        assert status == 200 and page.count("&lt;img") >= 3 and "<img" not in page, page
        assert headers["Content-Security-Policy"].startswith("default-src 'none'")
        # a run id from the URL comes back escaped on the 404 page
        status, _, page = call(f"/meli/runs/{urllib.parse.quote(XSS, safe='')}/r1/decision", headers=admin)
        assert status == 404 and ESCAPED in page and "<img" not in page
        # the note: a viewer may not; an admin may (the record is there, the run is not in the DB: 404
        # from the DB lookup, past the check); the gate's signature passes the check the same way
        assert call(note, "POST", headers=viewer)[0] == 403
        status, _, text = call(note, "POST", headers=admin)
        assert status == 404 and "no run" in text, text
        signed = {NOTE_HEADER: note_signature(settings, "meli_retrain", RUN)}
        status, _, text = call(note, "POST", headers=signed)
        assert status == 404 and "no run" in text, text
        assert call(note, "POST", headers={NOTE_HEADER: "1.forged"})[0] == 403
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
