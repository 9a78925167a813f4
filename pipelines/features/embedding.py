"""Features: the gensim FastText embedding and the title encoder shared by training and scoring.

A title becomes a list of tokens; each token becomes ``[word id, char n-gram ids...]``. The n-gram
ids index an exact n-gram vocabulary: every char n-gram of the training split's words (offset after
the word vocabulary). Each n-gram row is initialised from the gensim n-gram vector of its hash
bucket, then fine-tuned on its own: unlike gensim's 100k buckets, which ~140k distinct n-grams of
the real titles share (three in four collide), no two n-grams share a classifier row. An unseen word
still gets a vector from its known subwords, as FastText composes it; n-grams never seen in training
(no trained row) are left out. Encoders saved without an n-gram vocabulary use gensim's buckets.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipelines.config import TrainConfig
from pipelines.features.text import TextConfig, tokenize

log = logging.getLogger(__name__)

PAD, UNK = 0, 1
SPECIALS = ["<pad>", "<unk>"]


@dataclass(frozen=True)
class EmbeddingConfig:
    dim: int = 100
    epochs: int = 10
    window: int = 5
    min_count: int = 1
    min_n: int = 3
    max_n: int = 5
    bucket: int = 100_000  # gensim's 2M default makes an 800 MB model
    max_subwords: int = 24  # n-gram ids kept per token (plus the word id); 12 lost ~1 pt macro-recall
    workers: int = 2


def _ngram_hashes(word: str, cfg: EmbeddingConfig) -> list[int]:
    from gensim.models.fasttext import ft_ngram_hashes

    return list(ft_ngram_hashes(word, cfg.min_n, cfg.max_n, cfg.bucket))


def char_ngrams(word: str, cfg: EmbeddingConfig) -> list[str]:
    """FastText's char n-grams of ``<word>``, longest first (the most specific ones)."""
    s = f"<{word}>"
    return [s[i : i + n] for n in range(cfg.max_n, cfg.min_n - 1, -1) for i in range(len(s) - n + 1)]


def build_ngram_vocab(words: Sequence[str], cfg: EmbeddingConfig) -> list[str]:
    """Every char n-gram of the given (training) words, sorted for a stable file."""
    return sorted({g for w in words for g in char_ngrams(w, cfg)})


class TitleEncoder:
    """Tokenizer + word vocabulary + char n-gram vocabulary. Serializable to a JSON file."""

    def __init__(
        self, vocab: Sequence[str], text: TextConfig, emb: EmbeddingConfig, ngrams: Sequence[str] | None = None
    ):
        self.itos = list(vocab)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.text = text
        self.emb = emb
        self.ngrams = list(ngrams) if ngrams is not None else None
        self._gtoi = {g: len(self.itos) + i for i, g in enumerate(self.ngrams or [])}
        self._cache: dict[str, np.ndarray] = {}

    @property
    def num_embeddings(self) -> int:
        return len(self.itos) + (len(self.ngrams) if self.ngrams is not None else self.emb.bucket)

    def subword_ids(self, word: str) -> list[int]:
        if self.ngrams is None:  # legacy encoders: gensim's hash buckets
            return [len(self.itos) + h for h in _ngram_hashes(word, self.emb)][::-1]
        return [i for i in map(self._gtoi.get, char_ngrams(word, self.emb)) if i is not None]

    @property
    def width(self) -> int:
        return 1 + self.emb.max_subwords

    def token_ids(self, word: str, cache: bool = True) -> np.ndarray:
        """[word id, n-gram ids...]; an OOV word gets only its n-grams ([<unk>] when it has none)."""
        ids = self._cache.get(word) if cache else None
        if ids is None:
            wid = self.stoi.get(word, UNK)
            grams = self.subword_ids(word)[: self.emb.max_subwords]
            ids = np.array(([wid] if wid != UNK or not grams else []) + grams, dtype=np.int64)
            if cache and len(self._cache) < 500_000:
                self._cache[word] = ids
        return ids

    def encode(self, title: str | None) -> list[np.ndarray]:
        return [self.token_ids(t) for t in tokenize(title or "", self.text)]

    def encode_many(self, titles: Sequence[str | None]) -> list[list[np.ndarray]]:
        return [self.encode(t) for t in titles]

    def save(self, path: Path) -> None:
        from pipelines.core.fs import atomic_write_bytes

        d = {"vocab": self.itos, "text": self.text.to_dict(), "embedding": asdict(self.emb), "ngrams": self.ngrams}
        atomic_write_bytes(path, json.dumps(d).encode())

    @classmethod
    def load(cls, path: Path) -> TitleEncoder:
        d = json.loads(Path(path).read_text())
        return cls(d["vocab"], TextConfig.from_dict(d["text"]), EmbeddingConfig(**d["embedding"]), d.get("ngrams"))


def build_vocab(token_lists: Sequence[Sequence[str]], min_count: int = 1) -> list[str]:
    counts = Counter(t for toks in token_lists for t in toks)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return SPECIALS + words


def train_fasttext(token_lists: Sequence[Sequence[str]], cfg: EmbeddingConfig, seed: int):
    """Train gensim FastText on the training split's tokens (deterministic with workers=1)."""
    from gensim.models import FastText

    sentences = [list(t) for t in token_lists if t]
    if not sentences:
        raise ValueError("no tokens to train the FastText embedding on")
    model = FastText(
        vector_size=cfg.dim,
        window=cfg.window,
        min_count=cfg.min_count,
        min_n=cfg.min_n,
        max_n=cfg.max_n,
        bucket=cfg.bucket,
        seed=seed,
        workers=cfg.workers,
        sg=1,
    )
    model.build_vocab(corpus_iterable=sentences)
    model.train(corpus_iterable=sentences, total_examples=len(sentences), epochs=cfg.epochs)
    return model


def embedding_matrix(encoder: TitleEncoder, ft_model) -> np.ndarray:
    """Rows: specials (zeros), vocabulary word vectors, then one row per n-gram of the encoder's
    n-gram vocabulary (its gensim bucket's vector) or, for legacy encoders, gensim's buckets."""
    dim = encoder.emb.dim
    words = np.zeros((len(encoder.itos), dim), dtype=np.float32)
    wv = ft_model.wv
    for i, w in enumerate(encoder.itos[len(SPECIALS) :], start=len(SPECIALS)):
        if w in wv.key_to_index:
            words[i] = wv.vectors_vocab[wv.key_to_index[w]]
        else:
            words[i] = wv[w]
    ngrams = np.asarray(wv.vectors_ngrams, dtype=np.float32)
    if ngrams.shape != (encoder.emb.bucket, dim):
        raise ValueError(f"gensim n-gram table {ngrams.shape} does not match bucket={encoder.emb.bucket}")
    if encoder.ngrams is not None:
        from gensim.models.fasttext_inner import ft_hash_bytes

        buckets = np.fromiter(
            (ft_hash_bytes(g.encode("utf-8")) % encoder.emb.bucket for g in encoder.ngrams),
            dtype=np.int64,
            count=len(encoder.ngrams),
        )
        ngrams = ngrams[buckets]
    return np.concatenate([words, ngrams], axis=0)


def compose_word_rows(encoder: TitleEncoder, matrix: np.ndarray) -> np.ndarray:
    """``matrix`` (``embedding_matrix``'s rows) with each vocabulary word's row replaced by its composed
    vector: the mean of the rows of its token ids (the word and its n-grams), which is the vector a
    token has today and FastText's ``wv[word]``. The word-rows models train these rows alone."""
    out = matrix.copy()
    width = encoder.width
    for s in range(len(SPECIALS), len(encoder.itos), 65536):
        words = encoder.itos[s : s + 65536]
        ids = np.zeros((len(words), width), dtype=np.int64)
        for i, w in enumerate(words):
            t = encoder.token_ids(w, cache=False)[:width]
            ids[i, : len(t)] = t
        mask = (ids != 0).astype(np.float32)
        out[s : s + len(words)] = (matrix[ids] * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
    return out


# ------------------------------------------------------------------------------------------
# The features stage: frozen dataset splits for a run date, and the FastText embedding
# ------------------------------------------------------------------------------------------
DATASET_COLUMNS = ["listing_id", "title", "language", "category", "split", "ingest_date"]


def prepare_dataset(settings, run_date: str) -> dict:
    """Write the run's train/validation/test Parquet files from the lake as of ``run_date``.

    The split comes from the lake (hash of listing_id), so the test rows of earlier data never
    move into training. Only partition versions that passed validation are read: the run date's own
    partition must have passed (else NotEligible, one line); an earlier one that failed or was not
    validated is left out and listed under ``excluded`` in ``dataset.json``. Returns a small dict
    (paths, counts, lineage) for XCom.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipelines.core.fs import atomic_file, atomic_write_json
    from pipelines.data.lake import (
        FAILED,
        NotEligible,
        data_version,
        eligible_snapshot,
        load_listings,
        partitions_lineage,
    )

    # one snapshot of the lake (the committed version of every partition that passed validation),
    # read and recorded as one
    snap, excluded = eligible_snapshot(settings.listings_dir, upto=run_date)
    own = next((e for e in excluded if e["ingest_date"] == run_date), None)
    if own is not None:
        cmd = f"meli validate --run-date {run_date}"
        how = (
            f"fix the batch and re-ingest it (or re-validate: {cmd})"
            if own["validation"] == FAILED
            else f"validate it first ({cmd}; train and retrain do it themselves)"
        )
        raise NotEligible(
            f"lake partition ingest_date={run_date} (version {own['version']}) {own['reason']}: "
            f"it is not trained on; {how}"
        )
    if run_date not in snap:
        raise FileNotFoundError(
            f"lake partition ingest_date={run_date} is not committed under {settings.listings_dir}: "
            "ingest it first (training without it would silently leave its rows out)"
        )
    for e in excluded:
        log.warning(
            "lake partition ingest_date=%s (version %s) %s: left out of the dataset of %s",
            e["ingest_date"],
            e["version"],
            e["reason"],
            run_date,
        )
    table = load_listings(settings.listings_dir, upto=run_date, columns=DATASET_COLUMNS, snap=snap)
    table = table.filter(pc.is_valid(table.column("category")))
    out_dir = settings.run_dir(run_date) / "dataset"
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "validation", "test"):
        part = table.filter(pc.equal(table.column("split"), split))
        with atomic_file(out_dir / f"{split}.parquet") as tmp:
            pq.write_table(part, tmp)
        counts[split] = part.num_rows
    if counts["train"] == 0 or counts["test"] == 0:
        raise ValueError(f"not enough labelled rows to train and test: {counts}")
    labels = sorted(set(pc.unique(table.column("category")).to_pylist()))
    info = {
        "run_date": run_date,
        "dir": str(out_dir),
        "counts": counts,
        "num_categories": len(labels),
        "lineage": partitions_lineage(settings.listings_dir, run_date, snap=snap),
        "lake_versions": snap,
        "data_version": data_version(snap),
        "excluded": excluded,  # partitions up to the run date not trained on, and why
    }
    atomic_write_json(out_dir / "dataset.json", info)
    log.info("dataset for %s: %s, %d categories", run_date, counts, len(labels))
    return {k: info[k] for k in ("run_date", "dir", "counts", "num_categories", "data_version", "excluded")}


def read_split(dataset_dir: str | Path, split: str, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    return pq.read_table(Path(dataset_dir) / f"{split}.parquet", columns=columns).to_pandas()


def train_embedding(dataset_dir: str | Path, cfg: EmbeddingConfig, text: TextConfig, seed: int) -> dict:
    """Train FastText on the training split; save the gensim model and the encoder beside it."""
    import time

    dataset_dir = Path(dataset_dir)
    train = read_split(dataset_dir, "train")
    tokens = [tokenize(t, text) for t in train["title"]]
    t0 = time.perf_counter()
    model = train_fasttext(tokens, cfg, seed)
    seconds = time.perf_counter() - t0
    from pipelines.core.fs import atomic_tree

    out = dataset_dir.parent / "embedding"
    vocab = build_vocab(tokens, 1)
    encoder = TitleEncoder(vocab, text, cfg, build_ngram_vocab(vocab[len(SPECIALS) :], cfg))
    with atomic_tree(out) as tmp:  # gensim writes several files: all of them or none
        model.save(str(tmp / "fasttext.model"))
        encoder.save(tmp / "encoder.json")
        digests = embedding_digests(tmp)
    log.info("FastText: %d words, dim %d, %.1fs", len(model.wv), cfg.dim, seconds)
    return {
        "dir": str(out),
        "vocab_size": len(encoder.itos),
        "seconds": round(seconds, 2),
        "sha256": digests,
        "epochs": cfg.epochs,
    }


# ------------------------------------------------------------------------------------------
# The saved FastText is a pickle (gensim): it is loaded back only when its bytes are the ones
# recorded in MLflow when it was trained (tag EMBEDDING_SHA_TAG on the retraining run)
# ------------------------------------------------------------------------------------------
EMBEDDING_SHA_TAG = "meli.embedding_sha256"
_FT_FILE = re.compile(r"^fasttext\.model(\.[A-Za-z0-9_]+)*$")  # the model and gensim's .npy side files
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class EmbeddingIntegrityError(ValueError):
    """A saved FastText whose files are not the ones recorded at training time (one line)."""


def _sha256_file(path: Path, copy_to: Path | None = None) -> str:
    import hashlib
    from contextlib import ExitStack

    h = hashlib.sha256()
    with ExitStack() as stack:
        src = stack.enter_context(open(path, "rb"))
        out = stack.enter_context(open(copy_to, "xb")) if copy_to else None
        while block := src.read(1 << 20):
            h.update(block)
            if out:
                out.write(block)
    return h.hexdigest()


def embedding_digests(emb_dir: str | Path) -> dict[str, str]:
    """sha256 of every file of a saved FastText (``fasttext.model`` and gensim's ``.npy`` side files)."""
    files = sorted(p for p in Path(emb_dir).iterdir() if _FT_FILE.match(p.name) and p.is_file())
    return {p.name: _sha256_file(p) for p in files}


def parse_embedding_record(value) -> dict[str, str]:
    """The recorded digests (a tag's JSON text or a dict), checked; EmbeddingIntegrityError if unusable."""
    if not value:
        raise EmbeddingIntegrityError("no sha256 of its files was recorded when it was trained")
    try:
        record = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        record = None
    if (
        not isinstance(record, dict)
        or "fasttext.model" not in record
        or not all(isinstance(k, str) and _FT_FILE.match(k) for k in record)
        or not all(isinstance(v, str) and _SHA256.match(v) for v in record.values())
    ):
        raise EmbeddingIntegrityError("the sha256 record of its files is malformed")
    return record


def verify_embedding(emb_dir: str | Path, record, copy_to: Path | None = None) -> dict[str, str]:
    """Check every recorded file of the FastText in ``emb_dir`` against ``record`` (``copy_to``: copy
    the bytes read there, so what is loaded is what was checked). EmbeddingIntegrityError if not."""
    record = parse_embedding_record(record)
    for name, want in sorted(record.items()):
        path = Path(emb_dir) / name
        try:
            got = _sha256_file(path, copy_to / name if copy_to else None)
        except FileNotFoundError:
            raise EmbeddingIntegrityError(f"{path} is missing") from None
        if got != want:
            raise EmbeddingIntegrityError(f"{path} does not match the sha256 recorded when it was trained")
    return record


def load_fasttext(emb_dir: str | Path, record):
    """The FastText saved in ``emb_dir``, unpickled only from a private copy of files whose sha256
    match ``record`` (EmbeddingIntegrityError before any unpickling otherwise)."""
    import tempfile

    from gensim.models import FastText

    with tempfile.TemporaryDirectory(prefix="meli-fasttext-") as tmp:
        verify_embedding(emb_dir, record, copy_to=Path(tmp))
        return FastText.load(str(Path(tmp) / "fasttext.model"))  # mmap=None: every array read in now


def embedding_epochs(cfg: TrainConfig, rows: int | None) -> int:
    """FastText's epochs for ``rows`` training titles: ``cfg.embedding_epochs``, fewer as the titles grow
    (``cfg.embedding_budget`` titles read in all, at least 3 epochs); None rows: ``cfg.embedding_epochs``."""
    if not rows:
        return cfg.embedding_epochs
    return min(cfg.embedding_epochs, max(3, -(-cfg.embedding_budget // rows)))


def embedding_config(cfg: TrainConfig, rows: int | None = None) -> EmbeddingConfig:
    """FastText settings of a run (epochs by ``rows``, the training titles: ``embedding_epochs``);
    gensim's worker threads: every core (the embedding task runs alone)."""
    from pipelines.core.system import usable_cores

    workers = usable_cores()
    epochs = embedding_epochs(cfg, rows)
    return EmbeddingConfig(dim=cfg.embedding_dim, epochs=epochs, bucket=cfg.bucket, workers=workers)
