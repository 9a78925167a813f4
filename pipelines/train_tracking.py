"""What a training run records in MLflow: the parent run and its lineage tags, the embedding's
params, each model's run (tags, params, training input), its validation diagnostics and the
logged pyfunc model; and reading a member's diagnostics back for the ensemble search."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipelines.config import TrainConfig
from pipelines.settings import REPO_ROOT, Settings

log = logging.getLogger("pipelines.train")  # the name training has always logged under


def _pip_requirements(bundle_dir: Path | None = None) -> list[str]:
    import importlib.metadata as md

    pins = []
    packages = ["mlflow", "torch", "gensim", "numpy", "pandas", "pyarrow"]
    if bundle_dir is not None and (bundle_dir / "sentence" / "meta.json").exists():  # the word vectors' encoder
        packages.append(json.loads((bundle_dir / "sentence" / "meta.json").read_text())["package"].split("==")[0])
    for pkg in packages:
        try:
            pins.append(f"{pkg}=={md.version(pkg).split('+')[0]}")
        except md.PackageNotFoundError:
            continue
    return pins


def start_parent_run(settings: Settings, run_date: str, dataset: dict, tags: dict | None = None) -> str:
    """The retraining run that groups the embedding, each classifier and the gate decision."""
    import mlflow

    from pipelines.tracking import configure, open_run

    configure(settings)
    with open_run(settings, run_name=f"retrain-{run_date}") as run:
        mlflow.set_tags(
            {"meli.run_date": run_date, "meli.stage": "retrain", **_lineage(Path(dataset["dir"])), **(tags or {})}
        )
        mlflow.log_params({f"rows_{k}": v for k, v in dataset["counts"].items()})
        mlflow.log_param("num_categories", dataset["num_categories"])
        mlflow.log_artifact(str(Path(dataset["dir"]) / "dataset.json"), artifact_path="data")
        return run.info.run_id


@contextmanager
def failing_parent(settings: Settings, parent_run_id: str | None):
    """A step of a retraining run: if it raises, the parent MLflow run is marked FAILED (a step that
    reopens it later, a retry, finishes it again). Its own failure to say so never hides the error."""
    try:
        yield
    except BaseException:
        if parent_run_id:
            try:
                import mlflow

                from pipelines.tracking import configure

                configure(settings)
                mlflow.MlflowClient().set_terminated(parent_run_id, "FAILED")
            except Exception as exc:  # the step's own error is the one to report
                log.warning("could not mark the parent run %s FAILED: %s", parent_run_id, exc)
        raise


def log_embedding(settings: Settings, parent_run_id: str, emb: dict, cfg: TrainConfig) -> None:
    import mlflow

    from pipelines.features import EMBEDDING_SHA_TAG
    from pipelines.tracking import configure, open_run
    from pipelines.train import embedding_config

    configure(settings)
    with open_run(settings, run_id=parent_run_id):
        mlflow.log_params({f"embedding_{k}": v for k, v in asdict(embedding_config(cfg)).items()})
        mlflow.log_metrics({"embedding_vocab_size": emb["vocab_size"], "embedding_train_seconds": emb["seconds"]})
        if emb.get("sha256"):  # the saved FastText's files, checked before a warm start unpickles them
            mlflow.set_tag(EMBEDDING_SHA_TAG, json.dumps(emb["sha256"], sort_keys=True, separators=(",", ":")))
        encoded = emb.get("encoded")
        if encoded:
            mlflow.log_metrics({"encode_seconds": encoded["seconds"], "encoded_tokens": encoded["distinct_tokens"]})
            mlflow.log_param("sentence_encoder", encoded.get("sentence_encoder", "none"))
            if encoded.get("sentence_encoder", "none") != "none":
                mlflow.log_metric("sentence_vector_seconds", encoded.get("sentence_s", 0.0))
        plan = emb.get("plan")
        if plan:
            mlflow.set_tags({"meli.mode": plan["mode"], "meli.mode_reason": plan["reason"][:4000]})
            if plan["mode"] == "warm":
                mlflow.set_tag("meli.base_version", plan["base"]["version"])
                mlflow.log_metrics(
                    {"vocab_growth": plan["vocab_growth"], "new_partitions": len(plan["new_partitions"])}
                )


def _lineage(dataset_dir: Path) -> dict:
    info = json.loads((dataset_dir / "dataset.json").read_text())
    return {
        "meli.data_version": info.get("data_version", ""),
        "meli.lake_versions": ",".join(f"{d}@v{v}" for d, v in sorted(info.get("lake_versions", {}).items()))[:4000],
        "meli.partitions": ",".join(p["ingest_date"] for p in info["lineage"])[:4000],
        # partitions up to the run date not trained on (failed or not validated), e.g. 2026-11-02@v1:failed
        "meli.excluded_partitions": ",".join(
            f"{e['ingest_date']}@v{e['version']}:{e['validation']}" for e in info.get("excluded", [])
        )[:4000],
        "meli.source_sha256": ",".join(
            sorted({s["sha256"][:16] for p in info["lineage"] for s in p["sources"] if s.get("sha256")})
        )[:4000],
    }


def _hardware(device) -> str:
    """Where a model was trained, for its model card: host, CPU cores, the GPU if any, torch."""
    import os
    import platform
    import socket

    import torch

    gpu = torch.cuda.get_device_name(device) if str(device).startswith("cuda") else "no GPU"
    return f"{socket.gethostname()} ({platform.machine()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__})"


def start_model_run(settings: Settings, kind: str, run_date: str, parent_run_id: str | None):
    """The MLflow run of one model type (nested under the retraining run when there is one), a
    context manager holding the run's lease (pipelines/tracking.py open_run)."""
    from pipelines import faults
    from pipelines.tracking import configure, open_run

    configure(settings)
    run_kwargs = {"run_name": f"{kind}-{run_date}" if run_date else kind}
    if parent_run_id:
        run_kwargs.update(parent_run_id=parent_run_id, nested=True)
    return _faulted(open_run(settings, **run_kwargs), faults)


@contextmanager
def _faulted(cm, faults):
    with cm as run:
        faults.point("train.model_run")
        yield run


def log_model_run(dataset_dir: Path, run_date: str, fit, mode: str, lineage: dict, train_df) -> None:
    """In the active run: a model's tags (type, device, hardware, data and warm lineage), its
    params (the recipe and what it became on this device) and its training input."""
    import mlflow
    import torch

    kind, cfg, device = fit.model_cfg.kind, fit.cfg, fit.device
    mlflow.set_tags(
        {
            "meli.model_type": kind,
            "meli.run_date": run_date,
            "meli.device": str(device),
            "meli.hardware": _hardware(device),
            **_lineage(dataset_dir),
            **lineage,
        }
    )
    mlflow.log_params(
        {
            **{k: v for k, v in cfg.to_dict().items() if k != "models"},
            "model_type": kind,
            "num_classes": len(fit.labels),
            "vocab_size": len(fit.encoder.itos),
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "effective_batch_size": fit.batch_size,
            "effective_lr": fit.lr,
            "effective_embedding_lr": fit.embedding_lr,
            "mode": mode,
        }
    )
    try:
        mlflow.log_input(
            mlflow.data.from_pandas(
                train_df, source=str(dataset_dir / "train.parquet"), name=f"train-{run_date}", targets="category"
            ),
            context="training",
        )
    except Exception as exc:  # lineage tags above still hold the manifest data
        log.warning("mlflow.log_input failed: %s", exc)


def log_served_model(bundle_dir: Path, val_df, val_probs: np.ndarray):
    """In the active MLflow run: validation diagnostics, then the bundle as a pyfunc model.

    ``val_probs`` are the selection pass's validation probabilities (columns = the bundle's labels;
    with refit the served weights have seen the validation rows, so never score it with them).
    They are logged as ``diagnostics/val_probs.npy`` (float16) for the ensemble search, with the
    per-class recall and top confusions they imply. Returns the ModelInfo."""
    import tempfile

    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from pipelines.evaluate import confusion_summary, per_class_recall
    from pipelines.pyfunc import TitleClassifierModel

    labels = np.asarray(json.loads((bundle_dir / "labels.json").read_text()), dtype=object)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "val_probs.npy", val_probs.astype(np.float16))
        mlflow.log_artifact(str(Path(tmp) / "val_probs.npy"), artifact_path="diagnostics")
    val_pred = list(labels[val_probs.argmax(1)])
    rec = per_class_recall(val_df["category"].tolist(), val_pred)
    worst_first = sorted(rec.items(), key=lambda x: x[1])
    mlflow.log_text(
        "category,recall\n" + "\n".join(f"{c},{r:.4f}" for c, r in worst_first), "diagnostics/val_per_class_recall.csv"
    )
    mlflow.log_dict(
        {"top_confusions": confusion_summary(val_df["category"].tolist(), val_pred)},
        "diagnostics/val_confusions.json",
    )
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=TitleClassifierModel(),
        artifacts={"bundle": str(bundle_dir)},
        code_paths=[str(REPO_ROOT / "pipelines")],
        pip_requirements=_pip_requirements(bundle_dir),
        signature=ModelSignature(inputs=Schema([ColSpec("string", "title")])),
    )


def member_val_probs(result: dict, n_rows: int) -> np.ndarray:
    """A trained model's selection-pass validation probabilities, as its run logged them (with refit
    the served weights have seen the validation rows: they must not be scored again)."""
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=result["run_id"], artifact_path="diagnostics/val_probs.npy")
    probs = np.load(path).astype(np.float32)
    if probs.shape[0] != n_rows:
        raise ValueError(f"run {result['run_id']}: val_probs.npy has {probs.shape[0]} rows, validation {n_rows}")
    return probs
