"""A person in the promotion: meli_retrain with require_approval waits at its ApprovalOperator; the
answer comes through Airflow's REST API (an api-server on the same metadata DB, as the UI's Required
Actions page sends it); Approve promotes, Reject keeps the champion, and the record names who answered.
Headless Chromium opens the Required Actions page and the model card page on that api-server."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.integration.airflow_env import REPO, airflow_env, dag_test_result, dag_test_start, migrate

pytestmark = pytest.mark.slow
ARTIFACTS = REPO / "tests" / "artifacts"
REVIEWER, PASSWORD = "reviewer", "reviewer-pw"
FAST = {
    "models": ["mlp"],
    "ensemble": False,
    "refit": False,
    "sentence_encoder": "none",
    "epochs": 2,
    "embedding_epochs": 2,
    "patience": 2,
    "require_approval": True,
    "min_behaviour_pass": 0.5,  # a 2-epoch model of 1,200 synthetic rows gets ~80% of the reviewed cases
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    """``airflow api-server`` on the test's Airflow DB, with a named reviewer account."""

    def __init__(self, home: Path):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"admin:admin,{REVIEWER}:admin",
            "AIRFLOW__API__BASE_URL": self.base,
        }
        pw = home / "airflow" / "simple_auth_manager_passwords.json.generated"
        pw.write_text(json.dumps({"admin": "admin-pw", REVIEWER: PASSWORD}))
        self.log = home / "api-server.log"
        airflow = str(Path(sys.executable).parent / "airflow")
        self.proc = subprocess.Popen(
            [airflow, "api-server", "--port", str(self.port)],
            env={**airflow_env(home), **self.env},
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.token = ""

    def start(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"api-server exited:\n{self.log.read_text()[-3000:]}")
            try:
                body = json.dumps({"username": REVIEWER, "password": PASSWORD}).encode()
                req = urllib.request.Request(
                    f"{self.base}/auth/token", body, {"Content-Type": "application/json"}, method="POST"
                )
                self.token = json.loads(urllib.request.urlopen(req, timeout=5).read())["access_token"]
                return
            except OSError:
                time.sleep(1)
        raise AssertionError(f"api-server not up in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def as_user(self, username: str, password: str) -> ApiServer:
        """This server, seen with another account's token."""
        import copy

        body = json.dumps({"username": username, "password": password}).encode()
        req = urllib.request.Request(
            f"{self.base}/auth/token", body, {"Content-Type": "application/json"}, method="POST"
        )
        other = copy.copy(self)
        other.token = json.loads(urllib.request.urlopen(req, timeout=10).read())["access_token"]
        return other

    def api(self, path: str, method: str = "GET", body: dict | None = None) -> dict:
        req = urllib.request.Request(
            f"{self.base}/api/v2{path}",
            json.dumps(body).encode() if body is not None else None,
            {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method=method,
        )
        return json.loads(urllib.request.urlopen(req, timeout=30).read())

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=20)
                return
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("approval") / "meli"
    migrate(home)
    airflow = str(Path(sys.executable).parent / "airflow")
    r = subprocess.run(
        [airflow, "dags", "reserialize"], env=airflow_env(home), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    srv = ApiServer(home)
    srv.home = home
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def _waiting(server: ApiServer, proc, timeout: float = 900) -> dict:
    """The approval request of the run dag.test() is running, once it waits for an answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended without asking:\n{proc.meli_log.read_text()[-4000:]}")
        try:
            details = server.api("/dags/meli_retrain/dagRuns/~/hitlDetails")["hitl_details"]
        except urllib.error.URLError:
            details = []
        waiting = [
            d
            for d in details
            if not d.get("response_received") and d["task_instance"]["state"] in ("awaiting_input", "deferred")
        ]
        if waiting:
            return waiting[0]
        time.sleep(2)
    raise AssertionError(f"no approval request in {timeout} s:\n{proc.meli_log.read_text()[-4000:]}")


def _answer(server: ApiServer, detail: dict, option: str, reason: str) -> dict:
    ti = detail["task_instance"]
    path = f"/dags/meli_retrain/dagRuns/{quote(ti['dag_run_id'], safe='')}/taskInstances/{ti['task_id']}/-1/hitlDetails"
    return server.api(path, "PATCH", {"chosen_options": [option], "params_input": {"reason": reason}})


def _registry(home: Path):
    import mlflow

    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _champion(home: Path) -> str | None:
    try:
        return str(_registry(home).get_model_version_by_alias("meli-title-classifier", "champion").version)
    except Exception:
        return None


def _decision(home: Path, run_id: str) -> dict:
    link = json.loads((home / "registry" / "by_run" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id) + ".json")).read_text())
    return json.loads(Path(link["decision_json"]).read_text())


def test_approval_through_the_rest_api_promotes_and_names_the_responder(server, tmp_path):
    from pipelines.data.synthetic import write_jsonl
    from tests.integration.cdp import Browser, chromium

    src = write_jsonl(tmp_path / "listings.jsonl.gz", 1200, seed=5, dirty=3)
    proc = dag_test_start(server.home, "meli_retrain", {"sources": [str(src)], **FAST}, env=server.env)
    try:
        detail = _waiting(server, proc)
        assert _champion(server.home) is None  # nothing moved while it waits
        assert detail["subject"] == "Promote meli-title-classifier v1 to champion?"
        body = detail["body"]
        for evidence in (
            "test macro-recall",
            "No champion to compare with",
            "**Data:**",
            "**Validation:**",
            "Model card",
        ):
            assert evidence in body, (evidence, body)
        assert detail["options"] == ["Approve", "Reject"] and detail["defaults"] == ["Reject"]
        ti = detail["task_instance"]
        # a person's view: the Required Actions page of the waiting task, and the version's model card
        chromium()
        with Browser(tmp_path / "cdp") as b:
            b.call("Network.enable")
            b.call("Network.setCookie", name="_token", value=server.token, url=server.base)
            b.open(f"{server.base}/dags/meli_retrain/runs/{quote(ti['dag_run_id'], safe='')}/required_actions", 3)
            page = b.wait_for(
                "document.body.innerText.includes('Promote meli-title-classifier v1') && document.body.innerText",
                timeout=90,
            )
            assert "Approve" in page and "Reject" in page
            b.screenshot(ARTIFACTS / "approval_required_actions.png")
            b.open(f"{server.base}/meli/cards/1", 1)
            card = b.wait_for("document.body.innerText.includes('Model card') && document.body.innerText")
            assert "Evaluation on the frozen test rows" in card and "Known limits" in card
            assert b.js("document.querySelectorAll('table').length") >= 3
            b.screenshot(ARTIFACTS / "model_card.png")
        answered = _answer(server, detail, "Approve", "demo batch looks right")
        assert answered["responded_by"]["name"] == REVIEWER
        res = dag_test_result(proc, timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert res["state"].endswith("success"), res
    assert res["tasks"]["approve_promotion"] == "success" and res["tasks"]["announce_champion"] == "success"
    assert _champion(server.home) == "1"
    d = _decision(server.home, res["run_id"])
    assert d["decision"] == "promoted" and d["rule"] == "first_model"
    assert (d["approval"]["response"], d["approval"]["by"], d["approval"]["via"]) == ("approved", REVIEWER, "airflow")
    assert d["approval"]["reason"] == "demo batch looks right"
    tags = _registry(server.home).get_model_version("meli-title-classifier", "1").tags
    assert (tags["meli.review"], tags["meli.reviewed_by"], tags["meli.decision"]) == ("approved", REVIEWER, "promoted")
    card = Path(tags["meli.model_card"]).read_text()
    assert f"**approved** by {REVIEWER}" in card
    # the run's note (set through this api-server's plugin) says what was answered, by whom
    run = server.api(f"/dags/meli_retrain/dagRuns/{quote(res['run_id'], safe='')}")
    assert run["note"].startswith("**PROMOTED** v1") and f"approved by {REVIEWER}" in run["note"], run["note"]


def test_a_rejection_keeps_the_champion_and_names_the_responder(server, tmp_path):
    from pipelines.data.synthetic import write_jsonl

    if _champion(server.home) != "1":
        pytest.skip("needs the champion of the previous test")
    src = write_jsonl(tmp_path / "more.jsonl.gz", 1200, seed=9, dirty=0)
    # the deployment requires approval and names the approvers: the form's require_approval=false
    # plus force_promote still waits, and only the named reviewer may answer (issue 35 item 4)
    conf = {"sources": [str(src)], "run_date": "2026-11-30", "mode": "full", **FAST}
    conf.update(force_promote=True, require_approval=False)
    env = {**server.env, "MELI_REQUIRE_APPROVAL": "1", "MELI_APPROVERS": REVIEWER}
    proc = dag_test_start(server.home, "meli_retrain", conf, env=env)
    try:
        detail = _waiting(server, proc)
        assert "would replace champion **v1**" in detail["body"] and "95% paired-bootstrap CI" in detail["body"]
        assert detail["assigned_users"] == [{"id": REVIEWER, "name": REVIEWER}], detail
        with pytest.raises(urllib.error.HTTPError) as refused:  # admin is not an approver
            _answer(server.as_user("admin", "admin-pw"), detail, "Approve", "mine")
        assert refused.value.code == 403
        assert _champion(server.home) == "1"
        _answer(server, detail, "Reject", "not tonight")
        res = dag_test_result(proc, timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert res["state"].endswith("success"), res
    assert res["tasks"]["approve_promotion"] == "success" and res["tasks"]["announce_champion"] == "skipped"
    assert _champion(server.home) == "1"
    d = _decision(server.home, res["run_id"])
    assert (d["decision"], d["rule"]) == ("rejected", "approval_rejected")
    assert d["approval"]["by"] == REVIEWER and "not tonight" in d["reason"]
    assert (d["force_promote"], d["approval_required_by"]) == (True, "deployment")
    tags = _registry(server.home).get_model_version("meli-title-classifier", "2").tags
    assert (tags["meli.decision"], tags["meli.reviewed_by"]) == ("rejected", REVIEWER)
