"""Cheap checks of the distributed profile that need no services (they run in every `make test`).

* The training task's queue and pool follow MELI_TRAIN_QUEUE / MELI_TRAIN_POOL (defaults: queue
  ``gpu``, pool ``default_pool`` so that the embedded LocalExecutor never waits on a missing pool).
* CUDA may only be initialised inside the training task's own process: parsing the DAG files and the
  UI plugin (scheduler, dag-processor, and every task process before its task runs) must not import
  torch (nor MLflow/gensim), so a Celery worker's forked pool processes never hold a CUDA context.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = [REPO / "dags" / f for f in ("meli_retrain.py", "meli_score.py", "plugins/meli_ui.py")]

PROBE = """
import importlib.util, json, sys
from airflow.sdk.definitions._internal.contextmanager import DagContext

for i, path in enumerate(sys.argv[1:]):
    name = f"meli_dag_{i}"
    spec = importlib.util.spec_from_file_location(name, path)
    sys.modules[name] = module = importlib.util.module_from_spec(spec)
    DagContext.current_autoregister_module_name = name  # as the DagBag does: collect @dag-built DAGs
    spec.loader.exec_module(module)
dags = {dag.dag_id: dag for dag, _ in DagContext.autoregistered_dags}
train = dags["meli_retrain"].get_task("train")
others = [t for t in dags["meli_retrain"].tasks if t.task_id != "train"]
print(json.dumps({
    "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "mlflow", "gensim")),
    "train": [train.queue, train.pool],
    "other_queues": sorted({t.queue for t in others}),
}))
"""


def _probe(**env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "MELI_TRAIN_"))}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, DAG_FILES)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={**base, "PYTHONPATH": str(REPO), **env},
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "env, expected",
    [({}, ["gpu", "default_pool"]), ({"MELI_TRAIN_QUEUE": "gpu", "MELI_TRAIN_POOL": "gpu"}, ["gpu", "gpu"])],
    ids=["embedded-default", "distributed"],
)
def test_train_queue_and_pool_follow_the_profile(env, expected):
    probe = _probe(**env)
    assert probe["train"] == expected
    assert probe["other_queues"] == ["default"]
    assert probe["heavy"] == [], f"parsing the DAG files imports heavy modules: {probe['heavy']}"
