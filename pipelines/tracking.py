"""MLflow wiring: one place that points MLflow at the configured store and experiment."""

from __future__ import annotations

import logging
import os

from pipelines.settings import Settings

log = logging.getLogger(__name__)


def configure(settings: Settings) -> str:
    """Point MLflow at the settings' tracking/registry URIs; return the experiment id.

    The experiment's artifact root is created under MELI_HOME (embedded default) so that nothing
    lands in the current directory; against a tracking server, the server's root is used.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    import mlflow

    settings.ensure()
    # mlflow.set_*_uri also export MLFLOW_*_URI; Settings reads those variables, so restore them:
    # otherwise the first configure() in a process would pin every later Settings to its store.
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri or settings.tracking_uri)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(settings.experiment)
    if exp is None:
        location = None
        if not settings.tracking_uri.startswith(("http://", "https://", "databricks")):
            settings.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
            location = settings.mlflow_artifacts.as_uri()
        try:
            exp_id = client.create_experiment(settings.experiment, artifact_location=location)
        except Exception:  # created concurrently by another task
            exp = client.get_experiment_by_name(settings.experiment)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id
