"""Warm start: make the nightly run proportional to what is new.

``plan_run`` decides, once per run (in the embedding step), whether the run trains ``full`` (today's
recipe on every row) or ``warm``:

- the *base* is the champion (else the latest registered version): its run's FastText model and
  encoder are extended (``warm_embedding``: gensim ``build_vocab(update=True)`` then continued
  training on the new rows; new words and n-grams appended, so every old word keeps its id);
- each model type starts from the champion's weights when the champion is (or holds) that type,
  else from the latest registered version of that type (``parent_state``: rows mapped by word,
  n-gram and label, old rows copied bit-identical, new rows from the extended FastText); a type
  with no parent trains full inside the warm run;
- a warm type trains on the training rows new or changed since that model's lake snapshot plus
  ``replay_rows`` older rows, for ``warm_epochs`` epochs, early stopping and refit as in full mode.
  New is decided by content (``new_row_mask``): a row of a partition new or re-ingested since the
  snapshot whose listing id the snapshot lacks, or holds with another title, language or category.
  The same listings ingested again, on the same date or a new one, are nothing new; when no type has
  a new row the run skips (``skip_plan``: nothing trained or registered).

``auto`` (the default) is warm except when: no registered model exists, the base's embedding is
gone from its run directory or its files are not the bytes recorded in MLflow when it was trained
(gensim unpickles them: ``features.load_fasttext``; the run date tag naming the directory is
validated and confined to ``$MELI_HOME/work``), the embedding/tokenizer settings changed, the champion's last full
retrain is older than ``MELI_WARM_MAX_AGE_DAYS`` (7), or the new words exceed
``MELI_WARM_MAX_VOCAB_GROWTH`` (10%) of its vocabulary. The gate judges a warm challenger like any
other, on the frozen test split.
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PLAN_FILE = "warm.json"  # in the run's embedding dir


class WarmStartError(ValueError):
    """mode=warm was asked for and cannot be honoured (one line, for the CLI and the task log)."""


def parse_lake_versions(tag: str) -> dict[str, int]:
    out = {}
    for part in filter(None, (tag or "").split(",")):
        d, _, v = part.partition("@v")
        if v.isdigit():
            out[d] = int(v)
    return out


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_MODEL_URI = re.compile(r"^(models:/[A-Za-z0-9_.-]+(/[0-9]+)?|runs:/[0-9a-f]{32}/[A-Za-z0-9_-][A-Za-z0-9_./-]*)$")


def _iso_date(value: str) -> str | None:
    """``value`` when it is a YYYY-MM-DD date exactly as written back (strptime), else None."""
    try:
        return value if datetime.strptime(value, "%Y-%m-%d").date().isoformat() == value else None
    except (TypeError, ValueError):
        return None


def embedding_dir_of(settings, run_date: str) -> Path:
    """The embedding dir of the run of ``run_date`` (a tag's value: validated), inside
    ``$MELI_HOME/work``; ValueError (one line) otherwise."""
    if _iso_date(run_date) is None:
        raise ValueError(f"run date {run_date!r} is not a YYYY-MM-DD date")
    path = settings.run_dir(run_date) / "embedding"
    if not path.resolve().is_relative_to(settings.work_dir.resolve()):
        raise ValueError(f"{path} resolves outside {settings.work_dir}")
    return path


def version_info(settings, mv) -> dict:
    """A registered version as warm start reads it. Tag values are checked before anything is built
    from them: a bad one leaves ``embedding_dir`` empty and says why in ``problem``."""
    tags = mv.tags or {}
    run_date = tags.get("meli.run_date", "")
    full_run_date = tags.get("meli.full_run_date") or run_date
    emb_dir, problem = "", ""
    try:
        emb_dir = str(embedding_dir_of(settings, run_date))
        if _iso_date(full_run_date) is None:
            raise ValueError(f"meli.full_run_date {full_run_date!r} is not a YYYY-MM-DD date")
    except ValueError as exc:
        emb_dir, problem = "", f"its tags name no usable run: {exc}"
    return {
        "version": str(mv.version),
        "run_id": str(getattr(mv, "run_id", "") or ""),
        "model_type": tags.get("meli.model_type", ""),
        "members": [m for m in tags.get("meli.members", "").split("+") if m],
        "run_date": run_date,
        "full_run_date": full_run_date,
        "lake_versions": parse_lake_versions(tags.get("meli.lake_versions", "")),
        "model_uri": f"models:/{settings.model_name}/{mv.version}",
        "embedding_dir": emb_dir,
        "problem": problem,
    }


def embedding_record(client, base: dict) -> dict | str:
    """The sha256 of the base's FastText files as its retraining run recorded them when it trained
    the embedding (tag ``meli.embedding_sha256`` on the parent run of the version's run), or a
    one-line reason there is none."""
    from pipelines.features.embedding import EMBEDDING_SHA_TAG, EmbeddingIntegrityError, parse_embedding_record

    try:
        run = client.get_run(base["run_id"])
        parent_id = run.data.tags.get("mlflow.parentRunId", "")
        if parent_id and not _RUN_ID.match(parent_id):
            return f"its run names a malformed parent run {parent_id[:40]!r}"
        owner = client.get_run(parent_id) if parent_id else run
    except Exception as exc:  # a lookup that fails means no record: no warm start from it
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        return f"its runs could not be read: {first}"
    if owner.data.tags.get("meli.run_date", base["run_date"]) != base["run_date"]:
        return f"its run is of {owner.data.tags.get('meli.run_date')!r}, the version says {base['run_date']!r}"
    try:
        return parse_embedding_record(owner.data.tags.get(EMBEDDING_SHA_TAG))
    except EmbeddingIntegrityError as exc:
        return str(exc)


def _sentence_encoder_of(embedding_dir: Path) -> str:
    """The sentence encoder a run's models read (its encoded splits' meta; older runs: none)."""
    try:
        meta = json.loads((Path(embedding_dir).parent / "encoded" / "meta.json").read_text())
    except (FileNotFoundError, ValueError):
        return "unknown (its encoded splits are gone)"
    return meta.get("sentence_encoder", "none")


def _holds(info: dict, kind: str) -> bool:
    return info["model_type"] == kind or kind in info["members"]


def find_parents(settings, kinds: list[str]) -> tuple[dict | None, dict[str, dict | None]]:
    """(base, parent per model type): the champion, else the latest registered version."""
    from pipelines.core.tracking import alias_version, tracking_client

    client = tracking_client(settings)  # a reader: an interrupted alias move is the registry's to complete
    try:
        versions = client.search_model_versions(f"name='{settings.model_name}'")
    except Exception as exc:  # no registered model yet
        log.info("no registered versions of %s (%s)", settings.model_name, exc)
        versions = []
    infos = sorted((version_info(settings, v) for v in versions), key=lambda i: -int(i["version"]))
    champ = alias_version(client, settings.model_name, "champion") if infos else None
    champion = next((i for i in infos if champ is not None and i["version"] == str(champ.version)), None)
    base = champion or (infos[0] if infos else None)
    parents = {}
    for kind in kinds:
        if champion is not None and _holds(champion, kind):
            parents[kind] = champion
        else:
            parents[kind] = next((i for i in infos if _holds(i, kind)), None)
    if base is not None:
        base["embedding_sha256"] = embedding_record(client, base) if base["embedding_dir"] else {}
    missing = [k for k, v in parents.items() if v is None]
    if base is not None and missing:  # the base's own run trained (not registered) those types
        parents |= _sibling_models(settings, client, base, missing)
    return base, parents


def _sibling_models(settings, client, base: dict, kinds: list[str]) -> dict[str, dict]:
    """Models of ``kinds`` trained in the same retraining run as ``base`` (same encoder and data)."""
    try:
        mv = client.get_model_version(settings.model_name, base["version"])
        parent_run = client.get_run(mv.run_id).data.tags.get("mlflow.parentRunId")
        if not parent_run or not _RUN_ID.match(parent_run):
            return {}
        runs = client.search_runs(
            [client.get_run(mv.run_id).info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run}'",
            max_results=100,
        )
    except Exception as exc:  # lineage lookups are best effort: the type then trains full
        log.warning("could not look up the models trained beside version %s: %s", base["version"], exc)
        return {}
    out = {}
    for run in runs:
        tags = run.data.tags
        kind = tags.get("meli.model_type")
        if kind in kinds and kind not in out and _MODEL_URI.match(tags.get("meli.model_uri", "")):
            out[kind] = {
                **base,
                "version": f"{base['version']}/{kind}",
                "model_type": kind,
                "members": [],
                "model_uri": tags["meli.model_uri"],
                "lake_versions": parse_lake_versions(tags.get("meli.lake_versions", "")) or base["lake_versions"],
                "full_run_date": tags.get("meli.full_run_date") or base["full_run_date"],
            }
    return out


def new_partitions(dataset_snap: dict[str, int], parent_snap: dict[str, int]) -> list[str]:
    """Partitions of this run's snapshot that the parent did not train on (new or re-ingested)."""
    return sorted(d for d, v in dataset_snap.items() if parent_snap.get(d) != v)


# What a training row is made of (the dataset's columns less ``split``, a function of the id): a
# listing whose id and these values the parent's snapshot already held is nothing new for it.
CONTENT_COLUMNS = ["listing_id", "title", "language", "category"]
NEW_ROWS_FILE = "new_rows-{dataset}-{parent}.npy"  # in the dataset dir: the plan's mask, for the train tasks


def _content_keys(table):
    """One string per row: its listing id and content (a null distinct from an empty value)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = [pc.fill_null(pc.cast(table.column(c), pa.string()), "\x00") for c in CONTENT_COLUMNS]
    return pc.binary_join_element_wise(*cols, "\x1f")


def _known_keys(root: Path, parent_snap: dict[str, int], ids):
    """The content key of each listing of ``ids`` as the parent's snapshot holds it (the newest
    partition's row, as ``load_listings`` reads it), read column-wise."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipelines.data.lake import partition_dir, read_partition

    tables = []
    for d, v in sorted(parent_snap.items()):
        t = read_partition(partition_dir(root, d), [*CONTENT_COLUMNS, "ingest_date"], v)
        tables.append(t.filter(pc.is_in(t.column("listing_id"), value_set=ids)))  # only the ids that matter
    if not tables:
        return pa.array([], pa.string())
    table = pa.concat_tables(tables)
    if len(tables) > 1:  # newest partition first (a stable sort), then each id's first row
        table = table.take(pc.sort_indices(table, sort_keys=[("ingest_date", "descending")]))
        keyed = pa.table({"listing_id": table.column("listing_id"), "key": _content_keys(table)})
        return keyed.group_by("listing_id", use_threads=False).aggregate([("key", "first")]).column("key_first")
    return _content_keys(table)


def _kept(root: Path, snap: dict[str, int]) -> bool:
    """Whether every partition of ``snap`` is still readable at its version (the lake keeps a few)."""
    from pipelines.data.lake import LakeError, data_dir, partition_dir

    for d, v in sorted(snap.items()):
        try:
            data_dir(partition_dir(root, d), v)
        except (OSError, LakeError) as exc:
            log.info("partition %s@v%s is no longer kept (%s): all rows of the new partitions count as new", d, v, exc)
            return False
    return True


def new_row_mask(root: Path, dataset_dir: Path, dataset_snap: dict[str, int], parent_snap: dict[str, int]):
    """Which training rows of the dataset (``train.parquet``, in order) are new or changed for a
    parent that trained on the lake snapshot ``parent_snap``: rows of partitions new or re-ingested
    since (``new_partitions``) whose listing id the parent's snapshot lacks, or holds with another
    title, language or category. The same rows ingested again, on the same date or a new one, are not
    new. Column-wise (pyarrow ``is_in`` on the ids, then on id+content keys), no loop over rows.
    When a partition of the parent's snapshot is no longer kept, every row of the new partitions counts."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fresh = new_partitions(dataset_snap, parent_snap)
    t = pq.read_table(Path(dataset_dir) / "train.parquet", columns=["ingest_date"])
    candidate = pc.is_in(pc.cast(t.column("ingest_date"), pa.string()), value_set=pa.array(fresh, pa.string()))
    mask = candidate.to_numpy(zero_copy_only=False).astype(bool)
    if not mask.any() or not parent_snap or not _kept(root, parent_snap):
        return mask
    rows = np.flatnonzero(mask)
    t = pq.read_table(Path(dataset_dir) / "train.parquet", columns=CONTENT_COLUMNS).take(pa.array(rows))
    known = _known_keys(root, parent_snap, pc.unique(t.column("listing_id")))
    if isinstance(known, pa.ChunkedArray):  # a value set is one array
        known = known.combine_chunks()
    seen = pc.is_in(_content_keys(t), value_set=known).to_numpy(zero_copy_only=False).astype(bool)
    mask[rows[seen]] = False
    return mask


def _mask_path(dataset_dir: Path, dataset_snap: dict[str, int], parent_snap: dict[str, int]) -> Path:
    from pipelines.data.lake import data_version

    name = NEW_ROWS_FILE.format(dataset=data_version(dataset_snap), parent=data_version(parent_snap))
    return Path(dataset_dir) / name


def plan_new_rows(root: Path, dataset_dir: Path, dataset_snap: dict[str, int], parent_snap: dict[str, int]) -> dict:
    """``new_row_mask`` for one parent, saved beside the dataset (the train tasks read the rows the
    plan saw, whatever the lake keeps by then): its file, count and the partitions holding them."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipelines.core.fs import atomic_file

    path = _mask_path(dataset_dir, dataset_snap, parent_snap)
    mask = new_row_mask(root, dataset_dir, dataset_snap, parent_snap)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.save(f, mask)
    dates = pq.read_table(Path(dataset_dir) / "train.parquet", columns=["ingest_date"]).column(0)
    parts = pc.unique(pc.cast(dates.filter(pa.array(mask)), pa.string())).to_pylist()
    return {"new_rows": int(mask.sum()), "new_rows_file": str(path), "new_partitions": sorted(parts)}


def parent_new_rows(parent: dict, dates: np.ndarray | None) -> np.ndarray:
    """The mask of training rows new for ``parent`` (or the plan, for its base) that the plan saved
    (``plan_new_rows``); a plan without one (written before it existed): every row of its new partitions."""
    path = parent.get("new_rows_file")
    if not path:
        return np.isin(np.asarray(dates).astype(str), np.asarray(parent["new_partitions"], dtype=str))
    mask = np.load(path, allow_pickle=False)
    if dates is not None and mask.shape != (len(dates),):
        raise WarmStartError(f"{path} holds {mask.shape[0]} rows, the training split {len(dates)}: re-run the plan")
    return mask


def skip_plan(plan: dict) -> dict | None:
    """A warm plan with nothing to train: every type warm and no new or changed rows for any (e.g.
    the same files ingested again). The run then trains and registers nothing (``mode: skip``)."""
    if plan.get("mode") != "warm" or any(t != "warm" for t in plan["types"].values()):
        return None
    if any(p["new_partitions"] for p in plan["parents"].values()):
        return None
    base = plan["base"]
    reason = (
        f"nothing new to train on: no new or changed rows since version {base['version']} "
        f"(lake {','.join(f'{d}@v{v}' for d, v in sorted(base['lake_versions'].items()))}); "
        "no model trained or registered, the champion stays"
    )
    log.info("training skipped: %s", reason)
    return {**plan, "mode": "skip", "reason": reason, "warm_reason": plan["reason"]}


def plan_run(settings, dataset: dict, cfg, run_date: str) -> dict:
    """Full or warm for this run, and why; for warm the base and each type's parent."""
    from pipelines.features.embedding import EmbeddingIntegrityError, TitleEncoder, embedding_config, verify_embedding
    from pipelines.features.text import TextConfig

    info = json.loads((Path(dataset["dir"]) / "dataset.json").read_text())
    snap = {d: int(v) for d, v in info.get("lake_versions", {}).items()}

    def full(reason: str) -> dict:
        if cfg.mode == "warm":
            raise WarmStartError(f"mode=warm: {reason} (use mode=auto or mode=full)")
        log.info("training mode full: %s", reason)
        return {"mode": "full", "reason": reason, "types": {k: "full" for k in cfg.models}, "parents": {}}

    if cfg.mode == "full":
        return full("mode=full requested")
    base, parents = find_parents(settings, cfg.models)
    if base is None:
        return full("no registered model to start from")
    if not base.get("embedding_dir"):
        return full(f"version {base['version']}: {base.get('problem') or 'no embedding dir'}")
    emb_dir = Path(base["embedding_dir"])
    if not (emb_dir / "fasttext.model").exists() or not (emb_dir / "encoder.json").exists():
        return full(f"the embedding of version {base['version']} is gone ({emb_dir})")
    try:  # gensim unpickles it: only the bytes recorded in MLflow when it was trained are loaded
        verify_embedding(emb_dir, base.get("embedding_sha256"))
    except EmbeddingIntegrityError as exc:
        log.warning("not warm-starting from version %s: %s", base["version"], exc)
        return full(f"the embedding of version {base['version']} cannot be trusted: {exc}")
    old = TitleEncoder.load(emb_dir / "encoder.json")
    want = embedding_config(cfg)
    if old.ngrams is None or old.text != TextConfig() or (old.emb.dim, old.emb.bucket) != (want.dim, want.bucket):
        return full(f"version {base['version']} was trained with other embedding or tokenizer settings")
    base_sentence = _sentence_encoder_of(emb_dir)
    if base_sentence != cfg.sentence_encoder:
        return full(
            f"version {base['version']} was trained with sentence_encoder={base_sentence} "
            f"(this run: {cfg.sentence_encoder})"
        )
    age = (date.fromisoformat(run_date) - date.fromisoformat(base["full_run_date"])).days
    ds_dir, root, seen = Path(dataset["dir"]), settings.listings_dir, {}

    def new_rows(parent_snap: dict[str, int]) -> dict:  # once per distinct parent snapshot
        key = json.dumps(sorted(parent_snap.items()))
        if key not in seen:
            seen[key] = plan_new_rows(root, ds_dir, snap, parent_snap)
        return seen[key]

    fresh = new_rows(base["lake_versions"])
    growth = vocab_growth(ds_dir, old, parent_new_rows(fresh, None))
    if cfg.mode == "auto":
        if age > settings.warm_max_age_days:
            return full(
                f"the last full retrain ({base['full_run_date']}) is {age} days old "
                f"(max {settings.warm_max_age_days:g})"
            )
        if growth > settings.warm_max_vocab_growth:
            return full(f"the vocabulary grew by {growth:.1%} (max {settings.warm_max_vocab_growth:.0%})")
    types, plan_parents = {}, {}
    for kind, parent in parents.items():
        types[kind] = "warm" if parent is not None else "full"
        if parent is not None:  # rows it trained on, ingested again (any date), are nothing new
            plan_parents[kind] = {**parent, **new_rows(parent["lake_versions"])}
    where = f" in {', '.join(fresh['new_partitions'])}" if len(fresh["new_partitions"]) <= 3 else ""
    reason = (
        f"warm from version {base['version']} ({base['model_type']}, last full retrain {base['full_run_date']}): "
        f"{fresh['new_rows']} new or changed training row(s){where} "
        f"({len(fresh['new_partitions'])} partition(s)), vocabulary +{growth:.1%}"
    )
    if any(t == "full" for t in types.values()):
        reason += f"; no parent for {[k for k, t in types.items() if t == 'full']}: trained full"
    plan = {
        "mode": "warm",
        "reason": reason,
        "base": base,
        "new_partitions": fresh["new_partitions"],
        "new_rows": fresh["new_rows"],
        "new_rows_file": fresh["new_rows_file"],
        "vocab_growth": round(growth, 4),
        "full_run_date": base["full_run_date"],
        "types": types,
        "parents": plan_parents,
    }
    skipped = skip_plan(plan)
    if skipped is not None:
        return skipped
    log.info("training mode warm: %s", reason)
    return plan


def _train_titles(dataset_dir: Path, mask: np.ndarray) -> list[str]:
    """The titles of the training rows ``mask`` selects (the rows new for the base)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(dataset_dir / "train.parquet", columns=["title"])
    return t.column(0).filter(pa.array(mask)).to_pylist()


def vocab_growth(dataset_dir: Path, encoder, mask: np.ndarray) -> float:
    """Distinct words of the new training titles (``mask``) the encoder lacks, over its vocabulary."""
    from pipelines.features.text import tokenize

    if not mask.any():
        return 0.0
    words = {w for t in _train_titles(dataset_dir, mask) for w in tokenize(t or "", encoder.text)}
    return len(words - encoder.stoi.keys()) / max(1, len(encoder.itos) - 2)


def extend_encoder(old, token_lists):
    """The old encoder plus the new words (by frequency) and their new n-grams, appended: every
    old word and n-gram keeps its id, only the n-gram offset moves by the number of new words."""
    from collections import Counter

    from pipelines.features.embedding import TitleEncoder, char_ngrams

    counts = Counter(w for toks in token_lists for w in toks if w not in old.stoi)
    new_words = sorted(counts, key=lambda w: (-counts[w], w))
    known = set(old.ngrams)
    grams = sorted({g for w in new_words for g in char_ngrams(w, old.emb)} - known)
    return TitleEncoder(old.itos + new_words, old.text, old.emb, old.ngrams + grams)


class _AlphaRestart(logging.Filter):
    """Drops gensim's "Effective 'alpha' higher than previous training cycles" and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Effective 'alpha' higher than previous training cycles")


@contextmanager
def quiet_alpha_restart():
    """Continued training restarts the learning rate at the model's ``alpha`` on purpose: the new
    words start from random vectors and would barely move at the ``min_alpha`` the last cycle ended
    on (the usual way to continue a gensim model). gensim warns about exactly that on every warm run,
    with nothing to act on; this filter, on its logger for the call only, drops that one message."""
    logger, quiet = logging.getLogger("gensim.models.word2vec"), _AlphaRestart()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _base_new_rows(dataset_dir: Path, plan: dict) -> np.ndarray:
    import pyarrow.parquet as pq

    dates = None if plan.get("new_rows_file") else pq.read_table(dataset_dir / "train.parquet", columns=["ingest_date"])
    return parent_new_rows(plan, None if dates is None else dates.column(0).to_numpy(zero_copy_only=False))


def warm_embedding(dataset_dir: str | Path, plan: dict, seed: int) -> dict:
    """Continue the base's FastText on the new partitions' training titles and extend its encoder;
    saved as this run's embedding (with the plan, ``warm.json``)."""
    import time

    from pipelines.core.fs import atomic_tree
    from pipelines.features.embedding import EmbeddingIntegrityError, TitleEncoder, embedding_digests, load_fasttext
    from pipelines.features.text import tokenize

    dataset_dir = Path(dataset_dir)
    base_dir = Path(plan["base"]["embedding_dir"])
    old = TitleEncoder.load(base_dir / "encoder.json")
    titles = _train_titles(dataset_dir, _base_new_rows(dataset_dir, plan))
    tokens = [t for t in (tokenize(x or "", old.text) for x in titles) if t]
    t0 = time.perf_counter()
    try:  # a private copy of the recorded bytes is what gensim unpickles
        ft = load_fasttext(base_dir, plan["base"].get("embedding_sha256"))
    except EmbeddingIntegrityError as exc:
        raise WarmStartError(f"warm start from version {plan['base']['version']} refused: {exc}") from None
    if tokens:
        ft.build_vocab(corpus_iterable=tokens, update=True)
        with quiet_alpha_restart():
            ft.train(corpus_iterable=tokens, total_examples=len(tokens), epochs=ft.epochs)
    encoder = extend_encoder(old, tokens)
    seconds = time.perf_counter() - t0
    out = dataset_dir.parent / "embedding"
    with atomic_tree(out) as tmp:
        ft.save(str(tmp / "fasttext.model"))
        encoder.save(tmp / "encoder.json")
        (tmp / PLAN_FILE).write_text(json.dumps(plan, indent=2))
        digests = embedding_digests(tmp)
    log.info(
        "FastText continued on %d titles: vocabulary %d -> %d words, %.1fs",
        len(tokens), len(old.itos), len(encoder.itos), seconds,
    )  # fmt: skip
    return {
        "dir": str(out),
        "vocab_size": len(encoder.itos),
        "seconds": round(seconds, 2),
        "base_vocab_size": len(old.itos),
        "continued_on": len(tokens),
        "sha256": digests,
    }


# ------------------------------------------------------------------------------------------
# Weights: a parent's state mapped onto this run's vocabulary and labels
# ------------------------------------------------------------------------------------------
ARCH_FIELDS = (
    "kind", "dim", "hidden", "filter_sizes", "filters", "lstm_hidden", "wide_dim", "wide_bigrams",
    "sentence_dim", "word_rows",
)  # fmt: skip


def arch_differences(bundle_dir: Path, model_cfg) -> list[str]:
    """The architecture fields in which the bundle's model differs from ``model_cfg`` (a field a
    bundle predates reads as ModelConfig's default: "off")."""
    from pipelines.model.modules import ModelConfig

    cfg = {**ModelConfig().to_dict(), **json.loads((bundle_dir / "config.json").read_text())["model"]}
    mine = model_cfg.to_dict()
    return [f for f in ARCH_FIELDS if cfg.get(f) != mine.get(f)]


def _row_keys(enc) -> list[str]:
    return [f"w:{w}" for w in enc.itos] + [f"g:{g}" for g in enc.ngrams or []]


def row_map(old, new) -> tuple[np.ndarray, np.ndarray]:
    """(source rows in ``old``'s table, destination rows in ``new``'s) of every word and n-gram
    both encoders hold (padding and <unk> included)."""
    index = {k: i for i, k in enumerate(_row_keys(new))}
    pairs = np.array([(i, index[k]) for i, k in enumerate(_row_keys(old)) if k in index], dtype=np.int64)
    pairs = pairs.reshape(-1, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def parent_state(fresh: dict, model_cfg, encoder, labels: list[str], bundle_dir: Path) -> dict:
    """``fresh`` (a new model's state: FastText rows, seeded init) with every row the parent bundle
    knows copied from it: embedding and wide rows by word/n-gram, the bigram block when word ids are
    unchanged, class rows of the output layers by label, every other tensor as is."""
    import torch

    from pipelines.features.embedding import TitleEncoder

    cfg = json.loads((bundle_dir / "config.json").read_text())["model"]
    diff = arch_differences(bundle_dir, model_cfg)
    if diff:
        mine = model_cfg.to_dict()
        raise WarmStartError(f"parent {bundle_dir} differs in {diff}: {[(cfg.get(f), mine.get(f)) for f in diff]}")
    old_enc = TitleEncoder.load(bundle_dir / "encoder.json")
    old_labels = json.loads((bundle_dir / "labels.json").read_text())
    state = torch.load(bundle_dir / "weights.pt", map_location="cpu", weights_only=True)
    src, dst = (torch.from_numpy(a) for a in row_map(old_enc, encoder))
    lab = {c: i for i, c in enumerate(labels)}
    lpairs = [(i, lab[c]) for i, c in enumerate(old_labels) if c in lab]
    lsrc, ldst = (
        (torch.tensor(x, dtype=torch.int64) for x in zip(*lpairs))
        if lpairs
        else (torch.zeros(0, dtype=torch.int64),) * 2
    )
    out = {}
    for k, v in fresh.items():
        old = state.get(k)
        if old is None or k == "wide.idf":  # idf: recomputed from this run's training rows
            out[k] = v
        elif k in ("emb.weight", "wide.table.weight"):
            new = v.clone()
            new[dst] = old[src]
            if k == "wide.table.weight" and cfg.get("wide_bigrams"):
                n_old, n_new, b = old_enc.num_embeddings, encoder.num_embeddings, cfg["wide_bigrams"]
                if encoder.itos[: len(old_enc.itos)] == old_enc.itos:  # same word ids: same bigram buckets
                    new[n_new : n_new + b] = old[n_old : n_old + b]
            out[k] = new
        elif k.endswith("out.weight") or k.endswith("out.bias"):
            new = v.clone()
            new[ldst] = old[lsrc]
            out[k] = new
        elif old.shape == v.shape:
            out[k] = old.to(v.dtype)
        else:
            raise WarmStartError(f"parent {bundle_dir}: {k} has shape {tuple(old.shape)}, this model {tuple(v.shape)}")
    return out


def parent_bundle(settings, parent: dict, kind: str, dst: Path) -> Path:
    """The parent model version's bundle for ``kind`` (an ensemble's member), downloaded to ``dst``."""
    import shutil

    import mlflow

    from pipelines.core.tracking import configure

    configure(settings)
    if dst.exists():
        shutil.rmtree(dst)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=parent["model_uri"], dst_path=str(dst)))
    root = next(p for p in (local / "artifacts" / "bundle", local / "bundle") if p.is_dir())
    member = root / "members" / kind
    return member if member.is_dir() else root


def warm_rows(is_new: np.ndarray, replay: int, seed: int) -> tuple[np.ndarray, int, int]:
    """Row indices to train on: every new or changed row (``is_new``: ``parent_new_rows``) plus
    ``replay`` older rows (a seeded sample). Returns (sorted indices, new rows, replayed rows)."""
    is_new = np.asarray(is_new, dtype=bool)
    fresh, older = np.flatnonzero(is_new), np.flatnonzero(~is_new)
    rng = np.random.default_rng(seed)
    sample = rng.choice(older, size=min(replay, len(older)), replace=False) if replay and len(older) else older[:0]
    return np.sort(np.concatenate([fresh, sample])), len(fresh), len(sample)
