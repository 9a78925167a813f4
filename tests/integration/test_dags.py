"""The DAGs for real: dag.test() on a SQLite Airflow DB, real MLflow (SQLite), real GX."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.data.lake import read_partition, resolve
from tests.integration.airflow_env import REPO, airflow_env, dag_test, migrate

pytestmark = pytest.mark.slow
# min_behaviour_pass: a 2-epoch model of 1,200 synthetic rows gets ~80% of the reviewed minimum-function cases
FAST = {"epochs": 2, "embedding_epochs": 2, "patience": 2, "min_behaviour_pass": 0.5}


def _parse_dags(home, **env) -> dict:
    """Parse dags/ with a DagBag in a fresh interpreter: the Airflow env of ``home`` (training
    concurrency at its defaults, whatever the caller's shell says) plus ``env``."""
    code = (
        "import sys, json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "heavy = ('torch', 'mlflow', 'great_expectations', 'gensim', 'pandas')\n"
        f"bag = DagBag({str(REPO / 'dags')!r})\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()}, 'dags': sorted(bag.dags),"
        " 'heavy': [m for m in heavy if m in sys.modules],"
        " 'queues': {t.task_id: t.queue for t in bag.dags['meli_retrain'].tasks},"
        " 'max_active_runs': bag.dags['meli_retrain'].max_active_runs,"
        " 'train_at_once': bag.dags['meli_retrain'].get_task('train').max_active_tis_per_dagrun,"
        " 'run_cap': bag.dags['meli_retrain'].max_active_tasks,"
        " 'params': sorted(bag.dags['meli_retrain'].params.keys()),"
        " 'defaults': {k: v for k, v in bag.dags['meli_retrain'].params.dump().items() if k != 'run_date'}}))\n"
    )
    base = {k: v for k, v in airflow_env(home).items() if k not in ("MELI_TRAIN_CONCURRENCY", "MELI_TORCH_THREADS")}
    r = subprocess.run([sys.executable, "-c", code], env=base | env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_dags_import_cleanly_without_heavy_modules(tmp_path):
    out = _parse_dags(tmp_path / "home")
    assert out["errors"] == {}
    assert out["dags"] == ["meli_retrain", "meli_score", "meli_tune"]
    assert out["heavy"] == [], f"DAG parsing imported heavy modules: {out['heavy']}"
    assert out["queues"]["train"] == "gpu" and out["queues"]["ingest"] == "default"
    assert out["max_active_runs"] == 1
    assert out["train_at_once"] == 2  # MELI_TRAIN_CONCURRENCY's default; threads per task follow it
    assert out["run_cap"] == 2  # airflow.cfg's max_active_tasks_per_dag
    assert {"models", "epochs", "refit", "force_promote", "dry_run", "min_improvement", "sources"} <= set(out["params"])
    # one source of training defaults: the trigger form's are TrainConfig's, as the CLI's (test_cli.py)
    from pipelines.config import TrainConfig

    want = TrainConfig().to_dict()
    form = {k: v for k, v in out["defaults"].items() if k in want}
    assert form == {k: want[k] for k in form} and {"models", "ensemble", "sentence_encoder"} <= set(form)
    assert form["models"] == ["mlp", "cnn", "bilstm"] and form["sentence_encoder"] == "use"


def test_train_concurrency_above_the_run_cap_raises_it(tmp_path):
    """Airflow 3 caps tasks per DAG run (2 in airflow.cfg): 3 trainings at once must still fit."""
    out = _parse_dags(tmp_path / "home", MELI_TRAIN_CONCURRENCY="3")
    assert out["errors"] == {}
    assert out["train_at_once"] == 3 and out["run_cap"] == 3


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("af") / "meli"
    migrate(home)
    # DAGs start paused (airflow.cfg); the asset-scheduled meli_score queues runs only when unpaused,
    # as an operator leaves it in a deployment
    airflow = str(Path(sys.executable).parent / "airflow")
    for cmd in (["dags", "reserialize"], ["dags", "unpause", "meli_score"]):
        r = subprocess.run([airflow, *cmd], env=airflow_env(home), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return home


def _champion(home):
    import mlflow

    client = mlflow.MlflowClient(
        tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        registry_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
    )
    try:
        return str(client.get_model_version_by_alias("meli-title-classifier", "champion").version)
    except Exception:
        return None


_NOTE = r"""
import json, sys
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pipelines.flows.airflow_ui import NOTE_HEADER, app, note_signature
from pipelines.settings import get_settings
from airflow.api_fastapi.app import init_auth_manager
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
from airflow.models.dagrun import DagRun
from airflow.utils.session import create_session
from sqlalchemy import select
run_id = sys.argv[1]
root = FastAPI()
root.mount("/meli", app())
client = TestClient(root)
q = lambda x: __import__("urllib.parse").parse.quote(x, safe="")
# the tab as a logged-in user sees it; the note as the gate task sets it (signed)
token = init_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
tab = client.get(f"/meli/runs/meli_retrain/{q(run_id)}/decision", headers={"Authorization": f"Bearer {token}"})
signed = {NOTE_HEADER: note_signature(get_settings(), "meli_retrain", run_id)}
posted = client.post(f"/meli/runs/meli_retrain/{q(run_id)}/note", headers=signed)
assert posted.status_code == 200, posted.text
with create_session() as s:
    note = s.scalar(select(DagRun).where(DagRun.run_id == run_id)).note
print("@@NOTE@@" + json.dumps({"tab_status": tab.status_code, "tab": tab.text, "note": note}))
"""


def _note_through_plugin(home, run_id: str) -> dict:
    import subprocess

    from tests.integration.airflow_env import PY, airflow_env

    r = subprocess.run([PY, "-c", _NOTE, run_id], env=airflow_env(home), capture_output=True, text=True, timeout=300)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("@@NOTE@@")), None)
    assert line, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads(line[len("@@NOTE@@") :])


def test_retrain_promotes_then_score_writes_parquet(airflow_home, tmp_path, monkeypatch):
    from pipelines.data.synthetic import write_jsonl

    src = write_jsonl(tmp_path / "listings.jsonl.gz", 1200, seed=5, dirty=3)
    res = dag_test(airflow_home, "meli_retrain", {"sources": [str(src)], "models": ["mlp", "cnn"], **FAST})
    assert res["state"].endswith("success"), res
    tasks = res["tasks"]
    for t in (
        "ingest",
        "validate",
        "prepare",
        "embedding",
        "train[0]",
        "train[1]",
        "ensemble",
        "register",
        "evaluate",
        "gate",
        "announce_champion",
    ):
        assert tasks[t] == "success", (t, tasks)
    assert _champion(airflow_home) == "1"
    # every registered version has its model card, stating the metrics it was gated on
    import mlflow

    uri = f"sqlite:///{airflow_home / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    for mv in client.search_model_versions("name='meli-title-classifier'"):
        card = Path(mv.tags["meli.model_card"]).read_text()
        assert f"| challenger | {mv.version} | {float(mv.tags['meli.challenger_macro_recall']):.4f} |" in card
        assert "## Behavioural checks" in card and "invariance:" in card
        assert Path(mv.tags["meli.model_card"]).with_suffix(".html").exists()
    # the registered challenger is named in the run dir, for `python -m pipelines promote --run-date D`
    (named,) = (airflow_home / "work").glob("*/challenger.json")
    assert json.loads(named.read_text())["version"] == "1"
    # the validation report is linked to the run for the UI plugin
    monkeypatch.setenv("MELI_HOME", str(airflow_home))
    from pipelines.data.validate import run_link
    from pipelines.settings import Settings

    link = run_link(Settings(), "meli_retrain", res["run_id"])
    assert link and link["success"] and link["data_docs_pages"]
    # the validate task recorded the outcome on the version it validated; prepare read only that
    from pipelines.data.lake import validation_of

    (listings,) = (airflow_home / "lake" / "listings").glob("ingest_date=*")
    assert validation_of(listings)["validation"] == "passed"
    assert json.loads((named.parent / "dataset" / "dataset.json").read_text())["excluded"] == []

    # The run page: the "Gate decision" tab renders this run's decision, and the plugin's note
    # endpoint (which the gate task calls on a real api-server) puts it into the run's note.
    note = _note_through_plugin(airflow_home, res["run_id"])
    assert note["tab_status"] == 200 and "PROMOTED" in note["tab"] and "first_model" in note["tab"]
    assert note["note"].startswith("**PROMOTED** v1 by rule `first_model`") and "macro-recall" in note["note"]
    log = Path(res["log"]).read_text()
    assert "XCom not found" not in log  # the ensemble reads the mapped results without over-reading
    assert "Skipping registering function" not in log  # GX's import-time INFO flood is quieted

    # The retrain run emitted both assets; meli_score is queued by them and consumes the events.
    score = dag_test(airflow_home, "meli_score", {}, asset_triggered=True)
    assert score["state"].endswith("success"), score
    assert score["queued_assets"] == ["meli_champion", "meli_lake_listings"]
    partition = next(e["partition"] for e in score["consumed_events"] if "partition" in e)
    scored = [resolve(p) / "part-00000.parquet" for p in (airflow_home / "lake" / "scored").glob("run_date=*")]
    assert scored
    table = pq.read_table(scored[0])
    ingested = read_partition(partition)
    assert table.num_rows == ingested.num_rows
    assert set(table.column("source_file").to_pylist()) == {partition}
    assert set(table.column("model_version").to_pylist()) == {"1"}

    # make demo's summary names the winning model type
    from pipelines.flows.cli import run_summary

    kind = json.loads(named.read_text())["model_type"]
    lines = {ln.split(":", 1)[0]: ln for ln in run_summary(Settings(), named.parent.name).splitlines()}
    assert f"v1 ({kind}" in lines["challenger"], lines


def test_broken_batch_fails_validation_and_keeps_champion(airflow_home, tmp_path):
    """A critical GX failure stops the run before training; the champion alias is untouched."""
    before = _champion(airflow_home)
    if before is None:
        pytest.skip("needs the champion from the previous test")
    rows = [
        json.dumps(
            {
                "title": f"producto roto {i}",
                "category": "not a category!",
                "language": "spanish",
                "label_quality": "reliable",
            }
        )
        for i in range(300)
    ]
    src = tmp_path / "broken.jsonl"
    src.write_text("\n".join(rows) + "\n")
    res = dag_test(airflow_home, "meli_retrain", {"sources": [str(src)], "run_date": "2030-01-02", **FAST})
    tasks = res["tasks"]
    assert tasks["ingest"] == "success"
    assert tasks["validate"] == "failed"
    assert res["tries"]["validate"] == 1  # failed data is not retried (the task has retries=2)
    for t, state in tasks.items():
        if t.startswith(("prepare", "embedding", "train", "ensemble", "register", "evaluate", "gate")):
            assert state in ("upstream_failed", "skipped", "None", "none"), (t, state)
    assert _champion(airflow_home) == before
    from pipelines.data.lake import partition_dir, validation_of

    broken = validation_of(partition_dir(airflow_home / "lake" / "listings", "2030-01-02"))
    assert broken["validation"] == "failed" and broken["critical_failures"]  # never trained on, any later night
    log = open(res["log"]).read()
    assert "expect_column_values_to_match_regex" in log
    # the broken partition is not announced to meli_score (the earlier good run's event is)
    import sqlite3

    with sqlite3.connect(airflow_home / "airflow" / "airflow.db") as db:
        extras = db.execute(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = 'meli_lake_listings'"
        ).fetchall()
    run_dates = [json.loads(x)["run_date"] for (x,) in extras]
    assert run_dates and "2030-01-02" not in run_dates


def test_second_night_trains_warm_from_the_champion(airflow_home, tmp_path):
    """The first run trained full (no model existed); a later night on a new partition with
    mode=warm starts every type from the champion's run, on the new rows plus a replay sample."""
    import mlflow

    from pipelines.data.synthetic import write_jsonl

    first = _champion(airflow_home)
    if first is None:
        pytest.skip("needs the champion from the first test")
    uri = f"sqlite:///{airflow_home / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.get_model_version("meli-title-classifier", first).tags["meli.mode"] == "full"

    src = write_jsonl(tmp_path / "night2.jsonl.gz", 400, seed=11)
    conf = {"sources": [str(src)], "run_date": "2029-12-31", "models": ["mlp", "cnn"], "mode": "warm", **FAST}
    res = dag_test(airflow_home, "meli_retrain", {**conf, "replay_rows": 300, "warm_epochs": 2})
    assert res["state"].endswith("success"), res
    (challenger,) = [json.loads(p.read_text()) for p in (airflow_home / "work" / "2029-12-31").glob("challenger.json")]
    tags = client.get_model_version("meli-title-classifier", challenger["version"]).tags
    assert tags["meli.mode"] == "warm"
    assert tags["meli.parent_version"].split(",")[0].split("/")[0] == first  # initialised from the champion
    # each trained type: warm from the first champion's run, on the new partition + 300 replayed rows
    runs = client.search_runs(
        [client.get_run(challenger["run_id"]).info.experiment_id],
        filter_string="tags.`meli.run_date` = '2029-12-31' and tags.`meli.mode` = 'warm'",
    )
    by_type = {r.data.tags["meli.model_type"]: r for r in runs if "meli.model_type" in r.data.tags}
    assert {"mlp", "cnn"} <= set(by_type)
    for kind in ("mlp", "cnn"):
        run = by_type[kind]
        assert run.data.tags["meli.parent_version"].split("/")[0] == first
        assert run.data.metrics["train_rows_replayed"] == 300
        assert 0 < run.data.metrics["train_rows_new"] < run.data.metrics["train_rows"]
    plan = json.loads((airflow_home / "work" / "2029-12-31" / "embedding" / "warm.json").read_text())
    assert plan["mode"] == "warm" and plan["new_partitions"] == ["2029-12-31"]
