"""One typed settings object, read from the environment.

Every path a run writes lives under ``MELI_HOME`` (default ``<repo>/.meli``).
Each field documents its environment variable and default; ``python -m pipelines settings``
prints the resolved values.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from pipelines.config import Bound, Spec

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


_READERS = {bool: _bool, int: _int, float: _float, str: _env}


def setting(var: str, default, help: str, *, read=None, shown: str | None = None, spec: Spec | None = None, **kw):
    """A setting declared once: its environment variable ``var``, ``default`` (read as the default's type, or
    by ``read(var, default)``), ``help``, the default as the docs show it (``shown``) and, for a setting a
    run may override, its trigger-form ``declare`` (pipelines/config.py)."""
    reader = read or _READERS[type(default)]
    meta = {"env": var, "default": default, "help": help, "shown": shown}
    if spec is not None:
        meta["spec"] = spec
    return field(default_factory=lambda: reader(var, default), metadata=meta, **kw)


def _stripped(var: str, default: str) -> str:
    return _env(var, default).strip()


@dataclass(frozen=True)
class Thresholds:
    """Validation thresholds (MELI_VALIDATE_*); the GX suites reference them as $PARAMETERs."""

    min_rows: int = setting("MELI_VALIDATE_MIN_ROWS", 50, "a batch with fewer valid rows fails validation")
    min_title_len: int = setting("MELI_VALIDATE_MIN_TITLE_LEN", 2, "shortest title (characters) a row may have")
    max_title_len: int = setting("MELI_VALIDATE_MAX_TITLE_LEN", 300, "longest title (characters) a row may have")
    max_quarantine_ratio: float = setting(
        "MELI_VALIDATE_MAX_QUARANTINE_RATIO", 0.2, "a batch with more than this share of rows quarantined fails"
    )
    min_volume_ratio: float = setting(
        "MELI_VALIDATE_MIN_VOLUME_RATIO", 0.2, "a batch smaller than this times the previous partition's rows fails"
    )
    max_volume_ratio: float = setting(
        "MELI_VALIDATE_MAX_VOLUME_RATIO", 5.0, "a batch larger than this times the previous partition's rows fails"
    )
    max_unseen_category_share: float = setting(
        "MELI_VALIDATE_MAX_UNSEEN_CATEGORY_SHARE", 0.2, "most rows in categories earlier partitions never had"
    )
    max_category_share_shift: float = setting(
        "MELI_VALIDATE_MAX_CATEGORY_SHARE_SHIFT", 0.05, "most a category's share of rows may move between partitions"
    )
    category_pattern: str = setting(
        "MELI_VALIDATE_CATEGORY_PATTERN", r"^[A-Z0-9][A-Z0-9_]{1,79}$", "the regular expression a category matches"
    )
    # issue 31 item 7: the share of titles with no letter at all (only emoji, digits, symbols) above
    # which a batch fails validation (the real 2019 sample has none of 44.6k)
    max_no_letter_title_share: float = setting(
        "MELI_VALIDATE_MAX_NO_LETTER_TITLE_SHARE",
        0.05,
        "a batch where more titles than this have no letter at all (only emoji, digits or symbols) fails",
    )


def _rule(title: str, help: str, lo: float = 0) -> Spec:
    """A gate rule a run may override: meli_retrain's Param (section Gate) and a promote/retrain flag."""
    return Spec(title=title, help=help, section="Gate", bound=Bound(lo, 1))


@dataclass(frozen=True)
class GateRules:
    """Champion/challenger decision rules (MELI_GATE_*). The ones declared with a ``declare`` a run may
    override (RULE_OVERRIDES: meli_retrain's Params, the CLI's flags)."""

    min_improvement: float = setting(
        "MELI_GATE_MIN_IMPROVEMENT",
        0.002,
        "minimum macro-recall gain over the champion",
        spec=_rule("Gate: minimum macro-recall gain", "Minimum macro-recall gain over the champion.", lo=-1),
    )
    min_macro_recall: float = setting(
        "MELI_GATE_MIN_MACRO_RECALL",
        0.30,
        "absolute macro-recall floor",
        spec=_rule("Gate: absolute macro-recall floor", "Reject a challenger whose test macro-recall is below this."),
    )
    max_class_drop: float = setting(
        "MELI_GATE_MAX_CLASS_DROP",
        0.20,
        "a category 'collapses' if its recall drops more than this",
        spec=_rule(
            "Gate: a category 'collapses' if its recall drops more than this",
            "A category collapses when its recall under the challenger is below the champion's by more than this.",
        ),
    )
    max_share_classes_dropped: float = setting(
        "MELI_GATE_MAX_SHARE_CLASSES_DROPPED",
        0.10,
        "reject if more than this share of categories collapse",
        spec=_rule(
            "Gate: reject if more than this share of categories collapse",
            "Reject when more than this share of the categories collapse (see the rule above).",
        ),
    )
    bootstrap_samples: int = setting("MELI_GATE_BOOTSTRAP", 500, "bootstrap samples of the macro-recall gain's CI")
    # behavioural checks (pipelines/registry/behaviour.py): the challenger is rejected when the share of
    # test titles whose prediction survives case/accent/space/punctuation changes, or the share of
    # the reviewed minimum-function cases it gets right, is below this
    min_behaviour_pass: float = setting(
        "MELI_GATE_MIN_BEHAVIOUR_PASS",
        0.90,
        "reject below this share passing the behavioural checks",
        spec=_rule(
            "Gate: minimum share passing the behavioural checks",
            "Reject when fewer test titles keep their prediction under case/accent/space/punctuation changes, "
            "or fewer reviewed minimum-function cases are right, than this share.",
        ),
    )
    behaviour_sample: int = setting("MELI_GATE_BEHAVIOUR_SAMPLE", 1000, "test titles perturbed by the checks")
    # issue 31 item 8: when more than this share of the test rows are in categories the champion never
    # saw, the comparison means nothing: the gate decides nothing and asks a person (pending approval)
    max_incomparable_share: float = setting(
        "MELI_GATE_MAX_INCOMPARABLE_SHARE",
        0.5,
        "more test rows than this in categories the champion never saw: rule incomparable, a person decides",
    )


@dataclass(frozen=True)
class Monitor:
    """Drift thresholds of a scored batch against the champion's reference (MELI_MONITOR_*,
    pipelines/monitoring/batch.py). A batch breaches when any check goes past its threshold."""

    min_rows: int = setting("MELI_MONITOR_MIN_ROWS", 200, "a scored batch with fewer rows is reported, not judged")
    max_category_js: float = setting(
        "MELI_MONITOR_MAX_CATEGORY_JS",
        0.05,
        "drift: predicted-category Jensen-Shannon divergence (base 2) above its sampling noise",
    )
    max_confidence_drop: float = setting(
        "MELI_MONITOR_MAX_CONFIDENCE_DROP", 0.10, "drift: mean top-1 probability below the reference's by more"
    )
    low_confidence: float = setting(
        "MELI_MONITOR_LOW_CONFIDENCE", 0.5, "a row under this top-1 probability is a low-confidence row"
    )
    max_low_confidence_increase: float = setting(
        "MELI_MONITOR_MAX_LOW_CONFIDENCE_INCREASE", 0.15, "drift: the share of low-confidence rows grew by more"
    )
    max_oov_increase: float = setting(
        "MELI_MONITOR_MAX_OOV_INCREASE", 0.10, "drift: share of tokens outside the model's vocabulary grew by more"
    )
    max_length_psi: float = setting(
        "MELI_MONITOR_MAX_LENGTH_PSI", 0.25, "drift: title-length PSI (deciles of the test titles)"
    )
    max_language_shift: float = setting(
        "MELI_MONITOR_MAX_LANGUAGE_SHIFT",
        0.15,
        "drift: total variation of the language mix (spanish / portuguese / neither)",
    )
    max_unscorable_increase: float = setting(
        "MELI_MONITOR_MAX_UNSCORABLE_INCREASE", 0.05, "drift: unscorable share grew by more than this"
    )
    max_recall_drop: float = setting(
        "MELI_MONITOR_MAX_RECALL_DROP",
        0.05,
        "drift: label-free macro-recall estimate below the champion's test macro-recall by more than this",
    )
    sample_rows: int = setting(
        "MELI_MONITOR_SAMPLE_ROWS", 200_000, "titles read for a batch's text statistics (a uniform sample)"
    )
    drift_cooldown_h: float = setting(
        "MELI_MONITOR_DRIFT_COOLDOWN_H", 24.0, "hours after a meli_drift event during which no other is emitted"
    )


# the gate rules a run may override (DAG Params, CLI flags): those declared with a spec; the others come
# from the environment only
RULE_OVERRIDES = tuple(f.name for f in fields(GateRules) if "spec" in f.metadata)


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Construct with ``Settings()``; it reads the environment."""

    home: Path = setting(
        "MELI_HOME",
        str(REPO_ROOT / ".meli"),
        "state root: every path a run writes",
        read=lambda var, d: Path(_env(var, d)).resolve(),
        shown="<repo>/.meli",
    )
    tracking_uri: str = setting(
        "MLFLOW_TRACKING_URI", "", "MLflow tracking store", shown="sqlite:///$MELI_HOME/mlflow/mlflow.db"
    )
    registry_uri: str = setting(
        "MLFLOW_REGISTRY_URI", "", "MLflow model registry store", shown="MLFLOW_TRACKING_URI's value"
    )
    lake_uri: str = setting("MELI_LAKE_URI", "", "the lake root", shown="$MELI_HOME/lake")
    model_name: str = setting("MELI_MODEL_NAME", MODEL_NAME_DEFAULT, "registered model name")
    experiment: str = setting("MELI_EXPERIMENT", "meli-retrain", "MLflow experiment of the retrain runs")
    device: str = setting("MELI_DEVICE", "auto", "auto (CUDA when available), cpu, cuda")
    seed: int = setting("MELI_SEED", 13, "random seed of the steps outside training")
    batch_rows: int = setting("MELI_BATCH_ROWS", 65536, "rows per record batch read or written at once")
    train_concurrency: int = setting(
        "MELI_TRAIN_CONCURRENCY", 2, "model types the DAG trains at once (mapped train tasks per run; at least 1)"
    )
    train_queue: str = setting(
        "MELI_TRAIN_QUEUE",
        "gpu",
        "the Celery queue of the training tasks (meli_retrain's train, meli_tune's worker); LocalExecutor ignores it",
    )
    train_pool: str = setting("MELI_TRAIN_POOL", "default_pool", "the Airflow pool of the training tasks")
    tune_schedule: str = setting("MELI_TUNE_SCHEDULE", "", "meli_tune's cron schedule (UTC); empty: manual only")
    torch_threads: int = setting(
        "MELI_TORCH_THREADS",
        0,
        "torch CPU threads per training; 0 = cores // trainings at once (oversubscribed cores train 3-4x slower)",
    )
    lake_keep_versions: int = setting(
        "MELI_LAKE_KEEP_VERSIONS", 3, "committed versions kept readable per partition (time travel)"
    )
    lock_timeout_s: float = setting(
        "MELI_LOCK_TIMEOUT_S", 900.0, "seconds a writer waits for a partition or the registry held by another"
    )
    lock_uri: str = setting(
        "MELI_LOCK_URI",
        "",
        "a Postgres URL: the gate's registry lock becomes an advisory lock there (writers on several hosts); "
        "empty: a lock file beside the SQLite store or under MELI_HOME",
    )
    warm_max_age_days: float = setting(
        "MELI_WARM_MAX_AGE_DAYS", 7.0, "mode=auto trains full when the champion's last full retrain is older"
    )
    warm_max_vocab_growth: float = setting(
        "MELI_WARM_MAX_VOCAB_GROWTH",
        0.10,
        "mode=auto trains full when the new rows bring more new words than this share of the vocabulary",
    )
    require_approval: bool = setting(
        "MELI_REQUIRE_APPROVAL",
        False,
        "a promotion the gate decides waits for a person (Airflow: approve_promotion; CLI: registry approve|reject)",
    )
    approval_timeout_h: float = setting(
        "MELI_APPROVAL_TIMEOUT_H", 24.0, "hours a pending promotion waits; no answer = rejected (> 0)"
    )
    shadow: bool = setting(
        "MELI_SHADOW",
        True,
        "scoring also scores each batch with the newest version above the champion (lake/shadow/) and "
        "writes an agreement report",
    )
    tune_storage: str = setting(
        "MELI_TUNE_STORAGE",
        "",
        "the Optuna storage of the tuning studies (a SQLAlchemy URL; postgresql+psycopg2://... for workers "
        "on several hosts)",
        shown="sqlite:///$MELI_HOME/tune/optuna.db",
    )
    tune_experiment: str = setting(
        "MELI_TUNE_EXPERIMENT", "meli-tune", "MLflow experiment of the tuning studies and their trials"
    )
    thresholds: Thresholds = field(default_factory=Thresholds)
    gate: GateRules = field(default_factory=GateRules)
    monitor: Monitor = field(default_factory=Monitor)
    retrain_deadline_h: float = setting(
        "MELI_RETRAIN_DEADLINE_H",
        6.0,
        "a meli_retrain run not finished this many hours after it was queued alerts (DeadlineAlert); 0 = none",
    )
    alert_webhook_url: str = setting(
        "MELI_ALERT_WEBHOOK_URL", "", "alerts are also POSTed (JSON) here (a credential: never logged)"
    )
    input_roots: tuple[Path, ...] = setting(
        "MELI_INPUT_ROOTS",
        (),
        "absolute folders (os.pathsep-separated) the DAGs' Params and asset events may read besides $MELI_HOME/landing",
        read=lambda var, d: _paths(var),
        shown="",
    )
    airflow_api_url: str = setting(
        "MELI_AIRFLOW_API_URL",
        "",
        "where tasks reach the Airflow api-server to set a run's note",
        shown="execution API URL without /execution/, else [api] base_url",
    )
    note_secret: str = setting(
        "MELI_NOTE_SECRET",
        "",
        "the HMAC key of the gate and monitor tasks' note requests; set it where the api-server and the "
        "workers do not share $MELI_HOME",
        shown="generated in $MELI_HOME/secrets/",
        repr=False,
    )
    # -- bounded reads (issue 35 item 6, issue 31 item 6; pipelines/data/ingest/sources.py Limits) --
    max_line_bytes: int = setting(
        "MELI_MAX_LINE_BYTES", 1 << 20, "a longer input line is quarantined as line_too_long (at least 1024)"
    )
    max_record_lines: int = setting(
        "MELI_MAX_RECORD_LINES", 100, "a CSV record whose quoted field stays open past this many lines is cut"
    )
    max_inflated_bytes: int = setting(
        "MELI_MAX_INFLATED_BYTES", 20 << 30, "a gzip input inflating past this many bytes fails its file"
    )
    max_inflate_ratio: float = setting(
        "MELI_MAX_INFLATE_RATIO",
        100.0,
        "a gzip input inflating to more than this many times its compressed size fails (judged after 64 MiB); 0 = off",
    )
    create_store: bool = setting(
        "MELI_CREATE_STORE",
        False,
        "create a new, empty tracking store even though MELI_HOME holds traces of a lost one",
    )
    retrain_schedule: str = setting(
        "MELI_RETRAIN_SCHEDULE",
        "",
        "meli_retrain's time schedule, a cron in UTC; empty: drift-triggered and manual runs only",
        read=_stripped,
    )
    mlflow_ui_url: str = setting(
        "MELI_MLFLOW_UI_URL",
        "",
        "the MLflow UI's base URL: model cards, drift reports and run notes link there; empty: ids only",
        read=lambda var, d: _stripped(var, d).rstrip("/"),
    )
    approvers: tuple[str, ...] = setting(
        "MELI_APPROVERS",
        (),
        "comma-separated Airflow user names (and OS logins for the CLI) who may approve or reject a promotion; "
        "empty: any user allowed on the DAG",
        read=lambda var, d: _names(var),
        shown="",
    )
    scoring_version: str = setting(
        "MELI_SCORING_VERSION",
        "",
        "a version that may write the lake's scored partition besides the champion",
        read=_stripped,
    )

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
