"""Row rules: every quarantine reason in one table, and the column-wise checks of a chunk (the first
failing check names a row's reason), which also give each good row its id and split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.data.ingest.ids import (
    SPLIT_NAMES,
    Dedup,
    listing_ids,
    split_codes,
    string_bytes,
    strip_or_none,
)
from pipelines.data.ingest.sources import FIELDS, RAW_BYTES, Chunk
from pipelines.data.lake import LISTING_SCHEMA, QUARANTINE_SCHEMA

MAX_TITLE_CHARS = 1000  # hard ingest limit; GX applies the (softer) configured bounds
LANGUAGES = {
    "spanish": "spanish",
    "es": "spanish",
    "es-ar": "spanish",
    "es_ar": "spanish",
    "espanol": "spanish",
    "español": "spanish",
    "portuguese": "portuguese",
    "pt": "portuguese",
    "pt-br": "portuguese",
    "pt_br": "portuguese",
    "portugues": "portuguese",
    "português": "portuguese",
}


# Every quarantine reason, in one table: reason -> (where it is decided, what it means). A row check's
# text is the detail its quarantined rows carry; the checks run in this order (the first failing one
# names the row's reason). The readers' details say what exactly was wrong (the parser's message).
REASONS: dict[str, tuple[str, str]] = {
    "bad_json": ("jsonl reader", "the line is not valid JSON"),
    "not_an_object": ("jsonl reader", "the line is a JSON value that is not an object"),
    "bad_encoding": ("jsonl, csv readers", "invalid UTF-8 bytes, or a lone UTF-16 surrogate escape"),
    "bad_csv_row": ("csv reader", "not one CSV record on one line, or a field count the header does not have"),
    "bad_field_type": ("jsonl reader", "a field holds a JSON object, array or boolean, not a string"),
    "blank_line": ("jsonl, csv readers", "an empty line or row"),
    "missing_title": ("row check", "no title field"),
    "empty_title": ("row check", "title is empty or whitespace"),
    "title_too_long": ("row check", f"title longer than {MAX_TITLE_CHARS} characters"),
    "bad_characters": ("row check", "NUL or control characters in title"),
    "unknown_language": ("row check", "language not es/pt"),
    "missing_category": ("row check", "labelled input without a category"),
    "duplicate": ("row check", "listing_id already ingested in this run"),
    "truncated_input": ("sources (any reader)", "the input ends early (a truncated gzip): its partial last record"),
    "line_too_long": (
        "jsonl, csv readers",
        "a line longer than MELI_MAX_LINE_BYTES (1 MiB): skipped to its end unparsed; raw keeps its start",
    ),
    "record_too_long": (
        "csv reader",
        "a CSV record whose quoted field stays open past MELI_MAX_RECORD_LINES lines (100) or MELI_MAX_LINE_BYTES "
        "characters (a stray quote): each of its lines so far; reading starts afresh at the next line",
    ),
}
QUARANTINE_REASONS = tuple(REASONS)
_CHECKS = (None, *((r, text) for r, (where, text) in REASONS.items() if where == "row check"))  # code -> reason
_CODE = {c[0]: k for k, c in enumerate(_CHECKS) if c}
_CTRL_RE = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"


def _np_mask(arr) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _map_unique(arr: pa.Array, fn) -> tuple[pa.Array, np.ndarray, list]:
    """fn applied once per distinct value: (mapped array, per-row dictionary index, mapped dict)."""
    enc = pc.dictionary_encode(arr)
    mapped = [fn(v) for v in enc.dictionary.to_pylist()]
    idx = pc.fill_null(enc.indices, len(mapped)).to_numpy(zero_copy_only=False)
    out = pa.array(mapped + [None], pa.string()).take(pa.array(idx))
    return out, idx, mapped


def _lower_or_none(v: str | None) -> str | None:
    return None if v is None or not v.strip() else v.strip().lower()


def _language(v: str | None) -> str | None:
    return None if v is None or not v.strip() else LANGUAGES.get(v.strip().lower(), "?" + v)


def _to_arrow(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values if values.type == pa.string() else values.cast(pa.string())
    return pa.array(values, pa.string())


@dataclass
class _Checked:
    good: pa.Table
    bad: list[tuple]  # row, reason, detail, raw[, raw_bytes]


def check_chunk(chunk: Chunk, *, require_label: bool, dedup: Dedup | None, source: str, run_date: str) -> _Checked:
    """Row checks, ids, dedupe and split for one chunk: (good rows as a LISTING_SCHEMA table,
    quarantined rows as (row, reason, detail, raw)). The first failing check names the reason."""
    n = len(chunk.rows)
    c = {f: _to_arrow(chunk.columns[f]) for f in FIELDS}
    code = np.zeros(n, dtype=np.int8)

    def flag(mask: np.ndarray, reason: str) -> None:
        code[(code == 0) & mask] = _CODE[reason]

    titles = c["title"]
    flag(_np_mask(titles.is_null()), "missing_title")
    trimmed = pc.utf8_trim_whitespace(titles)
    lengths = pc.fill_null(pc.utf8_length(trimmed), 0).to_numpy(zero_copy_only=False)
    flag(lengths == 0, "empty_title")
    flag(lengths > MAX_TITLE_CHARS, "title_too_long")
    tb = string_bytes(titles)
    has_ctl_bytes = bool((tb < 0x20).any() or (tb == 0x7F).any())
    if has_ctl_bytes:  # exact check only when some title holds a control byte at all
        flag(_np_mask(pc.match_substring_regex(titles, _CTRL_RE)), "bad_characters")

    langs, lang_idx, lang_map = _map_unique(c["language"], _language)
    unknown = np.array([v is not None and v.startswith("?") for v in lang_map] + [False], dtype=bool)
    flag(unknown[lang_idx], "unknown_language")
    cats = _map_unique(c["category"], strip_or_none)[0]
    if require_label:
        flag(_np_mask(cats.is_null()), "missing_category")
    lq = _map_unique(c["label_quality"], _lower_or_none)[0]

    # ids of the rows still good: the given id when there is one, else the content id
    ok_idx = np.flatnonzero(code == 0)
    given = c["id"]
    has_given = _np_mask(pc.greater(pc.binary_length(given), 0)) if given.null_count < n else np.zeros(n, bool)
    ids_arr, h2 = listing_ids(given, has_given, trimmed, cats, ok_idx, has_ctl_bytes)  # h2: hash64(listing_id)
    keep = np.ones(len(ok_idx), dtype=bool)
    if dedup is not None:
        dup = dedup.mark_hashes(h2)
        flag_mask = np.zeros(n, dtype=bool)
        flag_mask[ok_idx[dup]] = True
        flag(flag_mask, "duplicate")
        keep = ~dup

    good_idx = ok_idx[keep]
    bad = list(chunk.rejected)
    for i in np.flatnonzero(code != 0):
        reason, detail = _CHECKS[code[i]]
        bad.append((chunk.rows[i], reason, detail, chunk.raw[i]))
    m = len(good_idx)
    if m == n:
        pick = lambda a: a  # noqa: E731
    else:
        take = pa.array(good_idx, pa.int64())
        pick = lambda a: a.take(take)  # noqa: E731
    kept = (lambda a: a) if keep.all() else (lambda a: a.filter(pa.array(keep)))
    rows = np.asarray(chunk.rows, dtype=np.int64)
    good = pa.table(
        {
            "listing_id": kept(ids_arr),
            "title": pick(titles),
            "language": pick(langs),
            "label_quality": pick(lq),
            "category": pick(cats),
            "split": SPLIT_NAMES.take(pa.array(split_codes(h2[keep]))),
            "source_file": pa.repeat(pa.scalar(source, pa.string()), m),
            "source_row": pa.array(rows[good_idx] if m != n else rows, pa.int64()),
            "ingest_date": pa.repeat(pa.scalar(run_date, pa.string()), m),
        },
        schema=LISTING_SCHEMA,
    )
    return _Checked(good, bad)


def quarantine_table(bad: list[tuple], source: str, run_date: str) -> pa.Table:
    """Quarantined rows ``(row, reason, detail, raw[, raw_bytes])`` as a QUARANTINE_SCHEMA table. ``raw``
    is kept to its first RAW_BYTES bytes; ``raw_bytes`` is its whole length (given by a reader that
    kept only a line's start, else measured)."""
    raw, raw_bytes = _capped_raw([b[3] for b in bad])
    for i, b in enumerate(bad):
        if len(b) > 4 and b[4] is not None:
            raw_bytes[i] = b[4]
    return pa.table(
        {
            "source_file": [source] * len(bad),
            "source_row": [b[0] for b in bad],
            "reason": [b[1] for b in bad],
            "detail": [b[2] for b in bad],
            "raw": raw,
            "ingest_date": [run_date] * len(bad),
            "raw_bytes": pa.array(raw_bytes, pa.int64()),
        },
        schema=QUARANTINE_SCHEMA,
    )


def _capped_raw(texts: list[str]) -> tuple[pa.Array, list[int]]:
    """The raw texts as Arrow strings cut to RAW_BYTES bytes (at a character boundary), and their lengths."""
    try:
        arr = pa.array(texts, pa.string())
    except UnicodeEncodeError:  # lone surrogates (undecodable bytes of a CSV line): shown escaped
        texts = [_printable(t) for t in texts]
        arr = pa.array(texts, pa.string())
    lengths = pc.binary_length(arr).to_numpy(zero_copy_only=False)
    over = np.flatnonzero(lengths > RAW_BYTES)
    if len(over):
        texts = list(texts)
        for i in over:
            data = texts[i].encode("utf-8")
            cut = RAW_BYTES
            while cut and (data[cut] & 0xC0) == 0x80:  # not inside a character
                cut -= 1
            texts[i] = data[:cut].decode("utf-8")
        arr = pa.array(texts, pa.string())
    return arr, lengths.tolist()


def _printable(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape" if _escaped_bytes(text) else "backslashreplace").decode(
            "utf-8", "backslashreplace"
        )


def _escaped_bytes(text: str) -> bool:
    """Whether every lone surrogate in ``text`` is one surrogateescape made of an undecodable byte."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)
