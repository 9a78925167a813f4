"""
### meli_retrain: nightly retraining of the MeLi title classifier

Wires the stages of `pipelines/` (all logic lives there; this file only connects calls):

1. **ingest** new listings files as a new version of `lake/listings/ingest_date=<run date>/` (listings,
   quarantined rows and manifest committed together)
2. **validate** the partition with Great Expectations and record the outcome on its version; a
   critical failure stops the run here. The *Data Docs* tab of the run (and the task log / XCom)
   links the report. A partition that passes is announced as the `meli_lake_listings` asset
   (scheduling `meli_score`).
3. **prepare** the frozen train/validation/test splits (only partition versions that passed
   validation; earlier ones that did not are left out and listed in `dataset.json`) and the parent
   MLflow run
4. **embedding**: decides the training mode (Param `mode`: auto/full/warm, `pipelines/training/warm.py`), trains
   gensim FastText on the training split (warm: continues the champion's on the new rows), then encodes
   every split once as int32 arrays the training tasks memory-map, with each distinct word's pretrained
   multilingual vector (Param `sentence_encoder`; cached across runs, `pipelines/features/sentence.py`). A warm
   run with no new or changed rows (the same files ingested again) stops here: the rest is skipped,
   nothing is trained or registered, and the reason is in the log, the run's note and `summary`
5. **train** one classifier per selected model type (dynamic task mapping; queue `gpu`;
   `MELI_TRAIN_CONCURRENCY` at once): early stopping on validation, then (Param `refit`) the served
   model is retrained on train + validation for the chosen epoch count
6. **ensemble**: the mean of the trained models as one more candidate (Param `ensemble`)
7. **register** the best on validation as a new model version (the challenger)
8. **evaluate** challenger and current champion on the same test rows
9. **gate**: promote (alias `champion`, old one keeps `previous`) or reject, and record why: the
   decision (rule, both macro-recalls, CI, behavioural checks) becomes the run's note, and the run's
   *Gate decision* tab shows its full report. Every version has a *model card* (`/meli/cards/<version>`)
10. **approve_promotion** (`MELI_REQUIRE_APPROVAL`, or Param `require_approval`: the Param can add approval,
   never remove the deployment's; `force_promote` waits too): a promotion the gate decided
   waits here, on the *Required Actions* page, with the evidence; Approve moves the alias, Reject (or no
   answer within `MELI_APPROVAL_TIMEOUT_H` hours) keeps the champion; who, when and why are recorded.
   Only the users in `MELI_APPROVERS` may answer (but not the one who triggered the run, when another
   approver remains). Skipped when no approval is required or the gate rejected
11. **announce_champion** emits the `meli_champion` asset only when a new champion was promoted

Schedule: the cron `MELI_RETRAIN_SCHEDULE` (UTC; the distributed profile sets `0 2 * * *`, nightly at
02:00) **or** when `meli_score`'s monitor finds drift (the `meli_drift` asset, reason in the event's
extra). Empty (the embedded profile): drift and manual runs only, so unpausing the DAG to let a manual
run start schedules no nightly run. The next nightly run is always in the future (no start date: the
latest past 02:00 is never run on unpausing). A drift-triggered run takes the landing files like a nightly one; with
nothing in the landing it skips (the lake has not changed since the last retrain, which already
trained on every partition; the log says so) rather than retrain on the same rows. A run not finished
`MELI_RETRAIN_DEADLINE_H` hours after it was queued alerts (DeadlineAlert: log, `$MELI_HOME/alerts/`,
`MELI_ALERT_WEBHOOK_URL`).

Operators: trigger with the form to change sources, models, hyperparameters and gate rules;
`force_promote` and `dry_run` are there for exceptional cases. Everything lands under `$MELI_HOME`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import (
    Asset,
    AssetOrTimeSchedule,
    AsyncCallback,
    CronTriggerTimetable,
    DeadlineAlert,
    DeadlineReference,
    Param,
    TriggerRule,
    dag,
    task,
)
from airflow.sdk.configuration import conf

from pipelines.config import RunOptions, TrainConfig, by_section, params_for
from pipelines.flows.approval import approval_operator
from pipelines.flows.schedules import retrain_schedule_text
from pipelines.settings import GateRules, Settings

LISTINGS = Asset("meli_lake_listings")
CHAMPION = Asset("meli_champion")
DRIFT = Asset("meli_drift")  # emitted by meli_score's monitor on a breach
TRAIN_CONCURRENCY = Settings().train_concurrency  # mapped train tasks at once (MELI_TRAIN_CONCURRENCY)
# Airflow 3 caps the tasks running at once in one DAG run (core.max_active_tasks_per_dag, 2 in the
# embedded airflow.cfg): raise the cap for this DAG so MELI_TRAIN_CONCURRENCY > 2 is not silently lost.
MAX_ACTIVE_TASKS = max(conf.getint("core", "max_active_tasks_per_dag"), TRAIN_CONCURRENCY)

_S = Settings()
_PARAMS = by_section(
    {
        **params_for(
            RunOptions,
            context={"approval_timeout_h": _S.approval_timeout_h},
            require_approval=_S.require_approval,  # the deployment's MELI_REQUIRE_APPROVAL
        ),
        **params_for(TrainConfig),
        **params_for(GateRules()),  # MELI_GATE_* resolved: the defaults
    }
)
# MELI_RETRAIN_SCHEDULE (a cron, UTC) or drift; empty: drift only (manual runs need no schedule)
SCHEDULE = (
    AssetOrTimeSchedule(timetable=CronTriggerTimetable(_S.retrain_schedule, timezone="UTC"), assets=DRIFT)
    if _S.retrain_schedule
    else DRIFT
)


def _settings():
    from pipelines.settings import get_settings

    return get_settings()


def _train_cfg(params) -> TrainConfig:
    """The run's training parameters: TrainConfig's fields that are Params of this DAG. Airflow merges
    any ``dag_run.conf`` key into ``params``: one the form does not declare (``bucket``, ``seed``...)
    never reaches training (and ``ingest`` refuses such a run: ``check_conf``)."""
    from pipelines.config import train_config_from_params

    return train_config_from_params(params, MELI_RETRAIN.params)


@dag(
    dag_id="meli_retrain",
    schedule=SCHEDULE,
    # Airflow's DAG list shows an asset-scheduled DAG's assets only: the time part in the description and a tag
    description=f"Retrains the title classifier: {retrain_schedule_text(_S.retrain_schedule)}",
    # the nightly run alerts when it is not done in time (the callback runs in the triggerer); 0 = none
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(hours=_S.retrain_deadline_h),
        callback=AsyncCallback(
            "pipelines.core.alerts.retrain_deadline_missed",
            kwargs={"dag_id": "meli_retrain", "hours": _S.retrain_deadline_h},
        ),
        name="meli_retrain_deadline",
    )
    if _S.retrain_deadline_h > 0
    else None,
    # no start_date: with one (and catchup off) Airflow's next run is the latest *past* 02:00, which
    # unpausing runs at once; without, the next run is the next 02:00 to come
    catchup=False,
    max_active_runs=1,
    max_active_tasks=MAX_ACTIVE_TASKS,
    # Airflow's DAG list shows the first 3 tags in name order ("+N more" hides the rest): the schedule
    # tag is one of 3, so the list shows it
    tags=["meli", "training", retrain_schedule_text(_S.retrain_schedule)],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2), "owner": "meli-ml"},
    # every Param generated from its one declaration (pipelines/config.py params_for): the run's options,
    # TrainConfig's form fields, the gate rules a run may override; grouped by section in the form
    params={name: Param(**kw) for name, kw in _PARAMS.items()},
)
def meli_retrain():
    @task(multiple_outputs=True)
    def ingest(params=None, **context) -> dict:
        from pipelines.config import run_date_from_context
        from pipelines.flows import dag_tasks
        from pipelines.flows.outcomes import airflow_outcomes

        events = context.get("triggering_asset_events") or {}
        drift = [e.extra or {} for key, evs in events.items() if getattr(key, "name", key) == DRIFT.name for e in evs]
        with airflow_outcomes():
            dag_tasks.check_params(getattr(context.get("dag_run"), "conf", None), params, MELI_RETRAIN.params)
            return dag_tasks.ingest(_settings(), params, run_date_from_context({**context, "params": params}), drift)

    # the new partition is announced (scheduling meli_score) only once it passed validation: a batch
    # that fails a critical expectation is neither trained on nor scored
    @task(multiple_outputs=True, outlets=[LISTINGS])
    def validate(ingested: dict, dag_run=None, outlet_events=None) -> dict:
        from pipelines.flows import dag_tasks
        from pipelines.flows.outcomes import airflow_outcomes

        with airflow_outcomes():
            summary, outlet_events[LISTINGS].extra = dag_tasks.validate(
                _settings(), ingested, dag_run.dag_id, dag_run.run_id
            )
        return summary

    # only partition versions that passed validation are read; earlier ones never validated are
    # validated here first, and those that failed are left out (listed in dataset.json)
    @task(multiple_outputs=True)
    def prepare(ingested: dict, validation: dict, dag_run=None) -> dict:
        from pipelines.flows import dag_tasks
        from pipelines.flows.outcomes import airflow_outcomes

        with airflow_outcomes():
            return dag_tasks.prepare(_settings(), ingested, validation, dag_run.run_id)

    @task(multiple_outputs=True)
    def embedding(dataset: dict, params=None, dag_run=None) -> dict:
        from pipelines.flows import dag_tasks
        from pipelines.flows.outcomes import airflow_outcomes

        with airflow_outcomes():
            return dag_tasks.embedding(_settings(), dataset, _train_cfg(params), dag_run.dag_id, dag_run.run_id)

    @task
    def model_types(params=None) -> list[str]:
        return _train_cfg(params).models

    @task(
        multiple_outputs=True,
        queue=_S.train_queue,
        pool=_S.train_pool,
        retries=1,
        execution_timeout=timedelta(hours=3),
        max_active_tis_per_dagrun=TRAIN_CONCURRENCY,
    )
    def train(kind: str, dataset: dict, emb: dict, params=None) -> dict:
        """One model type (mapped). Up to MELI_TRAIN_CONCURRENCY run at once, each with its share of
        the CPU cores as torch threads (MELI_TORCH_THREADS overrides)."""
        from pipelines.flows.retrain import step_train

        cfg = _train_cfg(params)
        return step_train(_settings(), dataset, emb, kind, cfg, side_by_side=len(cfg.models)).to_dict()

    @task(execution_timeout=timedelta(hours=1))
    def ensemble(results: list[dict], dataset: dict, params=None) -> list[dict]:
        """The best-on-validation mean of 2+ trained models as one more candidate (when enabled).
        Default queue: it only scores the validation split (members fetched from MLflow)."""
        from pipelines.flows.retrain import step_ensemble

        # by index: iterating the mapped results reads one past the end (an 'XCom not found' ERROR line)
        trained = [results[i] for i in range(len(results))]
        return [r.to_dict() for r in step_ensemble(_settings(), dataset, trained, _train_cfg(params))]

    @task(multiple_outputs=True)
    def register(results: list[dict], dataset: dict, dag_run=None) -> dict:
        from pipelines.flows.retrain import step_register

        ds = dataset
        return step_register(_settings(), list(results), ds["run_date"], dag_run.run_id, ds["parent_run_id"]).to_dict()

    @task(multiple_outputs=True)
    def evaluate(challenger: dict, dataset: dict) -> dict:
        from pipelines.flows.retrain import step_evaluate

        return step_evaluate(_settings(), dataset["run_date"], challenger).to_dict()

    @task(multiple_outputs=True)
    def gate(challenger: dict, dataset: dict, evaluation: dict, params=None, dag_run=None, ti=None) -> dict:
        from pipelines.flows import dag_tasks

        decision, approval_body = dag_tasks.gate(
            _settings(), dataset, challenger, params, dag_run.dag_id, dag_run.run_id
        )
        if approval_body is not None:  # the evidence the approval page shows
            ti.xcom_push(key="approval_body", value=approval_body)
        return decision

    # skipped by the approval task on Reject; runs after it on Approve, or when it was not needed
    # (min one success: a drift-triggered run that skipped at ingest skips this too)
    @task.short_circuit(outlets=[CHAMPION], trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def announce_champion(decision: dict, dag_run=None) -> bool:
        """Emit the champion asset (scheduling meli_score) only when a new champion was promoted."""
        from pipelines.flows import dag_tasks

        return dag_tasks.champion_promoted(_settings(), decision, dag_run.run_id)

    approve_promotion = approval_operator(
        task_id="approve_promotion", gate_task_id="gate", timeout_h=_S.approval_timeout_h, retries=0
    )

    ingested = ingest()
    validation = validate(ingested)
    dataset = prepare(ingested, validation)
    emb = embedding(dataset)
    results = train.partial(dataset=dataset, emb=emb).expand(kind=model_types())
    challenger = register(ensemble(results, dataset), dataset)
    evaluation = evaluate(challenger, dataset)
    decision = gate(challenger, dataset, evaluation)
    decision >> approve_promotion >> announce_champion(decision)


MELI_RETRAIN = meli_retrain()  # its declared Params: the only trigger parameters a run may set
