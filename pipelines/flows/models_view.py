"""What the Airflow UI plugin's "Models" page and a run's tabs read (issue 33 items 3 and 8): the
champion, the previous version and the versions waiting for approval (``pipelines.registry.decisions.status``),
the last decisions (``pipelines.registry.decisions.history``), each with its links; the version a scoring run
scored with; the latest drift report of the champion.

Every link is a path relative to ``/meli/`` (the plugin's root) or Airflow's UI (``../dags/...``), each
segment percent-quoted; values are returned as data for a template with autoescape, never as markup.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

from pipelines.settings import Settings

log = logging.getLogger(__name__)

DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
SCORE_DAG_ID = "meli_score"  # the DAG that scores batches and writes drift reports


def q(value) -> str:
    """One URL path segment."""
    return urllib.parse.quote(str(value), safe="")


def f4(value) -> str:
    """A figure (float or the string a tag holds) with 4 decimals, else "n/a"."""
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return "n/a"


def when(value) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM UTC`` (or as given when it is not one)."""
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value or "")
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def mlflow_version_url(settings: Settings, version) -> str | None:
    """``<MELI_MLFLOW_UI_URL>/#/models/<name>/versions/<N>``, when an http(s) URL is configured."""
    base = (settings.mlflow_ui_url or "").strip().rstrip("/")
    if not base or urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        return None
    return f"{base}/#/models/{q(settings.model_name)}/versions/{q(version)}"


def airflow_run_path(dag_id: str, run_id: str) -> str:
    """Airflow 3's page of a DAG run, relative to /meli/."""
    return f"../dags/{q(dag_id)}/runs/{q(run_id)}"


def _decision_links(settings: Settings, version: str, run_id: str) -> dict:
    """The links of a version and the DAG run that gated it: card, decision, Airflow run, MLflow."""
    from pipelines.registry.decisions import GATE_DAG_ID, decision_for_run

    links = {"card": f"cards/{q(version)}", "mlflow": mlflow_version_url(settings, version)}
    if run_id:
        d = decision_for_run(settings, run_id)
        dag_id = ((d or {}).get("decision") or {}).get("dag_id") or GATE_DAG_ID
        if d is not None and str(d["decision"].get("challenger_version")) == str(version):
            links["decision"] = f"runs/{q(dag_id)}/{q(run_id)}/decision"
        links["run"] = airflow_run_path(dag_id, run_id)
        links["dag_id"], links["run_id"] = dag_id, run_id
    return links


def _served_since(events: list[dict], version: str) -> dict | None:
    """The event that made ``version`` the champion (its last promotion or rollback to it)."""
    for e in reversed(events):
        if str(e.get("challenger_version")) == version and e.get("decision") in ("promoted", "rollback"):
            return e
    return None


def models_page(settings: Settings, limit: int = 20) -> dict:
    """The Models page's data: ``champion``, ``previous`` (None when there is none), ``pending`` (the
    versions waiting for a person, newest first), ``decisions`` (the last ``limit`` events, newest
    first), and ``error`` when the registry could not be read."""
    from pipelines.registry.decisions import history, status

    out = {
        "model_name": settings.model_name,
        "champion": None,
        "previous": None,
        "pending": [],
        "decisions": [],
        "versions": 0,
        "mlflow_ui": bool(mlflow_version_url(settings, 1)),
        "error": None,
    }
    try:
        st = status(settings)
        events = history(settings, limit=200)
    except Exception as exc:  # an unreachable tracking server: the page says so
        log.warning("Models page: the registry could not be read: %s", exc)
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    out["versions"] = len(st.get("versions") or [])
    last_event = {}
    for e in events:
        last_event[str(e.get("challenger_version"))] = e
    for alias in ("champion", "previous"):
        mv = st.get(alias)
        if not mv:
            continue
        v = str(mv["version"])
        e = last_event.get(v) or {}
        since = _served_since(events, v) if alias == "champion" else None
        out[alias] = {
            "version": v,
            "model_type": mv.get("model_type") or "",
            "run_date": mv.get("run_date") or "",
            "macro_recall": f4(mv.get("macro_recall")),
            "since": when(since["decided_at"]) if since else "",
            "since_how": (since or {}).get("decision", ""),
            "review_by": (since or {}).get("review_by", ""),
            "links": _decision_links(settings, v, e.get("dag_run_id", "")),
        }
    for mv in sorted(st.get("versions") or [], key=lambda x: -int(x["version"])):
        if mv.get("decision") != "pending_approval":
            continue
        v = str(mv["version"])
        e = last_event.get(v) or {}
        links = _decision_links(settings, v, e.get("dag_run_id", ""))
        if links.get("run"):  # the approval task of that run waits on its Required Actions tab
            links["approve"] = links["run"] + "/required_actions"
        out["pending"].append(
            {
                "version": v,
                "run_date": mv.get("run_date") or "",
                "waiting_since": when(e["decided_at"]) if e.get("decided_at") else "",
                "macro_recall": f4(e.get("challenger_macro_recall")),
                "champion_macro_recall": f4(e.get("champion_macro_recall")),
                "delta": f4(e.get("delta")),
                "reason": e.get("reason", ""),
                "links": links,
            }
        )
    for e in reversed(events[-limit:]):
        v = str(e.get("challenger_version") or "")
        out["decisions"].append(
            {
                "at": when(e.get("decided_at")),
                "decision": e.get("decision", ""),
                "rule": e.get("rule", ""),
                "version": v,
                "champion_version": e.get("champion_version", ""),
                "macro_recall": f4(e.get("challenger_macro_recall")),
                "champion_macro_recall": f4(e.get("champion_macro_recall")),
                "delta": f4(e.get("delta")),
                "review": " ".join(x for x in (e.get("review_response", ""), e.get("review_by", "")) if x),
                "reason": e.get("reason", ""),
                "links": _decision_links(settings, v, e.get("dag_run_id", "")) if v else {},
            }
        )
    return out


# ------------------------------------------------------------------------------------------
# Item 3: what the tabs show on runs of the other DAG
# ------------------------------------------------------------------------------------------
def scoring_run(settings: Settings, dag_id: str, run_id: str, xcom=None) -> dict | None:
    """``{"version", "run_date", "monitor"}`` of a scoring run: from its drift report's link (the
    monitor task), else from what its ``score`` task returned (``xcom(dag_id, run_id)``: the
    api-server reads it from Airflow's DB). None when the run scored nothing on record."""
    from pipelines.monitoring.links import monitor_link

    link = monitor_link(settings, run_id, dag_id)
    version, run_date = (link or {}).get("version"), (link or {}).get("run_date")
    if link and not version and link.get("report_json"):  # a link written before it named the version
        try:
            report = json.loads(Path(link["report_json"]).read_text())
            version, run_date = report.get("version"), report.get("run_date")
        except (OSError, ValueError):
            pass
    if not version and xcom is not None:
        value = xcom(dag_id, run_id) or {}
        version, run_date = value.get("model_version"), value.get("run_date")
    version = str(version or "")
    if not (version.isascii() and version.isdigit()):
        return None
    run_date = str(run_date or "")
    return {"version": version, "run_date": run_date if DATE.match(run_date) else "", "monitor": link}


def partition_validation(settings: Settings, run_date: str) -> str | None:
    """The Data Docs page (a path inside the site) of the validation of the listings partition of
    ``run_date`` (``$MELI_HOME/validation/<date>/report.json``), or None."""
    from pipelines.core.paths import linked

    if not DATE.match(run_date or ""):
        return None
    p = settings.home / "validation" / run_date / "report.json"
    try:
        report = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    target = (report.get("data_docs_pages") or {}).get("listings_partition") or report.get("data_docs_index")
    return target if target and linked(target, settings.gx_root) else None


def version_decision(settings: Settings, version: str) -> dict | None:
    """The gate decision on record for ``version`` (the ``decision.json`` of the run date it was
    registered on: ``meli.run_date`` on the version), as ``decision_for_run`` returns it, or None."""
    from pipelines.registry.records import decision_markdown, registry_client

    try:
        mv = registry_client(settings).get_model_version(settings.model_name, str(version))
    except Exception as exc:
        log.info("no version %s of %s: %s", version, settings.model_name, exc)
        return None
    run_date = mv.tags.get("meli.run_date", "")
    if not DATE.match(run_date):
        return None
    out = settings.run_dir(run_date) / "evaluation"
    try:
        d = json.loads((out / "decision.json").read_text())
    except (OSError, ValueError):
        return None
    if str(d.get("challenger_version")) != str(version):
        return None
    md = out / "decision.md"
    return {"decision": d, "markdown": md.read_text() if md.exists() else decision_markdown(d)}


def latest_scoring(settings: Settings, version: str | None, scan: int = 500) -> dict | None:
    """The newest scoring run (of the last ``scan`` with a drift report link) that scored with
    ``version`` (any version when None): ``{"dag_id", "run_id", "version", "run_date", "status"}``."""

    folder = settings.home / "monitor" / "by_run"
    try:
        files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[:scan]
    except OSError:
        return None
    for p in files:
        try:
            raw = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        run_id, dag_id = str(raw.get("run_id") or ""), str(raw.get("dag_id") or SCORE_DAG_ID)
        got = scoring_run(settings, dag_id, run_id) if run_id else None
        if got is None or not got["monitor"] or not got["monitor"].get("report_html"):
            continue
        if version is None or got["version"] == str(version):
            status = ""
            try:
                status = json.loads(Path(got["monitor"]["report_json"]).read_text()).get("status", "")
            except (OSError, TypeError, ValueError):
                pass
            return {
                "dag_id": dag_id,
                "run_id": run_id,
                "version": got["version"],
                "run_date": got["run_date"],
                "status": status,
            }
    return None


def champion_version(settings: Settings) -> str | None:
    from pipelines.core.tracking import CHAMPION, alias_version
    from pipelines.registry.records import registry_client

    try:
        mv = alias_version(registry_client(settings), settings.model_name, CHAMPION)
    except Exception as exc:
        log.info("champion of %s unknown: %s", settings.model_name, exc)
        return None
    return str(mv.version) if mv is not None else None
