"""MLflow wiring: one place that points MLflow at the configured store and experiment."""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from pipelines.core.locks import file_lock
from pipelines.settings import Settings

log = logging.getLogger(__name__)


_READY: set[str] = set()
_CHECKED: set[tuple[str, str]] = set()


class StoreMissing(RuntimeError):
    """The tracking store is gone, empty or another home's, while MELI_HOME holds what it recorded."""


def _home_evidence(settings: Settings) -> str:
    """What in MELI_HOME shows a tracking store was used with it ('' for nothing): model cards,
    scored batches, a registered challenger, and (with a local store) MLflow artifacts. A lake of
    ingested listings alone is not: ingest and validate never touch the store."""
    places = [
        (settings.cards_dir.parent, "model cards"),
        (settings.scored_dir, "scored batches"),
        *((p.parent, "a registered challenger") for p in settings.work_dir.glob("*/challenger.json")),
    ]
    if not settings.tracking_uri.startswith(("http://", "https://", "databricks")):
        places.append((settings.mlflow_artifacts, "MLflow artifacts"))
    for path, what in places:
        if path.is_dir() and any(path.iterdir()):
            return f"{what} ({path})"
    return ""


def _missing(settings: Settings, what: str, evidence: str) -> StoreMissing:
    return StoreMissing(
        f"MLflow store {settings.tracking_uri} {what}, but {settings.home} holds {evidence}: restore the store "
        "(or point MLFLOW_TRACKING_URI at it); to start a new, empty store for this home set MELI_CREATE_STORE=1"
    )


def check_store(settings: Settings) -> None:
    """A missing or empty SQLite store is an error, not a fresh start, when the home holds what a
    store recorded (``_home_evidence``); it is never created then, unless MELI_CREATE_STORE=1."""
    if settings.create_store or not settings.tracking_uri.startswith("sqlite:///"):
        return
    db = Path(settings.tracking_uri.removeprefix("sqlite:///"))
    if db.is_file() and db.stat().st_size > 0:
        return
    evidence = _home_evidence(settings)
    if evidence:
        raise _missing(settings, "is missing" if not db.exists() else "is empty", evidence)


def _check_store_holds(settings: Settings, client, exp) -> None:
    """A store that answers but lacks this home's experiment or registered model (one created afresh
    after the old was lost, or another home's) is an error like a missing one (once per process)."""
    key = (settings.tracking_uri, str(settings.home))
    if settings.create_store or key in _CHECKED:
        return
    evidence = _home_evidence(settings)
    if evidence:
        lacks = ""
        if exp is None and not [e for e in client.search_experiments(max_results=5) if e.name != "Default"]:
            lacks = "is empty (no experiments)"  # (another experiment, e.g. tuning's first, may be new)
        elif settings.cards_dir.is_dir() and any(settings.cards_dir.iterdir()):
            from mlflow.exceptions import MlflowException

            try:
                client.get_registered_model(settings.model_name)
            except MlflowException:
                lacks = f"has no registered model {settings.model_name!r}"
        if lacks:
            raise _missing(settings, lacks, evidence)
    _CHECKED.add(key)


# the experiments' descriptions (mlflow.note.content), issue 33
DESCRIPTIONS = {
    "": "Retraining runs of the title classifier: one parent run per retraining (named `retrain <date> <mode> "
    "<time>Z`; dataset lineage, Data Docs, the gate's decision in its description) with a child run per "
    "classifier (per-epoch curves, system metrics, the logged model).",
    "promotions": "The audit trail: one run per gate decision, approval, rejection and rollback "
    "(`meli registry history`).",
    "shadow": "One run per shadow agreement report (the challenger scored beside the champion).",
    "monitor": "One run per drift report of a scored batch (pipelines/monitoring/batch.py).",
}
# a parent run's description until the gate decides (pipelines/registry/versions.py describe_decision replaces it)
GATE_PENDING = " The gate's decision is added here."


def ui_run_url(settings: Settings, run_id: str, experiment_id: str | None) -> str:
    """The run's page in the MLflow UI (``MELI_MLFLOW_UI_URL``); "" when no UI URL is configured."""
    if not settings.mlflow_ui_url or not run_id or not experiment_id:
        return ""
    return f"{settings.mlflow_ui_url}/#/experiments/{experiment_id}/runs/{run_id}"


def ui_version_url(settings: Settings, version: str) -> str:
    """The model version's page in the MLflow UI; "" when no UI URL is configured."""
    from urllib.parse import quote

    if not settings.mlflow_ui_url:
        return ""
    return f"{settings.mlflow_ui_url}/#/models/{quote(settings.model_name, safe='')}/versions/{version}"


def quiet_libraries() -> None:
    """Library INFO chatter nobody acts on stays out of task logs (gensim's load/save lines, alembic)."""
    for noisy in ("gensim", "alembic", "smart_open"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _describe(client, exp_id: str, tags: dict | None, suffix: str) -> None:
    if DESCRIPTIONS.get(suffix) and not (tags or {}).get("mlflow.note.content"):
        try:
            client.set_experiment_tag(exp_id, "mlflow.note.content", DESCRIPTIONS[suffix])
        except Exception as exc:  # a description is not worth failing a run for
            log.info("could not describe experiment %s: %s", exp_id, exc)


PROBE_TIMEOUT_S = 5.0
PROBE_TRIES = 3


def check_reachable(uri: str) -> None:
    """Fail within ~20 s, in one line, when the tracking server does not answer (MLflow's own
    client retries for minutes first)."""
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    last: Exception | None = None
    for attempt in range(PROBE_TRIES):
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S):
                return
        except urllib.error.HTTPError:
            return  # it answers (auth, or no /health route): reachable
        except (OSError, ValueError) as exc:
            last = exc
            if attempt < PROBE_TRIES - 1:
                time.sleep(1.0)
    raise ConnectionError(f"MLflow tracking server {uri} is unreachable: {getattr(last, 'reason', last)}")


def configure(settings: Settings) -> str:
    """Point MLflow at the settings' tracking/registry URIs; return the experiment id.

    The experiment's artifact root is created under MELI_HOME (embedded default) so that nothing
    lands in the current directory; against a tracking server, the server's root is used.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    import mlflow

    quiet_libraries()
    settings.ensure()
    check_store(settings)  # before MLflow opens (and so creates) a SQLite file
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
    if settings.tracking_uri.startswith(("http://", "https://")):
        check_reachable(settings.tracking_uri)
    if settings.tracking_uri.startswith("sqlite:///") and settings.tracking_uri not in _READY:
        # the first use of a new SQLite store creates its schema (alembic); two processes doing
        # that at once fail ("CommandError", "table _alembic_tmp_... already exists"), so each
        # process's first touch of a store is serialised
        db = settings.tracking_uri.removeprefix("sqlite:///")
        with file_lock(Path(db + ".init.lock"), settings.lock_timeout_s, f"MLflow store {settings.tracking_uri}"):
            client = mlflow.MlflowClient()
            exp = client.get_experiment_by_name(settings.experiment)
            client.search_registered_models(max_results=1)  # the registry store, same database
        _READY.add(settings.tracking_uri)
    else:
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(settings.experiment)
    _check_store_holds(settings, client, exp)
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
    _describe(client, exp_id, exp.tags if exp is not None else None, "")
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def tracking_client(settings: Settings):
    """An ``MlflowClient`` on the deployment's store (``configure`` first). Registry commands use
    ``pipelines.registry.records.registry_client``, which also completes an interrupted alias move."""
    import mlflow

    configure(settings)
    return mlflow.MlflowClient()


def alias_version(client, name: str, alias: str):
    """The model version ``alias`` points at, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        code = getattr(exc, "error_code", "")
        if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or "not found" in str(exc).lower():
            return None
        raise


def side_experiment(settings: Settings, suffix: str, client=None) -> str:
    """The id of ``<experiment>-<suffix>`` (promotions, shadow, monitor), created when missing, with
    its artifacts under ``$MELI_HOME/mlflow/artifacts/<suffix>`` on a local store."""
    import mlflow

    client = client or mlflow.MlflowClient()
    name = f"{settings.experiment}-{suffix}"
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        _describe(client, exp.experiment_id, exp.tags, suffix)
        return exp.experiment_id
    location = None if settings.tracking_uri.startswith("http") else (settings.mlflow_artifacts / suffix).as_uri()
    tags = {"mlflow.note.content": DESCRIPTIONS[suffix]} if suffix in DESCRIPTIONS else None
    try:
        return client.create_experiment(name, artifact_location=location, tags=tags)
    except Exception:  # created concurrently
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# ------------------------------------------------------------------------------------------
# Run leases (issue 31): a process holds a shared flock on $MELI_HOME/mlflow/leases/<run id>.lease
# while an MLflow run of its is open. The kernel drops it when the process dies, so a run still
# RUNNING whose lease nobody holds was left by a killed process: the next run opened marks it FAILED.
# ------------------------------------------------------------------------------------------
_LEASES: dict[str, list[int]] = {}  # run id -> [fd, depth] held by this process


def _lease_dir(settings: Settings) -> Path:
    return settings.home / "mlflow" / "leases"


def _take_lease(path: Path) -> int:
    """A shared flock on ``path`` (created if missing), on a file still linked (a releasing holder
    may unlink it between our open and our lock)."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.fstat(fd).st_nlink > 0:
            return fd
        os.close(fd)


def _drop_lease(path: Path, fd: int) -> None:
    """Release; the last holder removes the file."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except OSError:
        pass  # another process holds it too
    finally:
        os.close(fd)


class Lease:
    """What a ``run_lease`` block may say about its lease: ``keep()`` when the run's terminal status
    could not be recorded (a full disk, a store that cannot write): the lease file stays, unheld, so
    the next start marks the run FAILED (``fail_abandoned_runs``) instead of it staying RUNNING."""

    def __init__(self, run_id: str):
        self.run_id, self.kept = run_id, False

    def keep(self) -> None:
        self.kept = True


@contextmanager
def run_lease(settings: Settings, run_id: str):
    """Hold ``run_id``'s lease for the block (re-entrant in a process); runs killed earlier are
    marked FAILED first (``fail_abandoned_runs``). Yields a ``Lease``: ``keep()`` leaves the lease
    file behind when the block ends (the run's end could not be recorded)."""
    lease = Lease(run_id)
    if not run_id:
        yield lease
        return
    held = _LEASES.get(run_id)
    if held is not None:
        held[1] += 1
        try:
            yield lease
        finally:
            held[1] -= 1
            if lease.kept:
                held.append("kept")  # the outermost holder leaves the file
        return
    try:
        fail_abandoned_runs(settings)
    except Exception as exc:  # never fail a run over another's bookkeeping
        log.warning("could not check for MLflow runs left RUNNING by a killed process: %s", exc)
    path = _lease_dir(settings) / f"{run_id}.lease"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _take_lease(path)
    _LEASES[run_id] = [fd, 1]
    try:
        yield lease
    finally:
        held = _LEASES.pop(run_id)
        if lease.kept or "kept" in held:
            os.close(fd)  # unheld but linked: the next start marks the run FAILED
        else:
            _drop_lease(path, fd)


def short_error(exc: BaseException) -> str:
    """An MLflow/SQLAlchemy error's telling line (not SQLAlchemy's autoflush preamble, SQL or link)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    telling = [ln for ln in lines if not ln.startswith(("(raised as a result", "[SQL:", "[parameters:", "(Background"))]
    return (telling or lines or [type(exc).__name__])[0][:500]


def _end_run(run_id: str, status: str, lease: Lease) -> None:
    """End the active run ``run_id`` with ``status``; if MLflow cannot record it, the lease is kept."""
    import mlflow

    try:
        mlflow.end_run(status)
    except BaseException:
        lease.keep()
        try:  # end_run failed before stopping the run's system-metrics thread: stop it (it logs nothing new)
            from mlflow.tracking.fluent import run_id_to_system_metrics_monitor

            monitor = run_id_to_system_metrics_monitor.pop(run_id, None)
            if monitor is not None:
                monitor.finish()
        except Exception as exc:  # mlflow internals moved: the thread is a daemon
            log.debug("could not stop the system metrics of run %s: %s", run_id, exc)
        raise


@contextmanager
def open_run(settings: Settings, end_status: str | None = "FINISHED", **start_run_kwargs):
    """``mlflow.start_run`` (a new run or ``run_id=`` reopened) holding its lease until its end is
    recorded: FAILED when the block raises, else ``end_status`` ("FINISHED"; "RUNNING" for a
    retraining's parent run between its steps; None: the status the reopened run had).

    The lease is released only once the run's end is in the store; when MLflow cannot write it (a
    full disk), the lease file stays and the next start marks the run FAILED. The block's own error
    is the one raised, never the store's failure to record it."""
    import mlflow

    if end_status is None and start_run_kwargs.get("run_id"):
        end_status = mlflow.MlflowClient().get_run(start_run_kwargs["run_id"]).info.status
    run = mlflow.start_run(**start_run_kwargs)
    with run_lease(settings, run.info.run_id) as lease:
        try:
            yield run
        except BaseException:
            try:
                _end_run(run.info.run_id, "FAILED", lease)
            except Exception as exc:  # the block's error is the one to report
                log.warning(
                    "could not mark MLflow run %s FAILED (the next start will): %s", run.info.run_id, short_error(exc)
                )
            raise
        _end_run(run.info.run_id, end_status or "FINISHED", lease)


def fail_abandoned_runs(settings: Settings, client=None) -> list[str]:
    """Mark FAILED every run still RUNNING whose lease no live process holds; returns their ids."""
    import fcntl

    leases = _lease_dir(settings)
    if not leases.is_dir():
        return []
    failed = []
    for path in sorted(leases.glob("*.lease")):
        run_id = path.stem
        if run_id in _LEASES:
            continue
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its process is alive
            if os.fstat(fd).st_nlink == 0:
                continue
            import mlflow

            client = client or mlflow.MlflowClient()
            try:
                run = client.get_run(run_id)
            except Exception as exc:  # a run of another store, or deleted
                log.debug("lease of unknown MLflow run %s: %s", run_id, exc)
                run = None
            if run is not None and run.info.status == "RUNNING":
                client.set_tag(run_id, "meli.failed_reason", "its process died while the run was open")
                client.set_terminated(run_id, "FAILED")
                log.warning(
                    "MLflow run %s (%s) was left RUNNING by a process that died: marked FAILED",
                    run_id,
                    run.info.run_name,
                )
                failed.append(run_id)
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return failed


@contextmanager
def finished_run(client, run_id: str):
    """A run made with ``client.create_run``: FINISHED when the block ends, FAILED if it raises."""
    try:
        yield run_id
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)


def log_report(client, run_id: str, metrics: dict, artifacts: list[str]) -> None:
    """A report's numbers (None skipped) and files on one run."""
    for key, v in metrics.items():
        if v is not None:
            client.log_metric(run_id, key, float(v))
    for path in artifacts:
        client.log_artifact(run_id, path)


CHAMPION, PREVIOUS = "champion", "previous"
