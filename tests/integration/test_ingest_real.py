"""Ingest the real MeLi 2019 files from the shared data directory (skipped where it is absent)."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path

from pipelines.data.ingest import detect_format, ingest
from pipelines.data.lake import SCHEMA_VERSION, load_listings, read_manifest, read_partition, read_quarantine, versions

DAY = "2019-06-01"


def _read(result) -> tuple:
    listings = read_partition(Path(result.partition))
    quarantine = read_quarantine(Path(result.partition))
    return listings, quarantine, read_manifest(Path(result.partition))


def _conserved(result, listings, quarantine, manifest, src: Path) -> None:
    assert result.rows_read == result.rows_written + result.rows_quarantined
    assert listings.num_rows == result.rows_written and quarantine.num_rows == result.rows_quarantined
    assert manifest["conservation_ok"] is True and manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["reasons"] == dict(Counter(quarantine.column("reason").to_pylist()))
    (source,) = manifest["sources"]
    assert source["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    ids = listings.column("listing_id").to_pylist()
    assert len(ids) == len(set(ids))


def test_real_jsonl_twice_gives_identical_partitions(settings, real_jsonl):
    first = ingest([real_jsonl], DAY, settings)
    l1, q1, m1 = _read(first)
    _conserved(first, l1, q1, m1, real_jsonl)
    # 44,579 real rows (README): all read, only exact re-listings quarantined (as duplicates)
    assert first.rows_read == 44_579
    assert set(first.reasons) <= {"duplicate"} and first.rows_quarantined < 100
    assert m1["sources"][0]["format"] == "jsonl"

    second = ingest([real_jsonl], DAY, settings)
    l2, q2, m2 = _read(second)
    _conserved(second, l2, q2, m2, real_jsonl)
    assert l2.equals(l1)  # same rows, ids, splits and content, in the same order
    assert q2.equals(q1)
    strip = lambda m: {k: v for k, v in m.items() if k not in ("created_at", "seconds", "version", "quarantine")}  # noqa: E731
    assert strip(m2) == strip(m1) and (m1["version"], m2["version"]) == (1, 2)
    parent = Path(second.partition).parent
    assert sorted(p.name for p in parent.iterdir()) == ["_locks", f"ingest_date={DAY}"]  # no .tmp-/.old- left
    assert [v.number for v in versions(Path(second.partition))] == [2, 1]
    assert load_listings(settings.listings_dir).num_rows == l1.num_rows

    # the split is per listing and every one of the 632 categories (37-94 rows) is in each split
    splits: dict[str, set] = defaultdict(set)
    for cat, split in zip(l1.column("category").to_pylist(), l1.column("split").to_pylist(), strict=True):
        splits[cat].add(split)
    assert len(splits) == 632
    assert all(s == {"train", "validation", "test"} for s in splits.values())
    assert set(l1.column("language").to_pylist()) == {"spanish"}


def test_real_challenge_csv(settings, real_challenge_csv):
    assert detect_format(real_challenge_csv) == "csv"  # headerless title,category
    result = ingest([real_challenge_csv], DAY, settings)
    listings, quarantine, manifest = _read(result)
    _conserved(result, listings, quarantine, manifest, real_challenge_csv)
    assert result.rows_read == 1_260
    assert result.rows_written >= 1_250
    assert len(set(listings.column("category").to_pylist())) >= 780  # README: 787 categories
    assert listings.column("title").null_count == 0
    again = ingest([real_challenge_csv], DAY, settings)
    assert _read(again)[0].equals(listings)
