"""What each step of the retraining flow hands the next: one typed result per step.

The steps (``pipelines.flows.retrain``) take and return these; the DAG's tasks pass their
``to_dict()`` through XCom (small JSON-able dicts, never dataframes) and rebuild them with
``from_dict``. Each declares the fields the flow reads; whatever else its producer reports (timings,
counts, a model's figures) rides along in ``extra``, kept for the logs, the CLI's JSON and people.
``to_dict()`` is exactly the dict the step returned before it was typed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Self


@dataclass(kw_only=True)
class StageResult:
    """A step's result: typed fields, plus ``extra`` (the producer's other keys, passed through)."""

    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name != "extra")

    @classmethod
    def from_dict(cls, d: dict | Self) -> Self:
        """From an XCom value (or a producer's dict); a result passes through unchanged."""
        if isinstance(d, cls):
            return d
        if not isinstance(d, dict):
            raise TypeError(f"{cls.__name__}: expected a dict, got {type(d).__name__}")
        names = set(cls.names())
        return cls(**{k: v for k, v in d.items() if k in names}, extra={k: v for k, v in d.items() if k not in names})

    def to_dict(self) -> dict:
        return {**self.extra, **{n: getattr(self, n) for n in self.names()}}


@dataclass(kw_only=True)
class Validated(StageResult):
    """The run date's partition passed validation (``data.validate.validate_partition``'s report)."""

    run_date: str
    success: bool
    passed: int
    evaluated: int
    warnings: list[str] = field(default_factory=list)
    data_docs_index: str | None = None
    data_docs_pages: dict[str, str] = field(default_factory=dict)
    data_docs_dir: str = ""
    report_json: str = ""

    def summary(self) -> Validated:
        """Only the fields (no metrics, no failure lines): what the DAG's XCom carries."""
        return Validated(**{n: getattr(self, n) for n in self.names()})


@dataclass(kw_only=True)
class Dataset(StageResult):
    """The run's frozen splits (``features.embedding.prepare_dataset``) and its parent MLflow run."""

    run_date: str
    dir: str
    parent_run_id: str | None = None
    counts: dict = field(default_factory=dict)
    num_categories: int = 0
    data_version: str = ""
    excluded: list[dict] = field(default_factory=list)  # partitions not trained on, and why


@dataclass(kw_only=True)
class Embedding(StageResult):
    """The run's mode (``plan``: full, warm or skip, and why), its FastText and encoded splits, and
    the recipe pinned for its trainings. A skipped run has only ``plan`` and ``skipped`` (the record)."""

    plan: dict
    dir: str = ""
    encoded: dict | None = None
    recipe: dict | None = None
    sha256: dict | None = None  # the FastText files' digests, recorded in MLflow
    skipped: dict | None = None

    @property
    def is_skipped(self) -> bool:
        return self.skipped is not None


@dataclass(kw_only=True)
class Trained(StageResult):
    """One trained model (or the ensemble): its type, MLflow run and validation macro-recall."""

    model_type: str
    run_id: str = ""
    val_macro_recall: float = 0.0
    recipe: str | None = None


@dataclass(kw_only=True)
class Challenger(StageResult):
    """The registered version the run puts forward (``registry.versions.register_challenger``);
    ``resumed``: a version an interrupted run of this date and data registered, taken up again."""

    version: str
    name: str = ""
    run_id: str = ""
    model_type: str = ""
    members: list[str] = field(default_factory=list)
    val_macro_recall: float = 0.0
    resumed: bool = False


@dataclass(kw_only=True)
class Evaluation(StageResult):
    """Champion and challenger on the same frozen test rows (``registry.comparison.evaluate``)."""

    run_date: str
    models: dict
    test_rows: int
    monitor_reference: dict | None = None


@dataclass(kw_only=True)
class Decision(StageResult):
    """The gate's decision (``registry.gate.gate``): promoted, rejected, pending_approval, ..."""

    decision: str
    rule: str = ""
    reason: str = ""
    challenger_version: str | None = None
    champion_version: str | None = None

    @property
    def pending(self) -> bool:
        return self.decision == "pending_approval"
