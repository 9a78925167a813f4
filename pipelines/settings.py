"""One typed settings object, read from the environment.

Every path a run writes lives under ``MELI_HOME`` (default ``<repo>/.meli``).
Each field documents its environment variable and default; ``python -m pipelines settings``
prints the resolved values.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME_DEFAULT = "meli-title-classifier"


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def _float(name: str, default: float) -> float:
    raw = _env(name, str(default))
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from exc


def _bool(name: str, default: bool) -> bool:
    raw = _env(name, "1" if default else "0").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"environment variable {name}={raw!r} is not a boolean (use 1/0, true/false)")


def _int(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from exc


def _paths(name: str) -> tuple[Path, ...]:
    raw = [p.strip() for p in _env(name, "").split(os.pathsep) if p.strip()]
    relative = [p for p in raw if not Path(p).is_absolute()]
    if relative:
        raise ValueError(
            f"environment variable {name}: {relative} not absolute (absolute folders, {os.pathsep!r}-separated)"
        )
    return tuple(Path(p) for p in raw)


def _names(name: str) -> tuple[str, ...]:
    """A comma-separated list of names (blanks around them and empty entries dropped)."""
    return tuple(dict.fromkeys(n.strip() for n in _env(name, "").split(",") if n.strip()))


@dataclass(frozen=True)
class Thresholds:
    """Validation thresholds (MELI_VALIDATE_*); the GX suites reference them as $PARAMETERs."""

    min_rows: int = field(default_factory=lambda: _int("MELI_VALIDATE_MIN_ROWS", 50))
    min_title_len: int = field(default_factory=lambda: _int("MELI_VALIDATE_MIN_TITLE_LEN", 2))
    max_title_len: int = field(default_factory=lambda: _int("MELI_VALIDATE_MAX_TITLE_LEN", 300))
    max_quarantine_ratio: float = field(default_factory=lambda: _float("MELI_VALIDATE_MAX_QUARANTINE_RATIO", 0.2))
    min_volume_ratio: float = field(default_factory=lambda: _float("MELI_VALIDATE_MIN_VOLUME_RATIO", 0.2))
    max_volume_ratio: float = field(default_factory=lambda: _float("MELI_VALIDATE_MAX_VOLUME_RATIO", 5.0))
    max_unseen_category_share: float = field(
        default_factory=lambda: _float("MELI_VALIDATE_MAX_UNSEEN_CATEGORY_SHARE", 0.2)
    )
    max_category_share_shift: float = field(
        default_factory=lambda: _float("MELI_VALIDATE_MAX_CATEGORY_SHARE_SHIFT", 0.05)
    )
    category_pattern: str = field(
        default_factory=lambda: _env("MELI_VALIDATE_CATEGORY_PATTERN", r"^[A-Z0-9][A-Z0-9_]{1,79}$")
    )
    # issue 31 item 7: the share of titles with no letter at all (only emoji, digits, symbols) above
    # which a batch fails validation (the real 2019 sample has none of 44.6k)
    max_no_letter_title_share: float = field(
        default_factory=lambda: _float("MELI_VALIDATE_MAX_NO_LETTER_TITLE_SHARE", 0.05)
    )


@dataclass(frozen=True)
class GateRules:
    """Champion/challenger decision rules (MELI_GATE_*)."""

    min_improvement: float = field(default_factory=lambda: _float("MELI_GATE_MIN_IMPROVEMENT", 0.002))
    min_macro_recall: float = field(default_factory=lambda: _float("MELI_GATE_MIN_MACRO_RECALL", 0.30))
    max_class_drop: float = field(default_factory=lambda: _float("MELI_GATE_MAX_CLASS_DROP", 0.20))
    max_share_classes_dropped: float = field(
        default_factory=lambda: _float("MELI_GATE_MAX_SHARE_CLASSES_DROPPED", 0.10)
    )
    bootstrap_samples: int = field(default_factory=lambda: _int("MELI_GATE_BOOTSTRAP", 500))
    # behavioural checks (pipelines/registry/behaviour.py): the challenger is rejected when the share of
    # test titles whose prediction survives case/accent/space/punctuation changes, or the share of
    # the reviewed minimum-function cases it gets right, is below this
    min_behaviour_pass: float = field(default_factory=lambda: _float("MELI_GATE_MIN_BEHAVIOUR_PASS", 0.90))
    behaviour_sample: int = field(default_factory=lambda: _int("MELI_GATE_BEHAVIOUR_SAMPLE", 1000))
    # issue 31 item 8: when more than this share of the test rows are in categories the champion never
    # saw, the comparison means nothing: the gate decides nothing and asks a person (pending approval)
    max_incomparable_share: float = field(default_factory=lambda: _float("MELI_GATE_MAX_INCOMPARABLE_SHARE", 0.5))


@dataclass(frozen=True)
class Monitor:
    """Drift thresholds of a scored batch against the champion's reference (MELI_MONITOR_*,
    pipelines/monitoring/batch.py). A batch breaches when any check goes past its threshold."""

    # fewer scored rows than this: reported, never judged (shares of a handful of rows are noise)
    min_rows: int = field(default_factory=lambda: _int("MELI_MONITOR_MIN_ROWS", 200))
    # Jensen-Shannon divergence (base 2) of the predicted-category mix, above what sampling alone gives
    max_category_js: float = field(default_factory=lambda: _float("MELI_MONITOR_MAX_CATEGORY_JS", 0.05))
    max_confidence_drop: float = field(default_factory=lambda: _float("MELI_MONITOR_MAX_CONFIDENCE_DROP", 0.10))
    low_confidence: float = field(default_factory=lambda: _float("MELI_MONITOR_LOW_CONFIDENCE", 0.5))
    max_low_confidence_increase: float = field(
        default_factory=lambda: _float("MELI_MONITOR_MAX_LOW_CONFIDENCE_INCREASE", 0.15)
    )
    max_oov_increase: float = field(default_factory=lambda: _float("MELI_MONITOR_MAX_OOV_INCREASE", 0.10))
    max_length_psi: float = field(default_factory=lambda: _float("MELI_MONITOR_MAX_LENGTH_PSI", 0.25))
    # total variation distance of the language mix (spanish / portuguese / neither)
    max_language_shift: float = field(default_factory=lambda: _float("MELI_MONITOR_MAX_LANGUAGE_SHIFT", 0.15))
    max_unscorable_increase: float = field(default_factory=lambda: _float("MELI_MONITOR_MAX_UNSCORABLE_INCREASE", 0.05))
    # the label-free macro-recall estimate below the champion's test macro-recall by more than this
    max_recall_drop: float = field(default_factory=lambda: _float("MELI_MONITOR_MAX_RECALL_DROP", 0.05))
    # text statistics (tokens, OOV, language) read this many rows of a batch at most (a uniform sample)
    sample_rows: int = field(default_factory=lambda: _int("MELI_MONITOR_SAMPLE_ROWS", 200_000))
    # after a meli_drift event, no other for this many hours (a drift-triggered retrain is under way)
    drift_cooldown_h: float = field(default_factory=lambda: _float("MELI_MONITOR_DRIFT_COOLDOWN_H", 24.0))


# the gate rules a run may override (DAG Params, CLI flags); the others come from the environment only
RULE_OVERRIDES = (
    "min_improvement",
    "min_macro_recall",
    "max_class_drop",
    "max_share_classes_dropped",
    "min_behaviour_pass",
)


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Construct with ``Settings()``; it reads the environment."""

    home: Path = field(default_factory=lambda: Path(_env("MELI_HOME", str(REPO_ROOT / ".meli"))).resolve())
    tracking_uri: str = field(default_factory=lambda: _env("MLFLOW_TRACKING_URI", ""))
    registry_uri: str = field(default_factory=lambda: _env("MLFLOW_REGISTRY_URI", ""))
    lake_uri: str = field(default_factory=lambda: _env("MELI_LAKE_URI", ""))
    model_name: str = field(default_factory=lambda: _env("MELI_MODEL_NAME", MODEL_NAME_DEFAULT))
    experiment: str = field(default_factory=lambda: _env("MELI_EXPERIMENT", "meli-retrain"))
    device: str = field(default_factory=lambda: _env("MELI_DEVICE", "auto"))
    seed: int = field(default_factory=lambda: _int("MELI_SEED", 13))
    batch_rows: int = field(default_factory=lambda: _int("MELI_BATCH_ROWS", 65536))
    # training tasks run side by side (the DAG's cap on mapped train tasks) and torch CPU threads for
    # each (0 = CPU cores // the trainings running at once: oversubscribed cores slow training 3-4x)
    train_concurrency: int = field(default_factory=lambda: _int("MELI_TRAIN_CONCURRENCY", 2))
    torch_threads: int = field(default_factory=lambda: _int("MELI_TORCH_THREADS", 0))
    # the lake keeps this many committed versions of each partition readable (time travel)
    lake_keep_versions: int = field(default_factory=lambda: _int("MELI_LAKE_KEEP_VERSIONS", 3))
    # how long a writer waits for a partition or the registry held by another writer
    lock_timeout_s: float = field(default_factory=lambda: _float("MELI_LOCK_TIMEOUT_S", 900.0))
    # a Postgres URL: the gate's registry lock becomes an advisory lock there (writers on several
    # hosts); empty: a lock file beside the SQLite store or under MELI_HOME
    lock_uri: str = field(default_factory=lambda: _env("MELI_LOCK_URI", ""))
    # mode=auto trains full (not warm) when the champion's last full retrain is older than this many
    # days, or when the training split has more than this share of words its vocabulary lacks
    warm_max_age_days: float = field(default_factory=lambda: _float("MELI_WARM_MAX_AGE_DAYS", 7.0))
    warm_max_vocab_growth: float = field(default_factory=lambda: _float("MELI_WARM_MAX_VOCAB_GROWTH", 0.10))
    # a promotion the gate decides waits for a person (the Airflow run at an ApprovalOperator, the
    # CLI at "pending approval") until approved, rejected, or this many hours pass (= rejected)
    require_approval: bool = field(default_factory=lambda: _bool("MELI_REQUIRE_APPROVAL", False))
    approval_timeout_h: float = field(default_factory=lambda: _float("MELI_APPROVAL_TIMEOUT_H", 24.0))
    # scoring also scores each batch with the newest version above the champion (rejected, pending
    # approval or not yet gated) into lake/shadow/ and writes an agreement report
    shadow: bool = field(default_factory=lambda: _bool("MELI_SHADOW", True))
    # hyperparameter tuning (pipelines/training/tune.py): the Optuna storage (a SQLAlchemy URL; default SQLite
    # under $MELI_HOME/tune/; postgresql+psycopg2://... for workers on several hosts) and the MLflow
    # experiment of the studies and their trials
    tune_storage: str = field(default_factory=lambda: _env("MELI_TUNE_STORAGE", ""))
    tune_experiment: str = field(default_factory=lambda: _env("MELI_TUNE_EXPERIMENT", "meli-tune"))
    thresholds: Thresholds = field(default_factory=Thresholds)
    gate: GateRules = field(default_factory=GateRules)
    monitor: Monitor = field(default_factory=Monitor)
    # the nightly meli_retrain run alerts (log, a notice under $MELI_HOME/alerts/, the webhook) when
    # it has not finished this many hours after it was queued (Airflow DeadlineAlert)
    retrain_deadline_h: float = field(default_factory=lambda: _float("MELI_RETRAIN_DEADLINE_H", 6.0))
    # optional: alerts are also POSTed (JSON) to this URL
    alert_webhook_url: str = field(default_factory=lambda: _env("MELI_ALERT_WEBHOOK_URL", ""))
    # issue 35 item 5: folders (absolute, separated by os.pathsep, ":" on Linux) that the DAGs' Params
    # and asset events may read besides $MELI_HOME/landing (pipelines/core/paths.py); the CLI reads anywhere
    input_roots: tuple[Path, ...] = field(default_factory=lambda: _paths("MELI_INPUT_ROOTS"))
    # issue 35 item 2: the URL tasks reach the api-server at to set a run's note (empty: Airflow's
    # execution API URL without /execution/, else [api] base_url), and the note route's shared secret
    # (empty: generated once per $MELI_HOME under secrets/; set it where the api-server and the
    # workers do not share $MELI_HOME)
    airflow_api_url: str = field(default_factory=lambda: _env("MELI_AIRFLOW_API_URL", ""))
    note_secret: str = field(default_factory=lambda: _env("MELI_NOTE_SECRET", ""), repr=False)
    # -- bounded reads (issue 35 item 6, issue 31 item 6; pipelines/data/ingest/sources.py Limits) --
    # a longer input line is quarantined as line_too_long, skipped without being held in memory
    max_line_bytes: int = field(default_factory=lambda: _int("MELI_MAX_LINE_BYTES", 1 << 20))
    # a CSV record whose quoted field stays open past this many lines is cut (record_too_long)
    max_record_lines: int = field(default_factory=lambda: _int("MELI_MAX_RECORD_LINES", 100))
    # a gzip input inflating past this many bytes fails its file (a decompression bomb)
    max_inflated_bytes: int = field(default_factory=lambda: _int("MELI_MAX_INFLATED_BYTES", 20 << 30))
    # ... or inflating more than this many times its compressed size, judged after 64 MiB; 0 = off
    max_inflate_ratio: float = field(default_factory=lambda: _float("MELI_MAX_INFLATE_RATIO", 100.0))
    # issue 31 (a missing store is an error): when MELI_HOME holds model cards, scored batches, a
    # registered challenger or MLflow artifacts but the tracking store is missing or empty, every
    # command that reads it fails naming it; set this to create a new, empty store there instead
    create_store: bool = field(default_factory=lambda: _bool("MELI_CREATE_STORE", False))
    # issue 33 (operator view): meli_retrain's time schedule, a cron in UTC ("0 2 * * *" nightly at 02:00);
    # empty (the embedded profile): no time schedule, only drift-triggered and manual runs
    retrain_schedule: str = field(default_factory=lambda: _env("MELI_RETRAIN_SCHEDULE", "").strip())
    # the MLflow UI's base URL (e.g. http://localhost:5000): model cards, drift reports and run notes
    # link to runs and model versions there; empty: they show the ids
    mlflow_ui_url: str = field(default_factory=lambda: _env("MELI_MLFLOW_UI_URL", "").strip().rstrip("/"))
    # --- issue 35 item 4: who may answer an approval, and which version writes lake/scored ---
    # the Airflow user names (the simple auth manager's user ids) who may approve or reject a promotion
    # (the HITL task's assigned_users) and the OS logins `registry approve|reject` accepts; empty: any
    # user allowed on the DAG (Airflow) or any shell user (CLI), with a warning in the task log
    approvers: tuple[str, ...] = field(default_factory=lambda: _names("MELI_APPROVERS"))
    # a version that may write the lake's scored partition besides the champion (e.g. pinned during an
    # incident); every other version scores to ad-hoc files only
    scoring_version: str = field(default_factory=lambda: _env("MELI_SCORING_VERSION", "").strip())

    def __post_init__(self) -> None:
        # Derived defaults that depend on home are filled here so that one env var moves everything.
        if not self.tracking_uri:
            object.__setattr__(self, "tracking_uri", f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}")
        if not self.registry_uri:  # MLflow's default: the registry lives in the tracking store
            object.__setattr__(self, "registry_uri", self.tracking_uri)
        if not self.lake_uri:
            object.__setattr__(self, "lake_uri", str(self.home / "lake"))
        if not self.tune_storage:
            object.__setattr__(self, "tune_storage", f"sqlite:///{self.home / 'tune' / 'optuna.db'}")
        if self.train_concurrency < 1 or self.torch_threads < 0:
            raise ValueError("MELI_TRAIN_CONCURRENCY must be >= 1 and MELI_TORCH_THREADS >= 0")
        if self.lake_keep_versions < 1:
            raise ValueError("MELI_LAKE_KEEP_VERSIONS must be >= 1")
        if self.approval_timeout_h <= 0:
            raise ValueError("MELI_APPROVAL_TIMEOUT_H must be > 0 (hours)")
        if self.max_line_bytes < 1024 or self.max_record_lines < 1 or self.max_inflated_bytes < 1:
            raise ValueError(
                "MELI_MAX_LINE_BYTES must be >= 1024, MELI_MAX_RECORD_LINES and MELI_MAX_INFLATED_BYTES >= 1"
            )
        if self.max_inflate_ratio < 0:
            raise ValueError("MELI_MAX_INFLATE_RATIO must be >= 0 (0: no ratio guard)")
        if self.scoring_version and not self.scoring_version.isdigit():
            raise ValueError(f"MELI_SCORING_VERSION={self.scoring_version!r} is not a version number (or empty)")

    # ---- paths under MELI_HOME -------------------------------------------------------------
    @property
    def lake(self) -> Path:
        return Path(self.lake_uri.removeprefix("file://"))

    @property
    def listings_dir(self) -> Path:
        return self.lake / "listings"

    @property
    def scored_dir(self) -> Path:
        return self.lake / "scored"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @property
    def gx_root(self) -> Path:
        return self.home / "gx"

    @property
    def work_dir(self) -> Path:
        return self.home / "work"

    @property
    def sentence_cache_dir(self) -> Path:
        """Pretrained word vectors kept across runs (pipelines/features/sentence.py): new words only."""
        return self.home / "cache" / "sentence"

    @property
    def shadow_dir(self) -> Path:
        """Shadow scores of a challenger beside the champion's (pipelines/serving/shadow.py)."""
        return self.lake / "shadow"

    @property
    def tune_dir(self) -> Path:
        """Tuning studies' prepared data (pipelines/training/tune.py), and recipes/ (the tuned recipes)."""
        return self.home / "tune"

    @property
    def recipes_dir(self) -> Path:
        return self.tune_dir / "recipes"

    @property
    def monitor_dir(self) -> Path:
        """Drift reports and the estimate-vs-realised history of the model (pipelines/monitoring/batch.py)."""
        return self.home / "monitor" / self.model_name

    @property
    def cards_dir(self) -> Path:
        """Model cards, one folder per registered version (pipelines/registry/card.py)."""
        return self.home / "registry" / "cards" / self.model_name

    @property
    def registry_lock_path(self) -> Path:
        """The gate's lock file: beside the SQLite store, else under MELI_HOME."""
        if self.tracking_uri.startswith("sqlite:///") and self.registry_uri == self.tracking_uri:
            return Path(self.tracking_uri.removeprefix("sqlite:///") + ".gate.lock")
        return self.home / "registry" / "gate.lock"

    @property
    def history_path(self) -> Path:
        return self.home / "registry" / "promotion_history.jsonl"

    @property
    def expectations_src(self) -> Path:
        return Path(_env("MELI_EXPECTATIONS_DIR", str(REPO_ROOT / "expectations")))

    def run_dir(self, run_date: str) -> Path:
        return self.work_dir / run_date

    def ensure(self) -> Settings:
        for p in (self.home, self.lake, self.work_dir, self.history_path.parent):
            p.mkdir(parents=True, exist_ok=True)
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return self

    def as_dict(self) -> dict:
        """Every setting, for people (``python -m pipelines settings``): no credential of a URL shown."""
        import re

        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple):  # as the variable is written: MELI_INPUT_ROOTS, MELI_APPROVERS
                out[f.name] = ("," if f.name == "approvers" else os.pathsep).join(map(str, v))
            else:
                out[f.name] = (
                    asdict(v)
                    if hasattr(v, "__dataclass_fields__")
                    else re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", str(v))
                )
        if self.alert_webhook_url:  # its path is its token
            out["alert_webhook_url"] = webhook_host(self.alert_webhook_url)
        if self.note_secret:
            out["note_secret"] = "***"
        return out


def get_settings() -> Settings:
    """Fresh settings from the current environment (cheap; no caching so tests can monkeypatch)."""
    return Settings()


def webhook_host(url: str) -> str:
    """``scheme://host[:port]`` of a webhook URL: no user, password, path or query (they hold its token)."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    return f"{parts.scheme or '?'}://{host}{port}/…"
