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

import os
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

from pipelines.config import (
    BALANCE_MODES,
    DEVICES,
    INPUT_FORMATS,
    MODEL_TYPES,
    NAME_RE,
    SENTENCE_ENCODERS,
    TRAIN_BOUNDS,
    TRAIN_MODES,
    TrainConfig,
)
from pipelines.flows.approval import approval_operator
from pipelines.flows.schedules import retrain_schedule_text
from pipelines.settings import RULE_OVERRIDES, GateRules, Settings

LISTINGS = Asset("meli_lake_listings")
CHAMPION = Asset("meli_champion")
DRIFT = Asset("meli_drift")  # emitted by meli_score's monitor on a breach
TRAIN_QUEUE = os.environ.get("MELI_TRAIN_QUEUE", "gpu")
TRAIN_POOL = os.environ.get("MELI_TRAIN_POOL", "default_pool")
TRAIN_CONCURRENCY = Settings().train_concurrency  # mapped train tasks at once (MELI_TRAIN_CONCURRENCY)
# Airflow 3 caps the tasks running at once in one DAG run (core.max_active_tasks_per_dag, 2 in the
# embedded airflow.cfg): raise the cap for this DAG so MELI_TRAIN_CONCURRENCY > 2 is not silently lost.
MAX_ACTIVE_TASKS = max(conf.getint("core", "max_active_tasks_per_dag"), TRAIN_CONCURRENCY)

_T = TrainConfig()
_B = TRAIN_BOUNDS  # the numeric fields' bounds: the form's, the CLI's and a recipe's (pipelines/config.py)
_G = GateRules()
_S = Settings()
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
    params={
        # optional fields are typed ["null", ...]: the trigger form treats a typed field as required
        "run_date": Param(
            None,
            type=["null", "string"],
            title="Run date",
            description="YYYY-MM-DD partition to (re)build; empty = the run's logical date or today.",
            pattern="^$|^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
        ),
        "sources": Param(
            None,
            type=["null", "array"],
            items={"type": "string"},
            title="Input files",
            description="Files or glob patterns to ingest; empty = the files in $MELI_HOME/landing/ "
            "(moved to landing/processed/<run date>/ once ingested)",
        ),
        "input_format": Param(
            "auto",
            enum=list(INPUT_FORMATS),
            title="Input format",
            description="auto detects DiploDatos jsonl(.gz), challenge CSV, title,category CSV, Parquet",
        ),
        "allow_empty": Param(
            False,
            type="boolean",
            title="Allow an empty batch",
            description="Commit the partition even if the input holds no rows (default: the run fails and the "
            "partition stays as it was).",
        ),
        "models": Param(
            list(_T.models),
            type="array",
            items={"type": "string", "enum": list(MODEL_TYPES)},
            title="Model types",
            description="Classifiers to train; the best on validation is the challenger.",
        ),
        "ensemble": Param(
            _T.ensemble,
            type="boolean",
            title="Ensemble candidate",
            description="Also offer the mean of the trained models' probabilities as a challenger (chosen "
            "only if best on validation; scoring then runs every member).",
        ),
        "sentence_encoder": Param(
            _T.sentence_encoder,
            enum=list(SENTENCE_ENCODERS),
            title="Pretrained word vectors",
            description="use: every model also reads each word's Universal Sentence Encoder multilingual v3 "
            "vector (es/pt and 14 more languages, computed once per distinct word and cached across runs), "
            "through its own head averaged with the others; e5: multilingual-e5-small instead (19x slower to "
            "encode); none: today's models without them.",
        ),
        "mode": Param(
            _T.mode,
            enum=list(TRAIN_MODES),
            title="Training mode",
            description="auto: warm on ordinary nights, full when no model exists, the last full retrain is older "
            "than MELI_WARM_MAX_AGE_DAYS or the vocabulary grew past MELI_WARM_MAX_VOCAB_GROWTH; full: every row "
            "from scratch; warm: start each type from the champion (else latest) weights, train on what is new "
            "since then plus a replay sample.",
        ),
        "replay_rows": Param(
            _T.replay_rows,
            type="integer",
            **_B["replay_rows"].schema(),
            title="Warm: replayed older rows",
            description="Older training rows sampled beside the new or changed rows in a warm run.",
        ),
        "warm_epochs": Param(
            _T.warm_epochs, type="integer", **_B["warm_epochs"].schema(), title="Warm: epochs (max, early stopping)"
        ),
        "epochs": Param(_T.epochs, type="integer", **_B["epochs"].schema(), title="Epochs (max, early stopping)"),
        "batch_size": Param(_T.batch_size, type="integer", **_B["batch_size"].schema(), title="Batch size"),
        "gpu_batch_size": Param(
            _T.gpu_batch_size,
            type="integer",
            **_B["gpu_batch_size"].schema(),
            title="Batch size on a GPU",
            description="On CUDA: this batch size, learning rates scaled by sqrt(gpu_batch_size / batch_size); "
            "0 = batch_size and the learning rates as given.",
        ),
        "lr": Param(_T.lr, type="number", **_B["lr"].schema(), title="Learning rate (dense layers)"),
        "embedding_lr": Param(
            _T.embedding_lr, type="number", **_B["embedding_lr"].schema(), title="Learning rate (embedding)"
        ),
        "hidden": Param(_T.hidden, type="integer", **_B["hidden"].schema(), title="Hidden units (MLP)"),
        "wide_dim": Param(
            _T.wide_dim,
            type="integer",
            **_B["wide_dim"].schema(),
            title="Wide branch units (0 = off)",
            description="An MLP over the idf-weighted bag of word, char n-gram and word-bigram ids, trained "
            "beside each model and averaged with it.",
        ),
        "wide_bigrams": Param(
            _T.wide_bigrams, type="integer", **_B["wide_bigrams"].schema(), title="Wide branch: word-bigram buckets"
        ),
        "dropout": Param(_T.dropout, type="number", **_B["dropout"].schema(), title="Dropout"),
        "balance": Param(
            _T.balance,
            enum=list(BALANCE_MODES),
            title="Class balancing",
            description="weighted loss, balanced sampler, or none",
        ),
        "patience": Param(
            _T.patience, type="integer", **_B["patience"].schema(), title="Early-stopping patience (epochs)"
        ),
        "refit": Param(
            _T.refit,
            type="boolean",
            title="Refit on train + validation",
            description="After early stopping, retrain the served model on train + validation rows for the "
            "best epoch count (~1.9x training time; validation metrics come from the first pass).",
        ),
        "freeze_embedding": Param(_T.freeze_embedding, type="boolean", title="Freeze the FastText embedding"),
        "embedding_dim": Param(
            _T.embedding_dim, type="integer", **_B["embedding_dim"].schema(), title="FastText dimension"
        ),
        "embedding_epochs": Param(
            _T.embedding_epochs, type="integer", **_B["embedding_epochs"].schema(), title="FastText epochs"
        ),
        "device": Param(_T.device, enum=list(DEVICES), title="Device", description="auto = CUDA when available"),
        "recipe": Param(
            _T.recipe,
            type="string",
            pattern=f"^$|{NAME_RE.pattern}",
            title="Training recipe",
            description="default: the values of this form; tuned: the latest recipe meli_tune made "
            "($MELI_HOME/tune/recipes/); or a recipe id. A recipe sets each model type's tuned fields that "
            "are left at their defaults here (a field changed in this form wins). Recorded as the MLflow tag "
            "meli.recipe; the model still has to win the gate.",
        ),
        "min_improvement": Param(
            _G.min_improvement, type="number", minimum=-1, maximum=1, title="Gate: minimum macro-recall gain"
        ),
        "min_macro_recall": Param(
            _G.min_macro_recall, type="number", minimum=0, maximum=1, title="Gate: absolute macro-recall floor"
        ),
        "max_class_drop": Param(
            _G.max_class_drop,
            type="number",
            minimum=0,
            maximum=1,
            title="Gate: a category 'collapses' if its recall drops more than this",
        ),
        "max_share_classes_dropped": Param(
            _G.max_share_classes_dropped,
            type="number",
            minimum=0,
            maximum=1,
            title="Gate: reject if more than this share of categories collapse",
        ),
        "min_behaviour_pass": Param(
            _G.min_behaviour_pass,
            type="number",
            minimum=0,
            maximum=1,
            title="Gate: minimum share passing the behavioural checks",
            description="Reject when fewer test titles keep their prediction under case/accent/space/punctuation "
            "changes, or fewer reviewed minimum-function cases are right, than this share.",
        ),
        "require_approval": Param(
            _S.require_approval,
            type="boolean",
            title="Require a person's approval",
            description="A promotion the gate decides waits on the Required Actions page (task approve_promotion) "
            f"with the evidence; Reject or no answer within {_S.approval_timeout_h:g} h keeps the champion. "
            "This can only add approval: when the deployment requires it (MELI_REQUIRE_APPROVAL), unticking it "
            "changes nothing.",
        ),
        "force_promote": Param(
            False,
            type="boolean",
            title="Force promotion",
            description="Operator override: promote whatever the rules say (recorded); still waits for a "
            "person's approval when approval is required.",
        ),
        "dry_run": Param(False, type="boolean", title="Dry run", description="Decide and record, move no alias."),
    },
)
def meli_retrain():
    @task(multiple_outputs=True)
    def ingest(params=None, **context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from pipelines.config import check_conf, run_date_from_context
        from pipelines.flows.retrain import step_ingest

        try:  # the training parameters are checked before any work, as the CLI does (a retry fails the same)
            check_conf(getattr(context.get("dag_run"), "conf", None), MELI_RETRAIN.params)
            _train_cfg(params)
        except (TypeError, ValueError) as exc:
            raise AirflowFailException(f"bad training parameters: {exc}") from exc
        settings = _settings()
        run_date = run_date_from_context({**context, "params": params})
        sources = list(params["sources"] or [])
        drift = [
            e.extra or {}
            for key, events in (context.get("triggering_asset_events") or {}).items()
            if getattr(key, "name", key) == DRIFT.name
            for e in events
        ]
        if drift and not sources:  # a drift-triggered run: the landing's files, or nothing to do
            from airflow.sdk.exceptions import AirflowSkipException

            from pipelines.flows.retrain import landing_sources

            why = "; ".join(sorted({str(d.get("reason", "")) for d in drift}))
            print(f"triggered by meli_drift: {why}")
            try:
                landing_sources(settings, run_date)
            except FileNotFoundError as exc:
                raise AirflowSkipException(
                    f"drift-triggered, but {exc}; the lake is unchanged since the last retrain, so there is "
                    "nothing new to retrain on: the run is skipped (drop new labelled files in the landing, or "
                    "trigger with sources)"
                ) from exc
        from airflow.sdk.exceptions import AirflowFailException

        from pipelines.core.paths import OutsideRoot

        try:  # confine: the form's sources (and landing symlinks) only under the landing and MELI_INPUT_ROOTS
            return step_ingest(
                settings, sources, run_date, params["input_format"], bool(params["allow_empty"]), confine=True
            )
        except OutsideRoot as exc:  # a retry would be refused the same
            raise AirflowFailException(str(exc)) from exc

    # the new partition is announced (scheduling meli_score) only once it passed validation: a batch
    # that fails a critical expectation is neither trained on nor scored
    @task(multiple_outputs=True, outlets=[LISTINGS])
    def validate(ingested: dict, dag_run=None, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from pipelines.data.validate import ValidationFailed, link_run
        from pipelines.flows.retrain import step_validate

        settings = _settings()
        try:
            report = step_validate(settings, ingested["run_date"])
        except Exception as exc:
            if getattr(exc, "report", None):
                link_run(settings, dag_run.dag_id, dag_run.run_id, exc.report)
            if isinstance(exc, ValidationFailed):  # the data fails, not the task: a retry would fail the same
                raise AirflowFailException(str(exc)) from exc
            raise
        link_run(settings, dag_run.dag_id, dag_run.run_id, report)
        outlet_events[LISTINGS].extra = {"partition": ingested["partition"], "run_date": ingested["run_date"]}
        return {
            k: report[k]
            for k in (
                "run_date",
                "success",
                "passed",
                "evaluated",
                "warnings",
                "data_docs_index",
                "data_docs_pages",
                "data_docs_dir",
                "report_json",
            )
        }

    # only partition versions that passed validation are read; earlier ones never validated are
    # validated here first, and those that failed are left out (listed in dataset.json)
    @task(multiple_outputs=True)
    def prepare(ingested: dict, validation: dict, dag_run=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from pipelines.data.lake import NotEligible
        from pipelines.data.validate import ValidationFailed
        from pipelines.flows.retrain import step_prepare

        try:
            return step_prepare(
                _settings(),
                ingested["run_date"],
                validation,
                {"meli.dag_run_id": dag_run.run_id, "meli.trigger": "airflow"},
            )
        except (NotEligible, ValidationFailed) as exc:  # the data fails, not the task: no retries
            raise AirflowFailException(str(exc)) from exc

    @task(multiple_outputs=True)
    def embedding(dataset: dict, params=None, dag_run=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from pipelines.flows.retrain import step_embedding
        from pipelines.training.warm import WarmStartError

        try:
            emb = step_embedding(_settings(), dataset, _train_cfg(params), dag_run.run_id)
        except WarmStartError as exc:  # mode=warm with nothing to start from: a retry would fail the same
            raise AirflowFailException(str(exc)) from exc
        if emb.get("skipped"):  # no new or changed rows: train, register and gate are skipped too
            from pipelines.flows.airflow_ui import post_run_note

            post_run_note(dag_run.dag_id, dag_run.run_id)  # signed; the note says why nothing was trained
            raise AirflowSkipException(emb["skipped"]["reason"])
        return emb

    @task
    def model_types(params=None) -> list[str]:
        return _train_cfg(params).models

    @task(
        multiple_outputs=True,
        queue=TRAIN_QUEUE,
        pool=TRAIN_POOL,
        retries=1,
        execution_timeout=timedelta(hours=3),
        max_active_tis_per_dagrun=TRAIN_CONCURRENCY,
    )
    def train(kind: str, dataset: dict, emb: dict, params=None) -> dict:
        """One model type (mapped). Up to MELI_TRAIN_CONCURRENCY run at once, each with its share of
        the CPU cores as torch threads (MELI_TORCH_THREADS overrides)."""
        from pipelines.flows.retrain import step_train

        cfg = _train_cfg(params)
        return step_train(_settings(), dataset, emb, kind, cfg, side_by_side=len(cfg.models))

    @task(execution_timeout=timedelta(hours=1))
    def ensemble(results: list[dict], dataset: dict, params=None) -> list[dict]:
        """The best-on-validation mean of 2+ trained models as one more candidate (when enabled).
        Default queue: it only scores the validation split (members fetched from MLflow)."""
        from pipelines.flows.retrain import step_ensemble

        # by index: iterating the mapped results reads one past the end (an 'XCom not found' ERROR line)
        trained = [results[i] for i in range(len(results))]
        return step_ensemble(_settings(), dataset, trained, _train_cfg(params))

    @task(multiple_outputs=True)
    def register(results: list[dict], dataset: dict, dag_run=None) -> dict:
        from pipelines.flows.retrain import step_register

        return step_register(_settings(), list(results), dataset["run_date"], dag_run.run_id, dataset["parent_run_id"])

    @task(multiple_outputs=True)
    def evaluate(challenger: dict, dataset: dict) -> dict:
        from pipelines.flows.retrain import step_evaluate

        return step_evaluate(_settings(), dataset["run_date"], challenger)

    @task(multiple_outputs=True)
    def gate(challenger: dict, dataset: dict, evaluation: dict, params=None, dag_run=None, ti=None) -> dict:
        from pipelines.flows.retrain import step_gate

        rules = {k: params[k] for k in RULE_OVERRIDES}
        from pipelines.flows.airflow_ui import api_base_url, post_run_note
        from pipelines.flows.approval import approval_body, card_url, decision_url
        from pipelines.registry.decisions import decision_text

        settings = _settings()
        decision = step_gate(
            settings,
            dataset["run_date"],
            challenger,
            dataset["parent_run_id"],
            bool(params["force_promote"]),
            bool(params["dry_run"]),
            dag_run.run_id,
            require_approval=bool(params["require_approval"]),
            dag_id=dag_run.dag_id,
            **rules,
        )
        print(decision_text(decision))  # plain text in the log; Markdown in the note and "Gate decision" tab
        base_url = api_base_url()
        print(f"model card: {card_url(base_url, decision['challenger_version'])}")
        if decision["decision"] == "pending_approval":  # the evidence the approval page shows
            links = {
                "Model card": card_url(base_url, decision["challenger_version"]),
                "Gate decision": decision_url(base_url, dag_run.dag_id, dag_run.run_id),
            }
            ti.xcom_push(key="approval_body", value=approval_body(settings, decision, links))
        post_run_note(dag_run.dag_id, dag_run.run_id)  # signed; to the api-server the tasks reach
        return decision

    # skipped by the approval task on Reject; runs after it on Approve, or when it was not needed
    # (min one success: a drift-triggered run that skipped at ingest skips this too)
    @task.short_circuit(outlets=[CHAMPION], trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def announce_champion(decision: dict, dag_run=None) -> bool:
        """Emit the champion asset (scheduling meli_score) only when a new champion was promoted."""
        if decision["decision"] == "pending_approval":  # answered since: the record says how
            from pipelines.registry.decisions import decision_for_run

            decision = (decision_for_run(_settings(), dag_run.run_id) or {"decision": decision})["decision"]
        return decision["decision"] == "promoted"

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
