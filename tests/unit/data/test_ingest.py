"""pipelines.data.ingest: every format, format detection, every quarantine reason, the manifest,
atomic partition swaps, stable ids and splits, and cross-partition dedupe in the lake.

Inputs are crafted by tests/data/ingest_inputs.py; every test gets its own MELI_HOME.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data import ingest as ingest_mod
from pipelines.data.ingest import (
    QUARANTINE_REASONS,
    IngestError,
    assign_split,
    content_ids,
    detect_format,
    ingest,
    read_source,
)
from pipelines.data.lake import (
    LISTING_SCHEMA,
    QUARANTINE_SCHEMA,
    SCHEMA_VERSION,
    data_dir,
    load_listings,
    read_manifest,
    read_partition,
    read_quarantine,
    versions,
)
from tests.data import ingest_inputs as D

DAY = "2024-03-01"


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
class Run:
    """One ingest and everything it wrote."""

    def __init__(self, result, settings):
        self.result = result
        self.partition = Path(result.partition)
        self.listings = read_partition(self.partition)
        self.quarantine = read_quarantine(self.partition)
        self.manifest = read_manifest(self.partition)
        self.q_manifest = json.loads((Path(result.quarantine) / "_manifest.json").read_text())
        self.settings = settings

    @property
    def rows(self) -> list[dict]:
        return self.listings.to_pylist()

    @property
    def bad(self) -> list[dict]:
        return self.quarantine.to_pylist()

    def reasons(self) -> Counter:
        return Counter(self.quarantine.column("reason").to_pylist())

    def titles(self) -> list[str]:
        return self.listings.column("title").to_pylist()


def run(settings, sources, date: str = DAY, **kw) -> Run:
    sources = sources if isinstance(sources, list) else [sources]
    r = Run(ingest(sources, date, settings, **kw), settings)
    check_conservation(r)
    return r


def check_conservation(r: Run) -> None:
    res, m = r.result, r.manifest
    assert res.rows_read == res.rows_written + res.rows_quarantined
    assert res.rows_written == r.listings.num_rows
    assert res.rows_quarantined == r.quarantine.num_rows
    assert m["conservation_ok"] is True
    assert m["totals"] == {
        "rows_read": res.rows_read,
        "rows_written": res.rows_written,
        "rows_quarantined": res.rows_quarantined,
    }
    assert m["reasons"] == dict(r.reasons()) == res.reasons
    assert m["schema_version"] == SCHEMA_VERSION
    assert r.q_manifest == m
    for s in m["sources"]:
        assert s["rows_read"] == s["rows_written"] + s["rows_quarantined"]
        assert sum(s["reasons"].values()) == s["rows_quarantined"]
        assert s["sha256"] == hashlib.sha256(Path(s["path"]).read_bytes()).hexdigest()
        assert s["bytes"] == Path(s["path"]).stat().st_size
    assert sum(s["rows_read"] for s in m["sources"]) == res.rows_read
    assert set(r.reasons()) <= set(QUARANTINE_REASONS)
    assert r.listings.schema.equals(LISTING_SCHEMA, check_metadata=False)
    assert r.quarantine.schema.equals(QUARANTINE_SCHEMA, check_metadata=False)
    # in-run dedupe: never two rows with one id
    ids = r.listings.column("listing_id").to_pylist()
    assert len(ids) == len(set(ids))
    assert None not in ids


def no_leftovers(settings) -> None:
    """No temp dirs, and each partition holds only its pointer and the versions it keeps."""
    root = settings.listings_dir
    if root.exists():
        stray = [p.name for p in root.iterdir() if p.name.startswith((".tmp-", ".old-"))]
        assert stray == [], stray
        for part in root.glob("ingest_date=*"):
            kept = {v.dir.name for v in versions(part)}
            extra = [p.name for p in part.iterdir() if p.name != "_CURRENT" and p.name not in kept]
            assert extra == [], extra


def only_bad(r: Run, reason: str) -> dict:
    assert r.result.rows_quarantined == 1, r.bad
    (bad,) = r.bad
    assert bad["reason"] == reason, bad
    assert bad["detail"], bad
    assert bad["ingest_date"] == r.result.run_date
    return bad


# ------------------------------------------------------------------------------------------
# formats
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["listings.jsonl", "listings.jsonl.gz"])
def test_jsonl_and_jsonl_gz(settings, tmp_path, name):
    rows = D.good_rows(40)
    src = D.write_jsonl(tmp_path / name, rows)
    r = run(settings, src)
    assert r.result.rows_read == 40 and r.result.rows_quarantined == 0
    out = r.rows
    assert [o["title"] for o in out] == [x["title"] for x in rows]
    assert [o["category"] for o in out] == [x["category"] for x in rows]
    assert [o["language"] for o in out] == [x["language"] for x in rows]
    assert [o["label_quality"] for o in out] == [x["label_quality"] for x in rows]
    assert [o["source_row"] for o in out] == list(range(1, 41))
    assert {o["source_file"] for o in out} == {str(src.resolve())}
    assert {o["ingest_date"] for o in out} == {DAY}
    assert {o["split"] for o in out} <= {"train", "validation", "test"}
    assert [o["listing_id"] for o in out] == content_ids([x["title"] for x in rows], [x["category"] for x in rows])
    assert r.manifest["sources"][0]["format"] == "jsonl"
    assert r.listings.schema.metadata[b"meli_schema_version"] == str(SCHEMA_VERSION).encode()


@pytest.mark.parametrize("name", ["train.csv", "train.csv.gz"])
def test_challenge_csv_with_header(settings, tmp_path, name):
    rows = D.challenge_rows(30)
    rows[2][0] = 'Funda "Premium", silicona, para iPhone'  # quoted title with commas and quotes
    src = D.write_challenge_csv(tmp_path / name, rows)
    r = run(settings, src)
    assert r.result.rows_read == 30 and r.result.rows_quarantined == 0
    assert r.titles() == [x[0] for x in rows]
    assert r.listings.column("label_quality").to_pylist() == [x[1] for x in rows]
    assert r.listings.column("language").to_pylist() == [x[2] for x in rows]
    assert r.listings.column("category").to_pylist() == [x[3] for x in rows]
    assert r.listings.column("source_row").to_pylist() == list(range(1, 31))  # records; the header is not one
    assert r.manifest["sources"][0]["format"] == "challenge_csv"


def test_challenge_csv_columns_in_any_order_and_case(settings, tmp_path):
    data = "\ufeffCategory,Title,Language\nGUITARS,Guitarra criolla,ES\nSNEAKERS,Tenis corrida,pt-BR\n"
    src = D.write_bytes(tmp_path / "odd.csv", data.encode())
    r = run(settings, src)
    assert r.titles() == ["Guitarra criolla", "Tenis corrida"]
    assert r.listings.column("category").to_pylist() == ["GUITARS", "SNEAKERS"]
    assert r.listings.column("language").to_pylist() == ["spanish", "portuguese"]
    assert r.listings.column("label_quality").to_pylist() == [None, None]


@pytest.mark.parametrize("gz", [False, True])
def test_headerless_title_category_csv(settings, tmp_path, gz):
    lines = [
        b"Hidrolavadora Lavor One 120 Bar 1700w  Bomba Aluminio Italia,ELECTRIC_PRESSURE_WASHERS",
        b"Funda, carcasa y vidrio templado, Samsung A10,CELLPHONE_COVERS",  # unquoted commas
        b'"Cable usb, 2 metros",USB_CABLES',  # quoted commas
        b"Placa De Sonido - Behringer Umc22,SOUND_CARDS",
        b"Titulo sin categoria",  # one field: no category
    ]
    src = D.write_headerless_csv(tmp_path / ("head.csv.gz" if gz else "head.csv"), lines, gz=gz)
    assert detect_format(src) == "csv"
    r = run(settings, src)
    assert r.titles() == [
        "Hidrolavadora Lavor One 120 Bar 1700w  Bomba Aluminio Italia",
        "Funda, carcasa y vidrio templado, Samsung A10",
        "Cable usb, 2 metros",
        "Placa De Sonido - Behringer Umc22",
    ]
    assert r.listings.column("category").to_pylist() == [
        "ELECTRIC_PRESSURE_WASHERS",
        "CELLPHONE_COVERS",
        "USB_CABLES",
        "SOUND_CARDS",
    ]
    assert r.listings.column("source_row").to_pylist() == [1, 2, 3, 4]
    bad = only_bad(r, "missing_category")
    assert bad["source_row"] == 5 and bad["raw"] == "Titulo sin categoria"
    assert r.manifest["sources"][0]["format"] == "csv"


def test_parquet_source(settings, tmp_path):
    src = D.write_parquet(
        tmp_path / "in.parquet",
        {
            "item_id": [101, 102, 103, 104],
            "title": ["Guitarra electrica", None, "Alimento perro 15kg", "Reloj pulsera"],
            "category": ["GUITARS", "GUITARS", "DOG_FOOD", "WRISTWATCHES"],
            "language": ["spanish", "spanish", "es", "pt"],
            "price": [1.0, 2.0, 3.0, 4.0],  # ignored
        },
    )
    assert detect_format(src) == "parquet"
    r = run(settings, src)
    assert r.listings.column("listing_id").to_pylist() == ["101", "103", "104"]
    assert r.listings.column("language").to_pylist() == ["spanish", "spanish", "portuguese"]
    assert r.listings.column("source_row").to_pylist() == [1, 3, 4]
    bad = only_bad(r, "missing_title")
    assert bad["source_row"] == 2
    assert json.loads(bad["raw"])["category"] == "GUITARS"
    assert r.manifest["sources"][0]["format"] == "parquet"


def test_parquet_without_id_gets_content_ids_and_reads_in_chunks(settings, tmp_path):
    rows = D.good_rows(25)
    src = D.write_parquet(tmp_path / "in.parquet", {k: [x[k] for x in rows] for k in ("title", "category")})
    r = run(settings, src, chunk_rows=4)
    assert r.listings.column("listing_id").to_pylist() == content_ids(
        [x["title"] for x in rows], [x["category"] for x in rows]
    )
    assert r.listings.column("source_row").to_pylist() == list(range(1, 26))


def test_unlabelled_listings_for_scoring(settings, tmp_path):
    rows = [{"id": f"MLA{i}", "title": f"Zapatilla running talle {i}", "language": "spanish"} for i in range(8)]
    rows.append({"listing_id": 777, "title": "Celular libre", "language": "pt"})  # numeric id
    src = D.write_jsonl(tmp_path / "to_score.jsonl", rows)
    r = run(settings, src, require_label=False)
    assert r.result.rows_quarantined == 0
    assert r.listings.column("listing_id").to_pylist() == [f"MLA{i}" for i in range(8)] + ["777"]
    assert r.listings.column("category").null_count == 9
    assert r.listings.column("language").to_pylist() == ["spanish"] * 8 + ["portuguese"]
    # the same file as labelled input: every row lacks its category
    r2 = run(settings, src, date="2024-03-02", require_label=True)
    assert r2.result.rows_written == 0 and r2.reasons() == Counter({"missing_category": 9})


def test_format_override(settings, tmp_path, capsys):
    # a headerless file whose first listing is literally titled "title": content detection takes
    # that row for a challenge header; the override reads it as what it is
    lines = [b"title,BOOKS", b"Libro de cocina,BOOKS", b"Guitarra criolla,GUITARS"]
    src = D.write_headerless_csv(tmp_path / "odd.txt", lines)
    assert detect_format(src) == "challenge_csv"
    auto = run(settings, src, date="2024-03-02")
    assert auto.result.rows_read == 2 and auto.reasons() == Counter({"missing_category": 2})

    forced = run(settings, src, fmt="csv")
    assert forced.titles() == ["title", "Libro de cocina", "Guitarra criolla"]
    assert forced.manifest["sources"][0]["format"] == "csv"

    # the same flag from the command line
    from pipelines.flows.cli import main

    assert main(["ingest", str(src), "--format", "csv", "--run-date", "2024-03-03"]) in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert out["rows_written"] == 3 and out["rows_quarantined"] == 0

    # forcing the wrong format quarantines rows instead of guessing
    wrong = run(settings, src, date="2024-03-04", fmt="jsonl")
    assert wrong.result.rows_written == 0 and wrong.reasons() == Counter({"bad_json": 3})

    with pytest.raises(IngestError, match="unknown format"):
        ingest([src], "2024-03-05", settings, fmt="xml")
    no_leftovers(settings)


# ------------------------------------------------------------------------------------------
# format detection from content, not names
# ------------------------------------------------------------------------------------------
def _jsonl_bytes(n: int = 5) -> bytes:
    return b"\n".join(D.jsonl_line(x) for x in D.good_rows(n)) + b"\n"


@pytest.mark.parametrize(
    "name,make,fmt",
    [
        ("plain_named.jsonl.gz", lambda p: D.write_bytes(p, _jsonl_bytes()), "jsonl"),  # .gz that is not gzip
        ("gzip_named.jsonl", lambda p: D.write_bytes(p, _jsonl_bytes(), gz=True), "jsonl"),
        ("jsonl_named.csv", lambda p: D.write_bytes(p, _jsonl_bytes()), "jsonl"),  # .csv that is jsonl
        ("bom.jsonl", lambda p: D.write_bytes(p, b"\xef\xbb\xbf" + _jsonl_bytes()), "jsonl"),
        ("crlf.jsonl", lambda p: D.write_bytes(p, _jsonl_bytes().replace(b"\n", b"\r\n")), "jsonl"),
        (
            "parquet_named.jsonl",
            lambda p: D.write_parquet(p, {k: [x[k] for x in D.good_rows(5)] for k in ("title", "category")}),
            "parquet",
        ),
        ("challenge.txt", lambda p: D.write_challenge_csv(p, n=5), "challenge_csv"),
        ("challenge_gz.data", lambda p: D.write_challenge_csv(p, n=5, gz=True), "challenge_csv"),
        (
            "headerless.json",
            lambda p: D.write_headerless_csv(
                p, [f"{x['title']},{x['category']}".encode() for x in D.good_rows(5)], gz=True
            ),
            "csv",
        ),
    ],
)
def test_format_detected_from_content(settings, tmp_path, name, make, fmt):
    src = make(tmp_path / name)
    assert detect_format(src) == fmt
    r = run(settings, src)
    assert r.result.rows_written == 5 and r.result.rows_quarantined == 0
    assert r.titles() == [x["title"] for x in D.good_rows(5)]
    assert r.manifest["sources"][0]["format"] == fmt


@pytest.mark.parametrize(
    "text",
    [
        "[" + ",".join(json.dumps(x) for x in D.good_rows(3)) + "]",  # one line
        "[\n" + ",\n".join("  " + json.dumps(x) for x in D.good_rows(3)) + "\n]\n",  # pretty-printed
        "[" + ",".join(json.dumps({**x, "title": x["title"] * 40}) for x in D.good_rows(200)) + "]",  # > the head
    ],
    ids=["one_line", "pretty", "longer_than_the_head"],
)
def test_a_json_array_file_is_json_not_a_csv_title(settings, tmp_path, text):
    src = D.write_bytes(tmp_path / "array.json", text.encode())
    assert detect_format(src) == "jsonl"
    r = run(settings, src, allow_empty=True)
    if text.count("\n") <= 1:  # the array itself: one line, not an object
        assert r.result.rows_written == 0 and r.reasons() == {"not_an_object": 1}
    else:  # read as JSON Lines: '[', ']' and 'obj,' lines quarantined; a bare object line is a row
        assert r.result.rows_written == 1 and r.reasons() == {"bad_json": 4}
    assert all(len(t) < 1000 for t in r.titles())  # never a 'title' made of the whole file


def test_a_csv_title_starting_with_a_bracket_is_still_csv(tmp_path):
    src = D.write_bytes(tmp_path / "t.csv", b"[NUEVO] Celular Samsung,CELLPHONES\n[OFERTA] Zapatillas,SNEAKERS\n")
    assert detect_format(src) == "csv"


def test_deeply_nested_json_is_quarantined_not_fatal(settings, tmp_path):
    deep = '{"title": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + ', "category": "X"}'
    lines = [D.jsonl_line(D.good_row(0)), deep.encode(), D.jsonl_line(D.good_row(1))]
    src = D.write_bytes(tmp_path / "deep.jsonl", b"\n".join(lines) + b"\n")
    r = run(settings, src)
    assert r.result.rows_written == 2 and r.reasons() == {"bad_json": 1}
    assert r.bad[0]["source_row"] == 2 and r.bad[0]["raw_bytes"] == len(deep)  # its line and length
    assert r.bad[0]["raw"] == deep[:8192]  # the raw text kept: its first 8 KiB
    # scoring reads inputs with the same reader: the line is an unscorable row, the others score
    chunks = list(read_source(src))
    assert sum(len(c.rows) for c in chunks) == 2
    assert [(x[0], x[1]) for c in chunks for x in c.rejected] == [(2, "bad_json")]


def test_empty_files(settings, tmp_path):
    empty = D.write_bytes(tmp_path / "empty.jsonl", b"")
    empty_gz = D.write_bytes(tmp_path / "empty.jsonl.gz", b"", gz=True)
    r = run(settings, [empty, empty_gz], allow_empty=True)
    assert r.result.rows_read == 0 and r.listings.num_rows == 0 and r.quarantine.num_rows == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda p: D.write_bytes(p / "zero.jsonl", b""),
        lambda p: D.write_bytes(p / "header.csv", b"title,category\n"),
    ],
    ids=["zero_bytes", "header_only"],
)
def test_an_empty_batch_never_replaces_a_partition_silently(settings, tmp_path, make):
    before = run(settings, D.write_jsonl(tmp_path / "a.jsonl", D.good_rows(20)))
    empty = make(tmp_path)
    with pytest.raises(IngestError, match=r"no rows read.*refusing to replace partition 2024-03-01 \(20 rows\)"):
        ingest([empty], DAY, settings)
    assert read_partition(before.partition).num_rows == 20  # untouched
    with pytest.raises(IngestError, match="refusing to write an empty partition 2024-03-02.*--allow-empty"):
        ingest([empty], "2024-03-02", settings)
    assert not (settings.listings_dir / "ingest_date=2024-03-02").exists()
    r = run(settings, empty, allow_empty=True)  # said explicitly: the partition becomes empty
    assert r.listings.num_rows == 0 and r.result.version == before.result.version + 1
    no_leftovers(settings)


# ------------------------------------------------------------------------------------------
# quarantine: one crafted bad input per reason
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_rows", [ingest_mod.CHUNK_ROWS, 2])
@pytest.mark.parametrize("reason", sorted(D.BAD_JSONL))
def test_jsonl_quarantine_reason(settings, tmp_path, reason, chunk_rows):
    line, raw_part = D.BAD_JSONL[reason]
    src = D.write_jsonl(tmp_path / "in.jsonl.gz", D.with_bad_line(line))
    r = run(settings, src, chunk_rows=chunk_rows)
    bad = only_bad(r, reason)
    assert bad["source_row"] == 4
    assert raw_part in bad["raw"]
    assert bad["source_file"] == str(src.resolve())
    assert r.titles() == [x["title"] for x in D.good_rows(6)]  # the good rows around it are kept
    assert r.listings.column("source_row").to_pylist() == [1, 2, 3, 5, 6, 7]
    assert r.manifest["reasons"] == {reason: 1}
    assert r.manifest["sources"][0]["reasons"] == {reason: 1}


def test_every_reason_in_one_file(settings, tmp_path):
    """All jsonl-level reasons together, mixed with good rows, across small chunks."""
    lines: list = []
    for k, reason in enumerate(sorted(D.BAD_JSONL)):
        lines += [D.good_row(k), D.BAD_JSONL[reason][0]]
    lines += [D.good_row(0)]  # duplicate of the first row
    src = D.write_jsonl(tmp_path / "dirty.jsonl", lines)
    expected = Counter({reason: 1 for reason in D.BAD_JSONL}) + Counter({"duplicate": 1})
    for chunk_rows in (1, 3, 7, ingest_mod.CHUNK_ROWS):
        r = run(settings, src, date=f"2024-03-{chunk_rows % 28 + 1:02d}", chunk_rows=chunk_rows)
        assert r.reasons() == expected
        assert r.result.rows_written == len(D.BAD_JSONL)


@pytest.mark.parametrize(
    "data",
    [
        b"Caf\xe9 con leche,DOG_FOOD\n",  # headerless
        b"title,category\nCaf\xe9 con leche,DOG_FOOD\n",  # with a header
        b"title,category\nCafe con leche,DOG\xff_FOOD\n",  # bad bytes outside the title
    ],
    ids=["headerless", "header", "in_category"],
)
def test_bad_encoding_in_csv(settings, tmp_path, data):
    good = b"Guitarra criolla,GUITARS\nZapatillas running,SNEAKERS\n"
    src = D.write_bytes(tmp_path / "latin1.csv", data + good)
    r = run(settings, src)
    bad = only_bad(r, "bad_encoding")
    assert "\\xe9" in bad["raw"] or "\\xff" in bad["raw"]
    assert r.titles() == ["Guitarra criolla", "Zapatillas running"]


def test_bad_encoding_in_jsonl_ignored_field_and_lone_surrogate(settings, tmp_path):
    lines = D.good_rows(4) + [
        b'{"title": "Reloj", "category": "WRISTWATCHES", "tokenized_title": ["rel\xf3j"]}',
        b'{"title": "Reloj \\ud800 pulsera", "category": "WRISTWATCHES"}',  # lone surrogate escape
        b'{"title": "Reloj \\udc80 pulsera", "category": "WRISTWATCHES"}',
    ]
    src = D.write_jsonl(tmp_path / "enc.jsonl", lines)
    r = run(settings, src)
    assert r.reasons() == Counter({"bad_encoding": 3})
    assert r.result.rows_written == 4
    assert sorted(b["source_row"] for b in r.bad) == [5, 6, 7]


@pytest.mark.parametrize(
    "line",
    [
        b'{"title": true, "category": "GUITARS"}',
        b'{"title": ["Guitarra"], "category": "GUITARS"}',
        b'{"title": "Guitarra", "category": {"id": "GUITARS"}}',
        b'{"title": "Guitarra", "category": "GUITARS", "language": ["es"]}',
        b'{"title": "Guitarra", "category": "GUITARS", "label_quality": false}',
    ],
)
def test_bad_field_type(settings, tmp_path, line):
    src = D.write_jsonl(tmp_path / "types.jsonl", D.with_bad_line(line))
    bad = only_bad(run(settings, src), "bad_field_type")
    assert bad["raw"] == line.decode()


def test_numbers_are_accepted_as_text(settings, tmp_path):
    src = D.write_jsonl(
        tmp_path / "nums.jsonl", [{"title": 12345, "category": "BOOKS"}, {"title": "Libro", "category": 7, "id": 99}]
    )
    r = run(settings, src)
    assert r.titles() == ["12345", "Libro"]
    assert r.listings.column("category").to_pylist() == ["BOOKS", "7"]
    assert r.listings.column("listing_id").to_pylist()[1] == "99"


def test_blank_lines(settings, tmp_path):
    data = _jsonl_bytes(3).replace(b"\n", b"\n\n   \n", 1)  # an empty and a whitespace-only line
    src = D.write_bytes(tmp_path / "blank.jsonl", data)
    r = run(settings, src)
    assert r.reasons() == Counter({"blank_line": 2}) and r.result.rows_written == 3
    assert sorted(b["source_row"] for b in r.bad) == [2, 3]
    csv_src = D.write_bytes(tmp_path / "blank.csv", b"Guitarra,GUITARS\n\n , \nTenis,SNEAKERS\n")
    r = run(settings, csv_src, date="2024-03-02")
    assert r.reasons() == Counter({"blank_line": 2}) and r.titles() == ["Guitarra", "Tenis"]


def test_missing_and_empty_title(settings, tmp_path):
    lines = D.good_rows(2) + [
        {"title": None, "category": "GUITARS"},
        {"category": "GUITARS"},
        {"title": "", "category": "GUITARS"},
        {"title": " \t ", "category": "GUITARS"},
    ]
    r = run(settings, D.write_jsonl(tmp_path / "t.jsonl", lines))
    assert [(b["source_row"], b["reason"]) for b in r.bad] == [
        (3, "missing_title"),
        (4, "missing_title"),
        (5, "empty_title"),
        (6, "empty_title"),
    ]
    csv_src = D.write_challenge_csv(
        tmp_path / "t.csv", [["", "reliable", "spanish", "GUITARS"], ["Tenis", "reliable", "spanish", "SNEAKERS"]]
    )
    bad = only_bad(run(settings, csv_src, date="2024-03-02"), "empty_title")
    assert bad["source_row"] == 1


def test_title_too_long_10mb(settings, tmp_path):
    huge = "Zapatilla " * 1_000_000  # 10 MB
    lines = D.good_rows(3) + [
        {"title": huge, "category": "SNEAKERS"},
        {"title": "x" * 1000, "category": "BOOKS"},
        {"title": "  " + "y" * 1000 + "  ", "category": "BOOKS"},
        {"title": "z" * 1001, "category": "BOOKS"},
    ]
    src = D.write_jsonl(tmp_path / "long.jsonl.gz", lines)
    r = run(settings, src)
    # a 10 MB line is past MELI_MAX_LINE_BYTES (1 MiB): line_too_long, its raw text cut to 8 KiB
    assert [(b["source_row"], b["reason"]) for b in r.bad] == [(4, "line_too_long"), (7, "title_too_long")]
    assert r.bad[0]["raw_bytes"] > 10_000_000 and len(r.bad[0]["raw"]) == 8192
    assert r.bad[0]["raw"].startswith('{"title": "Zapatilla Zapatilla')
    assert r.result.rows_written == 5  # 1000 characters (after trimming) is still fine
    csv_src = D.write_headerless_csv(tmp_path / "long.csv", [huge.encode() + b",SNEAKERS", b"Tenis,SNEAKERS"])
    bad = only_bad(run(settings, csv_src, date="2024-03-02"), "line_too_long")
    assert bad["raw_bytes"] > 10_000_000 and len(bad["raw"]) == 8192
    # a title too long in a line under the cap is still title_too_long, its raw cut, its length kept
    src = D.write_jsonl(tmp_path / "long2.jsonl", [{"title": "Mesa " * 100_000, "category": "X"}, *D.good_rows(2)])
    bad = only_bad(run(settings, src, date="2024-03-03"), "title_too_long")
    assert bad["raw_bytes"] > 500_000 and len(bad["raw"].encode()) == 8192


def test_bad_characters(settings, tmp_path):
    lines = D.good_rows(2) + [
        b'{"title": "Guitarra\\u0000criolla", "category": "GUITARS"}',  # NUL, escaped
        b'{"title": "Campana \\u0007 bell", "category": "GUITARS"}',  # BEL
        b'{"title": "Tab\\tseparado", "category": "GUITARS"}',  # a tab is fine
        b'{"title": "raw NUL \x00 byte", "category": "GUITARS"}',  # raw control bytes are not JSON
    ]
    r = run(settings, D.write_jsonl(tmp_path / "ctl.jsonl", lines))
    assert sorted((b["source_row"], b["reason"]) for b in r.bad) == [
        (3, "bad_characters"),
        (4, "bad_characters"),
        (6, "bad_json"),
    ]
    assert "raw NUL \x00 byte" in next(b["raw"] for b in r.bad if b["reason"] == "bad_json")
    assert "Tab\tseparado" in r.titles()
    # a NUL byte inside a CSV field reaches the title check
    csv_src = D.write_bytes(tmp_path / "ctl.csv", b"Guitarra\x00criolla,GUITARS\nTenis,SNEAKERS\n")
    bad = only_bad(run(settings, csv_src, date="2024-03-02"), "bad_characters")
    assert bad["raw"] == "Guitarra\x00criolla,GUITARS"


def test_languages(settings, tmp_path):
    langs = ["spanish", "ES", " pt-BR ", "Español", "PORTUGUÊS", "pt_br", None, "", "klingon", "en"]
    lines = [D.good_row(i, language=lang) for i, lang in enumerate(langs)]
    r = run(settings, D.write_jsonl(tmp_path / "lang.jsonl", lines))
    assert r.listings.column("language").to_pylist() == [
        "spanish",
        "spanish",
        "portuguese",
        "spanish",
        "portuguese",
        "portuguese",
        None,
        None,
    ]
    assert [(b["source_row"], b["reason"]) for b in r.bad] == [(9, "unknown_language"), (10, "unknown_language")]


def test_missing_category(settings, tmp_path):
    lines = D.good_rows(2) + [
        D.good_row(10, category=D.DROP),
        D.good_row(11, category=""),
        D.good_row(12, category="   "),
        D.good_row(13, category=None),
    ]
    r = run(settings, D.write_jsonl(tmp_path / "cat.jsonl", lines))
    assert r.reasons() == Counter({"missing_category": 4})
    assert [b["source_row"] for b in r.bad] == [3, 4, 5, 6]
    # categories and label quality are trimmed (and label quality lower-cased)
    r2 = run(
        settings,
        D.write_jsonl(tmp_path / "cat2.jsonl", [D.good_row(1, category=" GUITARS ", label_quality=" Reliable")]),
        date="2024-03-02",
    )
    assert r2.rows[0]["category"] == "GUITARS" and r2.rows[0]["label_quality"] == "reliable"


def test_duplicates_within_a_file_and_across_files(settings, tmp_path):
    rows = D.good_rows(6)
    twin = dict(rows[1], title="  " + rows[1]["title"].upper().replace(" ", "   ") + " ")  # same content
    a = D.write_jsonl(tmp_path / "a.jsonl", rows + [rows[0], twin])
    b = D.write_challenge_csv(
        tmp_path / "b.csv",
        [
            [rows[2]["title"], "reliable", "spanish", rows[2]["category"]],
            ["Algo nuevo", "reliable", "spanish", "BOOKS"],
        ],
    )
    r = run(settings, [a, b], chunk_rows=3)
    assert [(Path(x["source_file"]).name, x["source_row"], x["reason"]) for x in r.bad] == [
        ("a.jsonl", 7, "duplicate"),
        ("a.jsonl", 8, "duplicate"),
        ("b.csv", 1, "duplicate"),
    ]
    assert r.result.rows_written == 7
    per_source = {Path(s["path"]).name: s for s in r.manifest["sources"]}
    assert per_source["a.jsonl"]["reasons"] == {"duplicate": 2} and per_source["a.jsonl"]["rows_read"] == 8
    assert per_source["b.csv"]["reasons"] == {"duplicate": 1} and per_source["b.csv"]["rows_written"] == 1
    # given ids dedupe on the id even when the content differs
    c = D.write_jsonl(
        tmp_path / "c.jsonl",
        [{"id": "MLA1", "title": "Uno", "category": "X1"}, {"id": "MLA1", "title": "Otro", "category": "X2"}],
    )
    bad = only_bad(run(settings, c, date="2024-03-02"), "duplicate")
    assert bad["source_row"] == 2


@pytest.mark.parametrize("gz_rows", [2000, 3])
def test_truncated_gzip_keeps_rows_before_the_cut(settings, tmp_path, gz_rows):
    rows = D.incompressible_rows(gz_rows)
    data = b"\n".join(D.jsonl_line(x) for x in rows) + b"\n"
    src, survived = D.truncated_gzip(tmp_path / "cut.jsonl.gz", data, keep=0.6 if gz_rows > 10 else 0.9)
    complete = survived.count(b"\n")
    assert 0 < complete < gz_rows
    r = run(settings, src)
    assert r.result.rows_written == complete
    assert r.titles() == [x["title"] for x in rows[:complete]]
    bad = only_bad(r, "truncated_input")
    assert bad["source_row"] == complete + 1
    assert bad["raw"] == survived[survived.rfind(b"\n") + 1 :].decode("utf-8", "replace")  # the partial line


def test_truncated_gzip_csv(settings, tmp_path):
    rows = [[x["title"], x["label_quality"], x["language"], x["category"]] for x in D.incompressible_rows(2000)]
    data = D.csv_text(rows, D.CHALLENGE_HEADER).encode()
    src, survived = D.truncated_gzip(tmp_path / "cut.csv.gz", data, keep=0.5)
    complete = survived.count(b"\n") - 1  # minus the header
    partial = survived[survived.rfind(b"\n") + 1 :].decode("utf-8", "replace")
    r = run(settings, src)
    # every complete row before the cut is kept; the partial one is never written half
    assert r.titles() == [x[0] for x in rows[:complete]]
    bad = only_bad(r, "truncated_input")
    assert bad["source_row"] == complete + 1 and bad["raw"] == partial and partial


def test_corrupt_gzip_fails_the_file_and_writes_nothing(settings, tmp_path):
    # deflate output is only checked by the CRC at the member's end: what was inflated before the
    # damage may already be garbled text with a valid-looking category, so none of it is kept
    rows = D.incompressible_rows(400)
    data = gzip.compress(b"\n".join(D.jsonl_line(x) for x in rows) + b"\n", mtime=0)
    mid = len(data) // 2
    flipped = data[:mid] + bytes(b ^ 0x01 for b in data[mid : mid + 2]) + data[mid + 2 :]
    crc = data[:-8] + bytes(b ^ 0xFF for b in data[-8:-4]) + data[-4:]  # only the checksum damaged
    garbage = b"\x1f\x8b" + bytes(range(256)) * 4  # nothing readable at all
    for i, bad in enumerate([flipped, crc, garbage]):
        src = D.write_bytes(tmp_path / f"corrupt{i}.jsonl.gz", bad)
        with pytest.raises(IngestError, match="corrupt compressed data"):
            ingest([src], DAY, settings)
        assert not (settings.listings_dir / f"ingest_date={DAY}").exists()
    no_leftovers(settings)


def test_bad_csv_row(settings, tmp_path):
    extra = b'Solo dos,campos\nMuchos,campos,de,mas,aqui\n"Comilla sin cerrar,reliable,spanish,BOOKS\n'
    src = D.write_challenge_csv(tmp_path / "rows.csv", n=3, extra=extra)
    r = run(settings, src)
    assert [(b["source_row"], b["reason"]) for b in r.bad] == [
        (4, "bad_csv_row"),
        (5, "bad_csv_row"),
        (6, "bad_csv_row"),
    ]
    assert r.bad[0]["raw"] == "Solo dos,campos"
    assert "Muchos" in r.bad[1]["raw"] and "Comilla sin cerrar" in r.bad[2]["raw"]
    assert r.result.rows_written == 3


def test_a_stray_quote_never_merges_rows(settings, tmp_path):
    # the csv module would read lines 1-2 as ONE record: title "Mesa de luz,FURNITURE\nSilla gamer"
    # roja" labelled CHAIRS (a FURNITURE listing lost, a wrong label trained on)
    src = D.write_bytes(
        tmp_path / "q.csv", b'title,category\n"Mesa de luz,FURNITURE\nSilla "gamer" roja,CHAIRS\nHeladera,FRIDGE\n'
    )
    r = run(settings, src)
    assert r.titles() == ["Heladera"]
    assert [(b["source_row"], b["reason"], b["raw"]) for b in r.bad] == [
        (1, "bad_csv_row", '"Mesa de luz,FURNITURE'),
        (2, "bad_csv_row", 'Silla "gamer" roja,CHAIRS'),
    ]
    assert "spans 2 lines" in r.bad[0]["detail"]


def test_csv_edge_inputs(settings, tmp_path):
    # a headerless CSV whose first title starts with '[' is CSV, not JSONL; a BOM is not part of the title
    src = D.write_bytes(tmp_path / "tags.csv", "\ufeff[NUEVO] Celular Samsung,CELLPHONES\nTV Sony 40,TVS\n".encode())
    assert detect_format(src) == "csv"
    r = run(settings, src)
    assert r.titles() == ["[NUEVO] Celular Samsung", "TV Sony 40"] and not r.bad
    # old-Mac line endings: the header is still a header, and every \r ends a record
    src = D.write_bytes(tmp_path / "cr.csv", b"title,category\rA title,C1\rB title,C2\r")
    assert detect_format(src) == "challenge_csv"
    r = run(settings, src, date="2024-05-02")
    assert [(x["title"], x["category"]) for x in r.rows] == [("A title", "C1"), ("B title", "C2")] and not r.bad


def test_a_bare_carriage_return_inside_a_title_keeps_its_record_whole(settings, tmp_path):
    # the csv module alone ends a record at a bare \r: "Mesa" became a title-only row and "de luz" a
    # FURNITURE row (a cut title); the quoted title was quarantined as a record spanning two lines
    body = b'Mesa\rde luz,FURNITURE\n"Silla\rgamer",CHAIRS\r\nHeladera,FRIDGE\nLampara,LAMPS\r'
    r = run(settings, D.write_bytes(tmp_path / "cr-inside.csv", body))
    assert [(x["title"], x["category"]) for x in r.rows] == [
        ("Mesa de luz", "FURNITURE"),
        ("Silla gamer", "CHAIRS"),
        ("Heladera", "FRIDGE"),
        ("Lampara", "LAMPS"),
    ]
    assert not r.bad


def test_json_nan_is_missing_not_text(settings, tmp_path):
    lines = b'{"title": "Celular Samsung", "category": NaN}\n{"title": NaN, "category": "TVS"}\n'
    r = run(settings, D.write_bytes(tmp_path / "nan.jsonl", lines + D.jsonl_line(D.incompressible_rows(1)[0]) + b"\n"))
    assert r.reasons() == Counter({"missing_category": 1, "missing_title": 1})
    assert r.result.rows_written == 1


@pytest.mark.parametrize(
    "make,match",
    [
        (
            lambda p: D.write_challenge_csv(p / "nohdr.csv", header=["name", "label_quality", "language", "category"]),
            "no 'title' column",
        ),
        (lambda p: D.write_parquet(p / "notitle.parquet", {"name": ["a"], "category": ["B"]}), "no 'title' column"),
        (lambda p: D.write_bytes(p / "broken.parquet", b"PAR1" + b"\x00" * 64), "Parquet"),
        (lambda p: D.write_parquet(p / "listtitle.parquet", {"title": [["a", "b"]], "category": ["B"]}), "as text"),
    ],
    ids=["csv_without_title", "parquet_without_title", "corrupt_parquet", "parquet_title_not_text"],
)
def test_unreadable_sources_give_a_clear_error(settings, tmp_path, make, match):
    good = D.write_jsonl(tmp_path / "good.jsonl", D.good_rows(3))
    src = make(tmp_path)
    with pytest.raises(IngestError, match=match) as err:
        ingest([good, src], DAY, settings)
    assert str(src.name) in str(err.value)
    assert not (settings.listings_dir / f"ingest_date={DAY}").exists()
    no_leftovers(settings)


def test_missing_source_file(settings, tmp_path):
    missing = tmp_path / "nope.jsonl.gz"
    with pytest.raises(IngestError, match="no such file"):
        ingest([missing], DAY, settings)
    with pytest.raises(IngestError, match="no such file"):
        read_source(missing)
    with pytest.raises(IngestError, match="no source files"):
        ingest([], DAY, settings)
    assert not (settings.listings_dir / f"ingest_date={DAY}").exists()


def test_manifest(settings, tmp_path):
    lines = D.with_bad_line(D.BAD_JSONL["bad_json"][0]) + [D.good_row(0)]
    a = D.write_jsonl(tmp_path / "a.jsonl.gz", lines)
    b = D.write_challenge_csv(tmp_path / "b.csv", n=2)  # the same content as a's first two rows
    r = run(settings, [a, b])
    m = r.manifest
    assert m["ingest_date"] == DAY and m["schema_version"] == SCHEMA_VERSION
    assert m["reasons"] == {"bad_json": 1, "duplicate": 3}
    assert m["totals"] == {"rows_read": 10, "rows_written": 6, "rows_quarantined": 4}
    assert [s["format"] for s in m["sources"]] == ["jsonl", "challenge_csv"]
    assert m["sources"][0]["sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()
    assert m["sources"][1]["sha256"] == hashlib.sha256(b.read_bytes()).hexdigest()
    assert m["partition"] == r.result.partition and m["quarantine"] == r.result.quarantine
    assert Path(r.result.manifest) == data_dir(r.partition) / "_manifest.json"
    assert m["version"] == r.result.version == 1
    assert r.result.to_dict()["rows_read"] == 10


# ------------------------------------------------------------------------------------------
# chunking and the JSON fast path never change the result
# ------------------------------------------------------------------------------------------
def test_chunk_size_and_fast_path_do_not_change_the_result(settings, tmp_path):
    rows = D.good_rows(50)
    rows[7]["title"] = "Acentos: ñandú, coração, 日本語 ✓"
    rows[9]["title"] = 2019
    clean = D.write_jsonl(tmp_path / "clean.jsonl", rows)
    dirty = D.write_jsonl(tmp_path / "dirty.jsonl", rows[:25] + [b"{broken", b"null", b"", b"[1]"] + rows[25:])
    ref = run(settings, clean, date="2024-01-01").listings.drop(["source_file", "source_row"])
    for k, (src, chunk_rows) in enumerate([(clean, 1), (clean, 8), (dirty, 8), (dirty, 1000), (dirty, 1)]):
        r = run(settings, src, date=f"2024-01-{k + 2:02d}", chunk_rows=chunk_rows)
        got = r.listings.drop(["source_file", "source_row"]).drop(["ingest_date"])
        assert got.equals(ref.drop(["ingest_date"])), (src.name, chunk_rows)
        if src == dirty:
            assert r.reasons() == Counter({"bad_json": 1, "not_an_object": 2, "blank_line": 1})


def test_json_null_and_two_values_on_a_line(settings, tmp_path):
    """`null` lines (pyarrow's JSON reader crashes on a leading one) and lines with two objects
    (which pyarrow would count as two rows) are caught line by line."""
    for k, lines in enumerate(
        [
            [b"null"] + D.good_rows(3),
            D.good_rows(3) + [b" null "],
            D.good_rows(2) + [b'{"title": "a", "category": "B"} {"title": "c"}', b""] + D.good_rows(2, 5),
        ]
    ):
        for chunk_rows in (1, 4, ingest_mod.CHUNK_ROWS):
            r = run(
                settings,
                D.write_jsonl(tmp_path / f"n{k}.jsonl", lines),
                date=f"2024-02-{k * 3 + chunk_rows % 7 + 1:02d}",
                chunk_rows=chunk_rows,
            )
            expected = {0: {"not_an_object": 1}, 1: {"not_an_object": 1}, 2: {"bad_json": 1, "blank_line": 1}}[k]
            assert r.reasons() == Counter(expected), (k, chunk_rows)


def test_content_ids_fold_whitespace_like_content_ids(settings, tmp_path):
    titles = [
        "Funda  silicona   iPhone",
        "Funda silicona iPhone",
        "Tab\tseparado",
        "Tab separado",
        "Sin\u00a0romper",
        "Mayúsculas  ÑANDÚ",
        "mayúsculas ñandú",
        "  bordes  ",
        "dos  \n  lineas",
    ]
    rows = [{"title": t, "category": "X  Y", "language": "es"} for t in titles]
    r = run(settings, D.write_jsonl(tmp_path / "ws.jsonl", rows))
    ids = content_ids([t.strip() for t in titles], ["X  Y"] * len(titles))
    got = {row["source_row"]: row["listing_id"] for row in r.rows}
    assert got == {i + 1: ids[i] for i in range(len(titles)) if i + 1 in got}
    assert r.reasons() == Counter({"duplicate": 3})  # folded: rows 2, 4 and 7 repeat rows 1, 3 and 6
    assert sorted(b["source_row"] for b in r.bad) == [2, 4, 7]
    # the same titles in a chunk where some title holds a control byte take the regex path
    rows.append({"title": "ctl\u0001", "category": "X  Y"})
    r = run(settings, D.write_jsonl(tmp_path / "ws2.jsonl", rows), date="2024-03-02")
    assert {row["source_row"]: row["listing_id"] for row in r.rows} == got


def test_given_ids_on_the_fast_path(settings, tmp_path):
    rows = [dict(D.good_row(i), **{("id", "listing_id", "item_id")[i % 3]: f"M{i}"}) for i in range(30)]
    rows[4]["listing_id"] = "L4"  # listing_id wins over id
    src = D.write_jsonl(tmp_path / "ids.jsonl", rows)
    for chunk_rows in (7, ingest_mod.CHUNK_ROWS):
        got = run(settings, src, date=f"2024-03-0{chunk_rows % 9 + 1}", chunk_rows=chunk_rows).listings
        expected = [f"M{i}" for i in range(30)]
        expected[4] = "L4"
        assert got.column("listing_id").to_pylist() == expected


def test_dedupe_set_across_frozen_runs(monkeypatch):
    monkeypatch.setattr(ingest_mod.Dedup, "RUN", 8)
    d = ingest_mod.Dedup()
    for k in range(4):
        batch = [f"id{i}" for i in range(5 * k, 5 * k + 5)]
        assert d.mark(batch + batch[:1]).tolist() == [False] * 5 + [True]
    assert len(d.runs) == 2 and len(d) == 20
    again = d.mark(["id0", "id9", "id19", "new", "new"])
    assert again.tolist() == [True, True, True, False, True]
    assert len(d) == 21
    for run_ in d.runs + [d.seen]:
        assert (run_[:-1] < run_[1:]).all()  # each run stays sorted


def test_readers_stop_cleanly_when_abandoned(tmp_path):
    import threading

    def ingest_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("ingest-")]

    src = D.write_jsonl(tmp_path / "big.jsonl.gz", D.good_rows(3000))
    chunks = read_source(src, chunk_rows=100)
    next(chunks)
    chunks.close()  # a consumer that stops early leaves no reader thread behind
    never_started = read_source(src)  # noqa: F841 - an unused reader starts no thread
    assert ingest_threads() == []


def test_read_source_yields_plain_lists(tmp_path):
    """read_source is also used by scoring: its chunks hold plain Python lists."""
    src = D.write_jsonl(tmp_path / "in.jsonl", D.good_rows(5) + [b"{oops"])
    (chunk,) = list(read_source(src))
    assert all(isinstance(v, list) for v in chunk.columns.values())
    assert chunk.columns["title"] == [x["title"] for x in D.good_rows(5)]
    assert chunk.columns["id"] == [None] * 5
    assert list(chunk.rows) == [1, 2, 3, 4, 5]
    assert chunk.raw[0] == D.jsonl_line(D.good_row(0)).decode()
    assert [(r[0], r[1]) for r in chunk.rejected] == [(6, "bad_json")]


# ------------------------------------------------------------------------------------------
# atomic partition swaps
# ------------------------------------------------------------------------------------------
def test_reingesting_a_date_replaces_the_partition(settings, tmp_path):
    a = D.write_jsonl(tmp_path / "a.jsonl", D.good_rows(20) + [b"{bad"])
    first = run(settings, a)
    second = run(settings, a)
    assert second.listings.equals(first.listings)
    assert second.quarantine.equals(first.quarantine)
    assert sorted(
        p.relative_to(second.partition.parent).as_posix() for p in second.partition.rglob("*") if p.is_file()
    ) == [
        f"{second.partition.name}/{x}"
        for x in (
            "_CURRENT",
            *(
                f"{d}/{f}"
                for d in sorted(v.dir.name for v in versions(second.partition))
                for f in (
                    "_manifest.json",
                    "part-00000.parquet",
                    "quarantine/_manifest.json",
                    "quarantine/part-00000.parquet",
                )
            ),
        )
    ]
    assert [v.number for v in versions(second.partition)] == [2, 1]  # the previous version kept
    lake = load_listings(settings.listings_dir)
    assert lake.num_rows == 20 and len(set(lake.column("listing_id").to_pylist())) == 20
    # a different delivery for the same date replaces, never appends
    b = D.write_jsonl(tmp_path / "b.jsonl", D.good_rows(5, start=100))
    third = run(settings, b)
    assert third.titles() == [x["title"] for x in D.good_rows(5, start=100)]
    assert third.quarantine.num_rows == 0
    assert load_listings(settings.listings_dir).num_rows == 5
    no_leftovers(settings)


def test_failure_mid_ingest_keeps_the_previous_partition(settings, tmp_path, monkeypatch):
    a = D.write_jsonl(tmp_path / "a.jsonl", D.good_rows(20) + [b"{bad"])
    before = run(settings, a)
    files = {p: p.read_bytes() for p in before.partition.rglob("*") if p.is_file()}

    real_writer = pq.ParquetWriter

    class FailingWriter(real_writer):
        calls = 0

        def write_table(self, table, *args, **kwargs):
            FailingWriter.calls += 1
            if FailingWriter.calls == 3:
                raise OSError("disk full (simulated)")
            return super().write_table(table, *args, **kwargs)

    monkeypatch.setattr(pq, "ParquetWriter", FailingWriter)
    b = D.write_jsonl(tmp_path / "b.jsonl", D.good_rows(30, start=50))
    with pytest.raises(OSError, match="disk full"):
        ingest([b], DAY, settings, chunk_rows=5)
    assert FailingWriter.calls == 3
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in files} == files
    assert sorted(files) == sorted(p for p in before.partition.rglob("*") if p.is_file())
    no_leftovers(settings)
    # an unreadable second source fails the run the same way
    bad = D.write_challenge_csv(tmp_path / "bad.csv", header=["name", "category"], rows=[["x", "Y"]])
    with pytest.raises(IngestError):
        ingest([b, bad], DAY, settings)
    assert {p: p.read_bytes() for p in files} == files
    no_leftovers(settings)


def test_leftovers_of_a_killed_writer_are_recovered(settings, tmp_path):
    a = D.write_jsonl(tmp_path / "a.jsonl", D.good_rows(20))
    before = run(settings, a)
    root = settings.listings_dir
    # killed between the two renames: the previous partition is only under .old-, plus a temp dir
    os.replace(before.partition, root / f".old-{before.partition.name}-deadbeef")
    (root / f".tmp-{before.partition.name}-cafebabe").mkdir()
    (root / f".tmp-{before.partition.name}-cafebabe" / "part-00000.parquet").write_bytes(b"half")
    b = D.write_jsonl(tmp_path / "b.jsonl", D.good_rows(5, start=100))
    with pytest.raises(IngestError):  # the next write fails: the old version is back in place
        ingest(
            [b, D.write_challenge_csv(tmp_path / "bad.csv", header=["name", "category"], rows=[["x", "Y"]])],
            DAY,
            settings,
        )
    assert load_listings(root).num_rows == 20
    assert run(settings, b).titles() == [x["title"] for x in D.good_rows(5, start=100)]
    no_leftovers(settings)


# ------------------------------------------------------------------------------------------
# ids and splits
# ------------------------------------------------------------------------------------------
def test_content_ids_are_stable_and_normalised():
    ids = content_ids(
        ["Celular Samsung Galaxy A10", "  celular   SAMSUNG galaxy a10 ", "Celular Samsung Galaxy A10"],
        ["CELLPHONES", "CELLPHONES", None],
    )
    # pinned: changing the hash or the normalisation re-keys every listing in the lake
    assert ids == ["334d9a58606bf356", "334d9a58606bf356", "15fb4280f054e43f"]
    assert content_ids(["Celular Samsung Galaxy A10"], ["NOTEBOOKS"]) != ids[:1]


def test_listing_id_is_stable_across_runs_formats_and_redeliveries(settings, tmp_path):
    rows = D.good_rows(10)
    j = D.write_jsonl(tmp_path / "a.jsonl.gz", rows)
    c = D.write_challenge_csv(
        tmp_path / "b.csv",
        [[x["title"].upper() + "  ", x["label_quality"], x["language"], x["category"]] for x in reversed(rows)],
    )
    p = D.write_parquet(tmp_path / "c.parquet", {k: [x[k] for x in rows] for k in ("title", "category")})
    ids = [
        run(settings, src, date=f"2024-04-0{k + 1}").listings.column("listing_id").to_pylist()
        for k, src in enumerate([j, c, p, j])
    ]
    assert ids[0] == ids[2] == ids[3] == list(reversed(ids[1]))
    # a given id wins over the content id, whatever it is called
    given = D.write_jsonl(
        tmp_path / "given.jsonl",
        [
            dict(rows[0], id="MLA9"),
            dict(rows[1], item_id="MLB7"),
            dict(rows[2], listing_id="MLU3"),
            dict(rows[3], id=""),
        ],
    )
    got = run(settings, given, date="2024-04-09").listings.column("listing_id").to_pylist()
    assert got == ["MLA9", "MLB7", "MLU3", ids[0][3]]


def test_assign_split_is_deterministic():
    ids = [f"MLA{i}" for i in range(4)]
    assert assign_split(ids) == ["train", "test", "validation", "test"]  # pinned
    many = [f"id-{i}" for i in range(20_000)]
    splits = assign_split(many)
    assert splits == assign_split(many)
    assert assign_split(many[5000:]) == splits[5000:]  # a listing's split never depends on its neighbours
    share = Counter(splits)
    assert abs(share["test"] / 20_000 - 0.15) < 0.015 and abs(share["validation"] / 20_000 - 0.10) < 0.015


def test_split_is_stable_when_new_data_arrives(settings, synthetic_jsonl):
    old = synthetic_jsonl(n=400, seed=1, name="old.jsonl.gz")
    new = synthetic_jsonl(n=400, seed=2, name="new.jsonl.gz")
    first = {r["listing_id"]: r["split"] for r in run(settings, old, date="2024-05-01").rows}
    later = {r["listing_id"]: r["split"] for r in run(settings, [new, old], date="2024-05-02").rows}
    assert set(first) <= set(later)
    assert {k: later[k] for k in first} == first


def test_every_category_with_40_rows_is_in_every_split(settings, synthetic_jsonl):
    r = run(settings, synthetic_jsonl(n=3000, seed=3))
    by_cat: dict[str, Counter] = {}
    for row in r.rows:
        by_cat.setdefault(row["category"], Counter())[row["split"]] += 1
    big = {c: s for c, s in by_cat.items() if sum(s.values()) >= 40}
    assert len(big) == 16
    for cat, s in big.items():
        assert set(s) == {"train", "validation", "test"}, (cat, s)


def test_load_listings_dedupes_redeliveries_keeping_the_newest(settings, tmp_path):
    day1 = D.write_jsonl(
        tmp_path / "d1.jsonl",
        [
            {"id": "MLA1", "title": "Guitarra vieja", "category": "GUITARS"},
            {"id": "MLA2", "title": "Tenis", "category": "SNEAKERS"},
        ]
        + D.good_rows(3),
    )
    day2 = D.write_jsonl(
        tmp_path / "d2.jsonl",
        [
            {"id": "MLA1", "title": "Guitarra nueva", "category": "GUITARS"},
            {"id": "MLA3", "title": "Reloj", "category": "WRISTWATCHES"},
        ]
        + [dict(x, label_quality="unreliable") for x in D.good_rows(3)],
    )
    run(settings, day1, date="2024-06-01")
    run(settings, day2, date="2024-06-02")
    lake = load_listings(settings.listings_dir)
    rows = {r["listing_id"]: r for r in lake.to_pylist()}
    assert lake.num_rows == len(rows) == 6
    assert rows["MLA1"]["title"] == "Guitarra nueva" and rows["MLA1"]["ingest_date"] == "2024-06-02"
    assert rows["MLA2"]["ingest_date"] == "2024-06-01"
    redelivered = [v for k, v in rows.items() if not k.startswith("MLA")]
    assert {r["ingest_date"] for r in redelivered} == {"2024-06-02"}
    assert {r["label_quality"] for r in redelivered} == {"unreliable"}
    # up to day 1 only, and a column selection
    early = load_listings(settings.listings_dir, upto="2024-06-01", columns=["listing_id", "title"])
    assert early.column_names == ["listing_id", "title"]
    assert dict(zip(*early.to_pydict().values()))["MLA1"] == "Guitarra vieja"
    with pytest.raises(FileNotFoundError):
        load_listings(settings.listings_dir, upto="2023-01-01")


def test_schema_has_a_pa_type_per_field():
    assert LISTING_SCHEMA.field("source_row").type == pa.int64()
    assert QUARANTINE_SCHEMA.names == [
        "source_file",
        "source_row",
        "reason",
        "detail",
        "raw",
        "ingest_date",
        "raw_bytes",
    ]
    assert QUARANTINE_SCHEMA.field("raw_bytes").type == pa.int64()
