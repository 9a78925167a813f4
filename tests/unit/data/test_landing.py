"""The nightly run's default input: the landing folder, claimed per run date (no re-ingest of old
files on later nights; reruns of a date read the same files)."""

from __future__ import annotations

import shutil

import pytest

from pipelines.data.synthetic import write_jsonl
from pipelines.flows.retrain import step_ingest


def test_landing_files_are_claimed_per_run_date(settings, tmp_path):
    landing = settings.home / "landing"
    write_jsonl(landing / "a.jsonl.gz", 300, seed=1)
    first = step_ingest(settings, [], "2026-11-01")
    assert first.rows_written == 300
    assert not (landing / "a.jsonl.gz").exists()
    assert (landing / "processed" / "2026-11-01" / "a.jsonl.gz").exists()

    rerun = step_ingest(settings, [], "2026-11-01")  # same date: same files, same partition
    assert rerun.rows_written == 300 and rerun.rows_quarantined == 0

    write_jsonl(landing / "a.jsonl.gz", 300, seed=1)  # re-delivered under the same name: replaces
    again = step_ingest(settings, [], "2026-11-01")
    assert again.rows_written == 300 and again.rows_quarantined == 0

    write_jsonl(landing / "b.jsonl.gz", 120, seed=2)
    nxt = step_ingest(settings, [], "2026-11-02")
    assert nxt.rows_read == 120  # yesterday's file is not ingested again

    shutil.rmtree(landing)
    with pytest.raises(FileNotFoundError, match="nothing to ingest"):
        step_ingest(settings, [], "2026-11-03")


def test_explicit_sources_and_globs(settings, tmp_path):
    write_jsonl(tmp_path / "x1.jsonl", 50, seed=3)
    write_jsonl(tmp_path / "x2.jsonl", 50, seed=4)
    out = step_ingest(settings, [str(tmp_path / "x*.jsonl")], "2026-11-05")
    assert out.rows_read == 100
    assert (tmp_path / "x1.jsonl").exists()  # explicit sources are never moved
    with pytest.raises(FileNotFoundError):
        step_ingest(settings, [str(tmp_path / "none*.jsonl")], "2026-11-05")
