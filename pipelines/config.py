"""Light configuration objects (stdlib only): safe to import at DAG parse time."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import NamedTuple

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

MODEL_TYPES = ("mlp", "cnn", "bilstm")
BALANCE_MODES = ("weighted", "sampler", "none")
DEVICES = ("auto", "cpu", "cuda")
INPUT_FORMATS = ("auto", "jsonl", "challenge_csv", "csv", "parquet")
TRAIN_MODES = ("auto", "full", "warm")
SENTENCE_ENCODERS = ("use", "e5", "none")  # pipelines/features/sentence.py


class Bound(NamedTuple):
    """The range of a numeric field: ``lo`` <= x <= ``hi`` (``lo`` < x when ``lo_open``)."""

    lo: float
    hi: float
    lo_open: bool = False

    def check(self, name: str, value) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number; got {value!r}")
        if value < self.lo or (self.lo_open and value == self.lo):
            raise ValueError(f"{name} must be {'>' if self.lo_open else '>='} {self.lo}; got {value}")
        if value > self.hi:
            raise ValueError(f"{name} must be <= {self.hi}; got {value}")

    def schema(self) -> dict:
        """As a trigger-form Param's JSON-schema keywords."""
        return {"exclusiveMinimum" if self.lo_open else "minimum": self.lo, "maximum": self.hi}


# The bounds of every numeric TrainConfig field, one place (issue 35 item 9): TrainConfig checks them
# (CLI flags, DAG Params, recipes through apply_recipe and check_recipe) and the DAGs' Params read them
# (``Param(..., **TRAIN_BOUNDS[name].schema())``), so the form, the CLI and a recipe cannot disagree.
TRAIN_BOUNDS: dict[str, Bound] = {
    "replay_rows": Bound(0, 10_000_000),
    "warm_epochs": Bound(1, 50),
    "epochs": Bound(1, 200),
    "batch_size": Bound(1, 8192),
    "gpu_batch_size": Bound(0, 65536),
    "lr": Bound(0, 1, lo_open=True),
    "embedding_lr": Bound(0, 1, lo_open=True),
    "weight_decay": Bound(0, 1),
    "dropout": Bound(0, 0.9),
    "hidden": Bound(8, 4096),
    "wide_dim": Bound(0, 4096),
    "wide_bigrams": Bound(0, 4_000_000),
    "label_smoothing": Bound(0, 0.5),
    "patience": Bound(1, 200),
    "seed": Bound(0, 2**32 - 1),
    "embedding_dim": Bound(8, 1024),
    "embedding_epochs": Bound(1, 100),
    "bucket": Bound(1, 10_000_000),
}

# Products of the bounds (security item 2): fields each within its bound still multiply into tables that
# do not fit in memory (bucket 10M x embedding_dim 1024 is a 38 GiB FastText n-gram table; the wide table
# at the form's maxima 62.6 GiB). Each table's parameters (float32) are capped: TrainConfig checks the
# products it knows (the CLI, the DAGs, recipes: every path builds a TrainConfig); the tables whose rows
# come from the data (vocabulary + char n-grams) are checked when the model is built (check_tables).
MAX_TABLE_BYTES = 4 * 2**30
_FLOAT_BYTES = 4


def check_tables(tables: dict[str, tuple[int, int]]) -> None:
    """``tables``: {what: (rows, dim)}; ValueError (one line, naming the product) when one table's
    float32 parameters would exceed MAX_TABLE_BYTES."""
    for what, (rows, dim) in tables.items():
        size = int(rows) * int(dim) * _FLOAT_BYTES
        if size > MAX_TABLE_BYTES:
            raise ValueError(
                f"{what} = {int(rows):,} x {int(dim):,} is {size / 2**30:.1f} GiB of float32 parameters, over the "
                f"{MAX_TABLE_BYTES / 2**30:g} GiB cap per table: lower one of them"
            )


@dataclass
class TrainConfig:
    """Training hyperparameters. Every field is a CLI flag and an Airflow trigger-form Param."""

    models: list[str] = field(default_factory=lambda: list(MODEL_TYPES))
    # full: today's recipe on every row; warm: each type starts from the champion's (else the latest
    # registered) weights, vocabulary extended, trained on the partitions new since that model plus a
    # replay sample of older rows; auto: warm unless a rule asks for full (pipelines/training/warm.py)
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
    # pretrained multilingual word vectors read by every model type (pipelines/features/sentence.py): "use"
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
    # the training recipe (pipelines/training/tune.py): "default" = these defaults; "tuned" = the latest tuned
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
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}; got {self.device!r}")
        for name, bound in TRAIN_BOUNDS.items():  # one line naming the field and the bound
            bound.check(name, getattr(self, name))
        check_tables(
            {
                "the FastText n-gram table bucket x embedding_dim": (self.bucket, self.embedding_dim),
                "the wide table's bigram rows wide_bigrams x wide_dim": (self.wide_bigrams, self.wide_dim),
            }
        )
        self.recipe = self.recipe or "default"  # an emptied form field: the default recipe
        check_name(self.recipe, "recipe")  # a file name under $MELI_HOME/tune/recipes/
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


def check_conf(conf, declared) -> None:
    """A DAG run's ``conf`` when each key is one of the DAG's ``declared`` Params; else ValueError
    (one line): Airflow merges any conf key into ``params``, so an undeclared one would bypass the form."""
    unknown = sorted(set(conf or {}) - set(declared))
    if unknown:
        shown = ", ".join(repr(str(k)[:50]) for k in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ValueError(f"unknown trigger parameters {shown}: a run may set only the DAG's Params (its trigger form)")


def train_config_from_params(params, declared) -> TrainConfig:
    """TrainConfig from a DAG run's ``params``: only the fields that are ``declared`` Params of the DAG."""
    names = {f.name for f in fields(TrainConfig)} & set(declared)
    return TrainConfig.from_dict({k: params[k] for k in names if k in params})


def load_recipe(recipes_dir, recipe: str) -> dict | None:
    """The recipe named ``recipe``: None for "default"; "tuned": the latest (by created_at, then id)
    ``<recipes_dir>/<id>.json``; else the file of that id. Raises FileNotFoundError when missing."""
    import json
    from pathlib import Path

    recipe = (recipe or "default").strip()
    if recipe == "default":
        return None
    check_name(recipe, "recipe")
    recipes_dir = Path(recipes_dir)
    if recipe == "tuned":
        found = [json.loads(p.read_text()) for p in sorted(recipes_dir.glob("*.json"))]
        if not found:
            raise FileNotFoundError(
                f"recipe=tuned but no tuned recipe under {recipes_dir}: run `python -m pipelines tune` first"
            )
        return check_recipe(max(found, key=lambda r: (r["created_at"], r["id"])))
    path = recipes_dir / f"{recipe}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no recipe {recipe!r} at {path} (use default, tuned or a recipe id)")
    return check_recipe(json.loads(path.read_text()))


def check_recipe(recipe: dict) -> dict:
    """``recipe`` when its id is a valid name and each model type's values are TrainConfig fields
    within TRAIN_BOUNDS (the trigger form's bounds); else ValueError naming the field and the bound."""
    rid = check_name(recipe.get("id"), "recipe id")
    names = {f.name for f in fields(TrainConfig)}
    for kind, params in (recipe.get("params") or {}).items():
        if kind not in MODEL_TYPES:
            raise ValueError(f"recipe {rid}: unknown model type {kind!r}")
        for name, value in (params or {}).items():
            if name not in names or name in ("models", "recipe"):
                raise ValueError(f"recipe {rid}: {kind}.{name} is not a training parameter")
            if name in TRAIN_BOUNDS:
                try:
                    TRAIN_BOUNDS[name].check(name, value)
                except ValueError as exc:
                    raise ValueError(f"recipe {rid}: {kind}.{exc}") from None
        try:  # the products of its values too (check_tables), with TrainConfig's defaults for the rest
            TrainConfig(**{k: v for k, v in (params or {}).items()})
        except ValueError as exc:
            raise ValueError(f"recipe {rid}: {kind}: {exc}") from None
    return recipe


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


def check_name(name: str, what: str) -> str:
    """``name`` (a study, a recipe) when it is a safe single path component: ``[A-Za-z0-9_.-]+``,
    not ``.`` or ``..``; else ValueError naming ``what``."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"{what} {name!r} is not a valid name: use letters, digits, '_', '.', '-' (not . or ..)")
    return name
