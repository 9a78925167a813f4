"""Model: modules (the torch classifiers), bundle (the served bundle, written and read), pyfunc (the MLflow
model), metrics."""

from pipelines.exports import lazy_exports

EXPORTS = {
    "bundle": (
        "Bundle",
        "OUTPUT_COLUMNS",
        "TOP_K",
    ),
    "metrics": (
        "Comparison",
        "accuracy",
        "confusion_summary",
        "macro_recall",
        "paired_bootstrap",
        "per_class_recall",
    ),
    "modules": (
        "BIGRAM_PRIME",
        "BiLSTMClassifier",
        "CNNClassifier",
        "Dropout",
        "MLPClassifier",
        "ModelConfig",
        "SentenceBranch",
        "TitleClassifier",
        "WideBag",
        "bag_sum",
        "bigram_ids",
        "build_model",
        "masked_max",
        "masked_mean",
        "sentence_mean",
        "upgrade_state_dict",
    ),
    "pyfunc": ("TitleClassifierModel",),
    "pyfunc_model": (),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
