"""Light configuration objects (stdlib only): safe to import at DAG parse time.

Each field of a run's configuration is declared once, on its dataclass, with ``declare(...)``: its type
(the annotation), default, bounds or choices, title, help and trigger-form section. The CLI flags
(pipelines/flows/cli_parser.py ``add_flags``), the DAGs' Params (``params_for``: Param keyword
arguments the DAG wraps as ``Param(**kw)``), the checks of TrainConfig and of a recipe (``check_recipe``)
and the settings' documentation all read that declaration.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import NamedTuple

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
DATE_PATTERN = "^$|^[0-9]{4}-[0-9]{2}-[0-9]{2}$"

MODEL_TYPES = ("mlp", "cnn", "bilstm")
BALANCE_MODES = ("weighted", "sampler", "none")
DEVICES = ("auto", "cpu", "cuda")
INPUT_FORMATS = ("auto", "jsonl", "challenge_csv", "csv", "parquet")
TRAIN_MODES = ("auto", "full", "warm")
SENTENCE_ENCODERS = ("use", "e5", "none")  # pipelines/features/sentence.py
ROW_OPTIMIZERS = ("adagrad", "adam")  # pipelines/training/rows.py

# the trigger forms' sections (Airflow Param ``section``: a collapsible group), in the order the forms show them
SECTIONS = ("Data", "Model", "Training", "Warm start", "Gate", "Approval", "Scoring")
# a field's annotation -> its Param's JSON-schema type
_JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string", "list[str]": "array"}


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


@dataclass(frozen=True)
class Spec:
    """What a field is to people and forms; the field's annotation and default are its type and default.

    ``param``: the field is a trigger-form Param of the DAGs that run it (False: a CLI flag and a recipe
    value only); ``optional``: the form's field may be left empty (typed ``["null", ...]``, default None:
    the trigger form treats a typed field as required)."""

    title: str
    help: str
    section: str
    bound: Bound | None = None
    choices: tuple[str, ...] = ()
    pattern: str = ""
    param: bool = True
    optional: bool = False

    def __post_init__(self) -> None:
        if self.section not in SECTIONS:
            raise ValueError(f"section {self.section!r} is not one of {SECTIONS}")


def declare(default, *, title: str, help: str, section: str, **kw):
    """A dataclass field declared once: ``default`` (a list is copied per instance) and its ``Spec``."""
    meta = {"spec": Spec(title=title, help=help, section=section, **kw)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def declared(cls) -> dict[str, tuple]:
    """``{name: (field, Spec)}`` of the fields of the dataclass ``cls`` declared with ``declare``, in order."""
    return {f.name: (f, f.metadata["spec"]) for f in fields(cls) if "spec" in f.metadata}


def bounds_of(cls) -> dict[str, Bound]:
    """The bounds of ``cls``'s numeric fields, from their declaration."""
    return {name: s.bound for name, (_, s) in declared(cls).items() if s.bound is not None}


def check_choices(obj) -> None:
    """ValueError (one line) when a field of the dataclass instance ``obj`` declared with choices holds another
    value; a list field (``models``) must be a non-empty subset of its choices."""
    for name, (_, s) in declared(type(obj)).items():
        value = getattr(obj, name)
        if not s.choices:
            continue
        if isinstance(value, list):
            bad = [v for v in value if v not in s.choices]
            if bad or not value:
                raise ValueError(f"{name} must be a non-empty subset of {s.choices}; got {value}")
        elif value not in s.choices:
            raise ValueError(f"{name} must be one of {s.choices}; got {value!r}")


def field_default(f):
    """A dataclass field's default value (a fresh one from its factory)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise ValueError(f"field {f.name} has no default")


def json_type(f) -> str:
    """The JSON-schema type of a field's annotation (``int`` -> integer, ``list[str]`` -> array...)."""
    return _JSON_TYPES[str(f.type).replace(" | None", "").strip()]


def param_kwargs(f, s: Spec, default, context: dict | None = None) -> dict:
    """The keyword arguments of the Airflow ``Param`` of one declared field: default, JSON-schema type,
    bounds, choices, pattern, title, description (the help; ``{name}`` filled from ``context``) and section."""
    kw = {"default": None if s.optional and not default else default}
    kind = json_type(f)
    if kind == "array":
        kw["type"] = ["null", "array"] if s.optional else "array"
        kw["items"] = {"type": "string", "enum": list(s.choices)} if s.choices else {"type": "string"}
        kw["default"] = None if kw["default"] is None else list(kw["default"])
    elif s.choices:
        kw["enum"] = list(s.choices)
    else:
        kw["type"] = ["null", kind] if s.optional else kind
    if s.bound is not None:
        kw.update(s.bound.schema())
    if s.pattern:
        kw["pattern"] = s.pattern
    kw["title"] = s.title
    kw["description"] = s.help.format(**context) if context else s.help
    kw["section"] = s.section
    return kw


def params_for(obj, names=None, context: dict | None = None, **defaults) -> dict[str, dict]:
    """``{name: Param kwargs}`` (``param_kwargs``) of the declared fields of ``obj``, a dataclass or an
    instance (whose values become the defaults, e.g. GateRules() resolved from MELI_GATE_*): the fields
    whose Spec has ``param`` (or exactly ``names``); ``defaults`` overrides a field's default. The DAG
    wraps each as ``Param(**kw)``; nothing here imports Airflow."""
    cls = obj if isinstance(obj, type) else type(obj)
    out = {}
    for name, (f, s) in declared(cls).items():
        if (names is None and not s.param) or (names is not None and name not in names):
            continue
        if name in defaults:
            value = defaults[name]
        else:
            value = field_default(f) if isinstance(obj, type) else getattr(obj, name)
        out[name] = param_kwargs(f, s, value, context)
    missing = set(names or ()) - set(out)
    if missing:
        raise ValueError(f"{cls.__name__} declares no field {sorted(missing)}")
    return out


def by_section(params: dict[str, dict]) -> dict[str, dict]:
    """``params`` ordered by the form's sections (SECTIONS), declaration order within a section."""
    return dict(sorted(params.items(), key=lambda kv: SECTIONS.index(kv[1]["section"])))


def help_of(cls, name: str) -> str:
    """The help of one declared field (a CLI flag written by hand shows the form's text)."""
    return declared(cls)[name][1].help


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
    """Training hyperparameters, each declared once (``declare``): a CLI flag of train/retrain/tune, a recipe
    value, and (``param``) a trigger-form Param of meli_retrain."""

    models: list[str] = declare(
        list(MODEL_TYPES),
        title="Model types",
        help="Classifiers to train (comma-separated on the command line); the best on validation is the challenger.",
        section="Model",
        choices=MODEL_TYPES,
    )
    # full: today's recipe on every row; warm: each type starts from the champion's (else the latest
    # registered) weights, vocabulary extended, trained on the partitions new since that model plus a
    # replay sample of older rows; auto: warm unless a rule asks for full (pipelines/training/warm.py)
    mode: str = declare(
        "auto",
        title="Training mode",
        help="auto: warm on ordinary nights, full when no model exists, the last full retrain is older than "
        "MELI_WARM_MAX_AGE_DAYS or the vocabulary grew past MELI_WARM_MAX_VOCAB_GROWTH; full: every row from "
        "scratch; warm: start each type from the champion (else latest) weights, train on what is new since "
        "then plus a replay sample.",
        section="Warm start",
        choices=TRAIN_MODES,
    )
    replay_rows: int = declare(
        100_000,
        title="Warm: replayed older rows",
        help="Older training rows sampled beside the new or changed rows in a warm run.",
        section="Warm start",
        bound=Bound(0, 10_000_000),
    )
    warm_epochs: int = declare(
        3,
        title="Warm: epochs (max, early stopping)",
        help="Epochs of a warm run (at most; early stopping); the best epoch is served (no refit pass).",
        section="Warm start",
        bound=Bound(1, 50),
    )
    epochs: int = declare(
        15,
        title="Epochs (max, early stopping)",
        help="Epochs of a full run (at most): training stops after `patience` epochs without a better "
        "validation macro-recall.",
        section="Training",
        bound=Bound(1, 200),
    )
    batch_size: int = declare(
        256,
        title="Batch size",
        help="Titles per optimizer step (on a CPU); halved, learning rates scaled by sqrt, while an epoch has under "
        "100 steps (small data, down to 32).",
        section="Training",
        bound=Bound(1, 8192),
    )
    # on a CUDA device: this batch size, both learning rates scaled by sqrt(gpu_batch_size / batch_size)
    # (0 = use batch_size and the learning rates as given)
    gpu_batch_size: int = declare(
        1024,
        title="Batch size on a GPU",
        help="On CUDA: this batch size, learning rates scaled by sqrt(gpu_batch_size / batch_size); "
        "0 = batch_size and the learning rates as given.",
        section="Training",
        bound=Bound(0, 65536),
    )
    lr: float = declare(
        6e-3,
        title="Learning rate (dense layers)",
        help="AdamW learning rate of the dense layers.",
        section="Training",
        bound=Bound(0, 1, lo_open=True),
    )
    embedding_lr: float = declare(
        2e-2,
        title="Learning rate (embedding)",
        help="Learning rate of the embedding rows (their row optimiser).",
        section="Training",
        bound=Bound(0, 1, lo_open=True),
    )
    weight_decay: float = declare(
        1e-4,
        title="Weight decay",
        help="AdamW weight decay of the dense layers (command line and recipes only).",
        section="Training",
        bound=Bound(0, 1),
        param=False,
    )
    dropout: float = declare(
        0.3, title="Dropout", help="Dropout of the hidden layers.", section="Model", bound=Bound(0, 0.9)
    )
    hidden: int = declare(
        768, title="Hidden units (MLP)", help="Hidden units of the MLP model.", section="Model", bound=Bound(8, 4096)
    )
    # the "wide" branch: an MLP over an idf-weighted bag of word, char n-gram and hashed word-bigram
    # ids, trained beside the deep model (each with its own loss) and averaged with it. 0 = off.
    wide_dim: int = declare(
        128,
        title="Wide branch units (0 = off)",
        help="An MLP over the idf-weighted bag of word, char n-gram and word-bigram ids, trained beside each "
        "model and averaged with it.",
        section="Model",
        bound=Bound(0, 4096),
    )
    wide_bigrams: int = declare(
        100_000,
        title="Wide branch: word-bigram buckets",
        help="Hash buckets for the wide branch's word bigrams (0 = no bigrams).",
        section="Model",
        bound=Bound(0, 4_000_000),
    )
    ensemble: bool = declare(
        True,
        title="Ensemble candidate",
        help="Also offer the mean of the trained models' probabilities as a challenger (chosen only if best "
        "on validation; scoring then runs every member).",
        section="Model",
    )
    # pretrained multilingual word vectors read by every model type (pipelines/features/sentence.py): "use"
    # (Universal Sentence Encoder multilingual v3), "e5" (multilingual-e5-small) or "none"
    sentence_encoder: str = declare(
        "use",
        title="Pretrained word vectors",
        help="use: every model also reads each word's Universal Sentence Encoder multilingual v3 vector (es/pt "
        "and 14 more languages, computed once per distinct word and cached across runs), through its own head "
        "averaged with the others; e5: multilingual-e5-small instead (19x slower to encode); none: the models "
        "without them.",
        section="Model",
        choices=SENTENCE_ENCODERS,
    )
    balance: str = declare(
        "weighted",
        title="Class balancing",
        help="weighted loss, balanced sampler, or none",
        section="Training",
        choices=BALANCE_MODES,
    )
    label_smoothing: float = declare(
        0.1,
        title="Label smoothing",
        help="Label smoothing of the cross-entropy loss (command line and recipes only).",
        section="Training",
        bound=Bound(0, 0.5),
        param=False,
    )
    patience: int = declare(
        5,
        title="Early-stopping patience (epochs)",
        help="Epochs without a better validation macro-recall before training stops.",
        section="Training",
        bound=Bound(1, 200),
    )
    # after early stopping on validation, retrain the served model on train + validation for the best
    # epoch count (validation metrics and the ensemble search still come from the first pass)
    refit: bool = declare(
        True,
        title="Refit on train + validation",
        help="After early stopping, retrain the served model on train + validation rows for the best epoch "
        "count (~1.9x training time; validation metrics come from the first pass).",
        section="Training",
    )
    # issue 34 (scale): the training cost follows the data. Each of these is recorded per run (MLflow params
    # and the ``meli.budget`` metrics of the selection pass: epochs, checks, refit or not, and why)
    sample_budget: int = declare(
        6_000_000,
        title="Sample budget (full run)",
        help="Training samples a full run's selection pass may see: its epochs are min(epochs, "
        "max(min_epochs, ceil(sample_budget / training rows))), so epochs shrink as the catalog grows.",
        section="Training",
        bound=Bound(1, 10_000_000_000),
    )
    min_epochs: int = declare(
        2,
        title="Minimum epochs (full run)",
        help="The fewest epochs of a full run whatever the sample budget.",
        section="Training",
        bound=Bound(1, 200),
    )
    eval_every: int = declare(
        400_000,
        title="Validate every N samples",
        help="A validation check (early stopping, best weights) every this many training samples, and at the end "
        "of every epoch shorter than that.",
        section="Training",
        bound=Bound(1_000, 1_000_000_000),
    )
    val_sample_rows: int = declare(
        20_000,
        title="Validation checks: rows",
        help="Rows of the fixed validation sample scored at each check (the whole split when smaller); the kept "
        "weights are then scored on the whole validation split.",
        section="Training",
        bound=Bound(100, 100_000_000),
    )
    refit_max_rows: int = declare(
        250_000,
        title="Refit: up to this many training rows",
        help="The refit on train + validation runs only when the training split has at most this many rows: "
        "past it, 14% more rows are not worth twice the training time.",
        section="Training",
        bound=Bound(0, 1_000_000_000),
    )
    embedding_budget: int = declare(
        3_000_000,
        title="FastText title budget",
        help="Titles FastText may read: its epochs are min(embedding_epochs, max(3, ceil(embedding_budget / "
        "training titles))).",
        section="Training",
        bound=Bound(1, 10_000_000_000),
    )
    cpu_bf16: bool = declare(
        True,
        title="bf16 on a CPU that has it",
        help="Train in bf16 autocast (as on a GPU) on a CPU with native bf16 arithmetic (AVX512-BF16 or AMX); "
        "other CPUs train in float32 whatever this says.",
        section="Training",
    )
    word_rows: bool = declare(
        True,
        title="One trained row per word",
        help="Train one embedding row per word of the training vocabulary (initialised from FastText's composed "
        "vector); the char n-gram rows stay frozen and give words never seen in training their vector.",
        section="Model",
    )
    row_optimizer: str = declare(
        "adam",
        title="Embedding rows: optimiser",
        help="adagrad: one state per row (one pass over a touched row); adam: two.",
        section="Training",
        choices=ROW_OPTIMIZERS,
    )
    freeze_embedding: bool = declare(
        False,
        title="Freeze the FastText embedding",
        help="Keep the FastText word vectors as trained by gensim (no fine-tuning by the classifier).",
        section="Model",
    )
    device: str = declare(
        "auto", title="Device", help="auto = CUDA when available", section="Training", choices=DEVICES
    )
    seed: int = declare(
        13,
        title="Random seed",
        help="Seed of the splits' shuffles, FastText and torch (command line and recipes only).",
        section="Training",
        bound=Bound(0, 2**32 - 1),
        param=False,
    )
    embedding_dim: int = declare(
        100,
        title="FastText dimension",
        help="Dimension of the FastText word vectors.",
        section="Model",
        bound=Bound(8, 1024),
    )
    embedding_epochs: int = declare(
        20, title="FastText epochs", help="Epochs of gensim FastText training.", section="Training", bound=Bound(1, 100)
    )
    bucket: int = declare(
        100_000,
        title="FastText n-gram buckets",
        help="Hash buckets of FastText's char n-grams (command line and recipes only).",
        section="Model",
        bound=Bound(1, 10_000_000),
        param=False,
    )
    # the training recipe (pipelines/training/tune.py): "default" = these defaults; "tuned" = the latest tuned
    # recipe under $MELI_HOME/tune/recipes/; else a recipe id. A recipe's value of a field is used where
    # the run left that field at its default here; a field set to another value wins (apply_recipe)
    recipe: str = declare(
        "default",
        title="Training recipe",
        help="default: these defaults; tuned: the latest recipe meli_tune made ($MELI_HOME/tune/recipes/); or a "
        "recipe id. A recipe sets each model type's tuned fields that are left at their defaults here (a field "
        "changed in this form or by a flag wins). Recorded as the MLflow tag meli.recipe; the model still has "
        "to win the gate.",
        section="Training",
        pattern=f"^$|{NAME_RE.pattern}",
    )

    def __post_init__(self) -> None:
        if isinstance(self.models, str):
            self.models = [m.strip() for m in self.models.split(",") if m.strip()]
        self.models = list(dict.fromkeys(self.models))
        check_choices(self)  # models, mode, sentence_encoder, balance, device: their declared choices
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


# The bounds of every numeric TrainConfig field, from its declaration (issue 35 item 9): TrainConfig checks
# them (CLI flags, DAG Params, recipes through apply_recipe and check_recipe) and the DAGs' Params carry them
# (params_for), so the form, the CLI and a recipe cannot disagree.
TRAIN_BOUNDS: dict[str, Bound] = bounds_of(TrainConfig)


@dataclass
class RunOptions:
    """A retrain run's options besides TrainConfig and the gate rules (pipelines/settings.py GateRules):
    meli_retrain's Params; the CLI's hand-written flags (``--run-date``, ``--format``...) show the same help."""

    run_date: str | None = declare(
        None,
        title="Run date",
        help="YYYY-MM-DD partition to (re)build; empty = the run's logical date or today.",
        section="Data",
        pattern=DATE_PATTERN,
        optional=True,
    )
    sources: list[str] | None = declare(
        None,
        title="Input files",
        help="Files or glob patterns to ingest; empty = the files in $MELI_HOME/landing/ (moved to "
        "landing/processed/<run date>/ once ingested)",
        section="Data",
        optional=True,
    )
    input_format: str = declare(
        "auto",
        title="Input format",
        help="auto detects DiploDatos jsonl(.gz), challenge CSV, title,category CSV, Parquet",
        section="Data",
        choices=INPUT_FORMATS,
    )
    allow_empty: bool = declare(
        False,
        title="Allow an empty batch",
        help="Commit the partition even if the input holds no rows (default: the run fails and the partition "
        "stays as it was).",
        section="Data",
    )
    force_promote: bool = declare(
        False,
        title="Force promotion",
        help="Operator override: promote whatever the rules say (recorded); still waits for a person's approval "
        "when approval is required.",
        section="Gate",
    )
    dry_run: bool = declare(False, title="Dry run", help="Decide and record, move no alias.", section="Gate")
    # the default is the deployment's MELI_REQUIRE_APPROVAL (the DAG passes Settings().require_approval)
    require_approval: bool = declare(
        False,
        title="Require a person's approval",
        help="A promotion the gate decides waits on the Required Actions page (task approve_promotion) with the "
        "evidence; Reject or no answer within {approval_timeout_h:g} h (MELI_APPROVAL_TIMEOUT_H) keeps the "
        "champion. This can only add approval: when the deployment requires it (MELI_REQUIRE_APPROVAL), "
        "unticking it changes nothing.",
        section="Approval",
    )


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
            raise FileNotFoundError(f"recipe=tuned but no tuned recipe under {recipes_dir}: run `meli tune` first")
        return check_recipe(max(found, key=lambda r: (r["created_at"], r["id"])))
    path = recipes_dir / f"{recipe}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no recipe {recipe!r} at {path} (use default, tuned or a recipe id)")
    return check_recipe(json.loads(path.read_text()))


def check_recipe(recipe: dict) -> dict:
    """``recipe`` when its id is a valid name and each model type's values are TrainConfig fields within
    their declared bounds and choices (the trigger form's and the CLI's: TRAIN_BOUNDS, TrainConfig's
    checks); else ValueError naming the field and the bound."""
    rid = check_name(recipe.get("id"), "recipe id")
    names = set(declared(TrainConfig))
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
