"""Serving: score (batch scoring into the lake) and shadow (a challenger's scores beside the champion's)."""

from pipelines.exports import lazy_exports

EXPORTS = {
    "score": (
        "NotServed",
        "NothingScorable",
        "Progress",
        "SCORED_SCHEMA",
        "ScoreResult",
        "adhoc_output",
        "event_run_date",
        "iter_chunks",
        "load_bundle",
        "new_stats",
        "resolve_input",
        "resolve_model",
        "score",
        "served_versions",
        "write_output",
        "write_scores",
    ),
    "shadow": (
        "COLUMNS",
        "agreement",
        "latest_report",
        "markdown",
        "report_dir",
        "run_shadow",
        "shadow_candidate",
    ),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
