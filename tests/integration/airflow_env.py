"""Run Airflow in a subprocess against a throwaway SQLite DB under a test's MELI_HOME.

Airflow reads its configuration once per process, so each test home gets its own processes:
``migrate(home)`` once, then ``dag_test(home, dag_id, conf)`` which runs ``dag.test()`` and returns
the task states (JSON over stdout).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

_RUNNER = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
dag_id, conf, assets = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[4])
bag = DagBag(sys.argv[3])
assert not bag.import_errors, bag.import_errors
dag = bag.dags[dag_id]
extra = {}
if assets:
    # Do what the scheduler does for an asset-scheduled DAG: take the queued asset events
    # (AssetDagRunQueue) and create an ASSET_TRIGGERED run that consumes them.
    import airflow.models.dagrun as drm
    from sqlalchemy import select
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from airflow.utils.types import DagRunType

    original = drm.get_or_create_dagrun

    def asset_triggered(**kw):
        session = kw["session"]
        queued = session.scalars(select(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == dag_id)).all()
        ids = [q.asset_id for q in queued]
        names = dict(session.execute(select(AssetModel.id, AssetModel.name).where(AssetModel.id.in_(ids))).all())
        events = session.scalars(select(AssetEvent).where(AssetEvent.asset_id.in_(ids))).all()
        extra["queued_assets"] = sorted(names.values())
        extra["consumed_events"] = [e.extra for e in events]
        dr = original(**kw)
        dr.run_type = DagRunType.ASSET_TRIGGERED
        dr.consumed_asset_events.extend(events)
        for q in queued:
            session.delete(q)
        session.commit()
        return dr

    drm.get_or_create_dagrun = asset_triggered
dr = dag.test(run_conf=conf)
states, tries = {}, {}
for ti in dr.get_task_instances():
    key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
    states[key] = str(ti.state.value if hasattr(ti.state, "value") else ti.state)
    tries[key] = ti.try_number
result = {"state": str(dr.state), "run_id": dr.run_id, "tasks": states, "tries": tries, **extra}
print("@@RESULT@@" + json.dumps(result))
"""


def airflow_env(home: Path) -> dict:
    env = dict(os.environ)
    env.update(
        MELI_HOME=str(home),
        MELI_REPO=str(REPO),
        AIRFLOW_HOME=str(home / "airflow"),
        AIRFLOW_CONFIG=str(REPO / "airflow.cfg"),
        PYTHONPATH=str(REPO),
        GX_ANALYTICS_ENABLED="false",
        PYTHONWARNINGS="ignore",
        # Airflow 3.3's dag.test() builds its run's DAG from the in-memory serialization, whose deadline
        # alerts are not the stored ids the scheduler uses: update_state crashes on a finished run
        # ('dict' object has no attribute 'hex'). dag.test runs go without meli_retrain's DeadlineAlert.
        MELI_RETRAIN_DEADLINE_H="0",
        # the tests' input files are written under pytest's tmp_path folders (in the system temp dir):
        # the DAGs' sources / input Params may read there (issue 35: only landing and MELI_INPUT_ROOTS)
        MELI_INPUT_ROOTS=str(Path(tempfile.gettempdir()).resolve()),
    )
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MELI_LAKE_URI"):
        env.pop(var, None)
    return env


def migrate(home: Path) -> None:
    (home / "airflow").mkdir(parents=True, exist_ok=True)
    airflow = str(Path(PY).parent / "airflow")
    r = subprocess.run([airflow, "db", "migrate"], env=airflow_env(home), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def dag_test(
    home: Path, dag_id: str, conf: dict | None = None, timeout: int = 600, asset_triggered: bool = False
) -> dict:
    """dag.test() in a subprocess; with asset_triggered, the run consumes the queued asset events."""
    return dag_test_result(dag_test_start(home, dag_id, conf, asset_triggered), timeout)


def dag_test_start(
    home: Path, dag_id: str, conf: dict | None = None, asset_triggered: bool = False, env: dict | None = None
) -> subprocess.Popen:
    """dag.test() started in a subprocess (for a run that waits for something the test then does);
    its output goes to a log file (a pipe nobody reads would fill and block it)."""
    log = home / f"dag_test_{dag_id}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [PY, "-c", _RUNNER, dag_id, json.dumps(conf or {}), str(REPO / "dags"), json.dumps(asset_triggered)],
            env={**airflow_env(home), **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    proc.meli_log = log
    proc.meli_dag_id = dag_id
    return proc


def dag_test_result(proc: subprocess.Popen, timeout: int = 600) -> dict:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log = proc.meli_log
    text = log.read_text()
    for line in text.splitlines():
        if line.startswith("@@RESULT@@"):
            out = json.loads(line[len("@@RESULT@@") :])
            out["log"] = str(log)
            return out
    raise AssertionError(
        f"dag.test({proc.meli_dag_id}) produced no result (rc={proc.returncode}); log: {log}\n" + text[-4000:]
    )
