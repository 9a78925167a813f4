"""Tuning for real (pipelines/training/tune.py): a 3-trial Optuna study on small synthetic data with pruning, its
process killed (SIGKILL, ``MELI_FAULT``) mid-study and resumed, then ``train --recipe tuned`` logs the
tuned parameters. Real processes, real MLflow and Optuna storage (SQLite under MELI_HOME)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAY = "2026-01-01"
SMALL = ["--models", "mlp", "--sentence-encoder", "none", "--embedding-epochs", "2", "--embedding-dim", "16"]
SMALL += ["--bucket", "5000"]
STUDY = ["--trials", "3", "--max-epochs", "3", "--startup-trials", "1", "--warmup-epochs", "0"]
# a trial that cannot learn in one epoch (learning rates 1000x below the range): the median pruner
# stops it after epoch 1, below the default trial's epoch 1
BAD = {"lr": 3e-6, "embedding_lr": 1e-5, "dropout": 0.5, "weight_decay": 1e-3, "label_smoothing": 0.2}
BAD |= {"batch_size": 256, "wide_dim": 0, "hidden": 256}

PREPARE = """
import json, sys
from pipelines.config import TrainConfig
from pipelines.settings import get_settings
from pipelines.training.tune import TuneConfig, open_study, prepare
s = get_settings()
base = TrainConfig(models=["mlp"], sentence_encoder="none", embedding_epochs=2, embedding_dim=16, bucket=5000)
t = TuneConfig(trials=3, max_epochs=3, startup_trials=1, warmup_epochs=0)
info = prepare(s, sys.argv[1], t, base)
open_study(s, info["study"], "mlp", t, info["epochs"]).enqueue_trial(json.loads(sys.argv[2]), user_attrs={"bad": True})
print(json.dumps(info))
"""


def _env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MELI_", "MLFLOW_TRACKING", "MLFLOW_REGISTRY"))}
    env.update(MELI_HOME=str(home), PYTHONPATH=str(REPO), MELI_TORCH_THREADS="1", PYTHONWARNINGS="ignore")
    return env | {k: str(v) for k, v in extra.items()}


def _run(home: Path, *args, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], env=_env(home, **env), capture_output=True, text=True, timeout=timeout
    )


def _trials(home: Path, study: str) -> list:
    import optuna

    storage = f"sqlite:///{home / 'tune' / 'optuna.db'}"
    return optuna.load_study(study_name=f"{study}.mlp", storage=storage).get_trials(deepcopy=False)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("tune-home")
    r = _run(home, "-m", "pipelines", "demo-data", str(home / "in.jsonl"), "--rows", "900", "--seed", "5")
    assert r.returncode == 0, r.stderr
    r = _run(home, "-m", "pipelines", "ingest", str(home / "in.jsonl"), "--run-date", DAY)
    assert r.returncode == 0, r.stderr
    r = _run(home, "-c", PREPARE, DAY, json.dumps(BAD))
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])

    # the study's process dies (SIGKILL) right after trial 1 is stored
    killed = _run(home, "-m", "pipelines", "tune", *SMALL, *STUDY, MELI_FAULT="tune.after_trial_1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    before = {t.number: (t.state.name, t.datetime_complete) for t in _trials(home, info["study"])}
    assert not list((home / "tune" / "recipes").glob("*.json"))

    resumed = _run(home, "-m", "pipelines", "tune", *SMALL, *STUDY)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = json.loads(resumed.stdout)
    return {"home": home, "info": info, "before": before, "after": _trials(home, info["study"]), "out": out}


def test_study_prunes_resumes_after_a_kill_and_makes_a_recipe(tuned):
    before, after = tuned["before"], tuned["after"]
    # killed after trial 1: the default trial complete, the bad one pruned after its first epoch
    assert {n: s for n, (s, _) in before.items()} == {0: "COMPLETE", 1: "PRUNED"}
    # resumed: the two finished trials are kept as they were (not rerun), one more completes the budget
    assert [t.number for t in after] == [0, 1, 2]
    assert {t.number: (t.state.name, t.datetime_complete) for t in after if t.number < 2} == before
    assert after[2].state.name in ("COMPLETE", "PRUNED")
    assert after[0].user_attrs["recipe"] == "default" and after[1].user_attrs["bad"] is True
    assert max(after[1].intermediate_values) == 1  # pruned after epoch 1
    out = tuned["out"]
    assert out["mlp"]["trials"]["pruned"] >= 1 and out["mlp"]["default_trial"] == 0
    recipe = json.loads((tuned["home"] / "tune" / "recipes" / f"{out['recipe']}.json").read_text())
    best = max((t for t in after if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert recipe["params"]["mlp"] == best.params and recipe["best_trial"]["mlp"] == best.number
    assert recipe["default_val_macro_recall"]["mlp"] == after[0].value
    assert recipe["data_version"] == tuned["info"]["data_version"]

    # every trial an MLflow child run of the study's run in experiment meli-tune, pruned ones tagged so
    import mlflow

    uri = f"sqlite:///{tuned['home'] / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)  # no global: it would leak to other tests
    exp = client.get_experiment_by_name("meli-tune")
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{tuned['info']['mlflow_run_id']}'")
    states = sorted(r.data.tags.get("meli.trial_state", "?") for r in runs)
    assert len(runs) >= 3 and "PRUNED" in states and "COMPLETE" in states, states
    assert all(r.data.metrics.get("val_macro_recall") is not None for r in runs)
    study_run = client.get_run(tuned["info"]["mlflow_run_id"])
    assert study_run.data.tags["meli.recipe"] == recipe["id"]
    assert f"recipes/{recipe['id']}.json" in [a.path for a in client.list_artifacts(study_run.info.run_id, "recipes")]


def test_train_with_the_tuned_recipe_logs_its_parameters(tuned):
    home, rid = tuned["home"], tuned["out"]["recipe"]
    recipe = json.loads((home / "tune" / "recipes" / f"{rid}.json").read_text())
    r = _run(home, "-m", "pipelines", "train", "--run-date", DAY, *SMALL, "--epochs", "2", "--recipe", "tuned")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    import mlflow

    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlp = client.get_run(next(t["run_id"] for t in out["trained"] if t["model_type"] == "mlp"))
    for k, v in recipe["params"]["mlp"].items():
        assert mlp.data.params[k] == str(v), k
    assert mlp.data.params["recipe"] == rid and mlp.data.params["epochs"] == "2"  # a set flag still wins
    parent = client.get_run(mlp.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["meli.recipe"] == rid and parent.data.params["recipe"] == rid
    version = client.get_model_version("meli-title-classifier", out["challenger"]["version"])
    assert version.tags["meli.recipe"] == rid


def test_meli_tune_dag_runs_a_two_trial_study(tmp_path):
    """dag.test() of meli_tune: prepare, two mapped workers sharing one study, then the recipe."""
    from tests.integration.airflow_env import dag_test, migrate

    home = tmp_path / "meli"
    migrate(home)
    for args in (["demo-data", str(home / "in.jsonl"), "--rows", "600", "--seed", "6"],
                 ["ingest", str(home / "in.jsonl"), "--run-date", DAY]):  # fmt: skip
        r = _run(home, "-m", "pipelines", *args)
        assert r.returncode == 0, r.stderr[-2000:]
    conf = {"trials": 2, "workers": 2, "max_epochs": 2, "epochs": 2, "sentence_encoder": "none", "models": ["mlp"]}
    out = dag_test(home, "meli_tune", conf, timeout=400)
    assert out["state"] == "success", out
    assert {k: v for k, v in out["tasks"].items()} == {
        "prepare": "success", "worker_slots": "success", "worker[0]": "success", "worker[1]": "success",
        "recipe": "success",
    }  # fmt: skip
    trials = _trials(home, f"meli-tune-{DAY}")
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 2 and trials[0].user_attrs["recipe"]
    (recipe,) = (home / "tune" / "recipes").glob("*.json")
    assert json.loads(recipe.read_text())["study"] == f"meli-tune-{DAY}"
