"""Batch scoring: one model version per run, every input row out (bad ones with a reason)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest

from pipelines.data.lake import read_partition, resolve, versions
from pipelines.serving.score import SCORED_SCHEMA, event_run_date, resolve_input, score
from pipelines.settings import get_settings


@pytest.fixture
def s(trained_home):
    """A MELI_HOME with two registered versions; v1 is the champion (tests/conftest.py)."""
    return get_settings()


def _input(tmp_path):
    lines = [
        json.dumps({"title": "Zapatillas Nike Air Max", "category": "SNEAKERS", "language": "spanish"}),
        json.dumps({"title": "Celular Samsung Galaxy S10", "language": "spanish"}),
        json.dumps({"id": "MLA123", "title": "Capinha celular Motorola", "language": "portuguese"}),
        json.dumps({"title": "   "}),
        json.dumps({"title": "x" * 5000}),
        json.dumps({"title": "de la y"}),
        '{"title": "broken',
        json.dumps({"title": None}),
    ]
    p = tmp_path / "new.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p, lines


def test_output_schema_rows_and_reasons(s, tmp_path):
    src, lines = _input(tmp_path)
    out = tmp_path / "scored.parquet"
    res = score(s, src, out, progress=False)
    t = pq.read_table(out)
    assert t.schema.equals(SCORED_SCHEMA)
    assert t.num_rows == len(lines) == res.rows
    rows = {r["source_row"]: r for r in t.to_pylist()}
    assert rows[1]["title"] == "Zapatillas Nike Air Max" and rows[1]["predicted_category"]
    assert 0 < rows[1]["probability"] <= 1 and len(rows[1]["top_k_categories"]) == 3
    assert rows[3]["listing_id"] == "MLA123"
    assert {r: rows[r]["reason"] for r in (4, 5, 6, 7, 8)} == {
        4: "empty_title",
        5: "title_too_long",
        6: "no_usable_tokens",
        7: "bad_json",
        8: "missing_title",
    }
    assert all(rows[r]["predicted_category"] is None for r in (4, 5, 6, 7, 8))
    assert res.scored == 3 and res.unscorable == 5
    assert set(t.column("model_version").to_pylist()) == {res.model_version} == {"1"}


def test_rows_keep_input_order_ids_and_length_rule_of_ingest(s, tmp_path, monkeypatch):
    from pipelines.data.ingest import ingest

    padded = "  " + "Celular " * 124 + "x" + " " * 20  # > 1000 characters only with its padding
    lines = [
        json.dumps({"title": "Zapatillas Nike Air Max", "category": " SNEAKERS ", "language": "spanish"}),
        '{"title": "broken',
        json.dumps({"title": padded, "category": "CELLPHONES", "language": "spanish"}),
    ]
    src = tmp_path / "order.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scored.parquet"
    score(s, src, out, progress=False)
    rows = pq.read_table(out).to_pylist()
    assert [(r["source_row"], r["status"]) for r in rows] == [(1, "scored"), (2, "unscorable"), (3, "scored")]
    monkeypatch.setenv("MELI_LAKE_URI", str(tmp_path / "lake"))  # not the shared home's lake
    lake = read_partition(Path(ingest([src], "2026-11-09", get_settings()).partition))
    lake = lake.to_pylist()
    assert {r["source_row"]: r["listing_id"] for r in lake} == {
        r["source_row"]: r["listing_id"] for r in rows if r["listing_id"]
    }


def test_version_is_fixed_at_start_even_if_alias_moves(s, tmp_path):
    src, lines = _input(tmp_path)
    client = mlflow.MlflowClient()

    def move_alias(name, version):
        assert version == "1"
        client.set_registered_model_alias(name, "champion", "2")  # a promotion lands mid-run

    try:
        res = score(s, src, tmp_path / "o.parquet", progress=False, on_resolved=move_alias, chunk_rows=2)
        versions = set(pq.read_table(tmp_path / "o.parquet").column("model_version").to_pylist())
        assert res.model_version == "1" and versions == {"1"}
    finally:
        client.set_registered_model_alias(s.model_name, "champion", "1")


def test_lake_partition_output_is_replaced_on_rerun(s, tmp_path):
    src, lines = _input(tmp_path)
    for _ in range(2):  # the champion (v1), named by its number
        res = score(s, src, None, model="1", run_date="2026-11-05", progress=False)
    part = s.scored_dir / "run_date=2026-11-05"
    files = list(resolve(part).glob("*.parquet"))
    assert len(files) == 1 and pq.read_table(files[0]).num_rows == len(lines)
    assert [v.number for v in versions(part)] == [2, 1]  # the previous scores kept as a version
    assert res.model_version == "1"
    assert not [p for p in s.scored_dir.iterdir() if p.name.startswith(".")]


def test_scores_a_lake_partition_and_resolves_inputs(s, tmp_path):
    part = resolve_input(s, "", [])
    assert part.endswith("ingest_date=2026-11-02")
    assert resolve_input(s, "", [{"partition": str(s.listings_dir / "ingest_date=2026-11-01")}]).endswith("11-01")
    # events of two retrain runs (a backfill queued behind a nightly run): the newest date's partition
    # is scored, and its scores are filed under that run's date, not under the day they are scored
    events = [
        {"partition": str(s.listings_dir / "ingest_date=2026-11-02"), "run_date": "2026-11-02"},
        {"partition": str(s.listings_dir / "ingest_date=2026-11-01"), "run_date": "2026-11-01"},
    ]
    assert resolve_input(s, "", events).endswith("11-02")
    assert event_run_date(events[1]["partition"], events) == "2026-11-01"
    assert event_run_date("/elsewhere", events) is None
    res = score(s, part, tmp_path / "p.parquet", progress=False)
    n = read_partition(Path(part)).num_rows
    assert res.rows == n and res.unscorable == 0
    with pytest.raises(FileNotFoundError):
        resolve_input(s, "/nope.jsonl", [])


def test_unknown_model_is_a_clear_error(s, tmp_path):
    src, _ = _input(tmp_path)
    # a name that is no alias is a typo (issue 33), not a model to train first
    with pytest.raises(LookupError, match=r"'staging' is not a version or alias of meli-title-classifier \(aliases"):
        score(s, src, tmp_path / "x.parquet", model="staging", progress=False)


def test_cli_score_diplodatos_keeps_titles(s, tmp_path, capsys):
    from pipelines.data.synthetic import write_jsonl
    from pipelines.flows.cli import main

    src = write_jsonl(tmp_path / "d.jsonl.gz", 50, seed=4)
    out = tmp_path / "cli.parquet"
    assert main(["score", str(src), "--output", str(out), "--no-progress"]) == 0
    t = pq.read_table(out)
    import gzip

    titles = [json.loads(line)["title"] for line in gzip.open(src, "rt")]
    assert t.column("title").to_pylist() == titles
    assert t.column("predicted_category").null_count == 0


def test_two_scoring_runs_of_one_date_both_commit(s, tmp_path):
    """Two `score` commands for the same run date at once: serialised by the partition lock, each
    commits a whole version (before: '[Errno 2] ... .tmp-run_date=...')."""
    import subprocess
    import sys

    src, lines = _input(tmp_path)
    env = {**os.environ, "MELI_HOME": str(s.home), "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    cmd = [sys.executable, "-m", "pipelines", "score", str(src), "--run-date", "2026-11-07", "--no-progress"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    part = s.scored_dir / "run_date=2026-11-07"
    assert [v.number for v in versions(part)] == [2, 1]
    for v in versions(part):
        assert pq.read_table(v.dir / "part-00000.parquet").num_rows == len(lines)


def test_cli_score_without_output_never_replaces_the_nightly_partition(s, tmp_path, capsys):
    from pipelines.flows.cli import main

    nightly = s.scored_dir / "run_date=2026-11-08"
    src, lines = _input(tmp_path)
    assert main(["score", str(src), "--run-date", "2026-11-08", "--no-progress"]) == 0  # as the DAG does
    capsys.readouterr()
    before = resolve(nightly)
    assert main(["score", str(src), "--no-progress"]) == 0  # ad hoc: a named file of its own
    out = json.loads(capsys.readouterr().out)["output"]
    assert Path(out).parent == s.home / "adhoc" / "scored" and Path(out).name.startswith("new-")
    assert pq.read_table(out).num_rows == len(lines)
    assert resolve(nightly) == before and [v.number for v in versions(nightly)] == [1]


def test_nothing_scorable_exits_non_zero_and_writes_nothing(s, tmp_path, capsys):
    import random

    from pipelines.serving.score import NothingScorable

    junk = tmp_path / "random.bin"
    junk.write_bytes(random.Random(0).randbytes(3000).replace(b"\n", b"\x00") + b"\n" + b"\xff" * 100)
    part = s.scored_dir / "run_date=2026-11-10"
    score(s, src := _input(tmp_path)[0], None, run_date="2026-11-10", progress=False)
    with pytest.raises(NothingScorable, match=r"random.bin: nothing scorable in \d+ rows \(.*\); nothing written"):
        score(s, junk, None, run_date="2026-11-10", progress=False)
    assert [v.number for v in versions(part)] == [1]  # the partition kept its scores
    out = tmp_path / "x.parquet"
    with pytest.raises(NothingScorable):
        score(s, junk, out, progress=False)
    assert not out.exists() and src.exists()


def test_a_missing_input_fails_before_the_model_is_loaded(tmp_path, monkeypatch):
    """On a home with no model at all the error is about the input, not the missing champion."""
    from pipelines.data.ingest import IngestError
    from pipelines.settings import get_settings

    monkeypatch.setenv("MELI_HOME", str(tmp_path / "empty-home"))
    with pytest.raises(IngestError, match="no such file"):
        score(get_settings(), tmp_path / "nope.jsonl", tmp_path / "o.parquet", progress=False)
    assert not (tmp_path / "empty-home" / "mlflow").exists()


@pytest.mark.parametrize("name", ["encoder.json", "weights.pt", "labels.json"])
def test_a_corrupt_bundle_file_is_one_line_naming_the_file_and_the_version(s, tmp_path, monkeypatch, capsys, name):
    """A bundle file overwritten in the artifact store: `model v2: bundle file encoder.json is corrupt: ...`
    (before: `error: Expecting value: line 1 column 1`, naming neither)."""
    import sys

    from pipelines.flows import cli

    mv = mlflow.MlflowClient(s.tracking_uri).get_model_version(s.model_name, "2")
    model_id = mv.model_id or mv.source.rstrip("/").rsplit("/", 1)[-1]  # models:/m-...
    found = sorted(s.mlflow_artifacts.rglob(f"bundle/{name}"))
    paths = [p for p in found if model_id in str(p)]
    assert len(paths) == 1, (mv.source, found)
    path = paths[0]
    original = path.read_bytes()
    path.write_bytes(b"\x00 not what was logged")
    try:
        src, _ = _input(tmp_path)
        argv = ["pipelines", "score", str(src), "--model", "2", "--output", str(tmp_path / "o.parquet")]
        monkeypatch.setattr(sys, "argv", [*argv, "--no-progress"])
        with pytest.raises(SystemExit) as exit_:
            cli.entrypoint()
    finally:
        path.write_bytes(original)
    assert exit_.value.code == 1
    [line] = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith(f"error: model v2: bundle file {name} is corrupt: "), line
    assert not (tmp_path / "o.parquet").exists()


def test_only_the_champion_writes_the_scored_partition(s, tmp_path, monkeypatch, capsys):
    """v2 (registered, not promoted) never writes lake/scored: the CLI refuses in one line, the DAG's
    call scores it to an ad-hoc file instead; MELI_SCORING_VERSION names a version that may."""
    from pipelines.flows.cli import main
    from pipelines.serving.score import NotServed

    src, lines = _input(tmp_path)
    part = s.scored_dir / "run_date=2026-11-12"
    rule = r"v2 is not the champion \(v1\): only the champion or MELI_SCORING_VERSION writes lake/scored"
    with pytest.raises(NotServed, match=rule):
        score(s, src, None, model="2", run_date="2026-11-12", progress=False)
    with pytest.raises(NotServed, match=rule):  # the CLI: `score --model 2 --run-date D`
        main(["score", str(src), "--model", "2", "--run-date", "2026-11-12", "--no-progress"])
    with pytest.raises(NotServed, match="lies in the lake's scored partitions"):  # nor a file put inside it
        score(s, src, part / "mine.parquet", model="2", progress=False)
    assert not part.exists()

    res = score(s, src, None, model="2", run_date="2026-11-12", progress=False, adhoc_unless_served=True)
    assert Path(res.output).parent == s.home / "adhoc" / "scored" and res.model_version == "2"
    assert pq.read_table(res.output).num_rows == len(lines) and not part.exists()

    monkeypatch.setenv("MELI_SCORING_VERSION", "2")  # the deployment pins v2
    res = score(get_settings(), src, None, model="2", run_date="2026-11-12", progress=False)
    assert res.model_version == "2" and [v.number for v in versions(part)] == [1]


def test_each_test_gets_the_home_as_trained(trained_home_template, s):
    """What a test writes in the shared trained home is gone for the next one: the home is restored at
    its own path, and this process's MLflow (one cached engine per store URI) reads the restored store."""
    from tests.conftest import restore_trained_home

    home, template = trained_home_template
    client = mlflow.MlflowClient(s.tracking_uri, s.registry_uri)
    client.set_registered_model_alias(s.model_name, "champion", "2")
    client.set_model_version_tag(s.model_name, "1", "scratch", "x")
    (home / "scratch.txt").write_text("x")
    assert str(client.get_model_version_by_alias(s.model_name, "champion").version) == "2"

    restore_trained_home(template, home)
    assert str(client.get_model_version_by_alias(s.model_name, "champion").version) == "1"
    assert "scratch" not in client.get_model_version(s.model_name, "1").tags
    assert not (home / "scratch.txt").exists()
    assert read_partition(s.listings_dir / "ingest_date=2026-11-02").num_rows > 0
