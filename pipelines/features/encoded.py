"""Encoded splits: every title of a run's dataset as compact int32 arrays, encoded once right after
the embedding and memory-mapped by each training task, the ensemble search and evaluation.

A title is a run of *token keys*; a key is a row of one ``tokens`` table that holds each distinct
token's ids (word id + char n-gram ids, what ``TitleEncoder.token_ids`` gives, padded with 0 to the
encoder's width). Distinct tokens are encoded once: the table is small next to the rows.

``work/<run date>/encoded/``::

    tokens.npy            int32 [V, K]   row 0 = padding (all zeros)
    <split>.keys.npy      int32 [tokens] every title's keys, titles back to back
    <split>.offsets.npy   int64 [n + 1]  title i is keys[offsets[i]:offsets[i + 1]]
    <split>.labels.npy    int32 [n]      index into labels.json; -1: a class the train split lacks
    words.json            [V]            the token of each key ("" for row 0)
    sentence.npy          float16 [V, S] each token's pretrained word vector (pipelines/features/sentence.py;
                                         only with a sentence encoder, row 0 = zeros)
    labels.json, meta.json

A batch is an index array: ``EncodedSplit.batch(idx)`` pads its keys in numpy (no per-title Python)
and ``tokens[keys]`` gives the ids the model reads.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.core.system import usable_cores
from pipelines.features.batches import EncodedSplit, row_offsets

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
CHUNK = 200_000  # titles tokenized per chunk (bounds the Python lists alive at once)


@dataclass
class EncodedDataset:
    dir: Path
    tokens: np.ndarray  # int32 [V, K]
    labels: list[str]
    meta: dict
    sentence: np.ndarray | None = None  # float16 [V, S]: each token's pretrained vector (or None)

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> EncodedDataset:
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        mode = "r" if mmap else None
        tokens = np.load(path / "tokens.npy", mmap_mode=mode)
        sentence = np.load(path / "sentence.npy", mmap_mode=mode) if (path / "sentence.npy").exists() else None
        return cls(path, tokens, json.loads((path / "labels.json").read_text()), meta, sentence)

    @property
    def sentence_encoder(self) -> str:
        return self.meta.get("sentence_encoder", "none")

    def words(self) -> list[str]:
        return json.loads((self.dir / "words.json").read_text())

    def split(self, name: str, mmap: bool = True) -> EncodedSplit:
        mode = "r" if mmap else None
        return EncodedSplit(
            *(np.load(self.dir / f"{name}.{part}.npy", mmap_mode=mode) for part in ("keys", "offsets", "labels"))
        )


class _KeyTable:
    """Token string -> key, each distinct token encoded once (row 0 = padding)."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.key: dict[str, int] = {}
        self.rows: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]

    def keys_of(self, tokens: list[str]) -> list[int]:
        key, rows = self.key, self.rows
        out = []
        for tok in tokens:
            k = key.get(tok)
            if k is None:
                k = key[tok] = len(rows)
                rows.append(self.encoder.token_ids(tok, cache=False))
            out.append(k)
        return out

    def table(self) -> np.ndarray:
        width = self.encoder.width
        out = np.zeros((len(self.rows), width), dtype=np.int32)
        for i, ids in enumerate(self.rows):
            out[i, : len(ids)] = ids[:width]
        return out

    def words(self) -> list[str]:
        """The token of every key, in key order ("" for row 0, the padding)."""
        return ["", *self.key]


def _tokenize_chunk(args) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A worker's share: titles -> (its distinct tokens, its 1-based local keys, lengths)."""
    from pipelines.features.text import tokenize

    titles, text = args
    local: dict[str, int] = {}
    keys: list[int] = []
    lengths = np.zeros(len(titles), dtype=np.int64)
    for i, title in enumerate(titles):
        toks = tokenize(title, text) if title else []
        lengths[i] = len(toks)
        for tok in toks:
            k = local.get(tok)
            if k is None:
                k = local[tok] = len(local) + 1
            keys.append(k)
    return list(local), np.asarray(keys, dtype=np.int32), lengths


def _chunks_in_parallel(chunks: list, workers: int):
    """Tokenize chunks in ``workers`` processes (in order); in-process when that is not possible
    (one worker, one chunk, or a daemonic process such as a Celery prefork child)."""
    import multiprocessing as mp

    pool = None
    if workers > 1 and len(chunks) > 1 and not mp.current_process().daemon:
        try:
            pool = mp.get_context("fork").Pool(min(workers, len(chunks)))
        except (OSError, ValueError, AssertionError) as exc:  # no worker processes here: one process
            log.warning("encoding in one process (%s)", exc)
    if pool is None:
        yield from map(_tokenize_chunk, chunks)
        return
    with pool:
        yield from pool.imap(_tokenize_chunk, chunks)


def encode_titles(encoder, titles, table: _KeyTable | None = None, workers: int = 1) -> tuple[EncodedSplit, _KeyTable]:
    """Titles -> an EncodedSplit (labels -1) over ``table`` (a new one if None). Tokenizing runs
    in ``workers`` processes, chunk by chunk; each chunk's distinct tokens are then mapped to the
    table's keys (new tokens encoded once), so keys come out as a single process would give them."""
    table = table or _KeyTable(encoder)
    titles = list(titles)
    chunks = [(titles[s : s + CHUNK], encoder.text) for s in range(0, len(titles), CHUNK)]
    key_parts, lengths = [], []
    for distinct, local, ln in _chunks_in_parallel(chunks, workers):
        to_global = np.zeros(len(distinct) + 1, dtype=np.int32)
        to_global[1:] = table.keys_of(distinct)
        key_parts.append(to_global[local])
        lengths.append(ln)
    ln = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    keys = np.concatenate(key_parts) if key_parts else np.zeros(0, dtype=np.int32)
    return EncodedSplit(keys, row_offsets(ln), np.full(len(ln), -1, dtype=np.int32)), table


def encode_dataset(
    dataset_dir: str | Path, embedding_dir: str | Path, sentence: str = "none", cache_root: Path | None = None
) -> dict:
    """Encode the train/validation/test splits of a run once (``<run dir>/encoded/``). With a
    ``sentence`` encoder (pipelines/features/sentence.py) each distinct token also gets its pretrained
    vector, from the cross-run cache under ``cache_root`` (encoded there when new)."""
    import pyarrow.parquet as pq

    from pipelines.core.fs import atomic_tree, sha256_file
    from pipelines.features.embedding import TitleEncoder

    dataset_dir, embedding_dir = Path(dataset_dir), Path(embedding_dir)
    t0 = time.perf_counter()
    encoder = TitleEncoder.load(embedding_dir / "encoder.json")
    table = _KeyTable(encoder)
    cats = {s: pq.read_table(dataset_dir / f"{s}.parquet", columns=["category"]).column(0) for s in SPLITS}
    labels = sorted(set(cats["train"].unique().to_pylist()))
    index = {c: i for i, c in enumerate(labels)}
    out = dataset_dir.parent / "encoded"
    counts = {}
    with atomic_tree(out) as tmp:
        for split in SPLITS:
            titles = pq.read_table(dataset_dir / f"{split}.parquet", columns=["title"]).column(0).to_pylist()
            enc, table = encode_titles(encoder, titles, table, workers=usable_cores())
            del titles
            y = np.fromiter((index.get(c, -1) for c in cats[split].to_pylist()), dtype=np.int32, count=len(enc))
            _save(tmp / f"{split}.keys.npy", enc.keys)
            _save(tmp / f"{split}.offsets.npy", enc.offsets)
            _save(tmp / f"{split}.labels.npy", y)
            counts[split] = {"rows": len(enc), "tokens": int(len(enc.keys))}
        _save(tmp / "tokens.npy", table.table())
        words = table.words()
        (tmp / "words.json").write_text(json.dumps(words))
        sentence_s = 0.0
        if sentence != "none":
            t1 = time.perf_counter()
            _save(tmp / "sentence.npy", sentence_vectors(sentence, words, cache_root))
            sentence_s = round(time.perf_counter() - t1, 2)
        (tmp / "labels.json").write_text(json.dumps(labels))
        meta = {
            "width": encoder.width,
            "distinct_tokens": len(table.rows) - 1,
            "counts": counts,
            "encoder_sha256": sha256_file(embedding_dir / "encoder.json"),
            "sentence_encoder": sentence,
            "sentence_seconds": sentence_s,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    log.info("encoded %s: %d distinct tokens, %.1fs", counts, meta["distinct_tokens"], meta["seconds"])
    return {
        "dir": str(out),
        "distinct_tokens": meta["distinct_tokens"],
        "seconds": meta["seconds"],
        "sentence_encoder": sentence,
        "sentence_s": sentence_s,
    }


def _save(path: Path, array: np.ndarray) -> None:
    """np.save, a full disk named: ``no space left on device writing <run>/encoded/<file>``."""
    from pipelines.core.fs import writing

    final = path.parent.parent / "encoded" / path.name  # the name it gets (path is in atomic_tree's temp dir)
    with writing(final):
        np.save(path, array)


def sentence_vectors(name: str, words: list[str], cache_root: Path | None) -> np.ndarray:
    """float16 [len(words), S]: the pretrained vector of each word (row 0, the padding, zeros)."""
    from pipelines.features.sentence import WordEncoder, WordVectorCache

    encoder = WordEncoder(name, threads=usable_cores())
    if cache_root is None:
        vectors = encoder.encode_words(words[1:])
    else:
        vectors = WordVectorCache(cache_root, encoder).lookup(words[1:])
    return np.concatenate([np.zeros((1, encoder.dim), dtype=np.float16), vectors])


def load_encoded(
    dataset_dir: str | Path, embedding_dir: str | Path, sentence: str = "none", cache_root: Path | None = None
) -> EncodedDataset:
    """The run's encoded splits; encoded now if missing or made with another encoder (or another
    sentence encoder)."""
    from pipelines.core.fs import sha256_file

    out = Path(dataset_dir).parent / "encoded"
    sha = sha256_file(Path(embedding_dir) / "encoder.json")
    try:
        enc = EncodedDataset.load(out)
        if enc.meta.get("encoder_sha256") == sha and enc.sentence_encoder == sentence:
            return enc
        log.warning("%s was encoded with another encoder: encoding again", out)
    except FileNotFoundError:
        log.info("%s missing: encoding the splits now", out)
    encode_dataset(dataset_dir, embedding_dir, sentence, cache_root)
    return EncodedDataset.load(out)
