"""The DAGs' task bodies (meli_retrain's, then meli_tune's): each task calls one of these with its
inputs (XCom dicts, the trigger form's params, the run's ids) and returns what the next task reads. Every branch and
message of a run lives here, so the DAG files only wire; a refusal raises ``StopRun`` and a run
with nothing to do raises ``NothingToDo`` (``pipelines.flows.outcomes``)."""

from __future__ import annotations

from pipelines.config import TrainConfig
from pipelines.flows.outcomes import NothingToDo, StopRun
from pipelines.flows.retrain import step_embedding, step_gate, step_ingest, step_prepare, step_validate
from pipelines.flows.stages import Challenger, Dataset, Decision, Validated
from pipelines.settings import RULE_OVERRIDES, Settings
from pipelines.training.tune import TuneConfig


def check_params(conf: dict | None, params: dict, declared) -> TrainConfig:
    """The run's training parameters, checked before any work as the CLI does: a ``dag_run.conf`` key
    the DAG does not declare (``declared``: its Params) or a value out of bounds is ``StopRun``."""
    from pipelines.config import check_conf, train_config_from_params

    try:
        check_conf(conf, declared)
        return train_config_from_params(params, declared)
    except (TypeError, ValueError) as exc:  # a retry would fail the same
        raise StopRun(f"bad training parameters: {exc}") from exc


def ingest(settings: Settings, params: dict, run_date: str, drift_events: list[dict]) -> dict:
    """Ingest the form's ``sources`` (confined to the landing and ``MELI_INPUT_ROOTS``), else the
    landing's files. A run started by drift (``drift_events``: the meli_drift events' extras) with no
    sources and an empty landing has nothing new to train on: ``NothingToDo``."""
    from pipelines.core.paths import OutsideRoot
    from pipelines.flows.retrain import landing_sources

    sources = list(params.get("sources") or [])
    if drift_events and not sources:  # a drift-triggered run: the landing's files, or nothing to do
        why = "; ".join(sorted({str(d.get("reason", "")) for d in drift_events}))
        print(f"triggered by meli_drift: {why}")
        try:
            landing_sources(settings, run_date)
        except FileNotFoundError as exc:
            raise NothingToDo(
                f"drift-triggered, but {exc}; the lake is unchanged since the last retrain, so there is "
                "nothing new to retrain on: the run is skipped (drop new labelled files in the landing, or "
                "trigger with sources)"
            ) from exc
    try:  # confine: the form's sources (and landing symlinks) only under the landing and MELI_INPUT_ROOTS
        fmt, allow_empty = params.get("input_format") or "auto", bool(params.get("allow_empty"))
        result = step_ingest(settings, sources, run_date, fmt, allow_empty, confine=True)
    except OutsideRoot as exc:  # a retry would be refused the same
        raise StopRun(str(exc)) from exc
    return result.to_dict()


def validate(settings: Settings, ingested: dict, dag_id: str, run_id: str) -> tuple[dict, dict]:
    """Validate the new partition and link the report to the run (its "Data Docs" tab), also when it
    fails; a failed critical expectation is the data's failure, not the task's: ``StopRun``. Returns
    the summary for XCom and the extra of the listings asset event (the partition and its date)."""
    from pipelines.data.validate import ValidationFailed, link_run

    try:
        report = step_validate(settings, ingested["run_date"])
    except Exception as exc:
        if getattr(exc, "report", None):
            link_run(settings, dag_id, run_id, exc.report)
        if isinstance(exc, ValidationFailed):  # the data fails, not the task: a retry would fail the same
            raise StopRun(str(exc)) from exc
        raise
    link_run(settings, dag_id, run_id, report.to_dict())
    event = {"partition": ingested["partition"], "run_date": ingested["run_date"]}
    return report.summary().to_dict(), event


def prepare(settings: Settings, ingested: dict, validation: dict, run_id: str) -> dict:
    """The run's dataset of validated partitions only; a run date that may not be trained on: ``StopRun``."""
    from pipelines.data.lake import NotEligible
    from pipelines.data.validate import ValidationFailed

    try:
        dataset = step_prepare(
            settings,
            ingested["run_date"],
            Validated.from_dict(validation),
            {"meli.dag_run_id": run_id, "meli.trigger": "airflow"},
        )
    except (NotEligible, ValidationFailed) as exc:  # the data fails, not the task: no retries
        raise StopRun(str(exc)) from exc
    return dataset.to_dict()


def embedding(settings: Settings, dataset: dict, cfg: TrainConfig, dag_id: str, run_id: str) -> dict:
    """The run's mode, FastText and encoded splits. ``mode=warm`` with nothing to start from:
    ``StopRun``; no new or changed rows: the run's note says why and ``NothingToDo`` skips the rest."""
    from pipelines.flows.airflow_ui import post_run_note
    from pipelines.training.warm import WarmStartError

    try:
        emb = step_embedding(settings, Dataset.from_dict(dataset), cfg, run_id)
    except WarmStartError as exc:  # a retry would fail the same
        raise StopRun(str(exc)) from exc
    if emb.is_skipped:  # train, register and gate are skipped too
        post_run_note(dag_id, run_id)  # signed; the note says why nothing was trained
        raise NothingToDo(emb.skipped["reason"])
    return emb.to_dict()


def gate(
    settings: Settings, dataset: dict, challenger: dict, params: dict, dag_id: str, run_id: str
) -> tuple[dict, str | None]:
    """The gate's decision with the form's rule overrides, printed for the log, posted as the run's
    note; and, when a person must approve, the Markdown the approval page shows (else None)."""
    from pipelines.flows.airflow_ui import api_base_url, post_run_note
    from pipelines.flows.approval import approval_body, card_url, decision_url
    from pipelines.registry.decisions import decision_text

    ds, ch = Dataset.from_dict(dataset), Challenger.from_dict(challenger)
    decision = step_gate(
        settings,
        ds.run_date,
        ch,
        ds.parent_run_id,
        bool(params.get("force_promote")),
        bool(params.get("dry_run")),
        run_id,
        require_approval=bool(params.get("require_approval")),
        dag_id=dag_id,
        **{k: params[k] for k in RULE_OVERRIDES if k in params},
    )
    d = decision.to_dict()
    print(decision_text(d))  # plain text in the log; Markdown in the note and "Gate decision" tab
    base_url = api_base_url()
    print(f"model card: {card_url(base_url, decision.challenger_version)}")
    body = None
    if decision.pending:  # the evidence the approval page shows
        links = {
            "Model card": card_url(base_url, decision.challenger_version),
            "Gate decision": decision_url(base_url, dag_id, run_id),
        }
        body = approval_body(settings, d, links)
    post_run_note(dag_id, run_id)  # signed; to the api-server the tasks reach
    return d, body


def champion_promoted(settings: Settings, decision: dict, run_id: str) -> bool:
    """Whether the run promoted a new champion; a decision left to a person is read back as answered."""
    from pipelines.registry.decisions import decision_for_run

    d = Decision.from_dict(decision)
    if d.pending:  # answered since: the record says how
        return (decision_for_run(settings, run_id) or {"decision": d.decision})["decision"] == "promoted"
    return d.decision == "promoted"


# ------------------------------------------------------------------------------------------
# meli_tune's task bodies
# ------------------------------------------------------------------------------------------
def tune_prepare(settings: Settings, tcfg: TuneConfig, base: TrainConfig, run_date: str | None) -> dict:
    """Open (or resume) the study on ``run_date``'s frozen splits (default: the latest run's)."""
    from pipelines.training.tune import latest_run_date, prepare

    run_date = run_date or latest_run_date(settings)
    info = prepare(settings, run_date, tcfg, base)
    return {"run_date": run_date, "study": info["study"], "mlflow_run_id": info["mlflow_run_id"]}


def tune_worker(settings: Settings, run_date: str, tcfg: TuneConfig, slot: int) -> dict:
    """One worker's trials against the shared storage, with its share of the cores, until the study's
    trial or time budget is spent."""
    from pipelines.core.system import train_threads
    from pipelines.training.tune import run_worker

    threads = train_threads(settings, tcfg.workers)
    return {"slot": slot, "trials": run_worker(settings, run_date, tcfg, threads=threads, worker=slot)}


def tune_recipe(settings: Settings, run_date: str, tcfg: TuneConfig) -> dict:
    """The study's best trial as a recipe (printed with how to train with it) and its summary."""
    from pipelines.training.tune import make_recipe, summary

    r = make_recipe(settings, run_date, tcfg)
    s = summary(settings, run_date, tcfg)
    best, default = r["best_val_macro_recall"], r["default_val_macro_recall"]
    print(f"recipe {r['id']}: {r['params']} (val macro-recall best {best}, default {default})")
    print(f"train with it: trigger meli_retrain with recipe=tuned or recipe={r['id']}")
    return {"recipe": r["id"], "summary": s}
