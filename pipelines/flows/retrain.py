"""The retraining flow as plain functions: one per DAG task, and ``run_all`` chaining them in one
process (``python -m pipelines retrain``). The DAG calls exactly these functions."""

from __future__ import annotations

import logging
from pathlib import Path

from pipelines.config import TrainConfig
from pipelines.core.system import train_threads
from pipelines.data.ingest.writer import IngestResult
from pipelines.flows.stages import Challenger, Dataset, Decision, Embedding, Evaluation, Trained, Validated
from pipelines.settings import Settings

log = logging.getLogger(__name__)


def step_ingest(
    settings: Settings,
    sources: list[str],
    run_date: str,
    fmt: str = "auto",
    allow_empty: bool = False,
    confine: bool = False,
) -> IngestResult:
    """Ingest ``sources``; with none, the landing folder's files (see ``landing_sources``).
    ``confine`` (the DAG: sources from the trigger form): every file, symlinks followed, must lie
    under ``$MELI_HOME/landing`` or a folder of ``MELI_INPUT_ROOTS`` (pipelines/core/paths.py), else
    nothing is read; the CLI reads what its user names."""
    from pipelines.core.paths import check_inputs
    from pipelines.data.ingest import ingest

    if sources:
        paths = expand_sources(sources)
        if confine:
            check_inputs(settings, paths)
        return ingest(paths, run_date, settings, fmt=fmt, allow_empty=allow_empty)
    paths = landing_sources(settings, run_date)
    if confine:  # a symlink in the landing is followed only into an allowed folder
        check_inputs(settings, paths)
    result = ingest(paths, run_date, settings, fmt=fmt, allow_empty=allow_empty)
    claim_landing(settings, run_date, paths)
    return result


def landing_sources(settings: Settings, run_date: str) -> list[str]:
    """Files of ``$MELI_HOME/landing/`` plus those already claimed for this run date.

    After a successful ingest the files move to ``landing/processed/<run date>/``, so a later
    night does not ingest them again, while a rerun of the same date reads the same files (a file
    re-delivered under the same name replaces the claimed one)."""
    landing = settings.home / "landing"
    claimed = landing / "processed" / run_date
    files = {p.name: p for p in sorted(claimed.glob("*")) if p.is_file()}
    files.update({p.name: p for p in sorted(landing.glob("*")) if p.is_file() and not p.name.startswith(".")})
    if not files:
        raise FileNotFoundError(
            f"nothing to ingest for {run_date}: {landing} is empty (and nothing was claimed for "
            "that date); drop files there or pass sources"
        )
    return [str(p) for _, p in sorted(files.items())]


def claim_landing(settings: Settings, run_date: str, paths: list[str]) -> None:
    import os

    claimed = settings.home / "landing" / "processed" / run_date
    claimed.mkdir(parents=True, exist_ok=True)
    for p in map(Path, paths):
        if p.parent != claimed:
            os.replace(p, claimed / p.name)


def expand_sources(sources: list[str]) -> list[str]:
    """Files and glob patterns -> sorted existing files; a clear error when nothing matches."""
    import glob

    out: list[str] = []
    for s in sources:
        matches = sorted(glob.glob(s)) if any(ch in s for ch in "*?[") else [s]
        out += [m for m in matches if Path(m).is_file() or not any(ch in s for ch in "*?[")]
    if not out:
        raise FileNotFoundError(f"no input files match {sources}")
    return out


def step_validate(settings: Settings, run_date: str) -> Validated:
    """Validate the run date's partition (GX); raises ValidationFailed (with its report) when it fails."""
    from pipelines.data.validate import validate_partition

    return Validated.from_dict(validate_partition(settings, run_date))


def step_prepare(
    settings: Settings, run_date: str, validation: Validated | dict | None, tags: dict | None = None
) -> Dataset:
    """Freeze the run's dataset splits and open the parent MLflow run (with the GX report).

    Partitions up to ``run_date`` never validated are validated first (``validate_pending``); the
    dataset holds only versions that passed (``prepare_dataset``). ``validation``: the run date's
    report (the DAG's validate task); None: the one made here, else the last saved one."""
    import mlflow

    from pipelines.data.validate import load_report, validate_pending
    from pipelines.features.embedding import prepare_dataset
    from pipelines.training.runs import start_parent_run

    validated = validate_pending(settings, run_date)
    if validation is not None:
        validation = Validated.from_dict(validation).to_dict()
    if validation is None:
        validation = validated.get(run_date)
    if validation is None:
        try:
            validation = load_report(settings, run_date)
        except FileNotFoundError:
            validation = None
    dataset = prepare_dataset(settings, run_date)
    from pipelines.core.tracking import open_run

    parent = start_parent_run(settings, run_date, dataset, tags)
    if validation:
        with open_run(settings, "RUNNING", run_id=parent):  # until the gate (training/runs.py failing_parent)
            docs = Path(validation["data_docs_dir"])
            if docs.is_dir():
                mlflow.log_artifacts(str(docs), artifact_path="validation/data_docs")
            if validation.get("report_json"):
                mlflow.log_artifact(validation["report_json"], artifact_path="validation")
            mlflow.set_tag(
                "meli.validation",
                f"{validation['passed']}/{validation['evaluated']} passed, {len(validation['warnings'])} warnings",
            )
    return Dataset.from_dict({**dataset, "parent_run_id": parent})


def step_embedding(settings: Settings, dataset: Dataset | dict, cfg: TrainConfig, dag_run_id: str = "") -> Embedding:
    """The run's mode (full or warm, pipelines/training/warm.py), FastText on the training split (warm: the
    base's, continued on the new rows), then the splits encoded once as arrays for the trainings.
    Mode ``skip`` (a warm run with no new or changed rows): nothing is trained; returns
    an Embedding with only ``plan`` and ``skipped`` (the record), and the caller stops (the DAG skips the rest)."""
    from pipelines.training.runs import failing_parent

    dataset = Dataset.from_dict(dataset)
    with failing_parent(settings, dataset.parent_run_id):
        return Embedding.from_dict(_embedding(settings, dataset.to_dict(), cfg, dag_run_id))


def _embedding(settings: Settings, dataset: dict, cfg: TrainConfig, dag_run_id: str) -> dict:
    from pipelines.config import load_recipe
    from pipelines.core.fs import atomic_write_json
    from pipelines.core.tracking import quiet_libraries
    from pipelines.features.embedding import embedding_config, train_embedding
    from pipelines.features.encoded import encode_dataset
    from pipelines.features.text import TextConfig
    from pipelines.training.runs import log_embedding
    from pipelines.training.warm import PLAN_FILE, plan_run, warm_embedding

    quiet_libraries()  # gensim's load/save INFO lines
    recipe = load_recipe(settings.recipes_dir, cfg.recipe)  # a missing recipe fails here, before FastText
    plan = plan_run(settings, dataset, cfg, dataset["run_date"])
    skip_path = settings.run_dir(dataset["run_date"]) / SKIP_FILE
    if plan["mode"] == "skip":  # nothing new: no embedding, no training, nothing registered
        return {"plan": plan, "skipped": record_skip(settings, dataset, plan, dag_run_id)}
    skip_path.unlink(missing_ok=True)  # an earlier skipped run of this date no longer describes it
    if plan["mode"] == "warm":
        emb = warm_embedding(dataset["dir"], plan, cfg.seed)
    else:
        emb = train_embedding(dataset["dir"], embedding_config(cfg, _train_rows(dataset)), TextConfig(), cfg.seed)
    emb["plan"] = plan
    atomic_write_json(Path(emb["dir"]) / PLAN_FILE, plan)  # full or warm, and why: for the summary and people
    # every split as arrays, once; each distinct word's pretrained vector (cached across runs)
    emb["encoded"] = encode_dataset(dataset["dir"], emb["dir"], cfg.sentence_encoder, settings.sentence_cache_dir)
    log_embedding(settings, dataset["parent_run_id"], emb, cfg)
    emb["recipe"] = recipe  # pinned for the run's train tasks ("tuned" resolved once, here)
    _record_recipe(settings, dataset["parent_run_id"], recipe)
    return emb


def _train_rows(dataset: dict) -> int | None:
    """The training split's rows (FastText's epochs follow them: ``embedding_epochs``)."""
    return (dataset.get("counts") or {}).get("train")


SKIP_FILE = "skipped.json"  # in the run dir: the run trained nothing, and why


def skipped_run(settings: Settings, run_date: str) -> dict | None:
    """The record of a run of ``run_date`` that trained nothing (``record_skip``), if the last one did."""
    import json

    path = settings.run_dir(run_date) / SKIP_FILE
    return json.loads(path.read_text()) if path.exists() else None


def record_skip(settings: Settings, dataset: dict, plan: dict, dag_run_id: str = "") -> dict:
    """A run with nothing new to train on: its reason in the log, ``skipped.json`` (the summary, the
    run's note and "Gate decision" tab) and on its parent MLflow run (description and tags)."""
    from datetime import UTC, datetime

    import mlflow

    from pipelines.core.fs import atomic_write_json
    from pipelines.core.tracking import configure

    champion = _champion_version(settings)
    record = {
        "decision": "skipped",
        "rule": "nothing_new",
        "reason": plan["reason"],
        "run_date": dataset["run_date"],
        "dag_run_id": dag_run_id or dataset.get("dag_run_id", ""),
        "mlflow_run_id": dataset.get("parent_run_id") or "",
        "champion_version": champion,
        "base_version": plan["base"]["version"],
        "decided_at": datetime.now(UTC).isoformat(),
    }
    atomic_write_json(settings.run_dir(dataset["run_date"]) / SKIP_FILE, record)
    if record["dag_run_id"]:  # the run page's note and "Gate decision" tab find it from the run id
        from pipelines.registry.decisions import link_run_record

        link_run_record(settings, record["dag_run_id"], settings.run_dir(dataset["run_date"]) / SKIP_FILE)
    if dataset.get("parent_run_id"):
        configure(settings)
        with mlflow.start_run(run_id=dataset["parent_run_id"]):
            mlflow.set_tags(
                {"meli.mode": "skip", "meli.decision": "skipped", "mlflow.note.content": f"Skipped: {plan['reason']}"}
            )
        from pipelines.training.runs import rename_parent_run

        rename_parent_run(dataset["parent_run_id"], "skip")
    log.info("run of %s skipped: %s", dataset["run_date"], plan["reason"])
    return record


def _champion_version(settings: Settings) -> str | None:
    from pipelines.core.tracking import CHAMPION, alias_version
    from pipelines.registry.records import registry_client

    try:
        mv = alias_version(registry_client(settings), settings.model_name, CHAMPION)
    except Exception:  # the record is informative; the skip does not depend on it
        return None
    return str(mv.version) if mv else None


def _record_recipe(settings: Settings, parent_run_id: str, recipe: dict | None) -> None:
    """The run's recipe on its parent MLflow run: tag ``meli.recipe`` and param ``recipe`` (the id or
    "default"), and a tuned recipe's JSON as an artifact."""
    import mlflow

    from pipelines.core.tracking import configure, open_run

    configure(settings)
    with open_run(settings, "RUNNING", run_id=parent_run_id):
        rid = recipe["id"] if recipe else "default"
        mlflow.set_tag("meli.recipe", rid)
        mlflow.log_param("recipe", rid)
        if recipe:
            mlflow.log_dict(recipe, f"recipe/{rid}.json")


def step_train(
    settings: Settings,
    dataset: Dataset | dict,
    embedding: Embedding | dict,
    kind: str,
    cfg: TrainConfig,
    side_by_side: int = 1,
) -> Trained:
    """Train one model type; ``side_by_side``: trainings sharing this machine's cores at once. The
    run's recipe (``embedding["recipe"]``, step_embedding) sets this type's defaults (apply_recipe)."""
    from pipelines.config import apply_recipe
    from pipelines.core.tracking import quiet_libraries
    from pipelines.training.runs import failing_parent
    from pipelines.training.train import train_classifier

    quiet_libraries()  # gensim's load INFO lines
    dataset, embedding = Dataset.from_dict(dataset), Embedding.from_dict(embedding)
    cfg = apply_recipe(cfg, kind, embedding.recipe)
    with failing_parent(settings, dataset.parent_run_id):
        result = train_classifier(
            settings,
            dataset.dir,
            embedding.dir,
            kind,
            cfg,
            parent_run_id=dataset.parent_run_id,
            run_date=dataset.run_date,
            threads=train_threads(settings, side_by_side),
            plan=embedding.plan,
            embedding_sha256=embedding.sha256,
        )
    return Trained.from_dict({**result, "recipe": cfg.recipe})


def step_train_all(settings: Settings, dataset: Dataset, embedding: Embedding, cfg: TrainConfig) -> list[Trained]:
    """Every model type of ``cfg``, ``settings.train_concurrency`` side by side in worker processes
    (as the DAG's mapped train tasks run, each with its share of the cores); results in
    ``cfg.models`` order. One at a time where worker processes cannot start (a daemonic process,
    such as a Celery prefork child) or only one trains."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    side_by_side = min(settings.train_concurrency, len(cfg.models))
    if side_by_side <= 1 or mp.current_process().daemon:
        return [step_train(settings, dataset, embedding, kind, cfg) for kind in cfg.models]
    from pipelines.core.tracking import configure

    configure(settings)  # the MLflow store and experiment once, before the workers race for them
    cost = {"bilstm": 0, "cnn": 1, "mlp": 2}  # slowest first: the last to start is the quickest
    order = sorted(cfg.models, key=lambda k: cost.get(k, 0))
    log.info("training %s, %d side by side", order, side_by_side)
    # spawn: no forked torch/OpenMP state in the workers
    root = logging.getLogger()
    fmt = next((h.formatter._fmt for h in root.handlers if h.formatter is not None), None)
    with ProcessPoolExecutor(
        max_workers=side_by_side,
        mp_context=mp.get_context("spawn"),
        initializer=_worker_logging,
        initargs=(root.level, fmt),
    ) as pool:
        futures = {k: pool.submit(step_train, settings, dataset, embedding, k, cfg, side_by_side) for k in order}
        return [futures[k].result() for k in cfg.models]


def _worker_logging(level: int, fmt: str | None) -> None:
    """A training worker logs (its progress, per epoch) as the process that started it."""
    logging.basicConfig(level=level, format=fmt or logging.BASIC_FORMAT)
    for noisy in ("mlflow", "alembic", "great_expectations", "gensim", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def step_ensemble(
    settings: Settings, dataset: Dataset | dict, results: list[Trained | dict], cfg: TrainConfig
) -> list[Trained]:
    """The trained models plus, when enabled and at least two trained, their mean as a candidate."""
    from pipelines.training.runs import failing_parent
    from pipelines.training.train import train_ensemble

    dataset, results = Dataset.from_dict(dataset), [Trained.from_dict(r) for r in results]
    if cfg.ensemble:
        with failing_parent(settings, dataset.parent_run_id):
            ens = train_ensemble(
                settings, dataset.dir, [r.to_dict() for r in results], dataset.parent_run_id, dataset.run_date
            )
        if ens is not None:
            results.append(Trained.from_dict(ens))
    return results


def step_register(
    settings: Settings,
    results: list[Trained | dict],
    run_date: str,
    dag_run_id: str = "",
    parent_run_id: str | None = None,
) -> Challenger:
    """Register the run's best model; ``challenger.json`` in the run dir names it for a later
    ``python -m pipelines promote --run-date D`` (the same version the DAG or ``train`` registered)."""
    from pipelines.training.runs import failing_parent

    results = [Trained.from_dict(r).to_dict() for r in results]
    with failing_parent(settings, parent_run_id):
        return Challenger.from_dict(_register(settings, results, run_date, dag_run_id, parent_run_id))


def _register(settings: Settings, results: list[dict], run_date: str, dag_run_id: str, parent_run_id: str | None):
    from pipelines.core.fs import atomic_write_json
    from pipelines.registry.versions import register_challenger
    from pipelines.training.train import pick_challenger

    best = pick_challenger(results)
    log.info(
        "challenger of %s: %s (val macro-recall %.4f) among %s",
        run_date,
        best["model_type"],
        best["val_macro_recall"],
        [(r["model_type"], r["val_macro_recall"]) for r in results],
    )
    challenger = register_challenger(settings, best, run_date, dag_run_id)
    if not challenger.get("resumed"):  # a resumed version keeps the recipe it was trained with
        recipe = next((r["recipe"] for r in results if r.get("recipe")), "default")  # one recipe per run
        import mlflow

        mlflow.MlflowClient().set_model_version_tag(settings.model_name, challenger["version"], "meli.recipe", recipe)
    atomic_write_json(settings.run_dir(run_date) / "challenger.json", {**challenger, "parent_run_id": parent_run_id})
    from pipelines.registry.card import try_write_card

    try_write_card(settings, challenger["version"])  # data, validation, training; the gate adds the rest
    return challenger


def step_resume(settings: Settings, run_date: str, parent_run_id: str | None) -> Challenger | None:
    """A rerun of a run killed after it registered: the version it registered for this date and
    data, still undecided (pipelines/registry/versions.py pending_version), as the challenger to evaluate and
    gate; None when there is none (train and register as usual)."""
    from pipelines.core.fs import atomic_write_json
    from pipelines.registry.versions import challenger_of, pending_version

    mv = pending_version(settings, run_date)
    if mv is None:
        return None
    challenger = challenger_of(mv)
    log.info(
        "%s v%s was registered for %s on this data and never decided: resuming it (evaluate, gate), not training",
        settings.model_name,
        challenger["version"],
        run_date,
    )
    atomic_write_json(settings.run_dir(run_date) / "challenger.json", {**challenger, "parent_run_id": parent_run_id})
    if parent_run_id:  # named for what it does, not 'pending' (no embedding step will name it)
        import mlflow

        from pipelines.training.runs import rename_parent_run

        mode = mv.tags.get("meli.mode") or "full"
        client = mlflow.MlflowClient()
        client.set_tag(parent_run_id, "meli.mode", mode)
        client.set_tag(parent_run_id, "meli.resumed_version", challenger["version"])
        rename_parent_run(parent_run_id, f"{mode} resumed")
    return Challenger.from_dict(challenger)


def step_evaluate(settings: Settings, run_date: str, challenger: Challenger | dict) -> Evaluation:
    """Champion and challenger on the same frozen test rows; the challenger's test metrics on its
    LoggedModel, and the drift monitor's reference for it."""
    from pipelines.monitoring.reference import try_build_reference
    from pipelines.registry.comparison import evaluate
    from pipelines.registry.versions import log_test_metrics

    version = Challenger.from_dict(challenger).version
    ev = evaluate(settings, run_date, version)
    log_test_metrics(settings, run_date, version, ev)  # on the challenger's LoggedModel
    # what the drift monitor compares scored batches with (best effort: built on first monitor if missing)
    reference = try_build_reference(settings, run_date, version)
    return Evaluation(run_date=run_date, models=ev["models"], test_rows=ev["test_rows"], monitor_reference=reference)


def step_gate(
    settings: Settings,
    run_date: str,
    challenger: Challenger | dict,
    parent_run_id: str | None,
    force_promote: bool = False,
    dry_run: bool = False,
    dag_run_id: str = "",
    require_approval: bool | None = None,
    dag_id: str = "",
    **rules,
) -> Decision:
    """Decide (and apply, or with ``require_approval`` leave pending for a person); the version's
    model card is rewritten with the decision. ``MELI_REQUIRE_APPROVAL`` is a floor (``registry.gate``):
    ``require_approval`` (None = the deployment's) can add approval, never remove it."""
    from pipelines.registry.card import try_write_card
    from pipelines.registry.comparison import with_rules
    from pipelines.registry.gate import gate
    from pipelines.training.runs import failing_parent

    challenger = Challenger.from_dict(challenger)
    with failing_parent(settings, parent_run_id, last=True):  # the gate's end finishes the parent run
        decision = gate(
            settings,
            run_date,
            challenger.version,
            with_rules(settings.gate, **rules),
            force_promote=force_promote,
            dry_run=dry_run,
            dag_run_id=dag_run_id,
            parent_run_id=parent_run_id,
            require_approval=settings.require_approval if require_approval is None else require_approval,
            dag_id=dag_id,
        )
    try_write_card(settings, challenger.version)
    return Decision.from_dict(decision)


def run_all(
    settings: Settings,
    sources: list[str],
    run_date: str,
    cfg: TrainConfig,
    fmt: str = "auto",
    force_promote: bool = False,
    dry_run: bool = False,
    require_approval: bool | None = None,
    **rules,
) -> dict:
    """Ingest -> validate -> prepare -> embedding -> train each model -> register -> evaluate -> gate.
    (prepare also validates earlier partitions never validated, and trains only on those that passed).
    The training parameters are checked before any of it (a bad one fails in seconds, not after FastText)."""
    from dataclasses import replace

    from pipelines.core.tracking import check_store, run_lease

    cfg = replace(cfg)  # TrainConfig.__post_init__ checks every field again, before any work
    check_store(settings)  # a lost store fails here, before anything is ingested or committed
    ingested = step_ingest(settings, sources, run_date, fmt)
    validation = step_validate(settings, run_date)
    dataset = step_prepare(settings, run_date, validation, {"meli.trigger": "cli"})
    # the parent run's lease from here to its end: a kill between steps leaves it to be marked FAILED
    with run_lease(settings, dataset.parent_run_id):
        return _run_steps(
            settings, run_date, cfg, force_promote, dry_run, require_approval, ingested, validation, dataset, rules
        )


def _run_steps(
    settings: Settings,
    run_date: str,
    cfg: TrainConfig,
    force_promote: bool,
    dry_run: bool,
    require_approval: bool | None,
    ingested: IngestResult,
    validation: Validated,
    dataset: Dataset,
    rules: dict,
) -> dict:
    from pipelines.training.runs import failing_parent

    done = {"ingest": ingested.to_dict(), "validation": validation.to_dict(), "dataset": dataset.to_dict()}
    with failing_parent(settings, dataset.parent_run_id):
        challenger = step_resume(settings, run_date, dataset.parent_run_id)
    if challenger is None:
        emb = step_embedding(settings, dataset, cfg)
        if emb.is_skipped:  # nothing new to train on: nothing trained, registered or gated
            return {**done, "skipped": emb.skipped}
        trained = step_train_all(settings, dataset, emb, cfg)
        results = step_ensemble(settings, dataset, trained, cfg)
        challenger = step_register(settings, results, run_date, parent_run_id=dataset.parent_run_id)
    else:
        results = []
    with failing_parent(settings, dataset.parent_run_id):
        step_evaluate(settings, run_date, challenger)
    decision = step_gate(
        settings,
        run_date,
        challenger,
        dataset.parent_run_id,
        force_promote,
        dry_run,
        require_approval=require_approval,
        **rules,
    )
    return {
        **done,
        "trained": [r.to_dict() for r in results],
        "challenger": challenger.to_dict(),
        "decision": decision.to_dict(),
    }
