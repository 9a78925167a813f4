"""Bounded reads (issue 35 item 6, issue 31 item 6): a line past MELI_MAX_LINE_BYTES is quarantined as
line_too_long without being held, a CSV record left open by a stray quote is cut after
MELI_MAX_RECORD_LINES lines, quarantined raw text is cut to 8 KiB with its length kept, and a gzip
inflating past MELI_MAX_INFLATED_BYTES or MELI_MAX_INFLATE_RATIO fails in one line with flat memory.

The memory bounds are measured on a real `python -m pipelines ingest` subprocess (its peak RSS, read
by a parent that runs nothing else), not timed."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest

from pipelines.data.ingest import ingest, read_source
from pipelines.data.ingest.rules import REASONS
from pipelines.data.ingest.sources import RAW_BYTES, Bytes, LongLine, line_regions
from pipelines.data.lake import partition_dir, read_partition, read_quarantine
from pipelines.settings import get_settings
from tests.data import ingest_inputs as D

REPO = Path(__file__).resolve().parents[3]
DAY = "2024-03-01"
# runs the CLI and prints its exit code and peak RSS (KiB): the child is this parent's only one
_MEASURE = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print('RESULT', rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def _cli(*args: str) -> tuple[int, int, str]:
    """(exit code, peak RSS in MiB, stderr) of `python -m pipelines ARGS`."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", _MEASURE, sys.executable, "-m", "pipelines", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    rc, rss = re.search(r"RESULT (-?\d+) (\d+)", p.stdout).groups()
    return int(rc), int(rss) // 1024, p.stderr


def _limited(monkeypatch, **env):
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    return get_settings().ensure()


def _rows(n: int, start: int = 0) -> bytes:
    return b"".join(D.jsonl_line(r) + b"\n" for r in D.good_rows(n, start))


def test_reasons_are_in_the_table():
    assert {"line_too_long", "record_too_long"} <= set(REASONS)


def test_a_64mb_line_between_100_rows_keeps_the_rows_in_flat_memory(meli_home, tmp_path):
    src = tmp_path / "long.jsonl"
    with open(src, "wb") as fh:
        fh.write(_rows(50))
        fh.write(b'{"title": "' + b"x" * (64 << 20) + b'", "category": "X"}\n')  # 64 MiB, one line
        fh.write(_rows(50, 50))
    rc, rss_mib, err = _cli("ingest", str(src), "--run-date", DAY)
    assert rc == 0, err
    assert rss_mib < 300, f"peak RSS {rss_mib} MiB"
    part = partition_dir(get_settings().listings_dir, DAY)
    assert read_partition(part).num_rows == 100
    (bad,) = read_quarantine(part).to_pylist()
    assert bad["reason"] == "line_too_long" and bad["source_row"] == 51
    assert bad["raw_bytes"] == (64 << 20) + 30 and bad["raw"] == '{"title": "' + "x" * (RAW_BYTES - 11)


def test_line_too_long_jsonl(monkeypatch, meli_home, tmp_path):
    settings = _limited(monkeypatch, MELI_MAX_LINE_BYTES=4096)
    big = b'{"title": "' + "ñ".encode() * 50_000 + b'", "category": "X"}'  # 100 KB, valid JSON
    data = _rows(3) + big + b"\n" + _rows(3, 3) + b"y" * 20_000  # the last line: long, no newline
    for name, gz in (("long.jsonl", False), ("long.jsonl.gz", True)):
        r = ingest([D.write_bytes(tmp_path / name, data, gz=gz)], DAY, settings)
        assert r.rows_written == 6 and r.reasons == {"line_too_long": 2}
        bad = read_quarantine(Path(r.partition)).to_pylist()
        assert [(b["source_row"], b["raw_bytes"]) for b in bad] == [(4, len(big)), (8, 20_000)]
        assert bad[0]["raw"].startswith('{"title": "ññ') and len(bad[0]["raw"].encode()) <= RAW_BYTES
        assert bad[1]["raw"] == "y" * RAW_BYTES
        assert "MELI_MAX_LINE_BYTES (4096)" in bad[0]["detail"]


def test_quarantined_raw_is_cut_and_its_length_kept(settings, tmp_path):
    broken = '{"title": "Mesa ' + "é" * 20_000 + "  # not JSON"  # 40 KB, under the line cap
    data = _rows(2) + broken.encode() + b"\n" + _rows(2, 2)
    r = ingest([D.write_bytes(tmp_path / "b.jsonl", data)], DAY, settings)
    (bad,) = read_quarantine(Path(r.partition)).to_pylist()
    assert bad["reason"] == "bad_json" and bad["raw_bytes"] == len(broken.encode())
    assert len(bad["raw"].encode()) <= RAW_BYTES and broken.startswith(bad["raw"])  # cut at a character
    assert len(bad["raw"].encode()) > RAW_BYTES - 2


def test_csv_stray_quote_is_cut_and_the_rows_after_it_kept(monkeypatch, meli_home, tmp_path):
    settings = _limited(monkeypatch, MELI_MAX_RECORD_LINES=10)
    rows = [f"Producto {i},reliable,spanish,CAT_{i % 7}" for i in range(1000)]
    rows[100] = '"Mesa de luz,reliable,spanish,FURNITURE'  # a stray quote, and no other quote after it
    src = D.write_bytes(tmp_path / "q.csv", ("title,label_quality,language,category\n" + "\n".join(rows)).encode())
    r = ingest([src], DAY, settings)
    # the record is read for 11 lines (past the cap of 10): those are quarantined, reading starts afresh
    assert r.reasons == {"record_too_long": 11}
    assert r.rows_written == 1000 - 11
    bad = read_quarantine(Path(r.partition)).to_pylist()
    assert [b["source_row"] for b in bad] == list(range(101, 112))
    assert bad[0]["raw"] == rows[100] and "MELI_MAX_RECORD_LINES (10)" in bad[0]["detail"]
    titles = set(read_partition(Path(r.partition)).column("title").to_pylist())
    assert "Producto 111" in titles and "Producto 999" in titles and "Producto 110" not in titles


def test_csv_line_too_long_and_a_record_running_into_one(monkeypatch, meli_home, tmp_path):
    settings = _limited(monkeypatch, MELI_MAX_LINE_BYTES=4096)
    long = "Silla " * 2000 + ",CHAIRS"  # 12 KB
    lines = ["Tenis,SNEAKERS", long, "Mesa,FURNITURE", '"Comilla abierta,BOOKS', long, "Heladera,FRIDGES"]
    src = D.write_bytes(tmp_path / "l.csv", "\n".join(lines).encode() + b"\n")
    r = ingest([src], DAY, settings)
    bad = read_quarantine(Path(r.partition)).to_pylist()
    assert [(b["source_row"], b["reason"]) for b in bad] == [
        (2, "line_too_long"),
        (4, "bad_csv_row"),
        (5, "line_too_long"),
    ]
    assert bad[0]["raw_bytes"] == len(long) and bad[0]["raw"] == long[:RAW_BYTES]
    assert sorted(read_partition(Path(r.partition)).column("title").to_pylist()) == ["Heladera", "Mesa", "Tenis"]


def _bomb(path: Path, zeros: int) -> Path:
    """``zeros`` bytes of b"\\0" (one line, no newline) gzipped like `gzip -1`, without holding them."""
    c = zlib.compressobj(1, wbits=31)
    block = bytes(1 << 20)
    with open(path, "wb") as fh:
        for _ in range(zeros >> 20):
            fh.write(c.compress(block))
        fh.write(c.flush())
    return path


def test_gzip_bomb_is_one_line_of_error_with_flat_memory(meli_home, tmp_path, monkeypatch):
    bomb = _bomb(tmp_path / "bomb.jsonl.gz", 200 << 20)  # 200 MiB of zeros in ~0.9 MB
    good = D.write_bytes(tmp_path / "good.jsonl", _rows(10))
    rc, rss_mib, err = _cli("ingest", str(good), str(bomb), "--run-date", DAY)
    assert rc == 1 and rss_mib < 300, (rc, rss_mib, err)
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and "decompression bomb" in lines[-1] and str(bomb) in lines[-1]
    assert not any(ln.startswith(("Traceback", "  File")) for ln in lines)
    # like a corrupt gzip, the bomb fails the run: no partition is committed, the good file neither
    assert not partition_dir(get_settings().listings_dir, DAY).exists()
    # the byte cap, with the ratio guard off
    monkeypatch.setenv("MELI_MAX_INFLATE_RATIO", "0")
    monkeypatch.setenv("MELI_MAX_INFLATED_BYTES", str(32 << 20))
    rc, rss_mib, err = _cli("ingest", str(bomb), "--run-date", DAY)
    assert rc == 1 and rss_mib < 300 and "inflates past 33554432 bytes (MELI_MAX_INFLATED_BYTES)" in err


def test_inflation_caps_leave_real_feeds_alone(monkeypatch, meli_home, tmp_path):
    # a file under the byte cap and far under the ratio reads whole; the ratio is judged only past 64 MiB
    settings = _limited(monkeypatch, MELI_MAX_INFLATED_BYTES=1 << 20)
    src = D.write_bytes(tmp_path / "ok.jsonl.gz", _rows(2000), gz=True)
    assert ingest([src], DAY, settings).rows_written == 2000
    settings = _limited(monkeypatch, MELI_MAX_INFLATED_BYTES=100_000)
    with pytest.raises(Exception, match="MELI_MAX_INFLATED_BYTES"):
        ingest([src], "2024-03-02", settings)


def test_scoring_reads_inputs_with_the_same_bounds(monkeypatch, meli_home, tmp_path):
    monkeypatch.setenv("MELI_MAX_LINE_BYTES", "4096")
    src = D.write_bytes(tmp_path / "s.jsonl", _rows(2) + b"z" * 50_000 + b"\n" + _rows(2, 2))
    from pipelines.serving.score import iter_chunks

    chunks = list(iter_chunks(src))
    assert sum(len(c.rows) for c in chunks) == 4
    assert [(b[0], b[1], b[4]) for c in chunks for b in c.rejected] == [(3, "line_too_long", 50_000)]
    assert [b[1] for c in read_source(src) for b in c.rejected] == ["line_too_long"]


def test_settings_bounds_are_checked(monkeypatch, meli_home):
    monkeypatch.setenv("MELI_MAX_LINE_BYTES", "100")
    with pytest.raises(ValueError, match="MELI_MAX_LINE_BYTES"):
        get_settings()
    monkeypatch.setenv("MELI_MAX_LINE_BYTES", "1024")
    monkeypatch.setenv("MELI_MAX_INFLATE_RATIO", "-1")
    with pytest.raises(ValueError, match="MELI_MAX_INFLATE_RATIO"):
        get_settings()


def _reference_lines(data: bytes, cap: int, cr: bool, final_newline: bool) -> list:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    out, pos = [], 0
    for m in re.finditer(rb"\r\n|\r|\n" if cr else rb"\n", data):
        line = data[pos : m.start()]
        out.append(("LONG", line[:RAW_BYTES], len(line)) if len(line) > cap else line + m.group())
        pos = m.end()
    if pos < len(data):
        line = data[pos:]
        out.append(("LONG", line[:RAW_BYTES], len(line)) if len(line) > cap else line + b"\n" * final_newline)
    return out


def test_line_regions_match_a_plain_split_for_any_blocks(tmp_path):
    """The block reader's lines (regions and LongLines) equal a plain split of the whole input, for
    any block size, cap, line ends (\\n only, or \\r, \\n and \\r\\n for old-Mac CSV) and BOM."""
    rng = random.Random(7)
    path = tmp_path / "in.bin"
    for _ in range(1500):
        cr, final_newline = rng.random() < 0.5, rng.random() < 0.5
        alphabet = [b"a", b"\n", b"\r", b"\r\n", b"bb", b"c" * 9] if cr else [b"a", b"\n", b"bb", b"c" * 9, b"\r"]
        data = (b"\xef\xbb\xbf" if rng.random() < 0.1 else b"") + b"".join(
            rng.choice(alphabet) for _ in range(rng.randint(0, 40))
        )
        cap, block = rng.randint(1, 12), rng.randint(1, 15)
        path.write_bytes(data)
        got = []
        for item in line_regions(Bytes(path, block=block), cap, cr, final_newline):
            if isinstance(item, LongLine):
                got.append(("LONG", item.prefix, item.nbytes))
            else:
                d, a, b = item
                assert b > a
                got += re.findall(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+" if cr else rb"[^\n]*\n|[^\n]+", d[a:b])
        assert got == _reference_lines(data, cap, cr, final_newline), (data, cap, cr, final_newline, block)


def test_reasons_counted_in_the_manifest(monkeypatch, meli_home, tmp_path):
    settings = _limited(monkeypatch, MELI_MAX_LINE_BYTES=2048)
    src = D.write_bytes(tmp_path / "m.jsonl", _rows(5) + b"q" * 5000 + b"\n")
    r = ingest([src], DAY, settings)
    manifest = json.loads(Path(r.manifest).read_text())
    assert manifest["reasons"] == {"line_too_long": 1} and manifest["conservation_ok"] is True
    assert Counter(read_quarantine(Path(r.partition)).column("reason").to_pylist()) == {"line_too_long": 1}
