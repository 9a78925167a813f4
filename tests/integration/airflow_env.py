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
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

_RUNNER = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
dag_id, conf = sys.argv[1], json.loads(sys.argv[2])
bag = DagBag(sys.argv[3])
assert not bag.import_errors, bag.import_errors
dag = bag.dags[dag_id]
dr = dag.test(run_conf=conf)
states = {}
for ti in dr.get_task_instances():
    key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
    states[key] = str(ti.state.value if hasattr(ti.state, "value") else ti.state)
print("@@RESULT@@" + json.dumps({"state": str(dr.state), "run_id": dr.run_id, "tasks": states}))
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
    )
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MELI_LAKE_URI"):
        env.pop(var, None)
    return env


def migrate(home: Path) -> None:
    (home / "airflow").mkdir(parents=True, exist_ok=True)
    airflow = str(Path(PY).parent / "airflow")
    r = subprocess.run([airflow, "db", "migrate"], env=airflow_env(home), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def dag_test(home: Path, dag_id: str, conf: dict | None = None, timeout: int = 600) -> dict:
    r = subprocess.run(
        [PY, "-c", _RUNNER, dag_id, json.dumps(conf or {}), str(REPO / "dags")],
        env=airflow_env(home), capture_output=True, text=True, timeout=timeout,
    )
    log = home / f"dag_test_{dag_id}.log"
    log.write_text(r.stdout + "\n" + r.stderr)
    for line in r.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            out = json.loads(line[len("@@RESULT@@"):])
            out["log"] = str(log)
            return out
    raise AssertionError(f"dag.test({dag_id}) produced no result (rc={r.returncode}); log: {log}\n"
                         + (r.stdout + r.stderr)[-4000:])
