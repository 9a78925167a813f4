"""Model versions in the MLflow registry, as the gate uses them: the client, the ``champion`` and
``previous`` aliases, the lock that lets one gate (or rollback) at a time move them, and registering a
trained model as a new (challenger) version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from pipelines.core import faults
from pipelines.core.fs import read_json
from pipelines.core.locks import advisory_lock, file_lock
from pipelines.registry.records import logged_model_id, registry_client
from pipelines.settings import Settings

log = logging.getLogger(__name__)


@contextmanager
def register_lock(settings: Settings) -> Iterator[None]:
    """One registration of this model at a time (looking for the run's pending version and
    registering are one step): like ``registry_lock``, on its own lock so a long gate does not hold
    registrations up."""
    what = f"registrations of {settings.model_name}"
    if settings.lock_uri.startswith("postgresql"):
        lock = advisory_lock(settings.lock_uri, f"meli-register:{settings.model_name}", settings.lock_timeout_s, what)
    else:
        lock = file_lock(settings.registry_lock_path.with_suffix(".register.lock"), settings.lock_timeout_s, what)
    with lock:
        yield


def data_fingerprint(dataset_info: dict) -> str:
    """What a run trained on, by content: each partition's date, rows and source files' SHA-256.
    A re-ingest of the same files (a new lake version) keeps it; different data changes it."""
    import hashlib

    parts = [
        [p["ingest_date"], p.get("rows"), sorted(str(s.get("sha256") or s.get("path")) for s in p.get("sources", []))]
        for p in sorted(dataset_info.get("lineage", []), key=lambda p: p["ingest_date"])
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16] if parts else ""


def pending_version(settings: Settings, run_date: str, client=None):
    """The version a run of ``run_date`` on the same data (``data_fingerprint``) registered and no
    gate has decided yet (tag ``meli.decision`` still "pending"): a killed run's, to resume."""
    info = read_json(settings.run_dir(run_date) / "dataset" / "dataset.json") or {}
    fingerprint = data_fingerprint(info)
    if not fingerprint:
        return None
    client = client or registry_client(settings)
    try:
        versions = client.search_model_versions(f"name='{settings.model_name}'")
    except Exception as exc:  # no registered model yet
        log.debug("no versions of %s to resume: %s", settings.model_name, exc)
        return None
    same = [
        v
        for v in versions
        if v.tags.get("meli.run_date") == run_date
        and v.tags.get("meli.data_fingerprint") == fingerprint
        and v.tags.get("meli.decision") == "pending"
    ]
    return max(same, key=lambda v: int(v.version)) if same else None


def challenger_of(mv) -> dict:
    """A registered version as ``register_challenger`` returns it (from its tags)."""
    return {
        "name": mv.name,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "model_type": mv.tags.get("meli.model_type", ""),
        "members": [m for m in mv.tags.get("meli.members", "").split("+") if m],
        "val_macro_recall": float(mv.tags.get("meli.val_macro_recall") or 0.0),
        "resumed": True,
    }


def register_challenger(settings: Settings, trained: dict, run_date: str, dag_run_id: str = "") -> dict:
    """Register the run's best model as a new version of the model (not yet champion).

    At most one version per run date and data (``data_fingerprint``): when a run of the same date on
    the same data registered a version no gate has decided yet (it was killed, or its evaluate or
    gate failed), that version is returned (``"resumed": True``) and nothing is registered."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = registry_client(settings)
    try:
        client.get_registered_model(settings.model_name)
    except MlflowException:
        try:
            client.create_registered_model(
                settings.model_name,
                description="MeLi listing title -> category. "
                "Alias 'champion' serves; 'previous' is the rollback target.",
            )
        except MlflowException:
            pass  # created concurrently
    tags = {  # read back by warm starts, the card and status (val macro-recall: a metric of its LoggedModel)
        "meli.model_type": trained["model_type"],
        "meli.run_date": run_date,
        "meli.decision": "pending",
    }
    if dag_run_id:
        tags["meli.dag_run_id"] = dag_run_id
    if trained.get("members"):
        tags["meli.members"] = "+".join(trained["members"])
    for key in ("mode", "parent_version", "full_run_date"):  # warm-start lineage (pipelines/training/warm.py)
        if trained.get(key):
            tags[f"meli.{key}"] = str(trained[key])
    dataset_info = read_json(settings.run_dir(run_date) / "dataset" / "dataset.json") or {}
    if dataset_info.get("data_version"):  # the lake snapshot it trained on (readable while kept)
        tags["meli.data_version"] = dataset_info["data_version"]
        tags["meli.lake_versions"] = ",".join(
            f"{d}@v{v}" for d, v in sorted(dataset_info.get("lake_versions", {}).items())
        )[:4000]
    if data_fingerprint(dataset_info):  # the key a rerun finds this version by (pending_version)
        tags["meli.data_fingerprint"] = data_fingerprint(dataset_info)
    with register_lock(settings):  # look and register with no other registration in between
        mv = _registered_from(client, settings.model_name, trained)
        if mv is not None:  # a retried or cleared register task: the same trained model, the same version
            log.info(
                "%s version %s already holds %s; not registering it again",
                settings.model_name,
                mv.version,
                trained["model_uri"],
            )
        else:
            pending = pending_version(settings, run_date, client)
            if pending is not None:  # a killed (or failed) run of this date and data: resume its version
                log.info(
                    "%s version %s was registered for %s on the same data (%s) and has no decision yet: "
                    "resuming it instead of registering another",
                    settings.model_name,
                    pending.version,
                    run_date,
                    tags["meli.data_fingerprint"],
                )
                return challenger_of(pending)
            # tagged as it is created: a crash right after cannot leave a version its rerun would not find
            mv = mlflow.register_model(trained["model_uri"], settings.model_name, tags=tags)
    for k, v in tags.items():
        client.set_model_version_tag(settings.model_name, mv.version, k, v)
    client.update_model_version(
        settings.model_name,
        mv.version,
        description=f"{trained['model_type']} trained on the lake as of {run_date} "
        f"({trained.get('mode') or 'full'}; validation macro-recall {float(trained['val_macro_recall']):.4f}). "
        "Awaiting the gate.",
    )
    log.info("registered %s version %s from %s", settings.model_name, mv.version, trained["model_uri"])
    faults.point("register.registered")
    return {
        "name": settings.model_name,
        "version": str(mv.version),
        "run_id": trained["run_id"],
        "model_type": trained["model_type"],
        "members": list(trained.get("members") or []),
        "val_macro_recall": trained["val_macro_recall"],
    }


def _registered_from(client, name: str, trained: dict):
    """The version already registered from this training run's model, if any."""
    try:
        versions = client.search_model_versions(f"name='{name}' and run_id='{trained['run_id']}'")
    except Exception as exc:  # a registry that cannot filter: register (at worst a duplicate version)
        log.warning("could not look for an existing version of run %s: %s", trained["run_id"], exc)
        return None
    same = [v for v in versions if v.source == trained["model_uri"]]
    return min(same, key=lambda v: int(v.version)) if same else None


# ------------------------------------------------------------------------------------------
# What a version says in MLflow (issue 33): its test metrics on the LoggedModel, its description
# ------------------------------------------------------------------------------------------
def log_test_metrics(settings: Settings, run_date: str, version: str, evaluation: dict) -> None:
    """The challenger's test macro-recall and accuracy on its LoggedModel, with the test split as an
    MLflow dataset named by the data version (``get_logged_model(model_id).metrics``). Best effort."""
    try:
        import pandas as pd
        from mlflow.entities import DatasetInput, InputTag

        from pipelines.training.runs import split_dataset

        client = registry_client(settings)
        mv = client.get_model_version(settings.model_name, str(version))
        model_id = getattr(mv, "model_id", None) or logged_model_id(mv.source)
        ch = evaluation["models"]["challenger"]
        if not model_id or not mv.run_id:
            return
        dataset_dir = settings.run_dir(run_date) / "dataset"
        test = split_dataset(dataset_dir, "test", pd.read_parquet(dataset_dir / "test.parquet", columns=["category"]))
        entity = test._to_mlflow_entity()
        client.log_inputs(mv.run_id, [DatasetInput(entity, [InputTag("mlflow.data.context", "test")])])
        for key in ("macro_recall", "accuracy"):
            if ch.get(key) is not None:
                client.log_metric(
                    mv.run_id, f"test_{key}", float(ch[key]), dataset_name=entity.name,
                    dataset_digest=entity.digest, model_id=model_id,
                )  # fmt: skip
    except Exception as exc:  # the evaluation files and the decision hold the same figures
        log.warning("could not log v%s's test metrics on its MLflow model: %s", version, exc)
