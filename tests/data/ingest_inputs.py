"""Crafted ingest inputs, built by code (no binary fixtures in the repo).

Every writer returns the path it wrote. Good rows are small DiploDatos-like objects with distinct,
readable titles; the bad lines are the smallest input that triggers each quarantine reason.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CATEGORIES = ("CELLPHONES", "SNEAKERS", "GUITARS", "DOG_FOOD")


def good_row(i: int, **over) -> dict:
    """The i-th good labelled row (DiploDatos fields, including ones ingest ignores)."""
    lang = "portuguese" if i % 3 == 0 else "spanish"
    title = f"Producto numero {i} modelo X{i * 7 % 1000}" if lang == "spanish" else f"Produto numero {i} novo"
    row = {
        "language": lang,
        "label_quality": "reliable" if i % 4 else "unreliable",
        "title": title,
        "category": CATEGORIES[i % len(CATEGORIES)],
        "split": "train",
        "tokenized_title": title.lower().split(),
        "data": [i, i + 1],
        "target": i % len(CATEGORIES),
        "n_labels": len(CATEGORIES),
        "size": 1000,
    }
    row.update(over)
    return {k: v for k, v in row.items() if v is not _DROP}


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


_DROP = _Drop()
DROP = _DROP  # good_row(i, category=DROP) leaves the field out


def good_rows(n: int, start: int = 0) -> list[dict]:
    return [good_row(i) for i in range(start, start + n)]


def jsonl_line(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


# One bad jsonl line per quarantine reason the jsonl reader or the row checks can produce.
# reason -> (line bytes, a substring its quarantined raw text must contain)
BAD_JSONL: dict[str, tuple[bytes, str]] = {
    "bad_json": (b'{"title": "Zapatillas Nike Air", "category": ', '"Zapatillas Nike Air", "category": '),
    "not_an_object": (b'["not", "an", "object"]', '["not", "an", "object"]'),
    "bad_encoding": (b'{"title": "Caf\xe9 con leche", "category": "DOG_FOOD"}', "Caf\\xe9 con leche"),
    "bad_field_type": (b'{"title": {"es": "Celular"}, "category": "CELLPHONES"}', '{"es": "Celular"}'),
    "blank_line": (b"", ""),
    "missing_title": (b'{"language": "spanish", "category": "GUITARS"}', '"category": "GUITARS"'),
    "empty_title": (b'{"language": "spanish", "title": "   ", "category": "GUITARS"}', '"title": "   "'),
    "bad_characters": (b'{"title": "Guitarra\\u0000 criolla", "category": "GUITARS"}', "Guitarra\\u0000 criolla"),
    "unknown_language": (b'{"language": "klingon", "title": "Qapla Batleth", "category": "GUITARS"}', "klingon"),
    "missing_category": (b'{"language": "spanish", "title": "Cosa sin rubro"}', "Cosa sin rubro"),
}


def write_bytes(path: Path, data: bytes, gz: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def write_jsonl(path: Path, lines: list, gz: bool | None = None, trailing_newline: bool = True) -> Path:
    """Lines may be dicts (serialised) or bytes (written as they are). gz defaults to the suffix."""
    raw = [x if isinstance(x, bytes) else jsonl_line(x) for x in lines]
    data = b"\n".join(raw) + (b"\n" if trailing_newline and raw else b"")
    return write_bytes(path, data, gz=str(path).endswith(".gz") if gz is None else gz)


def with_bad_line(bad: bytes, n_good: int = 6, at: int = 3) -> list:
    """n_good good rows with ``bad`` inserted as line ``at + 1``."""
    lines: list = good_rows(n_good)
    lines.insert(at, bad)
    return lines


def csv_text(rows: list[list[str]], header: list[str] | None = None) -> str:
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


CHALLENGE_HEADER = ["title", "label_quality", "language", "category"]


def challenge_rows(n: int, start: int = 0) -> list[list[str]]:
    return [[r["title"], r["label_quality"], r["language"], r["category"]] for r in good_rows(n, start)]


def write_challenge_csv(
    path: Path,
    rows: list[list[str]] | None = None,
    n: int = 6,
    header: list[str] | None = None,
    gz: bool | None = None,
    extra: bytes = b"",
) -> Path:
    """The challenge's train.csv layout (header title,label_quality,language,category)."""
    rows = challenge_rows(n) if rows is None else rows
    data = csv_text(rows, header or CHALLENGE_HEADER).encode("utf-8") + extra
    return write_bytes(path, data, gz=str(path).endswith(".gz") if gz is None else gz)


def write_headerless_csv(path: Path, lines: list[bytes], gz: bool = False) -> Path:
    """``title,category`` lines written verbatim (so unquoted commas stay unquoted)."""
    return write_bytes(path, b"\n".join(lines) + b"\n", gz=gz)


def write_parquet(path: Path, columns: dict[str, list], schema: pa.Schema | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


def truncated_gzip(path: Path, data: bytes, keep: float = 0.5) -> tuple[Path, bytes]:
    """gzip ``data`` and keep only the first ``keep`` share of the compressed bytes.

    Returns the path and the decompressed bytes that survive the cut (what a tolerant reader sees).
    """
    comp = gzip.compress(data, compresslevel=6, mtime=0)
    cut = comp[: max(20, int(len(comp) * keep))]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cut)
    survived = zlib.decompressobj(wbits=31).decompress(cut)
    return path, survived


def incompressible_rows(n: int, start: int = 0) -> list[dict]:
    """Good rows with pseudo-random titles, so a cut gzip has many complete rows before the cut."""
    import random

    rng = random.Random(start)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return [
        good_row(i, title="Item " + "".join(rng.choice(alphabet) for _ in range(60))) for i in range(start, start + n)
    ]
