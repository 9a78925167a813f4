"""Batches: the arrays a title set is held in, and how a batch is cut, padded and placed on a
device. Training (pipelines/training/loop.py) and serving (pipelines/model/bundle.py) both import it.

A split is ``EncodedSplit`` (keys of every title back to back, offsets, labels; see
pipelines/features/encoded.py for how it is made and stored). A batch is an index array: ``EncodedSplit.batch``
pads its keys in numpy, ``gather_keys_t`` is its torch twin for arrays on the GPU, ``pad_keys`` pads
the keys serving gives titles it encodes on the fly, ``collate`` pads id-encoded titles.
``length_bucketed_batches`` is the training order (shuffled, length-sorted in pools).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass
class EncodedSplit:
    keys: np.ndarray  # int32 [total tokens]
    offsets: np.ndarray  # int64 [n + 1]
    labels: np.ndarray  # int32 [n]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keys [B, T] (0 = padding, T >= 1) and lengths [B] of the titles ``idx``."""
        return gather_keys(self.keys, self.offsets, idx)

    def take(self, idx: np.ndarray) -> EncodedSplit:
        """The titles ``idx`` as a new (in-memory) split."""
        keys, lengths = self.batch(idx)
        mask = np.arange(keys.shape[1])[None, :] < lengths[:, None]
        return EncodedSplit(keys[mask].astype(np.int32), row_offsets(lengths), self.labels[idx])

    @staticmethod
    def concat(parts: list[EncodedSplit]) -> EncodedSplit:
        lengths = np.concatenate([p.lengths for p in parts])
        return EncodedSplit(
            np.concatenate([p.keys for p in parts]), row_offsets(lengths), np.concatenate([p.labels for p in parts])
        )


def row_offsets(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def gather_keys(keys: np.ndarray, offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    start = offsets[idx]
    lengths = offsets[np.asarray(idx) + 1] - start
    T = max(1, int(lengths.max(initial=0)))
    pos = start[:, None] + np.arange(T)[None, :]
    mask = np.arange(T)[None, :] < lengths[:, None]
    out = np.where(mask, keys[np.minimum(pos, max(len(keys) - 1, 0))] if len(keys) else 0, 0)
    return out.astype(np.int64, copy=False), lengths


def gather_keys_t(keys, offsets, idx, lens, T: int):
    """Torch twin of ``EncodedSplit.batch`` for arrays on the device: keys [B, T]."""
    import torch

    ar = torch.arange(T, device=keys.device)
    pos = (offsets[idx].unsqueeze(1) + ar).clamp(max=max(keys.numel() - 1, 0))
    return torch.where(ar < lens.unsqueeze(1), keys[pos], torch.zeros((), dtype=keys.dtype, device=keys.device))


def pad_keys(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token keys of a batch of titles -> keys [B, T] (0 = padding) and lengths [B], vectorized."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    T = max(1, int(lengths.max(initial=0)))
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    keys = np.zeros((len(rows), T), dtype=np.int64)
    keys[np.arange(T)[None, :] < lengths[:, None]] = flat  # row-major: each title's tokens in order
    return keys, lengths


def collate(encoded: list[list[np.ndarray]], width: int):
    """Pad a batch of encoded titles to ids [B, T, K] and lengths [B] (T >= 1)."""
    import torch

    B = len(encoded)
    T = max(1, max((len(e) for e in encoded), default=1))
    ids = np.zeros((B, T, width), dtype=np.int64)
    lengths = np.zeros(B, dtype=np.int64)
    for b, toks in enumerate(encoded):
        lengths[b] = len(toks)
        for t, tok in enumerate(toks):
            ids[b, t, : len(tok)] = tok[:width]
    return torch.from_numpy(ids), torch.from_numpy(lengths)


def length_bucketed_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, sampler_weights: np.ndarray | None = None
) -> list[np.ndarray]:
    """Shuffle, sort within pools of 50 batches by length, cut into batches, shuffle batches."""
    n = len(lengths)
    if sampler_weights is not None:
        order = rng.choice(n, size=n, replace=True, p=sampler_weights / sampler_weights.sum())
    else:
        order = rng.permutation(n)
    pool = batch_size * 50
    batches = []
    for s in range(0, n, pool):
        chunk = order[s : s + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches
