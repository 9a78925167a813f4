"""A small FastAPI app mounted in the Airflow api-server by dags/plugins/meli_ui.py.

* ``/meli/runs/{dag_id}/{run_id}`` redirects to the Data Docs page of that run's validation
  (or says clearly that the run has no validation report yet);
* ``/meli/docs/...`` serves the static GX Data Docs site from $MELI_HOME.
"""

from __future__ import annotations

from pathlib import Path


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

    api.mount("/docs", StaticFiles(directory=str(docs_dir), html=True), name="data_docs")
    return api
