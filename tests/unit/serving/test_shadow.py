"""Shadow scoring: the agreement report's numbers on hand-made outputs, which version shadows, and
that the served scores never depend on the shadow part."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data.lake import read_partition, resolve
from pipelines.flows.scoring import score_listings
from pipelines.serving import shadow
from pipelines.serving.score import SCORED_SCHEMA, score
from pipelines.serving.shadow import agreement, latest_report, shadow_candidate
from pipelines.settings import get_settings
from tests.unit.serving.test_score import _input


@pytest.fixture
def s(trained_home):
    """v1 the champion, v2 a rejected challenger (tests/conftest.py)."""
    return get_settings()


def _scored(cats: list[str | None], probs: list[float | None]) -> pa.Table:
    return pa.table(
        {
            "source_row": list(range(1, len(cats) + 1)),
            "listing_id": [f"L{i}" for i in range(len(cats))],
            "status": ["scored" if c is not None else "unscorable" for c in cats],
            "predicted_category": cats,
            "probability": probs,
        },
        schema=pa.schema([SCORED_SCHEMA.field(n) for n in shadow.COLUMNS]),
    )


def test_agreement_share_flips_per_category_and_confidence_shift():
    champ = _scored(
        ["A", "A", "A", "A", "B", "B", "B", "C", "C", None, "A"],
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.4, 0.9, 0.9, None, 0.5],
    )
    chall = _scored(
        ["A", "A", "B", "C", "B", "B", "A", "C", "C", "A", None],
        [0.95, 0.9, 0.6, 0.5, 0.6, 0.4, 0.8, 0.9, 0.95, 0.7, None],
    )
    # batch boundaries differ between the two files: rows are matched by position, not by batch
    r = agreement(champ.to_batches(max_chunksize=3), chall.to_batches(max_chunksize=4))
    assert r["rows"] == 9 and r["agree"] == 6  # rows 10 and 11 are scored by one version only
    assert r["agreement"] == pytest.approx(6 / 9)
    assert r["flips_by_category"] == [
        {"champion_category": "A", "rows": 4, "flips": 2, "flip_share": 0.5, "to": {"B": 1, "C": 1}},
        {"champion_category": "B", "rows": 3, "flips": 1, "flip_share": pytest.approx(1 / 3), "to": {"A": 1}},
    ]
    c = r["confidence"]
    champ_mean = (0.9 + 0.8 + 0.7 + 0.6 + 0.5 + 0.5 + 0.4 + 0.9 + 0.9) / 9
    chall_mean = (0.95 + 0.9 + 0.6 + 0.5 + 0.6 + 0.4 + 0.8 + 0.9 + 0.95) / 9
    assert c["champion_mean"] == pytest.approx(champ_mean) and c["challenger_mean"] == pytest.approx(chall_mean)
    assert c["shift"] == pytest.approx(chall_mean - champ_mean)
    assert c["challenger_more_confident_share"] == pytest.approx(5 / 9)  # rows 1, 2, 5, 7, 9
    assert c["on_disagreements"] == {
        "champion_mean": pytest.approx((0.7 + 0.6 + 0.4) / 3),
        "challenger_mean": pytest.approx((0.6 + 0.5 + 0.8) / 3),
    }
    json.dumps(r)  # plain JSON types


def test_agreement_top_flips_order_and_no_rows():
    cats = [f"C{i:02d}" for i in range(30) for _ in range(i + 1)]  # C29 has the most rows (and flips)
    other = ["X" if k % 2 == 0 else c for k, c in enumerate(cats)]
    r = agreement(_scored(cats, [0.5] * len(cats)).to_batches(), _scored(other, [0.5] * len(cats)).to_batches())
    flips = r["flips_by_category"]
    assert len(flips) == 20 and flips[0]["champion_category"] == "C29"
    assert [f["flips"] for f in flips] == sorted((f["flips"] for f in flips), reverse=True)
    assert all(set(f["to"]) == {"X"} for f in flips)
    empty = agreement(_scored([None], [None]).to_batches(), _scored([None], [None]).to_batches())
    assert empty["rows"] == 0 and empty["agreement"] is None and empty["flips_by_category"] == []
    with pytest.raises(ValueError, match="row counts"):
        agreement(_scored(["A", "B"], [0.5, 0.5]).to_batches(), _scored(["A"], [0.5]).to_batches())


def test_candidate_is_the_newest_version_above_the_served_one(s):
    assert shadow_candidate(s, "1") == "2"
    assert shadow_candidate(s, "2") is None


def test_shadow_beside_an_output_file_writes_scores_report_and_tags(s, tmp_path):
    src, lines = _input(tmp_path)
    out = tmp_path / "scored.parquet"
    res = score_listings(s, src, out, run_date="2026-11-20", progress=False, shadow=True)
    assert res.model_version == "1" and pq.read_table(out).num_rows == len(lines)
    sh = res.shadow
    assert sh["challenger_version"] == "2" and sh["champion_version"] == "1", sh
    side = tmp_path / "scored.shadow-v2.parquet"
    assert sh["shadow_output"] == str(side)
    t = pq.read_table(side)
    assert t.num_rows == len(lines) and set(t.column("model_version").to_pylist()) == {"2"}
    report = json.loads(Path(sh["report_json"]).read_text())
    assert Path(sh["report_json"]).parent == s.home / "shadow" / s.model_name / "v2"
    assert report["rows"] == sh["rows"] == 3 and report["champion_output"] == str(out)
    assert Path(report["report_md"]).read_text().startswith("# Shadow:")
    assert latest_report(s, "2")["created_at"] == report["created_at"]
    assert latest_report(s, "7") is None
    mv = mlflow.MlflowClient().get_model_version(s.model_name, "2")
    assert mv.tags["meli.shadow_report"] == sh["report_json"]
    assert mv.tags["meli.shadow_mlflow_run"] == sh["mlflow_run_id"]
    run = mlflow.MlflowClient().get_run(sh["mlflow_run_id"])
    assert run.info.run_name == "shadow-v2-vs-v1-2026-11-20" and run.data.metrics["rows"] == 3
    exp = mlflow.get_experiment(run.info.experiment_id)
    assert exp.name == f"{s.experiment}-shadow" and exp.artifact_location == (s.mlflow_artifacts / "shadow").as_uri()
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)} == {
        Path(sh["report_json"]).name,
        Path(sh["report_md"]).name,
    }
    assert "shadow" in res.to_dict()


def test_a_shadow_failure_keeps_the_served_scores_and_reports_the_error(s, tmp_path, monkeypatch):
    src, lines = _input(tmp_path)

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(shadow, "agreement", boom)  # after the shadow partition is committed
    res = score_listings(s, src, None, run_date="2026-11-21", progress=False, shadow=True)
    assert res.shadow == {"error": "RuntimeError: boom"}
    assert read_partition(s.scored_dir / "run_date=2026-11-21").num_rows == len(lines)

    monkeypatch.setattr(shadow, "load_bundle", lambda name, v: boom() if v == "2" else bundle_of(name, v))
    res = score_listings(s, src, None, run_date="2026-11-22", progress=False, shadow=True)
    assert res.shadow == {"error": "RuntimeError: boom"} and res.model_version == "1"
    assert read_partition(s.scored_dir / "run_date=2026-11-22").num_rows == len(lines)
    assert not (s.shadow_dir / "run_date=2026-11-22").exists()


def bundle_of(name: str, version: str):
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model().bundle


def test_shadow_off_writes_no_shadow_output(s, tmp_path, monkeypatch):
    src, _ = _input(tmp_path)
    res = score_listings(s, src, None, run_date="2026-11-23", progress=False, shadow=False)
    assert res.shadow is None and resolve(s.scored_dir / "run_date=2026-11-23").is_dir()
    monkeypatch.setenv("MELI_SHADOW", "0")  # None = the setting
    out = tmp_path / "off.parquet"
    assert score(get_settings(), src, out, progress=False).shadow is None
    assert not (s.shadow_dir / "run_date=2026-11-23").exists() and not list(tmp_path.glob("*.shadow-*"))
