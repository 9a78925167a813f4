"""The gate's decisions as read back: the Markdown report of a decision, the decision a DAG run
recorded (its run page's tab and note), and the operator views of the registry (``status``: the
aliases and every version's decision; ``history``: the promotion history in MLflow).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.core.fs import read_json
from pipelines.core.render import md_text
from pipelines.core.tracking import CHAMPION, PREVIOUS, alias_version
from pipelines.registry.records import decision_figures, decision_markdown, registry_client, run_link_path
from pipelines.settings import Settings


def link_run_record(settings: Settings, run_id: str, record_json: Path, record_md: Path | None = None) -> None:
    """Name the record a DAG run left (a gate decision, or a skipped run's ``skipped.json``) for its
    note and "Gate decision" tab."""
    from pipelines.core.fs import atomic_write_json

    md = record_md or Path(record_json).with_suffix(".md")
    atomic_write_json(run_link_path(settings, run_id), {"decision_json": str(record_json), "decision_md": str(md)})


# the DAG that gates: a decision recorded before decisions named their DAG belongs to it
GATE_DAG_ID = "meli_retrain"


def decision_for_run(settings: Settings, run_id: str, dag_id: str | None = None) -> dict | None:
    """{"decision": ..., "markdown": ..., "path": ...} of the gate decision a DAG run recorded; with
    ``dag_id``, only when that run is of that DAG (run ids are unique per DAG only)."""
    from pipelines.core.paths import linked

    link = read_json(run_link_path(settings, run_id))
    # the link is honoured only when both files lie under the runs' folder ($MELI_HOME/work)
    if not link or not all(linked(link.get(k), settings.work_dir) for k in ("decision_json", "decision_md")):
        return None
    if not Path(link["decision_json"]).exists():
        return None
    d = json.loads(Path(link["decision_json"]).read_text())
    if d.get("dag_run_id") != run_id:  # the date was gated again by another run since
        return None
    if dag_id is not None and (d.get("dag_id") or GATE_DAG_ID) != dag_id:
        return None
    md = Path(link["decision_md"])
    return {"decision": d, "markdown": md.read_text() if md.exists() else decision_markdown(d), "path": str(md)}


def decision_note(d: dict, settings: Settings | None = None) -> str:
    """The DAG run's note: the decision in a few Markdown lines (rule, both macro-recalls, the CI), and
    with ``settings`` whose ``MELI_MLFLOW_UI_URL`` is an http(s) URL, a link to the version in MLflow."""
    if d["decision"] == "skipped":  # a run with nothing new to train on (pipelines/flows/retrain.py record_skip)
        return f"**SKIPPED** by rule `{d['rule']}`: {md_text(d['reason'])}"[:1000]
    text = (
        f"**{md_text(d['decision'].upper())}** v{md_text(d['challenger_version'])} by rule `{d['rule']}`: "
        f"{md_text(d['reason'])}\n\n{decision_figures(d)}"
    )
    link = ""
    if settings is not None and d.get("challenger_version") not in (None, ""):
        from pipelines.core.render import md_link
        from pipelines.core.tracking import ui_version_url

        url = ui_version_url(settings, str(d["challenger_version"]))
        link = md_link(f"v{d['challenger_version']} in MLflow", url) if len(url) <= 400 else ""
    if link:  # the link whole, never cut by the note's 1000 characters
        return f"{text[: 1000 - len(link) - 2]}\n\n{link}"
    return text[:1000]


def decision_text(d: dict) -> str:
    """The decision in plain text, for a task log (the note is Markdown: its escapes are not for a log)."""
    if d["decision"] == "skipped":
        return f"SKIPPED by rule '{d['rule']}': {d['reason']}"
    head = f"{str(d['decision']).upper()} v{d['challenger_version']} by rule '{d['rule']}': {d['reason']}"
    return f"{head}\n{decision_figures(d)}"


class NoSuchModel(LookupError):
    """The registered model (MELI_MODEL_NAME) does not exist while others do: a typo, most likely."""


def _check_model(settings: Settings, client) -> None:
    """Raise NoSuchModel when MELI_MODEL_NAME is not registered while other models are."""
    name = settings.model_name
    try:
        client.get_registered_model(name)
        return
    except Exception:  # not registered: a typo if the store holds other models
        others = [m.name for m in client.search_registered_models(max_results=20)]
    if others:
        raise NoSuchModel(
            f"registered model {name!r} does not exist in {settings.tracking_uri} (it holds: "
            f"{', '.join(sorted(others))}); check MELI_MODEL_NAME"
        )


def status(settings: Settings) -> dict:
    """The aliases and every version's decision; raises NoSuchModel when the store holds other models
    but not this one (an empty store: nothing trained yet, ``versions`` empty)."""
    client = registry_client(settings)
    name = settings.model_name
    out = {"model_name": name, "tracking_uri": settings.tracking_uri}
    _check_model(settings, client)
    for alias in (CHAMPION, PREVIOUS):
        mv = alias_version(client, name, alias)
        out[alias] = (
            None
            if mv is None
            else {
                "version": str(mv.version),
                "run_id": mv.run_id,
                "model_type": mv.tags.get("meli.model_type"),
                "run_date": mv.tags.get("meli.run_date"),
                "macro_recall": mv.tags.get("meli.challenger_macro_recall"),
            }
        )
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except Exception:
        versions = []
    out["versions"] = sorted(
        (
            {
                "version": str(v.version),
                "decision": v.tags.get("meli.decision"),
                "run_date": v.tags.get("meli.run_date"),
                "model_type": v.tags.get("meli.model_type"),
                "macro_recall": v.tags.get("meli.challenger_macro_recall"),
                "review": " ".join(x for x in (v.tags.get("meli.review"), v.tags.get("meli.reviewed_by")) if x),
            }
            for v in versions
        ),
        key=lambda x: int(x["version"]),
    )
    return out


def history(settings: Settings, limit: int = 50) -> list[dict]:
    """The latest ``limit`` events of MELI_MODEL_NAME's promotion history, oldest first; raises
    NoSuchModel as ``status`` does. The ``-promotions`` experiment may hold several models' events:
    each carries ``meli.model_name`` (one recorded without it is the default model's)."""
    from pipelines.settings import MODEL_NAME_DEFAULT

    client = registry_client(settings)
    _check_model(settings, client)
    exp = client.get_experiment_by_name(f"{settings.experiment}-promotions")
    if exp is None:
        return []
    name, runs, token = settings.model_name, [], None
    while len(runs) < limit:  # newest first, a page at a time, until ``limit`` events of this model
        page = client.search_runs(
            [exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=500, page_token=token
        )
        runs += [r for r in page if r.data.tags.get("meli.model_name", MODEL_NAME_DEFAULT) == name]
        token = page.token
        if not token:
            break
    runs = runs[:limit][::-1]
    keys = (
        "decided_at",
        "decision",
        "rule",
        "challenger_version",
        "champion_version",
        "challenger_macro_recall",
        "champion_macro_recall",
        "delta",
        "reason",
        "review_response",
        "review_by",
        "review_reason",
        "dag_run_id",
        "run_date",
    )
    return [{k: r.data.tags.get(f"meli.{k}", "") for k in keys} for r in runs]
