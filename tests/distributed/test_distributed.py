"""Distributed mode end to end on 127.0.0.1: CeleryExecutor + Postgres + Redis + MLflow server.

Runs ``meli_retrain`` on synthetic data through the REST API of a real Airflow deployment made of
separate processes (api-server, scheduler, dag-processor, a ``default`` and a ``gpu`` Celery worker)
and checks that training ran on the gpu worker, everything else on the default worker, and that the
MLflow server's registry has a champion. The MLflow server runs MLflow's authentication
(basic-auth): the DAG registers and promotes as the service account, and "who may promote" is
checked on the version it registered (no login: 401; a read-only user: 403; the service account
moves the alias). Skips unless Postgres and Redis answer on 127.0.0.1.
Fresh databases, a claimed Redis DB number and every process are cleaned up at the end;
MELI_DIST_KEEP_LOGS=<dir> copies the process and task logs there.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

# tests/distributed/ is no package: pytest puts this folder on sys.path for its modules
from meli_cluster import REPO, Cluster, services_available

pytestmark = pytest.mark.distributed

DAG_ID = "meli_retrain"
MODEL_NAME = "meli-title-classifier"
RUN_TIMEOUT_S = 420
TERMINAL = {"success", "failed"}
OPTIONAL_TASKS = {"approve_promotion"}  # skipped unless the run requires approval (MELI_REQUIRE_APPROVAL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ok, why = services_available()
    if not ok:
        pytest.skip(
            f"distributed test skipped: {why}; it needs Postgres on 127.0.0.1:5432 (user postgres) "
            "and Redis on 127.0.0.1:6379"
        )
    c = Cluster(tmp_path_factory.mktemp("distributed"))
    t0 = time.monotonic()
    try:
        c.start()
        c.wait_ready()
        c.timings = {"startup_s": round(time.monotonic() - t0, 1)}
        yield c
    finally:
        c.stop()
        if os.environ.get("MELI_DIST_KEEP_LOGS"):  # e.g. CI artifacts: process + task logs of the run
            c.keep_logs(Path(os.environ["MELI_DIST_KEEP_LOGS"]))


def _task_instances(cluster: Cluster, run_id: str) -> list[dict]:
    status, body = cluster.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")
    assert status == 200, body
    return body["task_instances"]


def _ti_table(tis: list[dict]) -> str:
    return "\n".join(
        f"  {t['task_id']}[{t['map_index']}] {t['state']} host={t.get('hostname')} "
        f"queue={t.get('queue')} pool={t.get('pool')}"
        for t in tis
    )


def test_retrain_on_celery_with_gpu_queue(cluster: Cluster, monkeypatch):
    # synthetic input on the shared path
    data = cluster.home / "landing" / "distributed-demo.jsonl.gz"
    gen = subprocess.run(
        [sys.executable, "-m", "pipelines", "demo-data", str(data), "--rows", "1500", "--seed", "3"],
        cwd=REPO,
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gen.returncode == 0, gen.stderr

    # trigger for the logical date the scheduler would pick next, so unpausing creates no second run
    status, dag = cluster.api("GET", f"/api/v2/dags/{DAG_ID}")
    assert status == 200, dag
    run_id = f"distributed_test__{cluster.uid}"
    conf = {"sources": [str(data)], "epochs": 2, "embedding_epochs": 2, "models": ["mlp"]}
    status, run = cluster.api(
        "POST",
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        {"dag_run_id": run_id, "logical_date": dag.get("next_dagrun_logical_date"), "conf": conf},
    )
    assert status in (200, 201), run
    status, body = cluster.api("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    assert status == 200 and body["is_paused"] is False, body

    t0 = time.monotonic()
    state = None
    while time.monotonic() - t0 < RUN_TIMEOUT_S:
        cluster.check_alive()
        status, run = cluster.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")
        assert status == 200, run
        state = run["state"]
        if state in TERMINAL:
            break
        time.sleep(5)
    cluster.timings["dag_run_s"] = round(time.monotonic() - t0, 1)
    (cluster.root / "timings.json").write_text(json.dumps(cluster.timings))
    print(f"\ndistributed timings: {cluster.timings} (logs under {cluster.root})")

    tis = _task_instances(cluster, run_id)
    assert state == "success", (
        f"dag run {run_id} ended {state!r} after {cluster.timings['dag_run_s']}s\n"
        f"{_ti_table(tis)}\n{cluster.task_log_tails()}\n{cluster.diagnostics()}"
    )

    # where each task ran: train on the gpu worker (queue + pool gpu), everything else on default;
    # the approval step runs only with require_approval (off here), so it is skipped on no worker
    skipped = {t["task_id"] for t in tis if t["state"] == "skipped"}
    assert skipped <= OPTIONAL_TASKS, _ti_table(tis)
    gpu_host, default_host = cluster.worker_names["gpu"], cluster.worker_names["default"]
    train = [t for t in tis if t["task_id"] == "train"]
    others = [t for t in tis if t["task_id"] != "train" and t["state"] != "skipped"]
    assert train and others, _ti_table(tis)
    for t in train:
        assert (t["state"], t["hostname"], t["queue"], t["pool"]) == ("success", gpu_host, "gpu", "gpu"), _ti_table(tis)
    for t in others:
        assert t["state"] == "success", _ti_table(tis)
        assert (t["hostname"], t["queue"]) == (default_host, "default"), _ti_table(tis)

    # only our run: unpausing did not start a scheduled one next to it
    status, runs = cluster.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")
    assert status == 200 and [r["dag_run_id"] for r in runs["dag_runs"]] == [run_id], runs

    # the champion is set in the tracking server's registry, its artifacts on the shared root
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", cluster.mlflow_service[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", cluster.mlflow_service[1])

    client = MlflowClient(tracking_uri=cluster.mlflow_url, registry_uri=cluster.mlflow_url)
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert champion.version
    assert champion.tags.get("meli.dag_run_id") == run_id, champion.tags
    assert any(cluster.artifacts.rglob("MLmodel")), f"no model artifacts under the shared root {cluster.artifacts}"

    # torch (CUDA) was only ever loaded by the task process: not by the long-lived worker processes
    _assert_no_torch_in_workers(cluster)


def _assert_no_torch_in_workers(cluster: Cluster) -> None:
    import psutil

    for proc in cluster.procs:
        if not proc.name.startswith("worker-"):
            continue
        for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
            try:
                maps = Path(f"/proc/{p.pid}/maps").read_text()
            except OSError:
                continue
            assert "libtorch" not in maps, f"{proc.name} process {p.pid} ({p.cmdline()[:3]}) has torch loaded"


# ---- who may promote: MLflow's authentication on the version the DAG run registered ---------------
ALIAS = "/api/2.0/mlflow/registered-models/alias"


def _champion(cluster: Cluster, auth: tuple[str, str]) -> str | None:
    status, body = cluster.mlflow("GET", f"{ALIAS}?name={MODEL_NAME}&alias=champion", auth=auth)
    if status == 200:
        return body["model_version"]["version"]
    assert status in (400, 404), (status, body)  # no such alias
    return None


def test_only_the_service_account_moves_the_champion(cluster: Cluster, monkeypatch):
    from mlflow import MlflowClient

    service, admin = cluster.mlflow_service, cluster.mlflow_admin
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", service[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", service[1])
    client = MlflowClient(tracking_uri=cluster.mlflow_url, registry_uri=cluster.mlflow_url)
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    if not versions:
        pytest.skip("no registered version: the distributed retrain run (the test above) did not register one")
    before = _champion(cluster, service)
    # a version the champion is not on, to move the alias to: the service account registers one more
    # version of the run's model (it may register versions)
    latest = max(versions, key=lambda v: int(v.version))
    # the source is the logged model's URI (models:/m-...): the server wants its id next to it
    logged_model_id = (
        latest.source.removeprefix("models:/") if latest.source.startswith("models:/m-") else latest.model_id
    )
    target = client.create_model_version(
        MODEL_NAME,
        latest.source,
        run_id=latest.run_id,
        model_id=logged_model_id,
        tags={"meli.test": "who-may-promote"},
    ).version
    assert target != before
    move = {"name": MODEL_NAME, "alias": "champion", "version": target}

    # every Airflow process logs in as the service account; none holds the admin's password: the
    # environment each was started with, and /proc where the process has not overwritten it (the
    # api-server's and workers' process titles reuse that memory)
    for proc in cluster.procs:
        if proc.name == "mlflow":
            continue
        assert proc.env.get("MLFLOW_TRACKING_USERNAME") == service[0], proc.name
        assert proc.env.get("MLFLOW_TRACKING_PASSWORD") == service[1], proc.name
        assert not any(admin[1] in v for v in proc.env.values()), f"{proc.name} got the MLflow admin password"
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        if any(item.startswith(b"PATH=") for item in environ):
            assert f"MLFLOW_TRACKING_USERNAME={service[0]}".encode() in environ, proc.name
            assert not any(admin[1].encode() in item for item in environ), f"{proc.name} sees the admin password"

    # (1) no credentials, or a wrong password: 401, and the alias stays where it was
    status, body = cluster.mlflow("POST", ALIAS, move)
    assert status == 401, (status, body)
    status, body = cluster.mlflow("POST", ALIAS, move, auth=(service[0], service[1] + "x"))
    assert status == 401, (status, body)
    assert _champion(cluster, service) == before

    # (2) another authenticated user (default_permission READ) reads the model but cannot promote
    reader = (f"reader-{cluster.uid}-{secrets.token_hex(3)}", secrets.token_urlsafe(18))
    status, body = cluster.mlflow(
        "POST", "/api/2.0/mlflow/users/create", {"username": reader[0], "password": reader[1]}, auth=admin
    )
    assert status == 200, (status, body)
    status, body = cluster.mlflow("GET", f"/api/2.0/mlflow/registered-models/get?name={MODEL_NAME}", auth=reader)
    assert status == 200 and body["registered_model"]["name"] == MODEL_NAME, (status, body)
    assert _champion(cluster, reader) == before
    status, body = cluster.mlflow("POST", ALIAS, move, auth=reader)
    assert status == 403, (status, body)
    if before is not None:
        status, body = cluster.mlflow("DELETE", ALIAS, {"name": MODEL_NAME, "alias": "champion"}, auth=reader)
        assert status == 403, (status, body)
    assert _champion(cluster, service) == before

    # the service account owns (MANAGE) the experiment it created and the model; the reader reads
    status, exp = cluster.mlflow(
        "GET", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=meli-retrain", auth=reader
    )
    assert status == 200, (status, exp)
    for user, resource_type, resource_id, expected in [
        (service[0], "experiment", exp["experiment"]["experiment_id"], "MANAGE"),
        (service[0], "registered_model", MODEL_NAME, "MANAGE"),
        (reader[0], "experiment", exp["experiment"]["experiment_id"], "READ"),
        (reader[0], "registered_model", MODEL_NAME, "READ"),
    ]:
        status, body = cluster.mlflow(
            "GET",
            f"/api/3.0/mlflow/users/permissions/get?username={user}"
            f"&resource_type={resource_type}&resource_id={resource_id}",
            auth=admin,
        )
        assert status == 200 and body["permission"] == expected, (user, resource_type, status, body)

    # (3) the service account moves the alias, then puts it back as it was
    status, body = cluster.mlflow("POST", ALIAS, move, auth=service)
    assert status == 200, (status, body)
    assert _champion(cluster, reader) == target
    if before is None:
        status, body = cluster.mlflow("DELETE", ALIAS, {"name": MODEL_NAME, "alias": "champion"}, auth=service)
    else:
        status, body = cluster.mlflow("POST", ALIAS, {**move, "version": before}, auth=service)
    assert status == 200, (status, body)
    assert _champion(cluster, reader) == before
