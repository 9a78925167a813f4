"""Hyperparameter tuning: an Optuna study over the training recipe, its best trial a versioned recipe.

One study per model type (Optuna study ``<study>.<kind>``) in the storage ``settings.tune_storage``
(SQLite under ``$MELI_HOME/tune/`` by default; Postgres in the distributed profile), so a study
resumes after a crash and several workers (processes, Airflow mapped tasks on the ``gpu`` queue) can
run trials of the same study at once. The study trains on the lake's current train/validation
split, prepared once per study under ``$MELI_HOME/tune/<study>/`` (dataset, FastText, encoded
arrays); a trial never reads the test split. Trial 0 of every study is TrainConfig's defaults (the
"default recipe"), so the best trial is compared with the default on the same data and epochs.

TPE samples the parameters of ``SEARCH_SPACE``; the pruner (median or Hyperband) reads each epoch's
validation macro-recall. Every trial is an MLflow child run of the study's run in the experiment
``settings.tune_experiment`` (``meli-tune``): params, per-epoch curves, tag ``meli.trial_state``.

``make_recipe`` turns the best trial of each model type into a recipe, ``recipes/<id>.json``
(logged to the study's MLflow run too); ``recipe=tuned`` in a retrain is the latest one
(pipelines/config.py ``load_recipe`` / ``apply_recipe``). A tuned recipe's model is a challenger
like any other: it replaces the champion only through the gate.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from pipelines.config import MODEL_TYPES, NAME_RE, Bound, TrainConfig, bounds_of, check_choices, check_name, declare
from pipelines.core.paths import confined
from pipelines.core.system import usable_cores
from pipelines.settings import Settings

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")  # an MLflow run id

log = logging.getLogger(__name__)

# The search space, one place: field -> ("log" low high | "float" low high | "int" low high | "cat" [choices]).
# Every TrainConfig default lies inside its range (trial 0 enqueues the defaults).
COMMON_SPACE: dict[str, tuple] = {
    "lr": ("log", 1e-3, 2e-2),
    "embedding_lr": ("log", 3e-3, 6e-2),
    "dropout": ("float", 0.1, 0.5),
    "weight_decay": ("log", 1e-5, 1e-3),
    "label_smoothing": ("float", 0.0, 0.2),
    "batch_size": ("cat", [64, 128, 256, 512, 1024]),  # issue 34: the CPU's batch searched with the rates
    "wide_dim": ("cat", [0, 64, 128, 256]),
}
SEARCH_SPACE: dict[str, dict[str, tuple]] = {
    "mlp": {**COMMON_SPACE, "hidden": ("cat", [256, 512, 768, 1024])},
    "cnn": dict(COMMON_SPACE),
    "bilstm": dict(COMMON_SPACE),
}
PRUNERS = ("median", "hyperband", "none")


@dataclass
class TuneConfig:
    """A tuning study, each field declared once (pipelines/config.py ``declare``): a ``tune`` flag and a
    meli_tune Param. ``trials``: per model type, counted over every worker and restart (complete +
    pruned trials); ``budget_s``: wall-clock seconds of one call (every model type together)."""

    models: list[str] = declare(
        ["mlp"],
        title="Model types",
        help="One Optuna study per type; the recipe holds each type's best parameters.",
        section="Model",
        choices=MODEL_TYPES,
    )
    trials: int = declare(
        20,
        title="Trial budget (per model type)",
        help="Finished (complete or pruned) trials per type, over every worker and rerun.",
        section="Training",
        bound=Bound(1, 10_000),
    )
    budget_s: float = declare(
        7200.0,
        title="Wall-clock budget (seconds)",
        help="Each worker stops starting trials after this long (every model type together).",
        section="Training",
        bound=Bound(0, 43_200, lo_open=True),  # the worker task's execution_timeout: 12 h
    )
    pruner: str = declare(
        "median",
        title="Pruner",
        help="median: stop a trial whose epoch's validation macro-recall is below the median of earlier trials at "
        "that epoch; hyperband: successive halving over epochs; none.",
        section="Training",
        choices=PRUNERS,
    )
    # median: never prune during the first ``startup_trials`` trials, nor before epoch ``warmup_epochs`` + 1
    startup_trials: int = declare(
        2,
        title="Median pruner: trials never pruned first",
        help="The median pruner prunes no trial among the first this many.",
        section="Training",
        bound=Bound(0, 1000),
    )
    warmup_epochs: int = declare(
        1,
        title="Median pruner: epochs never pruned first",
        help="The median pruner prunes no trial before this many epochs.",
        section="Training",
        bound=Bound(0, 200),
    )
    max_epochs: int = declare(
        0,
        title="Epochs per trial",
        help="Early stopping within them; 0 = the base recipe's epochs (TrainConfig's).",
        section="Training",
        bound=Bound(0, 200),
    )
    study: str = declare(
        "",
        title="Study name",
        help="Empty = meli-tune-<run date>. The same name resumes that study (its finished trials count).",
        section="Training",
        pattern=f"^$|{NAME_RE.pattern}",
        optional=True,
    )
    seed: int = declare(
        13,
        title="Sampler seed",
        help="Seed of the Optuna sampler.",
        section="Training",
        bound=Bound(0, 2**32 - 1),
        param=False,
    )
    workers: int = declare(
        1,
        title="Workers",
        help="Trial processes side by side on this machine (CLI); meli_tune maps this many worker tasks "
        "(queue MELI_TRAIN_QUEUE) running trials of the same study at once.",
        section="Training",
        bound=Bound(1, 32),
    )

    def __post_init__(self) -> None:
        if isinstance(self.models, str):
            self.models = [m.strip() for m in self.models.split(",") if m.strip()]
        check_choices(self)  # models, pruner
        for name, bound in TUNE_BOUNDS.items():
            bound.check(name, getattr(self, name))
        if self.study:  # a folder under $MELI_HOME/tune/ and a recipe id prefix
            check_name(self.study, "study")


# the bounds of TuneConfig's numeric fields, from their declaration: checked by TuneConfig, carried by
# meli_tune's Params (issue 35 item 9)
TUNE_BOUNDS: dict[str, Bound] = bounds_of(TuneConfig)


def latest_run_date(settings: Settings) -> str:
    """The newest committed lake partition's date: a study's default (the lake's current snapshot)."""
    from pipelines.data.lake import snapshot

    snap = snapshot(settings.listings_dir)
    if not snap:
        raise FileNotFoundError(f"no committed lake partition under {settings.listings_dir}: ingest data first")
    return max(snap)


def study_name(tcfg: TuneConfig, run_date: str) -> str:
    return check_name(tcfg.study or f"meli-tune-{run_date}", "study")


def prepared_study(settings: Settings, name: str) -> dict:
    """A study's ``prepared.json``; the folders it names must lie under the study's folder."""
    root = settings.tune_dir / name
    info = json.loads((root / "prepared.json").read_text())
    for key in ("dataset_dir", "embedding_dir"):
        confined(info[key], root)
    # the run whose embedding record (meli.embedding_sha256) vouches for the study's FastText: an MLflow run id
    if not isinstance(info.get("mlflow_run_id"), str) or not _RUN_ID.fullmatch(info["mlflow_run_id"]):
        raise ValueError(
            f"{root / 'prepared.json'}: mlflow_run_id {str(info.get('mlflow_run_id'))[:100]!r} is not an MLflow run id"
        )
    return info


def default_params(kind: str, base: TrainConfig | None = None) -> dict:
    """Trial 0: the base recipe's values (TrainConfig's defaults) of the searched fields."""
    base = base or TrainConfig()
    return {k: getattr(base, k) for k in SEARCH_SPACE[kind]}


def suggest(trial, kind: str) -> dict:
    out = {}
    for name, spec in SEARCH_SPACE[kind].items():
        if spec[0] == "log":
            out[name] = trial.suggest_float(name, spec[1], spec[2], log=True)
        elif spec[0] == "float":
            out[name] = trial.suggest_float(name, spec[1], spec[2])
        elif spec[0] == "int":
            out[name] = trial.suggest_int(name, spec[1], spec[2])
        else:
            out[name] = trial.suggest_categorical(name, spec[1])
    return out


def tune_settings(settings: Settings) -> Settings:
    """The settings of a study's MLflow runs: the tuning experiment, same stores."""
    return replace(settings, experiment=settings.tune_experiment)


def storage(settings: Settings):
    """The Optuna RDB storage. SQLite: a 60 s busy timeout (workers on one machine share the file);
    heartbeats let a later worker fail a crashed worker's trial, and a failed trial is retried once
    (with its parameters) so that a crash never loses the default trial."""
    import optuna

    url = settings.tune_storage
    kwargs = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 60}}
    else:
        kwargs = {"pool_pre_ping": True}
    import warnings

    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5: nothing for a person to act on
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=kwargs,
            heartbeat_interval=60,
            grace_period=180,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        )


def _pruner(tcfg: TuneConfig, epochs: int):
    import optuna

    if tcfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tcfg.startup_trials, n_warmup_steps=tcfg.warmup_epochs)
    if tcfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(settings: Settings, name: str, kind: str, tcfg: TuneConfig, epochs: int, worker: int = 0):
    """The study of ``kind`` (created if new). Its TPE sampler's seed is ``tcfg.seed`` + ``worker`` + the
    trials the study already holds: reproducible, yet two workers (or a resumed worker) never replay the
    same random start-up samples."""
    import optuna

    study = optuna.create_study(
        storage=storage(settings),
        study_name=f"{name}.{kind}",
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=tcfg.seed, n_startup_trials=5, constant_liar=True),
        pruner=_pruner(tcfg, epochs),
        load_if_exists=True,
    )
    seed = tcfg.seed + 1000 * worker + len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, constant_liar=True)
    return study


def _safe_url(url: str) -> str:
    """A storage URL without its password (for records)."""
    import re

    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def prepare(settings: Settings, run_date: str, tcfg: TuneConfig, base: TrainConfig | None = None) -> dict:
    """Once per study (later calls and other workers read ``prepared.json``): the lake's snapshot as of
    ``run_date`` split into train/validation/test under ``$MELI_HOME/tune/<study>/``, FastText on its
    train split, the splits encoded; the study's MLflow run; each model type's study with trial 0
    (the base recipe) enqueued. Nothing here reads the test split's contents."""
    from pipelines.core.fs import atomic_write_json
    from pipelines.core.locks import file_lock

    base = base or TrainConfig()
    name = study_name(tcfg, run_date)
    root = settings.tune_dir / name
    marker = root / "prepared.json"
    with file_lock(root.parent / f".{name}.prepare.lock", settings.lock_timeout_s, f"tuning study {name}"):
        if marker.exists():
            info = prepared_study(settings, name)
        else:
            info = _prepare_data(settings, run_date, name, root, base, tcfg)
            atomic_write_json(marker, info)
    epochs = info["epochs"]
    for kind in tcfg.models:
        study = open_study(settings, name, kind, tcfg, epochs)
        study.set_user_attr("mlflow_run_id", info["mlflow_run_id"])
        study.set_user_attr("data_version", info["data_version"])
        study.enqueue_trial(default_params(kind, base), user_attrs={"recipe": "default"}, skip_if_exists=True)
    return info


def _prepare_data(settings: Settings, run_date: str, name: str, root: Path, base: TrainConfig, tcfg) -> dict:
    import mlflow

    from pipelines.core.tracking import configure
    from pipelines.data.validate import validate_pending
    from pipelines.features.embedding import EMBEDDING_SHA_TAG, embedding_config, prepare_dataset, train_embedding
    from pipelines.features.encoded import encode_dataset
    from pipelines.features.text import TextConfig

    validate_pending(settings, run_date)  # as train does: never-validated partitions first, only passed ones read
    # the same lake, its splits written under the study's folder (never over a retrain's run dir)
    local = replace(settings, home=root, lake_uri=str(settings.lake))
    dataset = prepare_dataset(local, run_date)
    emb = train_embedding(dataset["dir"], embedding_config(base, dataset["counts"]["train"]), TextConfig(), base.seed)
    encode_dataset(dataset["dir"], emb["dir"], base.sentence_encoder, settings.sentence_cache_dir)
    ts = tune_settings(settings)
    configure(ts)
    info_ds = json.loads((Path(dataset["dir"]) / "dataset.json").read_text())
    epochs = tcfg.max_epochs or base.epochs
    with mlflow.start_run(run_name=f"study-{name}") as run:
        mlflow.set_tags(
            {
                "meli.stage": "tune",
                "meli.study": name,
                "meli.run_date": run_date,
                "meli.data_version": info_ds.get("data_version", ""),
                "meli.tune_storage": _safe_url(settings.tune_storage),
                EMBEDDING_SHA_TAG: json.dumps(emb["sha256"], sort_keys=True, separators=(",", ":")),
            }
        )
        mlflow.log_params(
            {
                "models": ",".join(tcfg.models),
                "trials": tcfg.trials,
                "pruner": tcfg.pruner,
                "epochs_per_trial": epochs,
                **{f"rows_{k}": v for k, v in dataset["counts"].items()},
            }
        )
        mlflow.log_dict({k: {p: list(s) for p, s in v.items()} for k, v in SEARCH_SPACE.items()}, "search_space.json")
        run_id = run.info.run_id
    return {
        "study": name,
        "run_date": run_date,
        "dataset_dir": dataset["dir"],
        "embedding_dir": emb["dir"],
        "data_version": info_ds.get("data_version", ""),
        "counts": dataset["counts"],
        "mlflow_run_id": run_id,
        "epochs": epochs,
        "base": base.to_dict(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_worker(
    settings: Settings, run_date: str, tcfg: TuneConfig, threads: int | None = None, on_trial=None, worker: int = 0
) -> dict:
    """One worker: trials of each model type's study until it holds ``tcfg.trials`` finished trials
    (complete or pruned, every worker's) or ``tcfg.budget_s`` has passed. ``prepare`` must have run.
    ``on_trial(kind, frozen trial)`` after each trial of this worker. Returns the trials it ran."""
    import optuna
    from optuna.trial import TrialState

    from pipelines.core.faults import point

    name = study_name(tcfg, run_date)
    info = prepared_study(settings, name)
    base = TrainConfig(**info["base"])
    ts = tune_settings(settings)
    deadline = time.monotonic() + tcfg.budget_s
    ran: dict[str, list[int]] = {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for i, kind in enumerate(tcfg.models):
        study = open_study(settings, name, kind, tcfg, info["epochs"], worker)
        left = tcfg.trials - _finished(study)
        remaining_s = deadline - time.monotonic()
        if left <= 0 or remaining_s <= 0:
            continue
        share_s = remaining_s / (len(tcfg.models) - i)  # each type its share of what is left
        ran[kind] = []

        def after(study, trial, kind=kind) -> None:
            ran[kind].append(trial.number)
            log.info(
                "%s trial %d %s: %s (finished %d/%d)",
                kind, trial.number, trial.state.name, trial.value, _finished(study), tcfg.trials,
            )  # fmt: skip
            if on_trial is not None:
                on_trial(kind, trial)
            point(f"tune.after_trial_{trial.number}")  # crash tests: killed once this trial is stored

        study.optimize(
            lambda trial, kind=kind: objective(trial, ts, info, base, kind, threads),
            n_trials=left,
            timeout=share_s,
            callbacks=[
                after,
                optuna.study.MaxTrialsCallback(tcfg.trials, states=(TrialState.COMPLETE, TrialState.PRUNED)),
            ],
            gc_after_trial=True,
        )
    return ran


def objective(trial, ts: Settings, info: dict, base: TrainConfig, kind: str, threads: int | None) -> float:
    """Train ``kind`` with the trial's parameters (selection pass only, no refit, no logged model) as
    a child run of the study's MLflow run; report each epoch's validation macro-recall to the pruner."""
    import mlflow
    import optuna

    from pipelines.core.tracking import configure
    from pipelines.features.embedding import EMBEDDING_SHA_TAG, EmbeddingIntegrityError
    from pipelines.training.train import train_classifier

    params = suggest(trial, kind)
    cfg = replace(base, models=[kind], refit=False, ensemble=False, epochs=info["epochs"], **params)
    state = {"run_id": None}

    def report(epoch: int, val_mr: float) -> None:
        if state["run_id"] is None:
            run = mlflow.active_run()
            state["run_id"] = run.info.run_id
            mlflow.set_tags(
                {"meli.stage": "tune-trial", "meli.trial": trial.number, "meli.study": trial.study.study_name}
            )
            trial.set_user_attr("mlflow_run_id", state["run_id"])
        trial.report(val_mr, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} (val macro-recall {val_mr:.4f})")

    # the study's FastText, unpickled only if its files are those its MLflow run recorded (older studies: none)
    configure(ts)
    record = mlflow.MlflowClient().get_run(info["mlflow_run_id"]).data.tags.get(EMBEDDING_SHA_TAG)
    if not record:
        raise EmbeddingIntegrityError(
            f"study {info['study']}: its MLflow run {info['mlflow_run_id']} records no sha256 of the FastText "
            f"({EMBEDDING_SHA_TAG}), so it is not loaded: start a new study"
        )
    try:
        result = train_classifier(
            ts,
            info["dataset_dir"],
            info["embedding_dir"],
            kind,
            cfg,
            parent_run_id=info["mlflow_run_id"],
            run_date=f"{info['run_date']}-trial{trial.number}",
            threads=threads,
            epoch_callback=report,
            log_model=False,
            embedding_sha256=record,
        )
    except optuna.TrialPruned:
        _end_trial_run(state["run_id"], "PRUNED")
        raise
    except BaseException:
        _end_trial_run(state["run_id"], "FAIL")
        raise
    _end_trial_run(result["run_id"], "COMPLETE")
    trial.set_user_attr("best_epoch", result["best_epoch"])
    trial.set_user_attr("train_seconds", result["train_seconds"])
    return float(result["val_macro_recall"])


def _end_trial_run(run_id: str | None, trial_state: str) -> None:
    if not run_id:
        return
    import mlflow

    client = mlflow.MlflowClient()
    client.set_tag(run_id, "meli.trial_state", trial_state)
    if trial_state == "PRUNED":
        client.set_terminated(run_id, "KILLED")  # pruned, not broken: KILLED in MLflow's list


def summary(settings: Settings, run_date: str, tcfg: TuneConfig) -> dict:
    """Per model type: trial counts by state, the default trial's and the best trial's values."""
    from optuna.trial import TrialState

    name = study_name(tcfg, run_date)
    info = prepared_study(settings, name)
    out = {"study": name, "storage": _safe_url(settings.tune_storage), "mlflow_run_id": info["mlflow_run_id"]}
    for kind in tcfg.models:
        study = open_study(settings, name, kind, tcfg, info["epochs"])
        trials = study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        default = next((t for t in done if t.user_attrs.get("recipe") == "default"), None)
        best = max(done, key=lambda t: t.value) if done else None
        out[kind] = {
            "trials": {k: v for k, v in counts.items() if v},
            "default_trial": default.number if default else None,
            "default_val_macro_recall": default.value if default else None,
            "best_trial": best.number if best else None,
            "best_val_macro_recall": best.value if best else None,
            "best_params": best.params if best else None,
        }
    return out


def make_recipe(settings: Settings, run_date: str, tcfg: TuneConfig) -> dict:
    """The best complete trial of each model type as a new recipe version ``<study>-r<N>``, written
    atomically to ``recipes/<id>.json`` and logged to the study's MLflow run."""
    import mlflow

    from pipelines.core.fs import atomic_write_json
    from pipelines.core.locks import file_lock
    from pipelines.core.tracking import configure

    s = summary(settings, run_date, tcfg)
    name = s["study"]
    missing = [k for k in tcfg.models if s[k]["best_trial"] is None]
    if missing:
        raise ValueError(f"study {name}: no complete trial for {missing} yet")
    info = prepared_study(settings, name)
    settings.recipes_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(settings.recipes_dir / ".lock", settings.lock_timeout_s, "tuned recipes"):
        n = 1 + len(list(settings.recipes_dir.glob(f"{name}-r*.json")))
        rid = f"{name}-r{n}"
        recipe = {
            "id": rid,
            "study": name,
            "storage": s["storage"],
            "created_at": datetime.now(UTC).isoformat(timespec="microseconds"),
            "models": list(tcfg.models),
            "params": {k: s[k]["best_params"] for k in tcfg.models},
            "best_val_macro_recall": {k: s[k]["best_val_macro_recall"] for k in tcfg.models},
            "default_val_macro_recall": {k: s[k]["default_val_macro_recall"] for k in tcfg.models},
            "best_trial": {k: s[k]["best_trial"] for k in tcfg.models},
            "default_trial": {k: s[k]["default_trial"] for k in tcfg.models},
            "trials": {k: s[k]["trials"] for k in tcfg.models},
            "epochs_per_trial": info["epochs"],
            "data_version": info["data_version"],
            "run_date": run_date,
            "mlflow_run_id": info["mlflow_run_id"],
            "tune_config": asdict(tcfg),
        }
        atomic_write_json(settings.recipes_dir / f"{rid}.json", recipe)
    configure(tune_settings(settings))
    client = mlflow.MlflowClient()
    client.log_dict(info["mlflow_run_id"], recipe, f"recipes/{rid}.json")
    client.set_tag(info["mlflow_run_id"], "meli.recipe", rid)
    for k in tcfg.models:
        client.log_metric(info["mlflow_run_id"], f"best_val_macro_recall_{k}", recipe["best_val_macro_recall"][k])
        if recipe["default_val_macro_recall"][k] is not None:
            client.log_metric(
                info["mlflow_run_id"], f"default_val_macro_recall_{k}", recipe["default_val_macro_recall"][k]
            )
    log.info("recipe %s: %s", rid, recipe["params"])
    return recipe


def _worker_main(settings: Settings, run_date: str, tcfg: TuneConfig, threads: int, level: int, worker: int) -> dict:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "gensim", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return run_worker(settings, run_date, tcfg, threads, worker=worker)


def tune(settings: Settings, run_date: str, tcfg: TuneConfig, base: TrainConfig | None = None) -> dict:
    """prepare -> ``tcfg.workers`` workers side by side (spawned processes, each its share of the
    cores as torch threads) -> a recipe from the best trials. Resumes a study of the same name."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.monotonic()
    info = prepare(settings, run_date, tcfg, base)
    tcfg = replace(tcfg, budget_s=max(1.0, tcfg.budget_s - (time.monotonic() - t0)))
    cores = usable_cores()
    threads = settings.torch_threads or max(1, cores // tcfg.workers)
    if tcfg.workers == 1 or mp.current_process().daemon:
        run_worker(settings, run_date, tcfg, threads)
    else:
        with ProcessPoolExecutor(max_workers=tcfg.workers, mp_context=mp.get_context("spawn")) as pool:
            level = logging.getLogger().level
            futures = [
                pool.submit(_worker_main, settings, run_date, tcfg, threads, level, i) for i in range(tcfg.workers)
            ]
            for f in futures:
                f.result()
    recipe = make_recipe(settings, run_date, tcfg)
    return {"study": info["study"], "recipe": recipe, "summary": summary(settings, run_date, tcfg)}
