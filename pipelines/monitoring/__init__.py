"""Monitoring: batch (a scored batch's drift), drift, reference, history, report."""

from pipelines.exports import lazy_exports

EXPORTS = {
    "batch": ("DRIFT_EXIT", "drift_event", "monitor_batch", "one_line", "read_scored", "realise_pending", "summary"),
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
        "psi",
        "realised_macro_recall",
        "reason_text",
        "text_stats",
        "word_hashes",
    ),
    "history": ("history_path", "read_history"),
    "reference": (
        "REFERENCE_TAG",
        "build_reference",
        "load_reference",
        "reference_from_predictions",
        "reference_paths",
        "try_build_reference",
    ),
    "report": ("over_time", "render_html"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
