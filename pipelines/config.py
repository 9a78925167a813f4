"""Light configuration objects (stdlib only): safe to import at DAG parse time."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime

MODEL_TYPES = ("mlp", "cnn", "bilstm")
BALANCE_MODES = ("weighted", "sampler", "none")
DEVICES = ("auto", "cpu", "cuda")
INPUT_FORMATS = ("auto", "jsonl", "challenge_csv", "csv", "parquet")
TRAIN_MODES = ("auto", "full", "warm")
SENTENCE_ENCODERS = ("use", "e5", "none")  # pipelines/sentence.py


@dataclass
class TrainConfig:
    """Training hyperparameters. Every field is a CLI flag and an Airflow trigger-form Param."""

    models: list[str] = field(default_factory=lambda: list(MODEL_TYPES))
    # full: today's recipe on every row; warm: each type starts from the champion's (else the latest
    # registered) weights, vocabulary extended, trained on the partitions new since that model plus a
    # replay sample of older rows; auto: warm unless a rule asks for full (pipelines/warm.py)
    mode: str = "auto"
    replay_rows: int = 100_000  # warm: older training rows replayed beside the new ones
    warm_epochs: int = 3  # warm: epochs (max, early stopping); the best epoch is served (no refit pass)
    epochs: int = 15
    batch_size: int = 64
    # on a CUDA device: this batch size, both learning rates scaled by sqrt(gpu_batch_size / batch_size)
    # (0 = use batch_size and the learning rates as given)
    gpu_batch_size: int = 1024
    lr: float = 3e-3  # dense layers (AdamW)
    embedding_lr: float = 1e-2  # embedding rows (SparseAdam)
    weight_decay: float = 1e-4
    dropout: float = 0.3
    hidden: int = 768
    # the "wide" branch: an MLP over an idf-weighted bag of word, char n-gram and hashed word-bigram
    # ids, trained beside the deep model (each with its own loss) and averaged with it. 0 = off.
    wide_dim: int = 128
    wide_bigrams: int = 100_000  # hash buckets for word bigrams (0 = no bigrams)
    ensemble: bool = True  # also offer the mean of the trained models as a candidate challenger
    # pretrained multilingual word vectors read by every model type (pipelines/sentence.py): "use"
    # (Universal Sentence Encoder multilingual v3), "e5" (multilingual-e5-small) or "none"
    sentence_encoder: str = "use"
    balance: str = "weighted"
    label_smoothing: float = 0.1
    patience: int = 5
    # after early stopping on validation, retrain the served model on train + validation for the best
    # epoch count (validation metrics and the ensemble search still come from the first pass)
    refit: bool = True
    freeze_embedding: bool = False
    device: str = "auto"
    seed: int = 13
    embedding_dim: int = 100
    embedding_epochs: int = 20
    bucket: int = 100_000
    # the training recipe (pipelines/tune.py): "default" = these defaults; "tuned" = the latest tuned
    # recipe under $MELI_HOME/tune/recipes/; else a recipe id. A recipe's value of a field is used where
    # the run left that field at its default here; a field set to another value wins (apply_recipe)
    recipe: str = "default"

    def __post_init__(self) -> None:
        if isinstance(self.models, str):
            self.models = [m.strip() for m in self.models.split(",") if m.strip()]
        self.models = list(dict.fromkeys(self.models))
        bad = [m for m in self.models if m not in MODEL_TYPES]
        if bad or not self.models:
            raise ValueError(f"models must be a non-empty subset of {MODEL_TYPES}; got {self.models}")
        if self.balance not in BALANCE_MODES:
            raise ValueError(f"balance must be one of {BALANCE_MODES}; got {self.balance!r}")
        if self.sentence_encoder not in SENTENCE_ENCODERS:
            raise ValueError(f"sentence_encoder must be one of {SENTENCE_ENCODERS}; got {self.sentence_encoder!r}")
        if self.mode not in TRAIN_MODES:
            raise ValueError(f"mode must be one of {TRAIN_MODES}; got {self.mode!r}")
        if self.replay_rows < 0 or self.warm_epochs < 1:
            raise ValueError("replay_rows must be >= 0 and warm_epochs >= 1")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}; got {self.device!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.embedding_epochs < 1:
            raise ValueError("epochs, embedding_epochs and batch_size must be >= 1")
        if self.gpu_batch_size < 0:
            raise ValueError(f"gpu_batch_size must be >= 0; got {self.gpu_batch_size}")
        if self.wide_dim < 0 or self.wide_bigrams < 0:
            raise ValueError("wide_dim and wide_bigrams must be >= 0")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        # issue 31 (parameters validated before any work): a learning rate that is not a positive
        # number fails here, not in the optimizer after FastText and encoding
        for name in ("lr", "embedding_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ValueError(f"{name} must be a positive number; got {value!r}")
        if not (0 <= self.weight_decay < float("inf")) or not 0 <= self.label_smoothing < 1 or self.patience < 1:
            raise ValueError("weight_decay must be >= 0, label_smoothing in [0, 1) and patience >= 1")

    @classmethod
    def from_dict(cls, d: dict | None) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d or {}) - names
        if unknown:
            raise ValueError(f"unknown training parameters: {sorted(unknown)}")
        return cls(**{k: v for k, v in (d or {}).items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)


def load_recipe(recipes_dir, recipe: str) -> dict | None:
    """The recipe named ``recipe``: None for "default"; "tuned": the latest (by created_at, then id)
    ``<recipes_dir>/<id>.json``; else the file of that id. Raises FileNotFoundError when missing."""
    import json
    from pathlib import Path

    recipe = (recipe or "default").strip()
    if recipe == "default":
        return None
    recipes_dir = Path(recipes_dir)
    if recipe == "tuned":
        found = [json.loads(p.read_text()) for p in sorted(recipes_dir.glob("*.json"))]
        if not found:
            raise FileNotFoundError(
                f"recipe=tuned but no tuned recipe under {recipes_dir}: run `python -m pipelines tune` first"
            )
        return max(found, key=lambda r: (r["created_at"], r["id"]))
    path = recipes_dir / f"{recipe}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no recipe {recipe!r} at {path} (use default, tuned or a recipe id)")
    return json.loads(path.read_text())


def apply_recipe(cfg: TrainConfig, kind: str, recipe: dict | None) -> TrainConfig:
    """``cfg`` for model type ``kind`` under ``recipe``: each of the recipe's parameters for ``kind``
    replaces the field where ``cfg`` holds TrainConfig's default (a value set to anything else, by a
    flag or a trigger-form Param, wins); ``recipe`` becomes the recipe's id. No recipe: ``cfg``."""
    from dataclasses import replace

    if recipe is None:
        return replace(cfg, recipe="default")
    defaults = TrainConfig()
    params = recipe.get("params", {}).get(kind, {})
    keep = {k: v for k, v in params.items() if getattr(cfg, k) == getattr(defaults, k)}
    return replace(cfg, recipe=recipe["id"], **keep)


def run_date_from_context(context) -> str:
    """The run date of an Airflow task: the ``run_date`` Param if set, else the logical date,
    else (manual and asset-triggered runs have none) the day the run was queued to run."""
    explicit = (context.get("params") or {}).get("run_date")
    if explicit:
        return datetime.strptime(str(explicit), "%Y-%m-%d").date().isoformat()
    when = context.get("logical_date") or getattr(context.get("dag_run"), "run_after", None)
    return (when or datetime.now(UTC)).date().isoformat()
