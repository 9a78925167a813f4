"""Ids and splits: a listing's content id (hash of its normalised title and category), the
deterministic split of an id, and the seen-id set that drops duplicates; column-wise on Arrow."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SPLITS = (("test", 15), ("validation", 10))  # percent of hash space; the rest is train
_HASH_KEY = "meli-retrain-v1."  # 16 bytes: pandas' siphash key; changing it re-keys every id


def hash64(values: list[str]) -> np.ndarray:
    import pandas as pd

    return pd.util.hash_array(np.asarray(values, dtype=object), hash_key=_HASH_KEY, categorize=False)


def strip_or_none(v: str | None) -> str | None:
    return None if v is None or not v.strip() else v.strip()


def content_ids(titles: list[str], categories: list[str | None]) -> list[str]:
    """Stable id from normalized content (case/space-folded title + trimmed category), whatever
    padding the caller's values carry: ingest and scoring get the same id for the same row."""
    arr = pa.array(titles, pa.string())
    norm = pc.utf8_lower(pc.replace_substring_regex(pc.utf8_trim_whitespace(arr), r"\s+", " "))
    keys = [f"{t}\x1f{strip_or_none(c) or ''}" for t, c in zip(norm.to_pylist(), categories)]
    return [format(int(h), "016x") for h in hash64(keys)]


SPLIT_NAMES = pa.array(["train"] + [name for name, _ in SPLITS], pa.string())


def split_codes(h: np.ndarray) -> np.ndarray:
    """Index into SPLIT_NAMES for each id hash (0 = train)."""
    buckets = h % np.uint64(100)
    out = np.zeros(len(h), dtype=np.int8)
    lo = 0
    for k, (_, pct) in enumerate(SPLITS, start=1):
        out[(buckets >= lo) & (buckets < lo + pct)] = k
        lo += pct
    return out


def assign_split(listing_ids: list[str]) -> list[str]:
    """Deterministic split from the id's hash: a listing keeps its split forever, so test rows
    never leak into training when new data arrives. Uniform, so every category with a few dozen
    rows lands in each split (checked by tests)."""
    names = SPLIT_NAMES.to_pylist()
    return [names[k] for k in split_codes(hash64(listing_ids))]


_HEX = np.array([ord(f"{i:02x}"[0]) | ord(f"{i:02x}"[1]) << 8 for i in range(256)], dtype="<u2")


def _hex16(h: np.ndarray) -> np.ndarray:
    """uint64 -> 16 lowercase hex digits (numpy S16), as format(h, "016x")."""
    return _HEX[h.astype(">u8").view(np.uint8).reshape(-1, 8)].view("S16").ravel()


def _fixed_strings(values: np.ndarray) -> pa.Array:
    """A numpy S<k> array as an Arrow string array, without per-item Python objects."""
    k = values.dtype.itemsize
    offsets = np.arange(0, k * (len(values) + 1), k, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(values).tobytes())]
    )


def _string_offsets(arr: pa.Array) -> np.ndarray:
    return np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]


def string_bytes(arr: pa.Array) -> np.ndarray:
    """The UTF-8 bytes of all values of a string array (no copy)."""
    if len(arr) == 0 or arr.buffers()[2] is None:
        return np.empty(0, dtype=np.uint8)
    offsets = _string_offsets(arr)
    return np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]


def _space_runs(arr: pa.Array, has_ctl_bytes: bool) -> np.ndarray:
    """Rows holding two spaces in a row or one of \\t\\n\\f\\r: the only rows that the \\s+ -> " "
    regex can change (RE2's \\s is [\\t\\n\\f\\r ])."""
    rows = np.zeros(len(arr), dtype=bool)
    b = string_bytes(arr)
    if len(b) == 0:
        return rows
    offs = _string_offsets(arr) - _string_offsets(arr)[0]
    sp = b == 32
    pos = np.flatnonzero(sp[:-1] & sp[1:])
    if len(pos):
        r = np.searchsorted(offs, pos, side="right") - 1
        rows[r[pos + 1 < offs[r + 1]]] = True  # both spaces inside the same value
    if has_ctl_bytes:
        pos = np.flatnonzero((b == 9) | (b == 10) | (b == 12) | (b == 13))
        rows[np.searchsorted(offs, pos, side="right") - 1] = True
    return rows


_SPACE_RUN = re.compile(rb" {2,}")


def _content_hashes(trimmed: pa.Array, categories: pa.Array, has_ctl_bytes: bool) -> np.ndarray:
    """hash64 of content_ids' keys, for titles already trimmed; column-wise, same result.

    The \\s+ -> " " regex only runs on the titles it can change; keys are hashed as UTF-8 bytes
    (pandas hashes a str as its UTF-8 bytes, so the hash is the same and much faster).
    """
    if len(trimmed) == 0:
        return np.empty(0, dtype=np.uint64)
    mask = _space_runs(trimmed, has_ctl_bytes)
    x = trimmed
    if has_ctl_bytes and mask.any():
        m = pa.array(mask)
        x = pc.replace_with_mask(x, m, pc.replace_substring_regex(x.filter(m), r"\s+", " "))
    keys = pc.binary_join_element_wise(pc.utf8_lower(x), pc.fill_null(categories, ""), "\x1f")
    keys = keys.view(pa.binary()).to_pylist()
    if not has_ctl_bytes:  # only runs of spaces to fold: do it on the few keys that have them
        for i in np.flatnonzero(mask).tolist():
            title, sep, cat = keys[i].partition(b"\x1f")  # titles here hold no control bytes
            keys[i] = _SPACE_RUN.sub(b" ", title) + sep + cat
    return hash64(keys)


class Dedup:
    """Seen-id set as sorted uint64 arrays: 8 bytes an id. New ids are merged (in linear time) into
    an open sorted run; a run that reaches RUN ids is frozen, so no step copies the whole set."""

    RUN = 1 << 20

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []  # frozen sorted runs
        self.seen = np.empty(0, dtype=np.uint64)  # the open sorted run

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs) + len(self.seen)

    def mark(self, ids: list[str]) -> np.ndarray:
        """Boolean mask of ids already seen (in earlier chunks or earlier in this one)."""
        return self.mark_hashes(hash64(ids))

    @staticmethod
    def _lookup(run: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(run, keys)  # sorted keys: each search starts near the last one
        if not len(run):
            return np.zeros(len(keys), dtype=bool), pos
        return run[np.minimum(pos, len(run) - 1)] == keys, pos

    def mark_hashes(self, h: np.ndarray) -> np.ndarray:
        """mark() for ids already hashed with hash64."""
        if not len(h):
            return np.zeros(0, dtype=bool)
        uniq, first, inverse = np.unique(h, return_index=True, return_inverse=True)
        dup = np.ones(len(h), dtype=bool)
        dup[first] = False  # later copies within the chunk
        known, pos = self._lookup(self.seen, uniq)
        for run in self.runs:
            known |= self._lookup(run, uniq)[0]
        dup |= known[inverse.ravel()]
        self.seen = np.insert(self.seen, pos[~known], uniq[~known])
        if len(self.seen) >= self.RUN:
            self.runs.append(self.seen)
            self.seen = np.empty(0, dtype=np.uint64)
        return dup


def listing_ids(
    given: pa.Array, has_given: np.ndarray, trimmed: pa.Array, cats: pa.Array, ok_idx: np.ndarray, has_ctl_bytes: bool
) -> tuple[pa.Array, np.ndarray]:
    """The listing ids of rows ``ok_idx`` (the given id where there is one, else the content id of
    the trimmed title and category) and their hash64 (for dedupe and the split)."""
    if len(ok_idx) == len(trimmed) and not has_given.any():
        hexes = _hex16(_content_hashes(trimmed, cats, has_ctl_bytes))
        ids_arr = _fixed_strings(hexes)
        id_objs = hexes.astype(object)  # bytes hash like the equal str
    else:
        need = ~has_given[ok_idx]
        need_take = pa.array(ok_idx[need], pa.int64())
        hexes = _hex16(_content_hashes(trimmed.take(need_take), cats.take(need_take), has_ctl_bytes))
        id_objs = np.empty(len(ok_idx), dtype=object)
        id_objs[need] = [x.decode() for x in hexes]
        id_objs[~need] = given.take(pa.array(ok_idx[~need], pa.int64())).to_pylist()
        ids_arr = pa.array(id_objs.tolist(), pa.string())
    return ids_arr, (hash64(id_objs) if len(id_objs) else np.empty(0, dtype=np.uint64))
