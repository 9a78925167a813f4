"""Model versions in the MLflow registry, as the gate uses them: the client, the ``champion`` and
``previous`` aliases, the lock that lets one gate (or rollback) at a time move them, and registering a
trained model as a new (challenger) version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.locks import advisory_lock, file_lock
from pipelines.settings import Settings

log = logging.getLogger("pipelines.registry")  # the name the registry has always logged under

CHAMPION, PREVIOUS = "champion", "previous"


class GateError(RuntimeError):
    pass


def _client(settings: Settings):
    import mlflow

    from pipelines.tracking import configure

    configure(settings)
    return mlflow.MlflowClient()


def _alias_version(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        code = getattr(exc, "error_code", "")
        if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or "not found" in str(exc).lower():
            return None
        raise


@contextmanager
def registry_lock(settings: Settings) -> Iterator[None]:
    """One gate (or rollback) of this model at a time: an advisory lock in Postgres when
    MELI_LOCK_URI names one (writers on several hosts), else a lock file beside the SQLite store
    (or under MELI_HOME)."""
    what = f"the registry of {settings.model_name}"
    if settings.lock_uri.startswith("postgresql"):
        lock = advisory_lock(settings.lock_uri, f"meli-gate:{settings.model_name}", settings.lock_timeout_s, what)
    else:
        lock = file_lock(settings.registry_lock_path, settings.lock_timeout_s, what)
    with lock:
        yield


def register_challenger(settings: Settings, trained: dict, run_date: str, dag_run_id: str = "") -> dict:
    """Register the run's best model as a new version of the model (not yet champion)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = _client(settings)
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
    mv = _registered_from(client, settings.model_name, trained)
    if mv is not None:  # a retried or cleared register task: the same trained model, the same version
        log.info(
            "%s version %s already holds %s; not registering it again",
            settings.model_name,
            mv.version,
            trained["model_uri"],
        )
    else:
        mv = mlflow.register_model(trained["model_uri"], settings.model_name)
    tags = {
        "meli.model_type": trained["model_type"],
        "meli.run_date": run_date,
        "meli.val_macro_recall": str(trained["val_macro_recall"]),
        "meli.dag_run_id": dag_run_id,
        "meli.decision": "pending",
    }
    if trained.get("members"):
        tags["meli.members"] = "+".join(trained["members"])
    for key in ("mode", "parent_version", "full_run_date"):  # warm-start lineage (pipelines/warm.py)
        if trained.get(key):
            tags[f"meli.{key}"] = str(trained[key])
    dataset_info = _read_json(settings.run_dir(run_date) / "dataset" / "dataset.json") or {}
    if dataset_info.get("data_version"):  # the lake snapshot it trained on (readable while kept)
        tags["meli.data_version"] = dataset_info["data_version"]
        tags["meli.lake_versions"] = ",".join(
            f"{d}@v{v}" for d, v in sorted(dataset_info.get("lake_versions", {}).items())
        )[:4000]
    for k, v in tags.items():
        client.set_model_version_tag(settings.model_name, mv.version, k, v)
    log.info("registered %s version %s from %s", settings.model_name, mv.version, trained["model_uri"])
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


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None
