"""Scoring as the DAG and the CLI run it: the served version scores the listings
(``pipelines.serving.score``), then the challenger scores them beside it (``pipelines.serving.shadow``),
then the challenger's model card is rewritten to quote that shadow report (``pipelines.registry.card``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from pipelines.data.ingest.sources import CHUNK_ROWS
from pipelines.flows.outcomes import StopRun
from pipelines.registry.card import try_write_card
from pipelines.serving.score import ScoreResult, score
from pipelines.serving.shadow import run_shadow
from pipelines.settings import Settings

log = logging.getLogger(__name__)


def score_listings(
    settings: Settings,
    input_path: str | Path,
    output: str | Path | None = None,
    model: str = "champion",
    fmt: str = "auto",
    run_date: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = True,
    on_resolved: Callable[[str, str], None] | None = None,
    shadow: bool | None = None,
    adhoc_unless_served: bool = False,
) -> ScoreResult:
    """``score`` (see it for ``output``, ``model`` and the rest), then, with ``shadow`` (None =
    ``settings.shadow``) and once the served scores are committed, a registered version newer than the
    one served scores the input beside them and an agreement report is written; a failure there is
    logged and returned in ``result.shadow``, never raised. The challenger's card then quotes it."""
    result = score(
        settings,
        input_path,
        output,
        model=model,
        fmt=fmt,
        run_date=run_date,
        chunk_rows=chunk_rows,
        progress=progress,
        on_resolved=on_resolved,
        adhoc_unless_served=adhoc_unless_served,
    )
    if settings.shadow if shadow is None else shadow:
        result.shadow = run_shadow(
            settings, result, input_path, fmt, chunk_rows, run_date, Path(result.written), result.lake, progress
        )
        if result.shadow and result.shadow.get("challenger_version"):
            try_write_card(settings, result.shadow["challenger_version"])  # quotes its latest shadow report
    return result


def shadow_line(result: ScoreResult, shadow_param: bool | None, settings: Settings) -> tuple[int, str] | None:
    """The log line (level, text) that says what the shadow part did; None when it said so itself."""
    sh = result.shadow
    if sh is None:  # on with no version above the served one: run_shadow said so, once
        return None if (settings.shadow if shadow_param is None else shadow_param) else (logging.INFO, "shadow: off")
    if "error" in sh:
        return logging.WARNING, f"shadow: FAILED (served scores kept): {sh['error']}"
    agreement = "n/a" if sh["agreement"] is None else f"{sh['agreement']:.2%}"
    return logging.INFO, (
        f"shadow: v{sh['challenger_version']} agrees with v{sh['champion_version']} on {agreement} "
        f"of {sh['rows']} rows; report {sh['report_json']}"
    )


def score_run(settings: Settings, params: dict, asset_extras: list[dict], context_run_date: str) -> dict:
    """What a meli_score run scores, from its trigger form (``params``) and the asset events that
    started it (``asset_extras``, untrusted: parsed and confined), then ``score_listings``; the run's
    result as a small dict for XCom (``ScoreResult.to_dict()`` plus ``run_date``). ``context_run_date``:
    the run's own date (``run_date_from_context``), used when neither the form nor an event gives one.
    Raises ``StopRun`` for an input or output outside its roots, or a bad date."""
    from pipelines.core.paths import check_output, event_extras
    from pipelines.serving.score import event_run_date, resolve_input

    try:
        extras = event_extras(settings, asset_extras)  # run_date parsed, partition inside the lake
        # the form's paths stay inside their roots: input under the landing, MELI_INPUT_ROOTS or the
        # lake's listings; output a .parquet file under $MELI_HOME/adhoc/
        source = resolve_input(settings, params.get("input") or "", extras, confine=True)
        output = str(check_output(settings, params["output"])) if params.get("output") else None
    except ValueError as exc:
        raise StopRun(str(exc)) from exc
    # the output's date: the form's, else that of the retrain run whose partition this is
    run_date = params.get("run_date") or event_run_date(source, extras) or context_run_date
    result = score_listings(
        settings,
        source,
        output,
        params.get("model") or "champion",
        params.get("input_format") or "auto",
        run_date=run_date,
        progress=False,
        shadow=params.get("shadow"),
        adhoc_unless_served=True,  # another version than the champion: an ad-hoc file, logged
    )
    line = shadow_line(result, params.get("shadow"), settings)
    if line:
        log.log(*line)
    return {**result.to_dict(), "run_date": run_date}


def monitor_run(settings: Settings, scored: dict, dag_id: str, run_id: str) -> dict:
    """Drift of a scored batch against the served version's reference, linked to the run (its "Drift
    report" tab and note); the report's summary for XCom."""
    from pipelines.flows.airflow_ui import post_run_note
    from pipelines.monitoring.batch import monitor_batch, one_line, summary
    from pipelines.monitoring.links import link_monitor_run

    report = monitor_batch(settings, scored["output"], scored.get("run_date"))
    log.log(logging.WARNING if report["status"] == "drift" else logging.INFO, one_line(report))
    link_monitor_run(settings, run_id, report, dag_id=dag_id)
    post_run_note(dag_id, run_id)  # signed; to the api-server the tasks reach
    return summary(report)
