"""
### meli_tune: hyperparameter tuning of the training recipe (Optuna)

Wires `pipelines/training/tune.py` (all logic lives there):

1. **prepare** the study once: the lake's snapshot as of the run date split into train/validation/test
   under `$MELI_HOME/tune/<study>/`, FastText, the encoded splits; the study's MLflow run (experiment
   `meli-tune`); trial 0 of each model type's Optuna study = TrainConfig's defaults (the default recipe).
   A rerun of the same study (same name) resumes it: completed and pruned trials stay.
2. **worker** x `workers` (mapped; queue `gpu` like meli_retrain's train task, `MELI_TRAIN_QUEUE`): each runs
   trials (TPE sampler, median or Hyperband pruning on each epoch's validation macro-recall) against the
   same Optuna storage (`MELI_TUNE_STORAGE`: SQLite under `$MELI_HOME/tune/`, or Postgres for workers on
   several hosts) until the study holds `trials` finished trials or `budget_s` has passed. Every trial is
   an MLflow child run of the study's run. The test split is never read.
3. **recipe**: the best trial of each model type becomes a versioned recipe
   `$MELI_HOME/tune/recipes/<id>.json` (logged to the study's MLflow run). Trigger meli_retrain with
   `recipe=tuned` (the latest) or the id to train with it; its model is a challenger like any other and
   replaces the champion only through the gate.

Manual by default; `MELI_TUNE_SCHEDULE` (e.g. `@weekly`) schedules it.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task

from pipelines.config import DEVICES, MODEL_TYPES, NAME_RE, SENTENCE_ENCODERS, TRAIN_BOUNDS, TrainConfig
from pipelines.training.tune import PRUNERS, TUNE_BOUNDS, TuneConfig

TRAIN_QUEUE = os.environ.get("MELI_TRAIN_QUEUE", "gpu")
TRAIN_POOL = os.environ.get("MELI_TRAIN_POOL", "default_pool")
SCHEDULE = os.environ.get("MELI_TUNE_SCHEDULE") or None
_T = TrainConfig()
_U = TuneConfig()
_UB = TUNE_BOUNDS  # TuneConfig's bounds (pipelines/training/tune.py): the form's and the CLI's


def _settings():
    from pipelines.settings import get_settings

    return get_settings()


def _configs(params) -> tuple[TuneConfig, TrainConfig]:
    tcfg = TuneConfig(
        models=list(params["models"]),
        trials=int(params["trials"]),
        budget_s=float(params["budget_s"]),
        pruner=params["pruner"],
        startup_trials=int(params["startup_trials"]),
        warmup_epochs=int(params["warmup_epochs"]),
        max_epochs=int(params["max_epochs"]),
        study=params["study"] or "",
        workers=int(params["workers"]),
    )
    base = TrainConfig.from_dict(
        {
            "models": list(params["models"]),
            "sentence_encoder": params["sentence_encoder"],
            "epochs": params["epochs"],
            "device": params["device"],
        }
    )
    return tcfg, base


@dag(
    dag_id="meli_tune",
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["meli", "training", "tuning", "optuna", "mlflow"],
    doc_md=__doc__,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2), "owner": "meli-ml"},
    params={
        "run_date": Param(
            None,
            type=["null", "string"],
            title="Run date",
            description="The lake snapshot as of this YYYY-MM-DD (it also names the study); empty = the newest "
            "committed partition.",
            pattern="^$|^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
        ),
        "study": Param(
            None,
            type=["null", "string"],
            title="Study name",
            pattern=f"^$|{NAME_RE.pattern}",
            description="Empty = meli-tune-<run date>. The same name resumes that study (its finished trials count).",
        ),
        "models": Param(
            list(_U.models),
            type="array",
            items={"type": "string", "enum": list(MODEL_TYPES)},
            title="Model types",
            description="One Optuna study per type; the recipe holds each type's best parameters.",
        ),
        "trials": Param(
            _U.trials,
            type="integer",
            **_UB["trials"].schema(),
            title="Trial budget (per model type)",
            description="Finished (complete or pruned) trials per type, over every worker and rerun.",
        ),
        "budget_s": Param(
            _U.budget_s,
            type="number",
            **_UB["budget_s"].schema(),
            title="Wall-clock budget (seconds)",
            description="Each worker stops starting trials after this long (every model type together).",
        ),
        "workers": Param(
            1,
            type="integer",
            **_UB["workers"].schema(),
            title="Workers",
            description="Mapped worker tasks (queue MELI_TRAIN_QUEUE) running trials of the same study at once.",
        ),
        "pruner": Param(
            _U.pruner,
            enum=list(PRUNERS),
            title="Pruner",
            description="median: stop a trial whose epoch's validation macro-recall is below the median of earlier "
            "trials at that epoch; hyperband: successive halving over epochs; none.",
        ),
        "startup_trials": Param(
            _U.startup_trials,
            type="integer",
            **_UB["startup_trials"].schema(),
            title="Median pruner: trials never pruned first",
        ),
        "warmup_epochs": Param(
            _U.warmup_epochs,
            type="integer",
            **_UB["warmup_epochs"].schema(),
            title="Median pruner: epochs never pruned first",
        ),
        "max_epochs": Param(
            _U.max_epochs,
            type="integer",
            **_UB["max_epochs"].schema(),
            title="Epochs per trial",
            description="Early stopping within them; 0 = the Epochs Param (TrainConfig's).",
        ),
        "epochs": Param(_T.epochs, type="integer", **TRAIN_BOUNDS["epochs"].schema(), title="Epochs (base recipe)"),
        "sentence_encoder": Param(
            _T.sentence_encoder,
            enum=list(SENTENCE_ENCODERS),
            title="Pretrained word vectors",
            description="As meli_retrain's: fixed for the study (not searched).",
        ),
        "device": Param(_T.device, enum=list(DEVICES), title="Device", description="auto = CUDA when available"),
    },
)
def meli_tune():
    @task(multiple_outputs=True)
    def prepare(params=None) -> dict:
        from pipelines.training.tune import latest_run_date, prepare

        settings = _settings()
        tcfg, base = _configs(params)
        run_date = params["run_date"] or latest_run_date(settings)
        info = prepare(settings, run_date, tcfg, base)
        return {"run_date": run_date, "study": info["study"], "mlflow_run_id": info["mlflow_run_id"]}

    @task
    def worker_slots(params=None) -> list[int]:
        return list(range(int(params["workers"])))

    @task(multiple_outputs=True, queue=TRAIN_QUEUE, pool=TRAIN_POOL, execution_timeout=timedelta(hours=12))
    def worker(slot: int, study: dict, params=None) -> dict:
        """Trials against the shared storage until the study's trial or time budget is spent."""
        from pipelines.training.tune import run_worker

        settings = _settings()
        tcfg, _ = _configs(params)
        ran = run_worker(settings, study["run_date"], tcfg, threads=settings.train_threads(tcfg.workers), worker=slot)
        return {"slot": slot, "trials": ran}

    @task(multiple_outputs=True)
    def recipe(study: dict, workers: list[dict], params=None) -> dict:
        from pipelines.training.tune import make_recipe, summary

        settings = _settings()
        tcfg, _ = _configs(params)
        r = make_recipe(settings, study["run_date"], tcfg)
        s = summary(settings, study["run_date"], tcfg)
        best, default = r["best_val_macro_recall"], r["default_val_macro_recall"]
        print(f"recipe {r['id']}: {r['params']} (val macro-recall best {best}, default {default})")
        print(f"train with it: trigger meli_retrain with recipe=tuned or recipe={r['id']}")
        return {"recipe": r["id"], "summary": s}

    study = prepare()
    done = worker.partial(study=study).expand(slot=worker_slots())
    recipe(study, done)


meli_tune()
