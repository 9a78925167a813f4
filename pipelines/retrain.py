"""The retraining flow as plain functions: one per DAG task, and ``run_all`` chaining them in one
process (``python -m pipelines retrain``). The DAG calls exactly these functions."""

from __future__ import annotations

import logging
from pathlib import Path

from pipelines.config import TrainConfig
from pipelines.settings import Settings

log = logging.getLogger(__name__)


def step_ingest(
    settings: Settings, sources: list[str], run_date: str, fmt: str = "auto", allow_empty: bool = False
) -> dict:
    """Ingest ``sources``; with none, the landing folder's files (see ``landing_sources``)."""
    from pipelines.ingest import ingest

    if sources:
        return ingest(expand_sources(sources), run_date, settings, fmt=fmt, allow_empty=allow_empty).to_dict()
    paths = landing_sources(settings, run_date)
    result = ingest(paths, run_date, settings, fmt=fmt, allow_empty=allow_empty).to_dict()
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


def step_validate(settings: Settings, run_date: str) -> dict:
    from pipelines.validate import validate_partition

    return validate_partition(settings, run_date)


def step_prepare(settings: Settings, run_date: str, validation: dict | None, tags: dict | None = None) -> dict:
    """Freeze the run's dataset splits and open the parent MLflow run (with the GX report)."""
    import mlflow

    from pipelines.features import prepare_dataset
    from pipelines.train import start_parent_run

    dataset = prepare_dataset(settings, run_date)
    parent = start_parent_run(settings, run_date, dataset, tags)
    if validation:
        with mlflow.start_run(run_id=parent):
            docs = Path(validation["data_docs_dir"])
            if docs.is_dir():
                mlflow.log_artifacts(str(docs), artifact_path="validation/data_docs")
            if validation.get("report_json"):
                mlflow.log_artifact(validation["report_json"], artifact_path="validation")
            mlflow.set_tag(
                "meli.validation",
                f"{validation['passed']}/{validation['evaluated']} passed, {len(validation['warnings'])} warnings",
            )
    return {**dataset, "parent_run_id": parent}


def step_embedding(settings: Settings, dataset: dict, cfg: TrainConfig) -> dict:
    """The run's mode (full or warm, pipelines/warm.py), FastText on the training split (warm: the
    base's, continued on the new rows), then the splits encoded once as arrays for the trainings."""
    from pipelines.config import load_recipe
    from pipelines.encoded import encode_dataset
    from pipelines.features import train_embedding
    from pipelines.lake import atomic_write_json
    from pipelines.text import TextConfig
    from pipelines.train import embedding_config, log_embedding
    from pipelines.warm import PLAN_FILE, plan_run, warm_embedding

    recipe = load_recipe(settings.recipes_dir, cfg.recipe)  # a missing recipe fails here, before FastText
    plan = plan_run(settings, dataset, cfg, dataset["run_date"])
    if plan["mode"] == "warm":
        emb = warm_embedding(dataset["dir"], plan, cfg.seed)
    else:
        emb = train_embedding(dataset["dir"], embedding_config(cfg), TextConfig(), cfg.seed)
    emb["plan"] = plan
    atomic_write_json(Path(emb["dir"]) / PLAN_FILE, plan)  # full or warm, and why: for the summary and people
    # every split as arrays, once; each distinct word's pretrained vector (cached across runs)
    emb["encoded"] = encode_dataset(dataset["dir"], emb["dir"], cfg.sentence_encoder, settings.sentence_cache_dir)
    log_embedding(settings, dataset["parent_run_id"], emb, cfg)
    emb["recipe"] = recipe  # pinned for the run's train tasks ("tuned" resolved once, here)
    _record_recipe(settings, dataset["parent_run_id"], recipe)
    return emb


def _record_recipe(settings: Settings, parent_run_id: str, recipe: dict | None) -> None:
    """The run's recipe on its parent MLflow run: tag ``meli.recipe`` and param ``recipe`` (the id or
    "default"), and a tuned recipe's JSON as an artifact."""
    import mlflow

    from pipelines.tracking import configure

    configure(settings)
    with mlflow.start_run(run_id=parent_run_id):
        rid = recipe["id"] if recipe else "default"
        mlflow.set_tag("meli.recipe", rid)
        mlflow.log_param("recipe", rid)
        if recipe:
            mlflow.log_dict(recipe, f"recipe/{rid}.json")


def step_train(
    settings: Settings, dataset: dict, embedding: dict, kind: str, cfg: TrainConfig, side_by_side: int = 1
) -> dict:
    """Train one model type; ``side_by_side``: trainings sharing this machine's cores at once. The
    run's recipe (``embedding["recipe"]``, step_embedding) sets this type's defaults (apply_recipe)."""
    from pipelines.config import apply_recipe
    from pipelines.train import train_classifier

    cfg = apply_recipe(cfg, kind, embedding.get("recipe"))
    result = train_classifier(
        settings,
        dataset["dir"],
        embedding["dir"],
        kind,
        cfg,
        parent_run_id=dataset["parent_run_id"],
        run_date=dataset["run_date"],
        threads=settings.train_threads(side_by_side),
        plan=embedding.get("plan"),
    )
    return {**result, "recipe": cfg.recipe}


def step_train_all(settings: Settings, dataset: dict, embedding: dict, cfg: TrainConfig) -> list[dict]:
    """Every model type of ``cfg``, ``settings.train_concurrency`` side by side in worker processes
    (as the DAG's mapped train tasks run, each with its share of the cores); results in
    ``cfg.models`` order. One at a time where worker processes cannot start (a daemonic process,
    such as a Celery prefork child) or only one trains."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    side_by_side = min(settings.train_concurrency, len(cfg.models))
    if side_by_side <= 1 or mp.current_process().daemon:
        return [step_train(settings, dataset, embedding, kind, cfg) for kind in cfg.models]
    from pipelines.tracking import configure

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


def step_ensemble(settings: Settings, dataset: dict, results: list[dict], cfg: TrainConfig) -> list[dict]:
    """The trained models plus, when enabled and at least two trained, their mean as a candidate."""
    from pipelines.train import train_ensemble

    results = list(results)
    if cfg.ensemble:
        ens = train_ensemble(settings, dataset["dir"], results, dataset.get("parent_run_id"), dataset["run_date"])
        if ens is not None:
            results.append(ens)
    return results


def step_register(
    settings: Settings, results: list[dict], run_date: str, dag_run_id: str = "", parent_run_id: str | None = None
) -> dict:
    """Register the run's best model; ``challenger.json`` in the run dir names it for a later
    ``python -m pipelines promote --run-date D`` (the same version the DAG or ``train`` registered)."""
    from pipelines.lake import atomic_write_json
    from pipelines.registry import register_challenger
    from pipelines.train import pick_challenger

    best = pick_challenger(results)
    log.info(
        "challenger of %s: %s (val macro-recall %.4f) among %s",
        run_date,
        best["model_type"],
        best["val_macro_recall"],
        [(r["model_type"], r["val_macro_recall"]) for r in results],
    )
    challenger = register_challenger(settings, best, run_date, dag_run_id)
    recipe = next((r["recipe"] for r in results if r.get("recipe")), "default")  # one recipe per run
    import mlflow

    mlflow.MlflowClient().set_model_version_tag(settings.model_name, challenger["version"], "meli.recipe", recipe)
    atomic_write_json(settings.run_dir(run_date) / "challenger.json", {**challenger, "parent_run_id": parent_run_id})
    from pipelines.card import try_write_card

    try_write_card(settings, challenger["version"])  # data, validation, training; the gate adds the rest
    return challenger


def step_evaluate(settings: Settings, run_date: str, challenger: dict) -> dict:
    from pipelines.registry import evaluate

    ev = evaluate(settings, run_date, challenger["version"])
    from pipelines.monitor import try_build_reference

    # what the drift monitor compares scored batches with (best effort: built on first monitor if missing)
    reference = try_build_reference(settings, run_date, challenger["version"])
    return {"run_date": run_date, "models": ev["models"], "test_rows": ev["test_rows"], "monitor_reference": reference}


def step_gate(
    settings: Settings,
    run_date: str,
    challenger: dict,
    parent_run_id: str | None,
    force_promote: bool = False,
    dry_run: bool = False,
    dag_run_id: str = "",
    require_approval: bool | None = None,
    **rules,
) -> dict:
    """Decide (and apply, or with ``require_approval`` leave pending for a person); the version's
    model card is rewritten with the decision. ``MELI_REQUIRE_APPROVAL`` is a floor (``registry.gate``):
    ``require_approval`` (None = the deployment's) can add approval, never remove it."""
    from pipelines.card import try_write_card
    from pipelines.registry import gate, with_rules

    decision = gate(
        settings,
        run_date,
        challenger["version"],
        with_rules(settings.gate, **rules),
        force_promote=force_promote,
        dry_run=dry_run,
        dag_run_id=dag_run_id,
        parent_run_id=parent_run_id,
        require_approval=settings.require_approval if require_approval is None else require_approval,
    )
    try_write_card(settings, challenger["version"])
    return decision


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
    """Ingest -> validate -> prepare -> embedding -> train each model -> register -> evaluate -> gate."""
    ingested = step_ingest(settings, sources, run_date, fmt)
    validation = step_validate(settings, run_date)
    dataset = step_prepare(settings, run_date, validation, {"meli.trigger": "cli"})
    emb = step_embedding(settings, dataset, cfg)
    trained = step_train_all(settings, dataset, emb, cfg)
    results = step_ensemble(settings, dataset, trained, cfg)
    challenger = step_register(settings, results, run_date, parent_run_id=dataset["parent_run_id"])
    step_evaluate(settings, run_date, challenger)
    decision = step_gate(
        settings,
        run_date,
        challenger,
        dataset["parent_run_id"],
        force_promote,
        dry_run,
        require_approval=require_approval,
        **rules,
    )
    return {
        "ingest": ingested,
        "validation": validation,
        "dataset": dataset,
        "trained": results,
        "challenger": challenger,
        "decision": decision,
    }
