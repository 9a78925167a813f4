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

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task

from pipelines.config import DATE_PATTERN, TrainConfig, by_section, params_for
from pipelines.settings import Settings
from pipelines.training.tune import TuneConfig

_S = Settings()

_PARAMS = by_section(
    {
        "run_date": {
            "default": None,
            "type": ["null", "string"],
            "title": "Run date",
            "description": "The lake snapshot as of this YYYY-MM-DD (it also names the study); empty = the newest "
            "committed partition.",
            "pattern": DATE_PATTERN,
            "section": "Data",
        },
        **params_for(TuneConfig),
        # the base recipe: fixed for the study (not searched)
        **params_for(TrainConfig, names=("epochs", "sentence_encoder", "device")),
    }
)


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
    schedule=_S.tune_schedule or None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["meli", "training", "tuning", "optuna", "mlflow"],
    doc_md=__doc__,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2), "owner": "meli-ml"},
    # generated from the fields' one declaration (pipelines/config.py params_for), grouped by section
    params={name: Param(**kw) for name, kw in _PARAMS.items()},
)
def meli_tune():
    @task(multiple_outputs=True)
    def prepare(params=None) -> dict:
        from pipelines.flows import dag_tasks

        tcfg, base = _configs(params)
        return dag_tasks.tune_prepare(_settings(), tcfg, base, params["run_date"])

    @task
    def worker_slots(params=None) -> list[int]:
        return list(range(int(params["workers"])))

    @task(multiple_outputs=True, queue=_S.train_queue, pool=_S.train_pool, execution_timeout=timedelta(hours=12))
    def worker(slot: int, study: dict, params=None) -> dict:
        """Trials against the shared storage until the study's trial or time budget is spent."""
        from pipelines.flows import dag_tasks

        return dag_tasks.tune_worker(_settings(), study["run_date"], _configs(params)[0], slot)

    @task(multiple_outputs=True)
    def recipe(study: dict, workers: list[dict], params=None) -> dict:
        from pipelines.flows import dag_tasks

        return dag_tasks.tune_recipe(_settings(), study["run_date"], _configs(params)[0])

    study = prepare()
    done = worker.partial(study=study).expand(slot=worker_slots())
    recipe(study, done)


meli_tune()
