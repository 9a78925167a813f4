"""The lake's commit protocol: versioned partitions, one pointer per partition, time travel, and
loud failures when a committed version is damaged (never a partition silently left out)."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from pipelines.core.locks import LockTimeout, file_lock
from pipelines.data.ingest import ingest
from pipelines.data.lake import (
    LakeError,
    commit_partition,
    current_version,
    data_dir,
    load_listings,
    partition_dir,
    read_partition,
    read_quarantine,
    snapshot,
    versions,
)
from pipelines.features.embedding import prepare_dataset
from pipelines.flows.cli import main
from tests.data import ingest_inputs as D

DAY = "2026-01-01"


def _ingest(settings, tmp_path, n: int, start: int = 0, day: str = DAY, bad: int = 0):
    src = D.write_jsonl(tmp_path / f"in-{day}-{start}-{n}.jsonl", D.good_rows(n, start=start) + [b"{bad"] * bad)
    return ingest([src], day, settings)


def test_each_ingest_commits_a_new_version_and_keeps_the_last_ones(settings, tmp_path, monkeypatch):
    part = partition_dir(settings.listings_dir, DAY)
    for i, n in enumerate([3, 4, 5, 6], start=1):
        r = _ingest(settings, tmp_path, n, start=100 * i, bad=i)
        assert r.version == i and current_version(part).number == i
        assert read_partition(part).num_rows == n and read_quarantine(part).num_rows == i
    assert [v.number for v in versions(part)] == [4, 3, 2]  # MELI_LAKE_KEEP_VERSIONS=3
    assert sorted(p.name for p in part.iterdir()) == sorted(["_CURRENT", *(v.dir.name for v in versions(part))])
    # time travel within the kept versions: version 2's listings and quarantine, as committed
    assert read_partition(part, version=2).num_rows == 4 and read_quarantine(part, version=2).num_rows == 2
    assert load_listings(settings.listings_dir, snap={DAY: 3}).num_rows == 5
    with pytest.raises(LakeError, match=r"version 1 is not kept \(readable versions: \[4, 3, 2\]\)"):
        read_partition(part, version=1)


def test_a_committed_version_without_its_files_fails_loudly(settings, tmp_path):
    _ingest(settings, tmp_path, 5, day="2026-01-01")
    _ingest(settings, tmp_path, 7, start=50, day="2026-01-02")
    shutil.rmtree(data_dir(partition_dir(settings.listings_dir, "2026-01-01")))
    with pytest.raises(LakeError, match=r"ingest_date=2026-01-01: committed version 1 is missing its files"):
        load_listings(settings.listings_dir, upto="2026-01-02")
    with pytest.raises(LakeError, match="missing its files"):
        prepare_dataset(settings, "2026-01-02")  # never trains without the damaged partition


def test_prepare_refuses_a_run_date_that_was_never_committed(settings, tmp_path):
    _ingest(settings, tmp_path, 30, day="2026-01-01")
    with pytest.raises(FileNotFoundError, match=r"ingest_date=2026-01-02 is not committed"):
        prepare_dataset(settings, "2026-01-02")


def test_an_uncommitted_first_version_is_invisible_and_collected(settings, tmp_path):
    part = partition_dir(settings.listings_dir, DAY)
    (part / "v000001-deadbeef").mkdir(parents=True)  # a first writer killed before its commit
    (part / "v000001-deadbeef" / "part-00000.parquet").write_bytes(b"half a file")
    assert current_version(part) is None and snapshot(settings.listings_dir) == {}
    r = _ingest(settings, tmp_path, 4)
    assert r.version == 1 and sorted(p.name for p in part.iterdir()) == ["_CURRENT", versions(part)[0].dir.name]


def test_a_pre_versioning_partition_is_read_and_then_superseded(settings, tmp_path):
    r = _ingest(settings, tmp_path, 6)
    part = Path(r.partition)
    legacy = data_dir(part)
    for f in legacy.iterdir():  # the layout before versioning: files directly in the partition
        if f.is_file():
            shutil.move(str(f), part / f.name)
    shutil.rmtree(legacy)
    (part / "_CURRENT").unlink()
    assert current_version(part).number == 0 and read_partition(part).num_rows == 6
    r2 = _ingest(settings, tmp_path, 2, start=40)
    assert r2.version == 1 and read_partition(part).num_rows == 2
    assert sorted(p.name for p in part.iterdir()) == ["_CURRENT", versions(part)[0].dir.name]


def test_writers_of_one_partition_are_serialised(settings, tmp_path):
    part = partition_dir(settings.listings_dir, DAY)
    order: list[str] = []

    def writer(name: str, hold: float) -> None:
        with commit_partition(part) as pending:
            order.append(f"{name}+")
            time.sleep(hold)
            (pending.dir / "_manifest.json").write_text(json.dumps({"writer": name}))
            order.append(f"{name}-")

    a = threading.Thread(target=writer, args=("a", 0.4))
    a.start()
    time.sleep(0.1)
    writer("b", 0.0)
    a.join()
    assert order == ["a+", "a-", "b+", "b-"]  # b waited for a's commit: never two writers inside
    assert [v.number for v in versions(part)] == [2, 1]
    assert json.loads((data_dir(part) / "_manifest.json").read_text()) == {"writer": "b"}


def test_a_lock_held_too_long_is_a_one_line_error(tmp_path):
    lock = tmp_path / "x.lock"
    held = threading.Event()
    release = threading.Event()

    def hold():
        with file_lock(lock, 5, "thing"):
            held.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    try:
        with pytest.raises(LockTimeout, match=r"thing is locked by pid \d+ on .* gave up after 0.2 s"):
            with file_lock(lock, 0.2, "thing"):
                pass
    finally:
        release.set()
        t.join()


def test_lake_status_cli(settings, tmp_path, capsys):
    _ingest(settings, tmp_path, 5, day="2026-01-01", bad=2)
    _ingest(settings, tmp_path, 7, start=50, day="2026-01-02")
    _ingest(settings, tmp_path, 8, start=80, day="2026-01-02", bad=1)
    assert main(["lake", "status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    got = [(p["ingest_date"], p["rows"], p["quarantined"], p["version"]) for p in st["partitions"]]
    assert got == [("2026-01-01", 5, 2, 1), ("2026-01-02", 8, 1, 2)]
    assert main(["lake", "status", "--run-date", "2026-01-02"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^2026-01-02\s+2\s+8\s+1\s", out, re.M) and "2026-01-01" not in out
    assert main(["lake", "status", "--run-date", "2026-03-03"]) == 1


def test_a_full_disk_names_the_file_being_written_and_leaves_no_temp_file(settings, tmp_path, monkeypatch):
    """ENOSPC from any writer (an fsync here; numpy's short write without errno too) is one line
    ``no space left on device writing <path>``, through the CLI's error handler, and no temp file stays."""
    import errno
    import os

    from pipelines.core.fs import NoSpaceLeft, atomic_write_json, disk_full
    from pipelines.flows import cli

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "out" / "report.json"
    with pytest.raises(NoSpaceLeft) as err:
        atomic_write_json(target, {"a": 1})
    assert str(err.value) == f"no space left on device writing {target}"
    assert list(target.parent.iterdir()) == []
    assert cli.one_line(RuntimeError("step failed")) == "step failed"  # anything else: as before
    wrapped = RuntimeError("task failed")
    wrapped.__cause__ = err.value
    assert cli.one_line(wrapped) == f"no space left on device writing {target}"  # found under a wrapper
    plain = OSError(errno.ENOSPC, "No space left on device", str(target))
    assert cli.one_line(plain) == f"no space left on device writing {target}"
    # numpy's tofile: "N requested and M written", no errno: full only if the rest no longer fits
    short = OSError("4901888 requested and 812992 written")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(60 << 20, 60 << 20, 4096))
    assert disk_full(short, target)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(60 << 30, 1 << 30, 50 << 30))
    assert not disk_full(short, target)
