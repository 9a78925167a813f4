"""A small FastAPI app mounted in the Airflow api-server by dags/plugins/meli_ui.py.

* ``/meli/runs/{dag_id}/{run_id}`` redirects to the Data Docs page of that run's validation
  (or says clearly that the run has no validation report yet);
* ``/meli/runs/{dag_id}/{run_id}/decision`` shows that run's gate decision (rule, both
  macro-recalls, the CI) rendered from its ``decision.md``;
* ``/meli/cards/{version}`` is the model card of a registered version (HTML, rebuilt from the records
  when missing); ``/meli/runs/{dag_id}/{run_id}/card`` redirects to the card of the run's challenger;
* ``/meli/runs/{dag_id}/{run_id}/monitor`` shows the drift report of a meli_score run's batch;
* ``POST /meli/runs/{dag_id}/{run_id}/note`` (called by the gate task) copies that decision into
  the DAG run's note, so the run page says what happened. It takes no input: the note is always the
  decision on disk for that run;
* ``/meli/docs/...`` serves the static GX Data Docs site from $MELI_HOME.
"""

from __future__ import annotations

import logging
import urllib.parse
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)


def app():
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, RedirectResponse
    from fastapi.staticfiles import StaticFiles

    from pipelines.settings import get_settings
    from pipelines.validate import run_link

    settings = get_settings()
    docs_dir = settings.gx_root / "gx" / "uncommitted" / "data_docs" / "local_site"
    docs_dir.mkdir(parents=True, exist_ok=True)
    api = FastAPI(title="meli-retrain reports")

    @api.get("/runs/{dag_id}/{run_id}")
    def run_report(dag_id: str, run_id: str):
        link = run_link(settings, dag_id, run_id)
        if not link:
            return HTMLResponse(
                f"<p>No validation report for <b>{dag_id}</b> run <b>{run_id}</b> yet "
                "(the validate task has not run, or this DAG does not validate).</p>",
                status_code=404,
            )
        pages = link.get("data_docs_pages") or {}
        target = pages.get("listings_partition") or link.get("data_docs_index")
        try:
            rel = Path(target).resolve().relative_to(docs_dir.resolve())
        except (TypeError, ValueError):
            raise HTTPException(404, f"report {target} is outside the Data Docs site") from None
        # relative to /meli/runs/{dag_id}/{run_id}: two levels up is /meli/
        return RedirectResponse(url=f"../../docs/{rel.as_posix()}")

    @api.get("/runs/{dag_id}/{run_id}/decision")
    def run_decision(dag_id: str, run_id: str):
        from markdown_it import MarkdownIt

        from pipelines.registry import decision_for_run

        d = decision_for_run(settings, run_id)
        if d is None:
            return HTMLResponse(
                f"<p>No gate decision for <b>{dag_id}</b> run <b>{run_id}</b> "
                "(the gate has not run yet, or this DAG does not gate).</p>",
                status_code=404,
            )
        body = MarkdownIt("commonmark").enable("table").render(d["markdown"])
        version = urllib.parse.quote(str(d["decision"]["challenger_version"]), safe="")
        body += f"<p><a href='../../../cards/{version}'>Model card of v{version}</a></p>"
        return HTMLResponse(
            "<!doctype html><meta charset='utf-8'><title>Gate decision</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:60em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}</style>" + body
        )

    @api.get("/runs/{dag_id}/{run_id}/card")
    def run_card(dag_id: str, run_id: str):
        from pipelines.registry import decision_for_run

        d = decision_for_run(settings, run_id)
        if d is None:
            return HTMLResponse(
                f"<p>No model card for <b>{dag_id}</b> run <b>{run_id}</b>: the run has registered no gated "
                "version yet.</p>",
                status_code=404,
            )
        return RedirectResponse(url=f"../../../cards/{urllib.parse.quote(str(d['decision']['challenger_version']))}")

    @api.get("/cards/{version}")
    def model_card(version: str):
        from pipelines.card import card_paths, write_card

        if not version.isdigit():
            raise HTTPException(404, f"no version {version!r}: versions are numbers")
        page = card_paths(settings, version)["html"]
        if not page.exists():
            try:
                write_card(settings, version, log_to_mlflow=False)
            except Exception as exc:
                return HTMLResponse(
                    f"<p>No model card for {settings.model_name} v{version}: {exc}</p>", status_code=404
                )
        return HTMLResponse(page.read_text())

    @api.get("/runs/{dag_id}/{run_id}/monitor")
    def run_monitor(dag_id: str, run_id: str):
        link = monitor_link(settings, run_id)
        page = Path(link["report_html"]) if link and link.get("report_html") else None
        if page is None or not page.exists():
            return HTMLResponse(
                f"<p>No drift report for <b>{dag_id}</b> run <b>{run_id}</b> (the monitor task has not run, "
                "or this DAG does not score).</p>",
                status_code=404,
            )
        return HTMLResponse(page.read_text())

    @api.post("/runs/{dag_id}/{run_id}/note")
    def run_note(dag_id: str, run_id: str):
        from pipelines.registry import decision_for_run, decision_note

        d = decision_for_run(settings, run_id)
        link = monitor_link(settings, run_id) if d is None else None
        if d is None and link is None:
            raise HTTPException(404, f"no gate decision or drift report recorded for run {run_id}")
        note = decision_note(d["decision"]) if d is not None else link["note"]
        set_run_note(dag_id, run_id, note)
        return {"dag_id": dag_id, "run_id": run_id, "note": note}

    api.mount("/docs", StaticFiles(directory=str(docs_dir), html=True), name="data_docs")
    return api


def _monitor_link_path(settings, run_id: str) -> Path:
    import re

    return settings.home / "monitor" / "by_run" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id) + ".json")


def link_monitor_run(settings, run_id: str, report: dict) -> None:
    """Name a scoring run's drift report (for its "Drift report" tab and its note)."""
    from pipelines.lake import atomic_write_json
    from pipelines.monitor import one_line

    note = one_line(report)
    atomic_write_json(
        _monitor_link_path(settings, run_id),
        {
            "run_id": run_id,
            "report_html": report.get("report_html"),
            "report_json": report.get("report_json"),
            "note": ("**DRIFT** " if report.get("status") == "drift" else "") + note[:900],
        },
    )


def monitor_link(settings, run_id: str) -> dict | None:
    import json

    p = _monitor_link_path(settings, run_id)
    if not p.exists():
        return None
    from pipelines.paths import linked

    link = json.loads(p.read_text())
    # honoured only when the reports it names lie under $MELI_HOME/monitor (pipelines/paths.py)
    if any(link.get(k) and linked(link[k], settings.home / "monitor") is None for k in ("report_html", "report_json")):
        return None
    return link if link.get("run_id") == run_id else None


def set_run_note(dag_id: str, run_id: str, note: str) -> None:
    """Set a DAG run's note in the metadata DB (the api-server has DB access; tasks do not)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        dr = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if dr is None:
            from fastapi import HTTPException

            raise HTTPException(404, f"no run {run_id} of {dag_id}")
        dr.note = note


def api_base_url() -> str:
    """The api-server's URL as a task sees it (``[api] base_url``, else host:port)."""
    from airflow.sdk.configuration import conf

    return conf.get("api", "base_url", fallback="") or "http://{}:{}".format(
        conf.get("api", "host", fallback="127.0.0.1"), conf.get("api", "port", fallback="8080")
    )


def post_run_note(base_url: str, dag_id: str, run_id: str, timeout_s: float = 10.0) -> bool:
    """Ask the api-server (this plugin's note endpoint) to copy the run's gate decision into the DAG
    run's note. Best effort: without a reachable api-server (``dag.test()``, the CLI) it logs and
    returns False; the decision is in the task log, the "Gate decision" tab and MLflow anyway."""
    q = urllib.parse.quote
    url = f"{base_url.rstrip('/')}/meli/runs/{q(dag_id, safe='')}/{q(run_id, safe='')}/note"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=timeout_s) as r:
            ok = r.status == 200
    except OSError as exc:
        log.warning("could not set the run note through %s: %s", url, exc)
        return False
    log.info("run note set: %s", url)
    return ok
