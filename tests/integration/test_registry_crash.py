"""The registry survives a crash at any step (issue 31): real ``python -m pipelines`` processes killed
(SIGKILL) right after registering, between an alias move and its record, while a model's MLflow run
is open; and a tracking store deleted under a home that holds what it recorded. Each test states what
the next command sees."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_faults import LOOKUP, _aliases, _env, cli, error_line, registry_home

__all__ = ["registry_home"]  # the fixture, shared with test_faults.py

TINY = [
    *("--models", "mlp", "--epochs", "2", "--embedding-epochs", "2", "--embedding-dim", "16"),
    *("--no-refit", "--no-ensemble", "--sentence-encoder", "none"),
]
NO_BEHAVIOUR = {"MELI_GATE_MIN_BEHAVIOUR_PASS": 0}  # two epochs of an MLP: the behaviour rule would reject
D1, D2 = "2026-03-01", "2026-03-02"


def _history(home: Path) -> list[dict]:
    r = cli(home, "registry", "history", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _registry(home: Path) -> dict:
    r = cli(home, "registry", "status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _start_logged(home: Path, args: list[str], log: Path, **env) -> subprocess.Popen:
    """A command in the background, its output to ``log`` (not a pipe: a full pipe would stall it)."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipelines", *args], env=_env(home, **env), stdout=out, stderr=subprocess.STDOUT
        )


# ------------------------------------------------------------------------------------------
# item 1: register and gate as recoverable steps
# ------------------------------------------------------------------------------------------
def test_retrain_killed_after_register_resumes_its_version(tmp_path, synthetic_jsonl):
    home = tmp_path / "home"
    a, b = synthetic_jsonl(600, seed=1, name="a.jsonl.gz"), synthetic_jsonl(600, seed=2, name="b.jsonl.gz")
    r = cli(home, "retrain", str(a), "--run-date", D1, *TINY, "--force-promote", **NO_BEHAVIOUR)
    assert r.returncode == 0, r.stderr[-3000:]
    args = ["retrain", str(b), "--run-date", D2, *TINY, "--force-promote"]
    # killed right after "registered ... version 2": at the fault point, or (where there is none) as
    # soon as the line is logged
    p = _start_logged(home, args, tmp_path / "killed.log", MELI_FAULT="register.registered", **NO_BEHAVIOUR)
    while p.poll() is None:
        if "registered meli-title-classifier version 2" in (tmp_path / "killed.log").read_text():
            p.send_signal(signal.SIGKILL)
        time.sleep(0.05)
    assert p.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    st = _registry(home)
    assert [(v["version"], v["decision"]) for v in st["versions"]] == [("1", "promoted"), ("2", "pending")]

    r = cli(home, *args, **NO_BEHAVIOUR)  # the same command again (it ingests the same file again)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming it" in r.stderr
    out = json.loads(r.stdout)
    assert (out["challenger_version"], out["decision"]) == ("2", "promoted")
    st = _registry(home)
    assert [(v["version"], v["decision"]) for v in st["versions"]] == [("1", "promoted"), ("2", "promoted")]
    assert st["champion"]["version"] == "2" and st["previous"]["version"] == "1"
    assert [(h["decision"], h["challenger_version"]) for h in _history(home)] == [("promoted", "1"), ("promoted", "2")]

    # new data for the same date is a new training: registered as a new version
    c = synthetic_jsonl(600, seed=3, name="c.jsonl.gz")
    r = cli(home, "retrain", str(c), "--run-date", D2, *TINY, "--dry-run", **NO_BEHAVIOUR)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["challenger_version"] == "3"


# ------------------------------------------------------------------------------------------
# item 2: an alias move and its audit record cannot be separated by a crash
# ------------------------------------------------------------------------------------------
KILL_IN_RECORD = (  # the gate killed as it starts to record its decision (no fault point needed)
    "import os, signal, sys\n"
    "import pipelines.registry.gate as r\n"
    "r.record_decision = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
    "from pipelines.flows.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.parametrize("kill", ["fault point gate.champion_moved", "killed entering record_decision"])
def test_a_promotion_killed_before_its_record_is_in_the_history(registry_home, kill):
    home, settings, dates = registry_home
    args = ["promote", "--run-date", dates["2"]]
    if kill.startswith("fault"):
        r = cli(home, *args, MELI_FAULT="gate.champion_moved", **LOOKUP)
    else:
        r = subprocess.run(
            [sys.executable, "-c", KILL_IN_RECORD, *args], env=_env(home, **LOOKUP), capture_output=True, text=True
        )
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert _aliases(settings) == ("2", "1")  # the champion moved; nothing recorded it yet

    # the next start of any registry command (here: history) completes the record first
    rows = _history(home)
    assert [(h["decision"], h["challenger_version"], h["champion_version"]) for h in rows] == [
        ("promoted", "1", ""),
        ("promoted", "2", "1"),
    ]
    v2 = _registry(home)["versions"][1]
    assert {k: v2[k] for k in ("version", "decision", "run_date")} == {
        "version": "2",
        "decision": "promoted",
        "run_date": dates["2"],
    }
    decision = json.loads((settings.run_dir(dates["2"]) / "evaluation" / "decision.json").read_text())
    assert decision["decision"] == "promoted"
    # the gate run again completes nothing twice
    r = cli(home, *args, **LOOKUP)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(_history(home)) == 2


def test_a_rollback_killed_after_the_champion_moved_is_completed(registry_home):
    home, settings, dates = registry_home
    assert cli(home, "promote", "--run-date", dates["2"], **LOOKUP).returncode == 0
    r = cli(home, "registry", "rollback", "--reason", "bad night", MELI_FAULT="rollback.champion_moved")
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    rows = _history(home)
    assert (rows[-1]["decision"], rows[-1]["challenger_version"], rows[-1]["reason"]) == ("rollback", "1", "bad night")
    assert _aliases(settings) == ("1", "2")  # 'previous' moved too, as the rollback would have


# ------------------------------------------------------------------------------------------
# item 3: a missing or foreign store is an error, not a fresh start
# ------------------------------------------------------------------------------------------
def test_a_deleted_store_is_an_error_and_never_recreated(registry_home, tmp_path):
    home, settings, dates = registry_home
    db = home / "mlflow" / "mlflow.db"
    db.unlink()
    batch = tmp_path / "batch.jsonl"
    batch.write_text('{"title": "Producto uno"}\n')
    for args in (
        ["registry", "status"],
        ["registry", "history"],
        ["registry", "rollback"],
        ["registry", "card", "1"],
        ["registry", "approve", "2"],
        ["promote", "--run-date", dates["2"]],
        ["score", str(batch), "--output", str(tmp_path / "o.parquet")],
        ["summary", "--run-date", dates["1"]],
    ):
        line = error_line(cli(home, *args))
        assert line.startswith(f"error: MLflow store sqlite:///{db} is missing") and "MELI_CREATE_STORE" in line
        assert not db.exists(), args

    # creating one is explicit; a store that lacks the home's model is still refused without the flag
    assert cli(home, "registry", "status", MELI_CREATE_STORE=1).returncode == 0 and db.exists()
    line = error_line(cli(home, "registry", "status"))
    assert f"MLflow store sqlite:///{db} has no registered model" in line, line


# ------------------------------------------------------------------------------------------
# item "killed runs": an MLflow run left RUNNING by a killed process is FAILED at the next start
# ------------------------------------------------------------------------------------------
def _running_model_runs(db: Path) -> list[str]:
    if not db.exists():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return [r[0] for r in con.execute("SELECT run_uuid FROM runs WHERE name LIKE 'mlp-%' AND status='RUNNING'")]
        finally:
            con.close()
    except sqlite3.Error:  # schema not there yet, or locked for a moment
        return []


def test_a_killed_training_run_is_marked_failed_at_the_next_start(tmp_path, synthetic_jsonl):
    home = tmp_path / "home"
    a = synthetic_jsonl(600, seed=1, name="a.jsonl.gz")
    db = home / "mlflow" / "mlflow.db"
    args = ["retrain", str(a), "--run-date", D1, *TINY]
    # killed while its model's run is open: at the fault point, or (where there is none) as soon as
    # the run shows RUNNING in the store
    p = _start_logged(home, args, tmp_path / "killed.log", MELI_FAULT="train.model_run", **NO_BEHAVIOUR)
    killed = []
    while p.poll() is None and not killed:
        killed = _running_model_runs(db)
        if killed:
            p.send_signal(signal.SIGKILL)
        time.sleep(0.05)
    p.wait(timeout=300)
    assert p.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    (run_id,) = _running_model_runs(db)

    r = cli(home, *args, **NO_BEHAVIOUR)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"MLflow run {run_id} (mlp-{D1}) was left RUNNING" in r.stderr
    con = sqlite3.connect(db)
    status = dict(con.execute("SELECT run_uuid, status FROM runs WHERE name LIKE 'mlp-%'").fetchall())
    con.close()
    assert status.pop(run_id) == "FAILED" and list(status.values()) == ["FINISHED"]


# ------------------------------------------------------------------------------------------
# audit D2: a retraining killed in register or gate leaves its parent run FAILED, not FINISHED
# ------------------------------------------------------------------------------------------
def _parent_runs(db: Path) -> list[tuple[str, str, str]]:
    """(run id, name, status) of the retraining parent runs, oldest first."""
    con = sqlite3.connect(db)
    try:
        return con.execute(
            "SELECT run_uuid, name, status FROM runs WHERE name LIKE 'retrain %' ORDER BY start_time"
        ).fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("point", ["register.registered", "gate.champion_moved"])
def test_a_retraining_killed_in_register_or_gate_leaves_its_parent_run_failed(tmp_path, synthetic_jsonl, point):
    """The parent run reads RUNNING until the gate's end (each step holds its lease): killed in
    register or gate, it is marked FAILED at the next start, never FINISHED; the rerun that resumes
    the registered version is named for what it does, not 'pending'."""
    home = tmp_path / "home"
    db = home / "mlflow" / "mlflow.db"
    a, b = synthetic_jsonl(600, seed=1, name="a.jsonl.gz"), synthetic_jsonl(600, seed=2, name="b.jsonl.gz")
    r = cli(home, "retrain", str(a), "--run-date", D1, *TINY, "--force-promote", **NO_BEHAVIOUR)
    assert r.returncode == 0, r.stderr[-3000:]
    args = ["retrain", str(b), "--run-date", D2, *TINY, "--force-promote"]
    r = cli(home, *args, MELI_FAULT=point, **NO_BEHAVIOUR)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    first, killed = _parent_runs(db)
    assert first[2] == "FINISHED" and killed[2] == "RUNNING"  # not FINISHED: its steps did not all end

    r = cli(home, *args, **NO_BEHAVIOUR)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"MLflow run {killed[0]} ({killed[1]}) was left RUNNING" in r.stderr
    if point == "register.registered":  # v2 pending: resumed (evaluate, gate), not trained again
        assert json.loads(r.stdout)["challenger_version"] == "2"
        renamed = f"retrain {D2} full resumed "
    else:  # v2 already serves: nothing new to train on
        assert r.stdout.startswith("skipped: nothing new to train on"), r.stdout
        renamed = f"retrain {D2} skip "
    # the history holds v2's promotion (a killed gate's record is completed first), and completing it
    # on the killed run's parent does not make that run FINISHED
    assert [(h["decision"], h["challenger_version"]) for h in _history(home)] == [("promoted", "1"), ("promoted", "2")]
    runs = _parent_runs(db)
    assert [(run_id, status) for run_id, _, status in runs[:2]] == [(first[0], "FINISHED"), (killed[0], "FAILED")]
    (_, name, status), *rest = runs[2:]
    assert not rest and status == "FINISHED"
    assert name.startswith(renamed) and "pending" not in name, name
