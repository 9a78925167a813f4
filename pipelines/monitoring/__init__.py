"""Monitoring: batch (a scored batch's drift), drift, reference, history, report."""

from pipelines.exports import lazy_exports

EXPORTS = {
    "batch": (
        "DRIFT_EXIT",
        "drift_event",
        "lake_labels",
        "monitor_batch",
        "one_line",
        "read_scored",
        "realise_pending",
        "summary",
    ),
    "drift": (
        "CAL_BINS",
        "HIST_BINS",
        "LANGUAGES",
        "PRIOR",
        "cal_bin",
        "calibration",
        "compare",
        "detect_language",
        "estimate_macro_recall",
        "js_divergence",
        "js_noise",
        "judge",
        "length_histogram",
        "psi",
        "realised_macro_recall",
        "reason_text",
        "sample_indices",
        "share_array",
        "text_stats",
        "title_lengths",
        "word_hashes",
    ),
    "history": (
        "append_history",
        "history_path",
        "read_history",
        "record_monitor_run",
    ),
    "links": (
        "MONITOR_DAG_ID",
        "link_monitor_run",
        "monitor_link",
        "monitor_link_path",
    ),
    "reference": (
        "REFERENCE_TAG",
        "build_reference",
        "load_reference",
        "reference_from_predictions",
        "reference_paths",
        "try_build_reference",
    ),
    "report": (
        "fmt4",
        "over_time",
        "render_html",
    ),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
