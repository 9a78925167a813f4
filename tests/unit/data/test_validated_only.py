"""Only validated data is trained on: each partition version carries its validation outcome (passed,
failed, not validated); prepare reads only versions that passed, stops when the run date's own did
not, and lists the earlier ones it left out; train validates what was never validated first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.data.ingest import ingest
from pipelines.data.lake import (
    NotEligible,
    current_version,
    data_version,
    partition_dir,
    record_validation,
    validation_of,
)
from pipelines.data.validate import ValidationFailed
from pipelines.features.embedding import prepare_dataset
from pipelines.flows.cli import main, one_line

REPO = Path(__file__).resolve().parents[3]
D1, D2, D3, D4 = "2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"


def _ingest(settings, synthetic_jsonl, day: str, n: int = 300, seed: int = 0):
    return ingest([synthetic_jsonl(n, seed=seed, name=f"{day}-{seed}-{n}.jsonl.gz")], day, settings)


def _dataset_json(ds: dict) -> dict:
    return json.loads((Path(ds["dir"]) / "dataset.json").read_text())


def test_a_version_committed_but_never_validated_reads_not_validated(settings, synthetic_jsonl, capsys):
    """A crash right after the commit (before any validation) leaves a version that reads
    not_validated, never passed; a re-ingest's new version starts not validated too."""
    src = synthetic_jsonl(120, seed=4)
    env = {**os.environ, "MELI_FAULT": "lake.committed", "PYTHONPATH": str(REPO)}
    killed = subprocess.run(
        [sys.executable, "-m", "pipelines", "ingest", str(src), "--run-date", D1],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    part = partition_dir(settings.listings_dir, D1)
    assert current_version(part).number == 1  # committed ...
    assert validation_of(part)["validation"] == "not_validated"  # ... and not validated
    with pytest.raises(NotEligible, match=rf"ingest_date={D1} \(version 1\) not validated: it is not trained on"):
        prepare_dataset(settings, D1)

    record_validation(part, 1, "passed", {"passed": 20, "evaluated": 20})
    assert validation_of(part)["validation"] == "passed"
    _ingest(settings, synthetic_jsonl, D1, 130, seed=4)  # a re-ingest: version 2, not validated yet
    assert validation_of(part)["validation"] == "not_validated"
    assert validation_of(part, version=1)["validation"] == "passed"  # the record belongs to version 1 only
    _ingest(settings, synthetic_jsonl, D2, 150, seed=5)
    record_validation(partition_dir(settings.listings_dir, D2), 1, "failed", {"critical_failures": ["x"]})

    assert main(["lake", "status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert [(p["ingest_date"], p["version"], p["validation"]) for p in st["partitions"]] == [
        (D1, 2, "not_validated"),
        (D2, 1, "failed"),
    ]
    assert main(["lake", "status"]) == 0
    table = capsys.readouterr().out
    assert "validation" in table.splitlines()[1] and "not_validated" in table and "failed" in table


def test_prepare_reads_only_passed_versions_and_lists_the_partitions_left_out(settings, synthetic_jsonl):
    parts = {}
    for i, day in enumerate((D1, D2, D3, D4)):
        r = _ingest(settings, synthetic_jsonl, day, 300, seed=10 + i)
        parts[day] = Path(r.partition)
    record_validation(parts[D1], 1, "passed")
    record_validation(parts[D2], 1, "failed", {"critical_failures": ["CRITICAL FAIL expect_table_row_count"]})
    # D3: committed, never validated
    record_validation(parts[D4], 1, "passed")

    ds = prepare_dataset(settings, D4)
    info = _dataset_json(ds)
    assert (
        info["excluded"]
        == ds["excluded"]
        == [
            {"ingest_date": D2, "version": 1, "validation": "failed", "reason": "failed validation"},
            {"ingest_date": D3, "version": 1, "validation": "not_validated", "reason": "not validated"},
        ]
    )
    assert info["lake_versions"] == {D1: 1, D4: 1}
    assert info["data_version"] == ds["data_version"] == data_version({D1: 1, D4: 1})
    assert [p["ingest_date"] for p in info["lineage"]] == [D1, D4]
    for split in ("train", "validation", "test"):
        dates = set(pq.read_table(Path(ds["dir"]) / f"{split}.parquet").column("ingest_date").to_pylist())
        assert dates <= {D1, D4}, split

    # the run date's own failed partition stops prepare (and `train`) in one line
    with pytest.raises(NotEligible) as err:
        prepare_dataset(settings, D2)
    msg = one_line(err.value)
    assert msg == str(err.value) and "\n" not in msg
    assert f"ingest_date={D2} (version 1) failed validation: it is not trained on; fix the batch and re-ingest" in msg
    with pytest.raises(NotEligible, match="failed validation"):
        main(["train", "--run-date", D2, "--models", "mlp"])  # D1 passed, D2 failed: nothing left to validate


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_ingest_then_train_validates_first_and_a_fixed_reingest_becomes_eligible(
    settings, synthetic_jsonl, monkeypatch
):
    """GX for real: train validates every partition never validated (oldest first); an earlier one
    that fails is left out, the run date's own failure stops the run; re-ingesting the fixed batch
    makes it eligible once it passes."""
    from pipelines.flows import retrain

    _ingest(settings, synthetic_jsonl, D1, 400, seed=1)
    _ingest(settings, synthetic_jsonl, D2, 30, seed=2)  # under MELI_VALIDATE_MIN_ROWS (50): critical
    with pytest.raises(ValidationFailed, match=rf"critical expectations failed for {D2}"):
        retrain.step_prepare(settings, D2, None)
    p1, p2 = partition_dir(settings.listings_dir, D1), partition_dir(settings.listings_dir, D2)
    assert validation_of(p1)["validation"] == "passed"
    assert validation_of(p2)["validation"] == "failed" and validation_of(p2)["critical_failures"]

    # `train` on the next date: validates D3 first, trains without the failed D2
    _ingest(settings, synthetic_jsonl, D3, 400, seed=3)
    seen = {}

    def stop(settings_, dataset, cfg):
        seen.update(dataset.to_dict())
        raise _Stop

    monkeypatch.setattr(retrain, "step_embedding", stop)
    with pytest.raises(_Stop):
        main(["train", "--run-date", D3, "--models", "mlp"])
    assert validation_of(partition_dir(settings.listings_dir, D3))["validation"] == "passed"
    assert [(e["ingest_date"], e["reason"]) for e in seen["excluded"]] == [(D2, "failed validation")]
    assert _dataset_json(seen)["lake_versions"] == {D1: 1, D3: 1}

    # the fixed batch, re-ingested: a new version, validated by the next prepare, then trained on
    r = _ingest(settings, synthetic_jsonl, D2, 400, seed=2)
    assert r.version == 2 and validation_of(p2)["validation"] == "not_validated"
    ds = retrain.step_prepare(settings, D3, None)
    assert validation_of(p2)["validation"] == "passed" and validation_of(p2)["version"] == 2
    assert ds.excluded == []
    assert _dataset_json(ds.to_dict())["lake_versions"] == {D1: 1, D2: 2, D3: 1}
