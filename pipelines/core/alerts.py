"""Alerts a person should see: a line in the log, a JSON notice under ``$MELI_HOME/alerts/`` and,
when ``MELI_ALERT_WEBHOOK_URL`` is set, a JSON POST to it. Standard library only: the triggerer
imports this to run a DAG's deadline callback."""

from __future__ import annotations

import json
import logging
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from pipelines.settings import get_settings, webhook_host

log = logging.getLogger(__name__)


def notify(kind: str, message: str, details: dict | None = None) -> Path:
    """Log ``message``, write the notice, post it to the webhook (a failure there is logged)."""
    settings = get_settings()
    at = datetime.now(UTC)
    notice = {"kind": kind, "message": message, "at": at.isoformat(), **(details or {})}
    log.warning("ALERT %s: %s", kind, message)
    folder = settings.home / "alerts"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{at.strftime('%Y%m%dT%H%M%S%fZ')}-{kind}.json"
    path.write_text(json.dumps(notice, indent=2, default=str))
    if settings.alert_webhook_url:
        req = urllib.request.Request(
            settings.alert_webhook_url,
            data=json.dumps(notice, default=str).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                notice["webhook_status"] = resp.status
        except Exception as exc:  # the notice on disk and the log line stand
            # the URL is a credential (Slack/Teams hooks carry their token in the path): never logged
            log.warning("alert webhook POST to %s failed: %s", webhook_host(settings.alert_webhook_url), _failure(exc))
    return path


def _failure(exc: BaseException) -> str:
    """What went wrong, without any text that could quote the URL (an exception's message may)."""
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, OSError) and reason.strerror:
        return f"{type(reason).__name__}: {reason.strerror}"
    return type(reason).__name__


async def retrain_deadline_missed(dag_id: str = "meli_retrain", hours: float = 0.0, context: dict | None = None):
    """The nightly run's DeadlineAlert callback (run by the triggerer): it has not finished
    ``hours`` after it was queued."""
    dag_run = (context or {}).get("dag_run") or {}
    run_id = dag_run.get("run_id") if isinstance(dag_run, dict) else getattr(dag_run, "run_id", None)
    deadline = (context or {}).get("deadline") or {}
    message = f"{dag_id} run {run_id or '?'} has not finished {hours:g} h after it was queued"
    return str(notify("deadline_missed", message, {"dag_id": dag_id, "run_id": run_id, "deadline": deadline}))
