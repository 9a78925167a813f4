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

log = logging.getLogger(__name__)


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


def parent_run_name(run_date: str, mode: str, started: str) -> str:
    """``retrain 2026-12-02 full 10:42:07Z``: the run date, the mode and the UTC start time (unique
    among a date's runs; ``started`` an ISO time)."""
    return f"retrain {run_date} {mode} {started[11:19]}Z"


def start_parent_run(settings: Settings, run_date: str, dataset: dict, tags: dict | None = None) -> str:
    """The retraining run that groups the embedding, each classifier and the gate decision. Named
    ``retrain <date> <mode> <time>Z`` (the mode "pending" until the embedding step decides it)."""
    from datetime import UTC, datetime

    import mlflow

    from pipelines.core.tracking import GATE_PENDING, configure, open_run

    configure(settings)
    started = datetime.now(UTC).isoformat()
    info = json.loads((Path(dataset["dir"]) / "dataset.json").read_text())
    trigger = (tags or {}).get("meli.trigger", "")
    note = (
        f"Retraining on the lake as of {run_date} (data version {info.get('data_version', '?')}: "
        + ", ".join(f"{n} {k} rows" for k, n in dataset["counts"].items())
        + f"; started {started[:19]}Z{' by ' + trigger if trigger else ''}).{GATE_PENDING}"
    )
    # RUNNING until the gate's decision is recorded (failing_parent)
    with open_run(settings, "RUNNING", run_name=parent_run_name(run_date, "pending", started)) as run:
        mlflow.set_tags(
            {
                "meli.run_date": run_date,
                "meli.stage": "retrain",
                "meli.started_at": started,
                "mlflow.note.content": note,
                **dataset_lineage(Path(dataset["dir"])),
                **(tags or {}),
            }
        )
        mlflow.log_params({f"rows_{k}": v for k, v in dataset["counts"].items()})
        mlflow.log_param("num_categories", dataset["num_categories"])
        mlflow.log_artifact(str(Path(dataset["dir"]) / "dataset.json"), artifact_path="data")
        return run.info.run_id


@contextmanager
def failing_parent(settings: Settings, parent_run_id: str | None, last: bool = False):
    """A step of a retraining run. The parent MLflow run reads RUNNING from its creation until the
    gate's decision is recorded (``last``: the step that ends it, FINISHED); each step holds its
    lease, so a step killed mid-way leaves it to be marked FAILED at the next start
    (pipelines/core/tracking.py ``fail_abandoned_runs``). If the step raises, the parent is marked FAILED
    (a retry of the step sets it RUNNING again); if that cannot be recorded, the lease stays for the
    next start. Its own failure to say so never hides the step's error."""
    if not parent_run_id:
        yield
        return
    import mlflow

    from pipelines.core.tracking import configure, run_lease, short_error

    configure(settings)
    client = mlflow.MlflowClient()
    with run_lease(settings, parent_run_id) as lease:
        if client.get_run(parent_run_id).info.status != "RUNNING":  # a retry of a failed step
            client.update_run(parent_run_id, status="RUNNING")
        try:
            yield
        except BaseException:
            try:
                client.set_terminated(parent_run_id, "FAILED")
            except Exception as exc:  # the step's own error is the one to report
                lease.keep()
                log.warning(
                    "could not mark the parent run %s FAILED (the next start will): %s", parent_run_id, short_error(exc)
                )
            raise
        if last:
            try:
                if client.get_run(parent_run_id).info.status == "RUNNING":
                    client.set_terminated(parent_run_id, "FINISHED")
            except BaseException:
                lease.keep()
                raise


def finish_parent(settings: Settings, parent_run_id: str | None) -> None:
    """Mark a parent run FINISHED after its last step when no gate follows in this process (CLI
    ``train``); ``promote`` later reopens it (RUNNING) and its gate finishes it again."""
    if not parent_run_id:
        return
    import mlflow

    from pipelines.core.tracking import configure

    configure(settings)
    client = mlflow.MlflowClient()
    if client.get_run(parent_run_id).info.status == "RUNNING":
        client.set_terminated(parent_run_id, "FINISHED")


def log_embedding(settings: Settings, parent_run_id: str, emb: dict, cfg: TrainConfig) -> None:
    import mlflow

    from pipelines.core.tracking import configure, open_run
    from pipelines.features.embedding import EMBEDDING_SHA_TAG, embedding_config

    configure(settings)
    with open_run(settings, "RUNNING", run_id=parent_run_id):  # finished by the gate (failing_parent)
        params = asdict(embedding_config(cfg)) | ({"epochs": emb["epochs"]} if emb.get("epochs") else {})
        mlflow.log_params({f"embedding_{k}": v for k, v in params.items()})  # epochs: as the data size gave them
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
            rename_parent_run(parent_run_id, plan["mode"])
            if plan["mode"] == "warm":
                mlflow.set_tag("meli.base_version", plan["base"]["version"])
                mlflow.log_metrics(
                    {"vocab_growth": plan["vocab_growth"], "new_partitions": len(plan["new_partitions"])}
                )


def rename_parent_run(parent_run_id: str, mode: str) -> None:
    """The parent run's name once the mode is known (``retrain <date> <mode> <time>Z``)."""
    import mlflow

    run = mlflow.MlflowClient().get_run(parent_run_id)
    started = run.data.tags.get("meli.started_at")
    if started:
        name = parent_run_name(run.data.tags.get("meli.run_date", ""), mode, started)
        mlflow.MlflowClient().set_tag(parent_run_id, "mlflow.runName", name)


def split_dataset(dataset_dir: Path, split: str, df):
    """A split as an MLflow dataset named ``<split>@<data version>`` (the lake snapshot it was cut
    from), its source the split's Parquet file."""
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    info = json.loads((Path(dataset_dir) / "dataset.json").read_text())
    with warnings.catch_warnings():  # MLflow registers its local-file source twice: both readings are the same
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        source = resolve_dataset_source((Path(dataset_dir) / f"{split}.parquet").resolve().as_uri())
    targets = "category" if "category" in df.columns else None
    return mlflow.data.from_pandas(df, source=source, name=f"{split}@{info.get('data_version', '?')}", targets=targets)


def dataset_lineage(dataset_dir: Path) -> dict:
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
    context manager holding the run's lease (pipelines/core/tracking.py open_run)."""
    from pipelines.core import faults
    from pipelines.core.tracking import configure, open_run

    configure(settings)
    # CPU, memory, disk and network (GPU with pynvml) every 10 s beside the epochs: trainings run for hours
    run_kwargs = {"run_name": f"{kind}-{run_date}" if run_date else kind, "log_system_metrics": True}
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
            **dataset_lineage(dataset_dir),
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
            "bf16": fit.bf16,
            "mode": mode,
        }
    )
    try:
        mlflow.log_input(split_dataset(dataset_dir, "train", train_df), context="training")
    except Exception as exc:  # lineage tags above still hold the manifest data
        log.warning("mlflow.log_input failed: %s", exc)


def model_signature():
    """The logged model's signature: a ``title`` column in; the documented columns out; the params
    schema that lets ``predict(df, params={"top_k": k})`` reach the model."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    from pipelines.model.bundle import TOP_K

    return ModelSignature(
        inputs=Schema([ColSpec("string", "title")]),
        outputs=Schema(
            [
                ColSpec("string", "predicted_category"),
                ColSpec("double", "probability"),
                ColSpec(Array("string"), "top_k_categories"),
                ColSpec(Array("double"), "top_k_probabilities"),
            ]
        ),
        params=ParamSchema([ParamSpec("top_k", "long", TOP_K)]),
    )


INPUT_EXAMPLE_TITLES = ["Zapatillas Nike Air Max talle 42", "Capinha celular Motorola G8 silicone"]


def log_served_model(bundle_dir: Path, val_df, val_probs: np.ndarray, dataset_dir: Path | None = None):
    """In the active MLflow run: validation diagnostics, then the bundle as a pyfunc model.

    ``val_probs`` are the selection pass's validation probabilities (columns = the bundle's labels;
    with refit the served weights have seen the validation rows, so never score it with them).
    They are logged as ``diagnostics/val_probs.npy`` (float16) for the ensemble search, with the
    per-class recall and top confusions they imply. Returns the ModelInfo."""
    import tempfile

    import mlflow

    from pipelines.model.metrics import confusion_summary, per_class_recall

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
    import pandas as pd

    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(REPO_ROOT / "pipelines" / "model" / "pyfunc_model.py"),  # code, not a pickled object
        artifacts={"bundle": str(bundle_dir)},
        code_paths=[str(REPO_ROOT / "pipelines")],
        pip_requirements=_pip_requirements(bundle_dir),
        signature=model_signature(),
        input_example=pd.DataFrame({"title": INPUT_EXAMPLE_TITLES}),
    )
    if dataset_dir is not None:  # the selection pass's validation score, on the LoggedModel with its dataset
        from pipelines.model.metrics import accuracy, macro_recall

        y = val_df["category"].tolist()
        val = split_dataset(dataset_dir, "validation", val_df[["category"]])
        mlflow.log_input(val, context="validation")
        for key, fn in (("val_macro_recall", macro_recall), ("val_accuracy", accuracy)):
            mlflow.log_metric(key, float(fn(y, val_pred)), model_id=info.model_id, dataset=val)
    return info


def member_val_probs(result: dict, n_rows: int) -> np.ndarray:
    """A trained model's selection-pass validation probabilities, as its run logged them (with refit
    the served weights have seen the validation rows: they must not be scored again)."""
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=result["run_id"], artifact_path="diagnostics/val_probs.npy")
    probs = np.load(path).astype(np.float32)
    if probs.shape[0] != n_rows:
        raise ValueError(f"run {result['run_id']}: val_probs.npy has {probs.shape[0]} rows, validation {n_rows}")
    return probs
