"""A small FastAPI app mounted in the Airflow api-server by dags/plugins/meli_ui.py.

* ``/meli/runs/{dag_id}/{run_id}`` redirects to the Data Docs page of that run's validation
  (or says clearly that the run has no validation report yet);
* ``/meli/runs/{dag_id}/{run_id}/decision`` shows that run's gate decision (rule, both
  macro-recalls, the CI) rendered from its ``decision.md``;
* ``/meli/cards/{version}`` is the model card of a registered version (HTML, rendered from the
  records when no card was written; a request writes nothing); ``/meli/runs/{dag_id}/{run_id}/card``
  redirects to the card of the run's challenger;
* ``/meli/runs/{dag_id}/{run_id}/monitor`` shows the drift report of a meli_score run's batch;
* ``/meli/models`` (Airflow's "Models" menu entry) is the registry at a glance: the champion (since
  when, its macro-recall), the previous version, the versions waiting for approval and the last
  decisions, each linking to its card, its decision, its Airflow run and its MLflow version;

Airflow shows a plugin's run tabs on every DAG's runs (``external_views`` filter by destination
only), so each tab means something on every run (issue 33 item 3): on a scoring run the "Model
card" is the card of the version that scored, "Gate decision" the decision that registered that
version, "Data Docs" a page that points to the validation of the scored partition; on a retrain run
"Drift report" points to the champion's latest drift report. Runs of other DAGs say plainly that
the DAG does not validate, gate, register or score.
* ``POST /meli/runs/{dag_id}/{run_id}/note`` (called by the gate and monitor tasks) copies that
  decision into the DAG run's note, so the run page says what happened. It takes no input: the note
  is always the record on disk for that run of that DAG;
* ``/meli/docs/...`` serves the static GX Data Docs site from $MELI_HOME (its ``static/`` assets
  without login: see DOCS_CSP).

Who may: Airflow mounts plugin apps without authentication, so every route here asks Airflow's own
security dependencies (the ``Authorization: Bearer`` header, or the browser's ``_token`` cookie of a
logged-in user, which the run page's iframes carry): the ``/runs/{dag_id}/...`` pages need read
access to that DAG's runs, the cards and the Data Docs read access to ``meli_retrain`` (whose runs
register the versions and validate the data), the note edit access to the DAG's runs, or the tasks'
own credential: an HMAC of (time, dag_id, run_id) with ``MELI_NOTE_SECRET`` (by default a key
generated once under ``$MELI_HOME/secrets/``). Anonymous requests get 401, others without the
right 403. A tab that quotes another DAG's record (a scoring run's gate decision, a retrain run's
drift report) also asks read access to that DAG, and without it quotes nothing of it.

Every page is a Jinja2 template with autoescape (``pipelines/core/render.py``); every response carries a
Content-Security-Policy: no script on the plugin's pages; the Data Docs (GX's pages run their own
inline scripts and load their vendored assets) run sandboxed in an opaque origin, connect nowhere.
"""

# no ``from __future__ import annotations``: FastAPI reads the annotations of the routes defined in
# app(), whose types (Request) are imported there
import hashlib
import hmac
import logging
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path

from pipelines.monitoring.links import MONITOR_DAG_ID, monitor_link

log = logging.getLogger(__name__)

TUNE_DAG_ID = "meli_tune"  # tunes: neither validates, gates, registers nor scores
NOTE_HEADER = "X-Meli-Note-Signature"
NOTE_MAX_AGE_S = 600
# GX Data Docs: their pages initialise tables in inline scripts and load Bootstrap/jQuery/Font Awesome
# copied into the site (pipelines/data/data_docs.py): scripts and styles from the site and inline, nothing
# fetched from elsewhere, no request from a script (connect-src), no form. And ``sandbox allow-scripts``
# (no allow-same-origin): a page runs in an opaque origin, so a script in it (GX writes values from the
# data into its pages; validate.py escapes them first, this is the second wall) has no cookie, cannot read
# Airflow's pages or API through a frame and cannot script its parent. Its subresources are then
# cross-site requests that carry no SameSite=Lax ``_token`` cookie: the site's ``static/`` folder (GX's
# and the vendored public libraries, no data) is served without login; the pages themselves need it.
DOCS_CSP = (
    "sandbox allow-scripts allow-popups; "  # popups (GX's links to its docs) inherit the sandbox
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'none'; object-src 'none'; base-uri 'self'; "
    "form-action 'none'; frame-ancestors 'self'"
)
DOCS_STATIC = "static"  # the Data Docs site's assets folder (GX's own and pipelines/data/data_docs.py's vendor copies)


def app():
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import GetUserDep, bearer_scheme, get_user, requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

    from pipelines.core.render import PAGE_CSP, markdown_html, render
    from pipelines.data.validate import run_link
    from pipelines.registry.decisions import GATE_DAG_ID
    from pipelines.settings import get_settings

    settings = get_settings()
    docs_dir = (settings.gx_root / "gx" / "uncommitted" / "data_docs" / "local_site").resolve()
    docs_dir.mkdir(parents=True, exist_ok=True)
    # no OpenAPI schema or Swagger page of its own: /docs is the Data Docs site, and nothing answers
    # without the checks below
    api = FastAPI(title="meli-retrain reports", docs_url=None, redoc_url=None, openapi_url=None)
    read_run = [Depends(requires_access_dag("GET", DagAccessEntity.RUN))]  # dag_id from the path
    read_retrain = [Depends(requires_access_dag("GET", param_dag_id=GATE_DAG_ID))]

    @api.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        if "Content-Security-Policy" not in response.headers:  # the Data Docs' files set their own
            response.headers["Content-Security-Policy"] = PAGE_CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    def may_read(request: Request, user, other_dag_id: str) -> bool:
        """Whether ``user`` may read the runs of another DAG than the route's (a tab that quotes that
        DAG's records: a scoring run's gate decision, a retrain run's drift report), as Airflow's
        ``requires_access_dag`` decides."""
        try:
            requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=other_dag_id)(request, user)
            return True
        except HTTPException:
            return False

    def not_found(*parts: str) -> HTMLResponse:
        """A 404 page; ``parts`` alternate text and values (shown in bold), all escaped."""
        return HTMLResponse(render("message.html", title="Not found", parts=parts), status_code=404)

    # what each of the project's DAGs records for a run's tabs; a DAG not named here may record anything
    does = {GATE_DAG_ID: {"validate", "gate"}, MONITOR_DAG_ID: {"score"}, TUNE_DAG_ID: set()}

    def never(dag_id: str, what: str) -> bool:
        """``dag_id`` is one of the project's DAGs and its runs never ``what`` (validate, gate, score)."""
        return dag_id in does and what not in does[dag_id]

    def docs_path(target) -> str | None:
        """A Data Docs file as a path relative to /meli/ (None outside the site)."""
        try:
            rel = Path(target).resolve().relative_to(docs_dir)
        except (TypeError, ValueError):
            return None
        return f"docs/{urllib.parse.quote(rel.as_posix())}"

    def explain(title: str, paragraphs: list, links: list, root: str, body=None, status: int = 200) -> HTMLResponse:
        """A tab's page: paragraphs of escaped parts (every other one bold), links relative to /meli/
        (``root`` leads there from the route), optionally a Markdown record below."""
        links = [{**x, "href": root + x["href"]} for x in links if x.get("href")]
        page = render("explain.html", title=title, paragraphs=paragraphs, links=links, body=body)
        return HTMLResponse(page, status_code=status)

    def scored(dag_id: str, run_id: str) -> dict | None:
        from pipelines.flows.models_view import scoring_run

        return scoring_run(settings, dag_id, run_id, xcom=score_result)

    @api.get("/runs/{dag_id}/{run_id}", dependencies=read_run)
    def run_report(dag_id: str, run_id: str):
        link = run_link(settings, dag_id, run_id)
        s = None if link else scored(dag_id, run_id)
        if s is not None:  # a scoring run: the partition it scored was validated by the run that landed it
            from pipelines.flows.models_view import partition_validation

            page = docs_path(partition_validation(settings, s["run_date"])) if s["run_date"] else None
            return explain(
                "Data Docs",
                [
                    [
                        "Scoring runs do not validate: ",
                        dag_id,
                        " scores listings that ",
                        GATE_DAG_ID,
                        " validated with Great Expectations before it landed them in the lake.",
                    ],
                    [
                        "This run scored a batch dated ",
                        s["run_date"] or "(no date on record)",
                        " with version ",
                        s["version"],
                        " (the date of the retrain run whose partition it scored, or the run's own date when "
                        "it was triggered by hand).",
                    ],
                    [] if page else ["No validation report is on record for the listings partition of that date."],
                ],
                [
                    {"href": page, "text": f"Validation of the listings partition dated {s['run_date']}"},
                    {"href": "docs/index.html", "text": "Data Docs of every validation"},
                    {
                        "href": f"cards/{urllib.parse.quote(s['version'], safe='')}",
                        "text": f"Model card of v{s['version']}",
                    },
                ],
                root="../../",
            )
        if not link and never(dag_id, "validate"):
            return not_found(
                "",
                dag_id,
                " runs do not validate: ",
                GATE_DAG_ID,
                " validates each listings partition with Great Expectations before it lands it in the lake.",
            )
        if not link:
            hedge = "" if dag_id in does else ", or this DAG does not validate"
            return not_found(
                "No validation report for ", dag_id, " run ", run_id, f" yet (the validate task has not run{hedge})."
            )
        pages = link.get("data_docs_pages") or {}
        target = docs_path(pages.get("listings_partition") or link.get("data_docs_index"))
        if target is None:
            return not_found("The report of this run is outside the Data Docs site.")
        # relative to /meli/runs/{dag_id}/{run_id}: two levels up is /meli/
        return RedirectResponse(url=f"../../{target}")

    @api.get("/runs/{dag_id}/{run_id}/decision", dependencies=read_run)
    def run_decision(dag_id: str, run_id: str, request: Request, user: GetUserDep):
        from pipelines.registry.decisions import decision_for_run

        d = decision_for_run(settings, run_id, dag_id)
        s = None if d is not None else scored(dag_id, run_id)
        if s is not None:  # a scoring run: the decision that registered the version it scored with
            from pipelines.flows.models_view import airflow_run_path, version_decision

            vd = version_decision(settings, s["version"])
            v = urllib.parse.quote(s["version"], safe="")
            links = [{"href": f"cards/{v}", "text": f"Model card of v{s['version']}"}]
            gate_dag = (vd["decision"].get("dag_id") or GATE_DAG_ID) if vd is not None else GATE_DAG_ID
            if vd is not None and not may_read(request, user, gate_dag):  # that decision is the gate DAG's record
                return explain(
                    "Gate decision",
                    [
                        [
                            "Scoring runs do not gate. This run scored with version ",
                            s["version"],
                            "; its gate decision is a record of ",
                            gate_dag,
                            ", whose runs you may not read.",
                        ]
                    ],
                    [],
                    root="../../../",
                )
            if vd is not None and vd["decision"].get("dag_run_id"):
                links.append(
                    {
                        "href": airflow_run_path(gate_dag, vd["decision"]["dag_run_id"]),
                        "text": f"The {gate_dag} run that gated v{s['version']}",
                        "top": True,
                    }
                )
            return explain(
                "Gate decision",
                [
                    [
                        "Scoring runs do not gate. This run scored with version ",
                        s["version"],
                        "; below is the gate decision on record for it.",
                    ]
                    if vd is not None
                    else [
                        "Scoring runs do not gate. This run scored with version ",
                        s["version"],
                        ", which has no gate decision on record.",
                    ],
                ],
                links,
                root="../../../",
                body=markdown_html(vd["markdown"]) if vd is not None else None,
            )
        if d is None and never(dag_id, "gate"):
            return not_found(
                "", dag_id, " runs do not gate: ", GATE_DAG_ID, " gates each version it trains and registers."
            )
        if d is None:
            hedge = "" if dag_id in does else ", or this DAG does not gate"
            return not_found("No gate decision for ", dag_id, " run ", run_id, f" (the gate has not run yet{hedge}).")
        version = str(d["decision"]["challenger_version"])
        links = [
            {"href": f"../../../cards/{urllib.parse.quote(version, safe='')}", "text": f"Model card of v{version}"}
        ]
        page = render("markdown_page.html", title="Gate decision", body=markdown_html(d["markdown"]), links=links)
        return HTMLResponse(page)

    @api.get("/runs/{dag_id}/{run_id}/card", dependencies=read_run)
    def run_card(dag_id: str, run_id: str):
        from pipelines.registry.decisions import decision_for_run

        d = decision_for_run(settings, run_id, dag_id)
        s = None if d is not None else scored(dag_id, run_id)
        if d is None and s is None and never(dag_id, "gate") and never(dag_id, "score"):
            return not_found(
                "",
                dag_id,
                " runs register and score no version: a model card belongs to a ",
                GATE_DAG_ID,
                " run (the version it gated) or a ",
                MONITOR_DAG_ID,
                " run (the version it scored with).",
            )
        if d is None and s is None:
            return not_found(
                "No model card for ",
                dag_id,
                " run ",
                run_id,
                ": the run has registered no gated version and scored nothing yet.",
            )
        # the version the run registered and gated, or (a scoring run) the version it scored with
        version = urllib.parse.quote(str(d["decision"]["challenger_version"] if d else s["version"]), safe="")
        return RedirectResponse(url=f"../../../cards/{version}")

    @api.get("/cards/{version}", dependencies=read_retrain)
    def model_card(version: str):
        from pipelines.registry.card import card_page

        if not (version.isascii() and version.isdigit()):
            return not_found("No version ", version, ": versions are numbers.")
        try:
            return HTMLResponse(card_page(settings, version))
        except Exception as exc:
            return not_found("No model card for ", f"{settings.model_name} v{version}", f": {exc}")

    @api.get("/runs/{dag_id}/{run_id}/monitor", dependencies=read_run)
    def run_monitor(dag_id: str, run_id: str, request: Request, user: GetUserDep):
        link = monitor_link(settings, run_id, dag_id)
        page = Path(link["report_html"]).resolve() if link and link.get("report_html") else None
        if (page is None or not page.is_file()) and dag_id == GATE_DAG_ID:
            return retrain_drift(dag_id, lambda other: may_read(request, user, other))
        if page is None or not page.is_relative_to(settings.monitor_dir.resolve()) or not page.is_file():
            if never(dag_id, "score"):
                return not_found(
                    "",
                    dag_id,
                    " runs do not score: ",
                    MONITOR_DAG_ID,
                    " scores each new listings partition, and its monitor task writes a drift report.",
                )
            hedge = "" if dag_id in does else ", or this DAG does not score"
            return not_found(
                "No drift report for ", dag_id, " run ", run_id, f" (the monitor task has not run{hedge})."
            )
        return HTMLResponse(page.read_text())

    def retrain_drift(dag_id: str, may_read_dag) -> HTMLResponse:
        """A retrain run's "Drift report" tab: the champion's latest drift report, linked (when the user
        may read the scoring DAG's runs: the report is that DAG's record)."""
        from pipelines.flows.models_view import airflow_run_path, champion_version, latest_scoring

        champion = champion_version(settings)
        latest = latest_scoring(settings, champion) if champion else None
        first = [
            "Retrain runs do not score: ",
            MONITOR_DAG_ID,
            " scores each new listings partition and each new champion, and its monitor task writes a drift report.",
        ]
        if latest is not None and not may_read_dag(latest["dag_id"] or MONITOR_DAG_ID):
            return explain(
                "Drift report",
                [
                    first,
                    [
                        "The champion's drift reports are records of ",
                        latest["dag_id"],
                        ", whose runs you may not read.",
                    ],
                ],
                [{"href": "models", "text": "Models: the champion, the previous version and the last decisions"}],
                root="../../../",
            )
        if latest is None:
            return explain(
                "Drift report",
                [
                    first,
                    ["No scoring run of the champion, ", f"v{champion}", ", has a drift report yet."]
                    if champion
                    else ["There is no champion yet, so no drift report."],
                ],
                [{"href": "models", "text": "Models: the champion, the previous version and the last decisions"}],
                root="../../../",
            )
        r = urllib.parse.quote(latest["run_id"], safe="")
        d = urllib.parse.quote(latest["dag_id"], safe="")
        return explain(
            "Drift report",
            [
                first,
                [
                    "The champion's latest drift report: ",
                    f"v{latest['version']}",
                    " on the batch of ",
                    latest["run_date"] or "an unknown date",
                    ", status ",
                    (latest["status"] or "unknown").upper(),
                    ", scoring run ",
                    latest["run_id"],
                    ".",
                ],
            ],
            [
                {
                    "href": f"runs/{d}/{r}/monitor",
                    "text": f"Drift report of v{latest['version']}, {latest['run_date']}",
                },
                {
                    "href": airflow_run_path(latest["dag_id"], latest["run_id"]),
                    "text": "That scoring run in Airflow",
                    "top": True,
                },
                {"href": "models", "text": "Models"},
            ],
            root="../../../",
        )

    @api.get("/models", dependencies=read_retrain)
    def models():
        from pipelines.flows.models_view import models_page

        data = models_page(settings)
        return HTMLResponse(render("models.html", title=f"Models: {settings.model_name}", m=data))

    async def may_set_note(request: Request, dag_id: str, run_id: str) -> None:
        """The tasks' signature, or a user who may edit this DAG's runs."""
        signature = request.headers.get(NOTE_HEADER)
        if signature is not None:
            if not verify_note_signature(settings, dag_id, run_id, signature):
                raise HTTPException(403, "invalid or expired note signature")
            return
        user = await get_user(request, None, await bearer_scheme(request))
        requires_access_dag("PUT", DagAccessEntity.RUN)(request, user)

    @api.post("/runs/{dag_id}/{run_id}/note", dependencies=[Depends(may_set_note)])
    def run_note(dag_id: str, run_id: str):
        from pipelines.registry.decisions import decision_for_run, decision_note

        d = decision_for_run(settings, run_id, dag_id)
        link = monitor_link(settings, run_id, dag_id) if d is None else None
        if d is None and link is None:
            raise HTTPException(404, f"no gate decision or drift report recorded for run {run_id} of {dag_id}")
        note = decision_note(d["decision"], settings) if d is not None else link["note"]
        set_run_note(dag_id, run_id, note)
        return {"dag_id": dag_id, "run_id": run_id, "note": note}

    @api.exception_handler(HTTPException)
    async def docs_login_bounce(request: Request, exc: HTTPException):
        """A link followed inside a sandboxed Data Docs page is a navigation from an opaque origin: the
        browser sends no SameSite=Lax ``_token`` cookie, and the page answers 401. Inside a frame (the
        run tab) that first 401 is a page of this origin (no sandbox, no script, no data) that reloads
        the same URL once (``Refresh``): a navigation this origin starts, so with the cookie."""
        from fastapi.exception_handlers import http_exception_handler

        docs = request.url.path.startswith(f"{request.scope.get('root_path', '')}/docs")
        if exc.status_code == 401 and docs and request.query_params.get("meli_login") is None:
            again = str(request.url.include_query_params(meli_login="1"))
            page = explain(
                "Data Docs",
                [["Loading this page with your Airflow login..."]],
                [{"href": again, "text": "Open it in the whole window", "top": True}],
                root="",
                status=401,
            )
            page.headers["Refresh"] = f"0; url={again}"
            return page
        return await http_exception_handler(request, exc)

    @api.get("/docs/" + DOCS_STATIC + "/{path:path}")
    def data_docs_static(path: str):
        """The site's static assets, without login: a sandboxed page's requests carry no cookie. Only
        files inside ``static/`` (after resolving links), never a page of results."""
        static = (docs_dir / DOCS_STATIC).resolve()
        target = (static / path).resolve()
        if (
            not target.is_relative_to(static)
            or not target.is_file()
            or target.suffix.lower() in (".html", ".htm", ".json")
        ):
            return not_found("No asset ", path, " in the Data Docs site.")
        # fonts are fetched in CORS mode: the sandboxed page's origin is opaque ("null")
        headers = {"Content-Security-Policy": DOCS_CSP, "Access-Control-Allow-Origin": "*"}
        return FileResponse(target, headers=headers)

    @api.get("/docs", dependencies=read_retrain)
    @api.get("/docs/{path:path}", dependencies=read_retrain)
    def data_docs(path: str = ""):
        """The static Data Docs site (only files inside it; a folder serves its index.html)."""
        target = (docs_dir / path).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.is_relative_to(docs_dir) or not target.is_file():
            return not_found("No page ", path, " in the Data Docs site.")
        return FileResponse(target, headers={"Content-Security-Policy": DOCS_CSP})

    return api


def note_key(settings) -> bytes:
    """The note route's HMAC key: ``MELI_NOTE_SECRET``, else a random key generated once per
    $MELI_HOME (``secrets/note.key``, mode 0600; the first writer wins, no reader sees it half-written)."""
    import secrets

    if settings.note_secret:
        return settings.note_secret.encode()
    path = settings.home / "secrets" / "note.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".note.key.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # never replaces a key another process made first
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return path.read_bytes().strip()


def note_signature(settings, dag_id: str, run_id: str, now: float | None = None) -> str:
    """``<unix time>.<hex HMAC-SHA256 of time, dag_id and run_id>``: lets a task set one run's note."""
    ts = str(int(time.time() if now is None else now))
    mac = hmac.new(note_key(settings), f"{ts}\n{dag_id}\n{run_id}".encode(), hashlib.sha256).hexdigest()
    return f"{ts}.{mac}"


def verify_note_signature(settings, dag_id: str, run_id: str, signature: str) -> bool:
    ts, _, _ = signature.partition(".")
    if not ts.isascii() or not ts.isdigit() or abs(time.time() - int(ts)) > NOTE_MAX_AGE_S:
        return False
    return hmac.compare_digest(note_signature(settings, dag_id, run_id, now=int(ts)), signature)


def score_result(dag_id: str, run_id: str) -> dict | None:
    """What the ``score`` task of a run returned (its XCom in Airflow's metadata DB: ``model_version``,
    ``run_date``...), or None: a scoring run's tabs know its version before (or without) a drift report."""
    try:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            query = XComModel.get_many(run_id=run_id, dag_ids=dag_id, task_ids="score", key="return_value", limit=1)
            row = session.scalars(query).first()
            value = XComModel.deserialize_value(row) if row is not None else None
    except Exception as exc:  # no DB here (a unit test, the CLI): the tabs say what they know
        log.info("no score result of %s run %s: %s", dag_id, run_id, exc)
        return None
    return value if isinstance(value, dict) else None


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
    """The api-server's URL as a person's browser sees it (``[api] base_url``, else host:port): for links."""
    from airflow.sdk.configuration import conf

    return conf.get("api", "base_url", fallback="") or "http://{}:{}".format(
        conf.get("api", "host", fallback="127.0.0.1"), conf.get("api", "port", fallback="8080")
    )


def task_api_url(settings=None) -> str:
    """The api-server's URL as a task sees it: ``MELI_AIRFLOW_API_URL``, else the execution API's URL
    (which tasks reach already: ``http://airflow-apiserver:8080`` in docker/compose.yaml) without its
    ``/execution/``, else ``api_base_url()``."""
    from airflow.sdk.configuration import conf

    from pipelines.settings import get_settings

    settings = settings or get_settings()
    if settings.airflow_api_url:
        return settings.airflow_api_url.rstrip("/")
    execution = conf.get("core", "execution_api_server_url", fallback="") or ""
    if execution.rstrip("/").endswith("/execution"):
        return execution.rstrip("/").removesuffix("/execution")
    return api_base_url().rstrip("/")


def post_run_note(dag_id: str, run_id: str, base_url: str | None = None, timeout_s: float = 10.0) -> bool:
    """Ask the api-server (this plugin's note endpoint, at ``task_api_url()`` unless ``base_url``) to
    copy the run's gate decision or drift status into the DAG run's note, signed with the note key.
    Best effort, returns False when the note is not set: where no api-server listens (``dag.test()``,
    ``make demo``) one INFO line; an api-server that refuses the request or does not answer in time,
    one warning. The decision is in the task log, the "Gate decision" tab and MLflow anyway."""
    from pipelines.settings import get_settings

    settings = get_settings()
    q = urllib.parse.quote
    url = f"{(base_url or task_api_url(settings)).rstrip('/')}/meli/runs/{q(dag_id, safe='')}/{q(run_id, safe='')}/note"
    try:
        headers = {NOTE_HEADER: note_signature(settings, dag_id, run_id)}  # reads (or makes) the key file
        req = urllib.request.Request(url, method="POST", headers=headers)
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            ok = r.status == 200
    except OSError as exc:
        if isinstance(getattr(exc, "reason", exc), ConnectionRefusedError):
            # nobody listens there: `airflow dags test` / `make demo` run with no api-server, and a run
            # needs no note then (nothing to act on); a server that answers badly or late is a warning
            log.info("no Airflow api-server at %s: the run note is not set (the decision is in this log)", url)
        else:
            log.warning("could not set the run note through %s: %s", url, exc)
        return False
    log.info("run note set: %s", url)
    return ok
