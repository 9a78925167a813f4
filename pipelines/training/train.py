"""Training: PyTorch classifiers on the FastText-initialised embedding, tracked in MLflow.

Same code path on CUDA (bf16 autocast, pinned memory) and CPU. Early stopping on validation
macro-recall; the best epoch's weights are the ones kept and logged as a pyfunc model.

``train_classifier`` is the recipe, top to bottom; the loop itself (model, batches, optimisers,
schedule) is pipelines/training/loop.py, what a run records in MLflow is pipelines/training/runs.py, and
the arrays a batch is cut from are pipelines/features/batches.py (shared with serving).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipelines.config import TrainConfig
from pipelines.core.fs import atomic_tree, writing
from pipelines.core.system import pick_device
from pipelines.features.batches import EncodedSplit
from pipelines.features.embedding import TitleEncoder, read_split
from pipelines.features.encoded import load_encoded
from pipelines.settings import Settings
from pipelines.training.loop import (
    Fit,
    checks_per_epoch,
    evaluate_split,
    planned_epochs,
    refit,
    refit_plan,
    select,
)
from pipelines.training.runs import (
    dataset_lineage,
    log_model_run,
    log_served_model,
    member_val_probs,
    start_model_run,
)

log = logging.getLogger(__name__)


def train_classifier(
    settings: Settings,
    dataset_dir: str | Path,
    embedding_dir: str | Path,
    kind: str,
    cfg: TrainConfig,
    parent_run_id: str | None = None,
    run_date: str = "",
    threads: int | None = None,
    plan: dict | None = None,
    epoch_callback=None,
    log_model: bool = True,
    embedding_sha256: dict | None = None,
) -> dict:
    """Train one model type and log it to MLflow. Returns a small dict for XCom. ``threads``: torch
    CPU threads for this process (default: torch's, all cores); set it when trainings run side by side.

    Selection pass: train on the train split, early stopping on validation macro-recall (the best
    epoch's weights are kept). With ``cfg.refit`` the served model is then retrained from the same
    initialisation on train + validation for exactly that many epochs (same learning-rate schedule):
    ~14% more labelled rows, which the selection pass showed are worth ~0.3 points of macro-recall.
    Validation metrics, diagnostics and the ensemble search always come from the selection pass
    (``diagnostics/val_probs.npy``); the refit model is judged on the frozen test split by the gate.

    ``plan`` (pipelines/training/warm.py; None = full): in a warm plan this type starts from its parent's
    weights and both passes train on the new or changed rows plus a replay sample, for at most
    ``cfg.warm_epochs`` epochs.

    ``epoch_callback(epoch, val_macro_recall)`` (hyperparameter tuning, pipelines/training/tune.py) is called
    after each selection-pass epoch is logged; it may raise (e.g. ``optuna.TrialPruned``) to stop the
    run there. ``log_model=False``: no bundle and no logged model (a tuning trial; result model_uri "").
    ``embedding_sha256`` (the embedding step's record): the FastText is unpickled only if its files match.
    """
    import mlflow
    import torch

    dataset_dir, embedding_dir = Path(dataset_dir), Path(embedding_dir)
    device = pick_device(cfg.device if cfg.device != "auto" else settings.device)
    if threads and device.type == "cpu":
        torch.set_num_threads(threads)
    encoder = TitleEncoder.load(embedding_dir / "encoder.json")
    encoded = load_encoded(dataset_dir, embedding_dir, cfg.sentence_encoder, settings.sentence_cache_dir)
    train_data, val_data = encoded.split("train"), encoded.split("validation")
    train_df = read_split(dataset_dir, "train", columns=["listing_id", "category", "ingest_date"])
    val_df = read_split(dataset_dir, "validation", columns=["category"])
    y_val_names = val_df["category"].tolist()
    y_val = np.asarray(val_data.labels, dtype=np.int64)  # -1: class absent from train
    fit = Fit(kind, cfg, encoder, encoded.labels, device, embedding_dir, embedding_sha256)
    fit.set_tokens(encoded.tokens, encoded.sentence)
    keep = np.flatnonzero(y_val >= 0)  # a validation row whose class train lacks has no label id
    idf_data = EncodedSplit.concat([train_data, val_data.take(keep)])  # refit's rows and idf: every labelled row
    rows = _training_rows(settings, plan, fit, run_date, train_df, train_data)

    fit.size_for(len(rows.data))
    checks = checks_per_epoch(cfg, len(rows.data))
    do_refit, refit_why = refit_plan(cfg, rows.mode, len(train_data))
    check_idx = _val_sample(len(val_data), cfg.val_sample_rows, cfg.seed)
    with start_model_run(settings, kind, run_date, parent_run_id) as run:
        log_model_run(dataset_dir, run_date, fit, rows.mode, rows.lineage, train_df)
        # the cost policy (issue 34), as this run applied it to its data
        mlflow.set_tags({"meli.refit": f"{'yes' if do_refit else 'no'}: {refit_why}"})
        mlflow.log_metrics(
            {"planned_epochs": rows.epochs, "checks_per_epoch": checks, "val_check_rows": len(check_idx)}
        )
        # selection pass: train split only, early stopping on validation macro-recall (checks: on the
        # fixed validation sample; the kept weights are then scored on the whole split)
        check_data = val_data if len(check_idx) == len(val_data) else val_data.take(check_idx)
        check_names = y_val_names if len(check_idx) == len(val_data) else [y_val_names[i] for i in check_idx]
        evaluate = lambda model: evaluate_split(fit, model, check_data, y_val[check_idx], check_names)  # noqa: E731
        best = select(fit, train_data, rows.data, rows.epochs, evaluate, mlflow.log_metrics, epoch_callback, checks)
        if len(check_idx) < len(val_data) and best.state is not None:
            best.val_check = best.val
            best.val, _, best.probs = evaluate_split(fit, _with_state(fit, best.state), val_data, y_val,
                                                     y_val_names)  # fmt: skip
        state, train_seconds = best.state, best.seconds
        metrics = _selection_metrics(best, rows)
        # the served model: same recipe, train + validation rows, the best check's share of the schedule.
        # Not in warm mode (its extra rows would be the new partitions' validation rows, ~10% of a
        # night, for twice the time), nor past refit_max_rows training rows
        if do_refit:
            state, refit_seconds = refit(fit, idf_data, rows.epochs, best.epoch, mlflow.log_metrics, checks)
            metrics |= {"refit_rows": len(idf_data), "refit_seconds": refit_seconds, "refit_epochs": best.epoch}
            train_seconds += refit_seconds
        mlflow.log_metrics(metrics)
        if not log_model:
            return {"model_type": kind, "run_id": run.info.run_id, "model_uri": "", "device": str(device),
                    "val_macro_recall": round(best.val, 6), "best_epoch": best.epoch,
                    "train_seconds": round(train_seconds, 2)}  # fmt: skip

        bundle_dir = Path(settings.run_dir(run_date or "adhoc")) / "models" / kind / "bundle"
        _save_bundle(bundle_dir, state, fit, embedding_dir, encoded)
        info = log_served_model(bundle_dir, val_df, best.probs, dataset_dir)
        mlflow.set_tag("meli.model_uri", info.model_uri)  # a later warm run may start from it
        result = _result(kind, run.info.run_id, info.model_uri, best, train_seconds, fit, rows)
        log.info("%s trained: %s", kind, result)
        return result


def _selection_metrics(best, rows: _TrainingSet) -> dict:
    return {
        "best_val_macro_recall": best.val,
        "best_epoch": best.epoch,
        "train_seconds": best.seconds,
        "train_samples_per_s": best.seen / max(best.seconds, 1e-9),
        "train_rows": len(rows.data),
        "train_rows_new": rows.n_new,
        "train_rows_replayed": rows.n_replay,
    } | ({"val_check_macro_recall": best.val_check} if best.val_check is not None else {})


def _result(kind: str, run_id: str, model_uri: str, best, train_seconds: float, fit: Fit, rows: _TrainingSet) -> dict:
    """A trained model, for XCom and the registry."""
    return {
        "model_type": kind,
        "run_id": run_id,
        "model_uri": model_uri,
        "val_macro_recall": round(best.val, 6),
        "best_epoch": best.epoch,
        "train_seconds": round(train_seconds, 2),
        "device": str(fit.device),
        "refit": refit_plan(fit.cfg, rows.mode, rows.n_train)[0],
        "mode": rows.mode,
        "parent_version": rows.parent["version"] if rows.parent else "",
        "full_run_date": rows.lineage["meli.full_run_date"],
        "train_rows": len(rows.data),
    }


def _val_sample(n: int, size: int, seed: int) -> np.ndarray:
    """The validation rows every check scores: all of them, or a fixed sample of ``size`` (sorted)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _with_state(fit: Fit, state: dict):
    """A model of ``fit``'s recipe holding ``state`` (the kept weights), in eval mode."""
    model = fit.new_model(None)  # the idf comes with the state
    model.load_state_dict({k: v.to(fit.device) for k, v in state.items()})
    return model.eval()


class _TrainingSet(NamedTuple):
    """What a model type trains on: its rows and epochs, full or warm, with the run tags that say so."""

    data: EncodedSplit
    epochs: int
    mode: str
    lineage: dict
    n_new: int
    n_replay: int
    parent: dict | None
    n_train: int = 0  # the training split's rows (the refit policy reads them)


def _training_rows(
    settings: Settings, plan: dict | None, fit: Fit, run_date: str, train_df, train_data
) -> _TrainingSet:
    """Full: every train row for ``cfg.epochs``. Warm (this type has a parent in the plan): the
    parent's weights (``fit.parent``), the rows new or changed since its snapshot plus a replay sample,
    ``cfg.warm_epochs``."""
    kind, cfg = fit.model_cfg.kind, fit.cfg
    parent = (plan or {}).get("parents", {}).get(kind) if (plan or {}).get("mode") == "warm" else None
    if parent is None:
        lineage = {"meli.mode": "full", "meli.full_run_date": run_date}
        epochs = planned_epochs(cfg, len(train_data))  # the sample budget: fewer epochs as rows grow
        return _TrainingSet(train_data, epochs, "full", lineage, len(train_data), 0, None, len(train_data))
    from pipelines.training.warm import arch_differences, parent_bundle, parent_new_rows, parent_state, warm_rows

    bundle = parent_bundle(settings, parent, kind, Path(settings.run_dir(run_date or "adhoc")) / "parents" / kind)
    diff = arch_differences(bundle, fit.model_cfg)
    if diff:  # e.g. a parent from before word_rows: its weights mean something else here; this type trains full
        log.warning("%s: parent version %s differs in %s: trained full", kind, parent["version"], diff)
        lineage = {"meli.mode": "full", "meli.full_run_date": run_date, "meli.full_reason": f"parent differs in {diff}"}
        epochs = planned_epochs(cfg, len(train_data))
        return _TrainingSet(train_data, epochs, "full", lineage, len(train_data), 0, None, len(train_data))
    fit.parent = (bundle, lambda fresh: parent_state(fresh, fit.model_cfg, fit.encoder, fit.labels, bundle))
    is_new = parent_new_rows(parent, train_df["ingest_date"].to_numpy())  # new or changed for it (the plan's)
    t_idx, n_new, n_replay = warm_rows(is_new, cfg.replay_rows, cfg.seed)
    lineage = {
        "meli.mode": "warm",
        "meli.parent_version": parent["version"],
        "meli.parent_model_type": parent["model_type"],
        "meli.full_run_date": parent["full_run_date"],
    }
    log.info(
        "%s warm from version %s: %d new + %d replayed training rows (of %d), partitions %s",
        kind, parent["version"], n_new, n_replay, len(train_data), parent["new_partitions"],
    )  # fmt: skip
    return _TrainingSet(
        train_data.take(t_idx), cfg.warm_epochs, "warm", lineage, n_new, n_replay, parent, len(train_data)
    )


def _save_bundle(bundle_dir: Path, state: dict, fit: Fit, embedding_dir: Path, encoded) -> None:
    """The serving bundle (pipelines/model/bundle.py's Bundle reads it), written atomically: weights,
    labels, model and training config, the encoder, and the word vectors a sentence encoder gave."""
    import torch

    cfg = fit.cfg
    with atomic_tree(bundle_dir) as tmp:
        with writing(bundle_dir / "weights.pt"):  # torch's stream error on a full disk -> NoSpaceLeft
            torch.save(state, tmp / "weights.pt")
        (tmp / "labels.json").write_text(json.dumps(fit.labels))
        (tmp / "config.json").write_text(json.dumps({"model": fit.model_cfg.to_dict(), "train": cfg.to_dict()}))
        shutil.copy(embedding_dir / "encoder.json", tmp / "encoder.json")
        if encoded.sentence is not None:  # what serving needs to give each word the same vector
            from pipelines.features.sentence import SentenceTable, WordEncoder

            words, version = encoded.words(), WordEncoder(cfg.sentence_encoder).version
            SentenceTable.write(tmp / "sentence", cfg.sentence_encoder, words[1:], encoded.sentence[1:], version)


def train_ensemble(
    settings: Settings,
    dataset_dir: str | Path,
    results: list[dict],
    parent_run_id: str | None = None,
    run_date: str = "",
) -> dict | None:
    """An ensemble of the run's trained models as one more candidate challenger.

    Members are fetched from MLflow by model URI (training tasks may have run on other workers).
    Every subset of two or more members is scored on the validation split (mean of the members'
    selection-pass probabilities, logged by each training run); the best subset (ties: fewer members, cheaper to
    serve) becomes an ensemble bundle (members/<type>/ + the shared encoder and labels), logged as a
    child run with model type ``ensemble`` and every subset's score. Returns a result dict like
    train_classifier's, or None with fewer than two trained models.
    """
    import mlflow

    from pipelines.core.tracking import configure

    results = sorted((r for r in results if r.get("model_type") != "ensemble"), key=lambda r: r["model_type"])
    if len(results) < 2:
        return None
    configure(settings)
    val_df = read_split(dataset_dir, "validation")
    out = Path(settings.run_dir(run_date or "adhoc")) / "models" / "ensemble"
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    sources = _member_bundles(results, out)
    probs = {r["model_type"]: member_val_probs(r, len(val_df)) for r in results}
    first = sources[results[0]["model_type"]]
    labels = np.asarray(json.loads((first / "labels.json").read_text()), dtype=object)
    scores = _subset_scores(probs, labels, val_df["category"].tolist())
    best = max(scores, key=lambda s: (scores[s], -s.count("+")))
    members = best.split("+")
    log.info("ensemble candidates on validation: %s -> %s", scores, best)
    bundle_dir = out / "bundle"
    _save_ensemble_bundle(bundle_dir, sources, members)
    for kind in sources:
        shutil.rmtree(out / kind, ignore_errors=True)

    run_kwargs = {"run_name": "ensemble"}
    if parent_run_id:
        run_kwargs.update(parent_run_id=parent_run_id, nested=True)
    from pipelines.core.tracking import open_run

    with open_run(settings, **run_kwargs) as run:
        mlflow.set_tags(
            {"meli.model_type": "ensemble", "meli.run_date": run_date, **dataset_lineage(Path(dataset_dir))}
        )
        mlflow.log_params({"model_type": "ensemble", "members": best, "candidates": ",".join(sorted(sources))})
        mlflow.log_metrics(
            {"val_macro_recall": scores[best], "best_val_macro_recall": scores[best]}
            | {f"val_macro_recall_{s.replace('+', '_')}": v for s, v in scores.items()}
            | {f"val_macro_recall_{r['model_type']}": r["val_macro_recall"] for r in results}
        )
        info = log_served_model(bundle_dir, val_df, sum(probs[k] for k in members) / len(members), Path(dataset_dir))
        result = {
            "model_type": "ensemble",
            "members": members,
            "run_id": run.info.run_id,
            "model_uri": info.model_uri,
            "val_macro_recall": round(scores[best], 6),
            "best_epoch": 0,
            "train_seconds": round(time.perf_counter() - t0, 2),
            "device": str(pick_device(settings.device)),
            **_ensemble_lineage([r for r in results if r["model_type"] in members]),
        }
    log.info("ensemble of %s: %s", members, result)
    return result


def _member_bundles(results: list[dict], out: Path) -> dict[str, Path]:
    """Each member's bundle, downloaded from MLflow under ``out/<type>/``; they must share the
    encoder, the labels and the word vectors (one copy of them serves the ensemble)."""
    import mlflow

    sources: dict[str, Path] = {}
    for r in results:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=r["model_uri"], dst_path=str(out / r["model_type"]))
        )
        sources[r["model_type"]] = next(p for p in (local / "artifacts" / "bundle", local / "bundle") if p.is_dir())
    first = sources[results[0]["model_type"]]
    for kind, src in sources.items():
        for name in ("encoder.json", "labels.json", "sentence/meta.json", "sentence/words.json"):
            if not (src / name).exists() and not (first / name).exists():
                continue  # no sentence vectors in either
            if not (src / name).exists() or (src / name).read_bytes() != (first / name).read_bytes():
                raise ValueError(f"ensemble members disagree on {name}: {results[0]['model_type']} vs {kind}")
    return sources


def _subset_scores(probs: dict[str, np.ndarray], labels: np.ndarray, y_val: list[str]) -> dict[str, float]:
    """Validation macro-recall of every subset of two or more members ("cnn+mlp": the mean of
    their probabilities)."""
    import itertools

    from pipelines.model.metrics import macro_recall

    scores = {}
    for size in range(2, len(probs) + 1):
        for subset in itertools.combinations(sorted(probs), size):
            mean = sum(probs[k] for k in subset) / size
            scores["+".join(subset)] = macro_recall(y_val, list(labels[mean.argmax(1)]))
    return scores


def _save_ensemble_bundle(bundle_dir: Path, sources: dict[str, Path], members: list[str]) -> None:
    """members/<type>/ for each member, with the shared encoder, labels and word vectors at the root."""
    first = next(iter(sources.values()))
    with atomic_tree(bundle_dir) as tmp:
        for kind in members:  # the members share the bundle's word vectors (one copy, at its root)
            shutil.copytree(sources[kind], tmp / "members" / kind, ignore=shutil.ignore_patterns("sentence"))
        for name in ("encoder.json", "labels.json"):
            shutil.copy(first / name, tmp / name)
        if (first / "sentence").is_dir():
            shutil.copytree(first / "sentence", tmp / "sentence")
        (tmp / "config.json").write_text(json.dumps({"members": [f"members/{k}" for k in members]}))


def _ensemble_lineage(members: list[dict]) -> dict:
    """An ensemble is warm if a member is; its last full retrain is its members' oldest."""
    dates = [m.get("full_run_date") for m in members if m.get("full_run_date")]
    warm = [m for m in members if m.get("mode") == "warm"]
    return {
        "mode": "warm" if warm else "full",
        "parent_version": ",".join(sorted({m["parent_version"] for m in warm if m.get("parent_version")})),
        "full_run_date": min(dates) if dates else "",
    }


def pick_challenger(results: list[dict]) -> dict:
    """The best model of the run on validation macro-recall."""
    if not results:
        raise ValueError("no trained models to choose from")
    return max(results, key=lambda r: (r["val_macro_recall"], -len(r["model_type"])))
