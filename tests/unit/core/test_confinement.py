"""Issue 35 item 5: what the trigger form, asset events and link files name stays inside its roots.

DAG Params and asset events read only under $MELI_HOME/landing and MELI_INPUT_ROOTS and write only
under $MELI_HOME; event extras are parsed; study and recipe names are single safe path components;
a link file naming a file outside its folder is not followed. The CLI stays free."""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import pytest

import pipelines.monitoring.links as links
from pipelines.core.paths import OutsideRoot, check_output, event_extras
from pipelines.flows.retrain import step_ingest

REPO = Path(__file__).resolve().parents[3]
RUN_DATE = "2026-11-01"


@pytest.fixture
def dag(meli_home, monkeypatch):
    """A factory: the DAG object of dags/<name>.py, parsed in this process (no Airflow DB needed);
    Airflow's configuration as the Makefile sets it (airflow.cfg reads MELI_HOME)."""
    monkeypatch.setenv("AIRFLOW_HOME", str(meli_home / "airflow"))
    monkeypatch.setenv("AIRFLOW_CONFIG", str(REPO / "airflow.cfg"))

    import airflow  # noqa: F401  (initialised whole first, as the dag processor does, before airflow.sdk)

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"_test_dag_{name}", REPO / "dags" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return getattr(mod, name)()

    return load


def _outside(tmp_path, synthetic_jsonl) -> Path:
    f = synthetic_jsonl(200)  # under tmp_path/in: outside $MELI_HOME and any input root
    assert not f.resolve().is_relative_to(tmp_path / "meli")
    return f


def test_dag_sources_outside_the_roots_are_refused_and_the_cli_stays_free(
    settings, tmp_path, synthetic_jsonl, monkeypatch
):
    f = _outside(tmp_path, synthetic_jsonl)
    for sources in (
        [str(f)],
        [str(f.parent / "*.jsonl.gz")],
        [str(settings.home / "landing" / ".." / ".." / "in" / f.name)],
    ):
        with pytest.raises(OutsideRoot) as err:
            step_ingest(settings, sources, RUN_DATE, confine=True)
        msg = str(err.value)
        assert "\n" not in msg and str(f.resolve()) in msg and str(settings.home / "landing") in msg
    assert not (settings.listings_dir / f"ingest_date={RUN_DATE}").exists()  # nothing was read into the lake
    # a folder named in MELI_INPUT_ROOTS is allowed
    monkeypatch.setenv("MELI_INPUT_ROOTS", f"/nonexistent-root{os.pathsep}{f.parent}")
    from pipelines.settings import get_settings

    allowed = get_settings()
    assert step_ingest(allowed, [str(f)], RUN_DATE, confine=True).rows_written > 0
    # the CLI (no confinement) reads what its user names
    assert step_ingest(settings, [str(f)], "2026-11-02").rows_written > 0


def test_a_landing_symlink_pointing_outside_is_refused(settings, tmp_path, synthetic_jsonl):
    f = _outside(tmp_path, synthetic_jsonl)
    landing = settings.home / "landing"
    landing.mkdir(parents=True)
    (landing / "listings.jsonl.gz").symlink_to(f)
    with pytest.raises(OutsideRoot, match="outside the allowed folders"):
        step_ingest(settings, [], RUN_DATE, confine=True)
    assert (landing / "listings.jsonl.gz").is_symlink()  # not claimed either
    with pytest.raises(OutsideRoot):
        step_ingest(settings, [str(landing / "listings.jsonl.gz")], RUN_DATE, confine=True)


def test_relative_input_roots_are_a_clear_error(meli_home, monkeypatch):
    from pipelines.settings import get_settings

    monkeypatch.setenv("MELI_INPUT_ROOTS", "data/in")
    with pytest.raises(ValueError, match="MELI_INPUT_ROOTS"):
        get_settings()


def test_retrain_dag_ingest_task_refuses_a_source_outside(settings, tmp_path, synthetic_jsonl, dag):
    from airflow.sdk.exceptions import AirflowFailException

    f = _outside(tmp_path, synthetic_jsonl)
    ingest = dag("meli_retrain").get_task("ingest").python_callable
    params = {"run_date": RUN_DATE, "sources": [str(f)], "input_format": "auto", "allow_empty": False}
    with pytest.raises(AirflowFailException, match="outside the allowed folders"):
        ingest(params=params, triggering_asset_events={})
    assert not (settings.listings_dir / f"ingest_date={RUN_DATE}").exists()


def test_score_output_outside_meli_home_is_refused(settings, tmp_path, synthetic_jsonl, dag):
    from airflow.sdk.exceptions import AirflowFailException

    assert check_output(settings, settings.home / "adhoc" / "x.parquet").is_relative_to(settings.home / "adhoc")
    for bad in (tmp_path / "x.parquet", settings.home / ".." / "x.parquet", Path("/etc/x.parquet")):
        with pytest.raises(OutsideRoot, match="output"):
            check_output(settings, bad)
    landing = settings.home / "landing"
    landing.mkdir(parents=True)
    src = landing / "in.jsonl.gz"
    src.write_bytes(_outside(tmp_path, synthetic_jsonl).read_bytes())
    score = dag("meli_score").get_task("score").python_callable
    params = {"input": str(src), "output": str(tmp_path / "out.parquet"), "model": "champion"}
    params |= {"input_format": "auto", "run_date": None, "shadow": False}
    with pytest.raises(AirflowFailException, match="output .* outside"):
        score(params=params, triggering_asset_events={})
    assert not (tmp_path / "out.parquet").exists()
    # the input Param too: a file outside the roots is not read
    params |= {"input": str(tmp_path / "in" / "listings.jsonl.gz"), "output": None}
    with pytest.raises(AirflowFailException, match="input .* outside"):
        score(params=params, triggering_asset_events={})


def test_score_output_stays_in_adhoc_and_replaces_only_a_scoring_output(settings, tmp_path):
    """Security item 3: meli_score's ``output`` writes only under $MELI_HOME/adhoc/: not over the lake's
    partitions, Airflow's DB and JWT secret or the note key; an existing file there only when scored."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = settings.listings_dir / f"ingest_date={RUN_DATE}" / "v1" / "part-00000.parquet"
    for target in (
        part,
        settings.home / "airflow" / "airflow.db",
        settings.home / "airflow" / "jwt_secret",
        settings.home / "secrets" / "note.key",
        settings.home / "exports" / "x.parquet",
        settings.home / "adhoc" / ".." / "lake" / "x.parquet",
    ):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"keep")
        with pytest.raises(OutsideRoot, match=r"output .* outside the allowed folders \(.*adhoc\)"):
            check_output(settings, target)
        assert target.read_bytes() == b"keep"
    adhoc = settings.home / "adhoc"
    assert check_output(settings, "mine/x.parquet") == (adhoc / "mine" / "x.parquet").resolve()  # relative: there
    with pytest.raises(ValueError, match="must be a .parquet file"):
        check_output(settings, adhoc / "x.db")
    (adhoc / "link.parquet").symlink_to(part)  # a link out of adhoc: resolved first
    with pytest.raises(OutsideRoot):
        check_output(settings, adhoc / "link.parquet")
    other = adhoc / "other.parquet"
    pq.write_table(pa.table({"a": [1]}), other)
    with pytest.raises(ValueError, match="exists and is not a previous scoring output"):
        check_output(settings, other)
    from pipelines.serving.score import SCORED_SCHEMA

    scored = adhoc / "scored.parquet"
    pq.write_table(SCORED_SCHEMA.empty_table(), scored)
    assert check_output(settings, scored) == scored.resolve()


def test_malformed_asset_extras_are_refused(settings, dag):
    part = settings.listings_dir / f"ingest_date={RUN_DATE}"
    part.mkdir(parents=True)
    ok = event_extras(settings, [{"partition": str(part), "run_date": RUN_DATE}])
    assert ok == [{"partition": str(part.resolve()), "run_date": RUN_DATE}]
    for extra in (
        {"partition": "/etc", "run_date": RUN_DATE},
        {"partition": str(settings.listings_dir / ".." / ".." / ".."), "run_date": RUN_DATE},
        {"partition": str(part), "run_date": "../../etc"},
        {"partition": str(part), "run_date": "2026-13-45"},
        {"partition": ["x"]},
        "not a mapping",
    ):
        with pytest.raises(ValueError) as err:
            event_extras(settings, [extra])
        assert "\n" not in str(err.value)
    from airflow.sdk.exceptions import AirflowFailException

    score = dag("meli_score").get_task("score").python_callable
    params = {"input": None, "output": None, "model": "champion", "input_format": "auto", "run_date": None}
    events = {"meli_lake_listings": [SimpleNamespace(extra={"partition": "/etc", "run_date": RUN_DATE})]}
    with pytest.raises(AirflowFailException, match="asset event partition"):
        score(params=params | {"shadow": False}, triggering_asset_events=events)


def test_study_and_recipe_names_cannot_escape_their_folders(settings, tmp_path):
    from pipelines.config import TrainConfig, load_recipe
    from pipelines.flows.cli import main
    from pipelines.training.tune import TuneConfig, study_name

    for bad in ("../x", "..", ".", "a/b", "/etc/hostname", "x y", "x\n"):
        with pytest.raises(ValueError, match="not a valid name"):
            TrainConfig(recipe=bad)
        with pytest.raises(ValueError, match="not a valid name"):
            TuneConfig(study=bad)
    with pytest.raises(ValueError, match="not a valid name"):
        load_recipe(settings.recipes_dir, "../../../etc/passwd")
    with pytest.raises(ValueError, match="not a valid name"):
        study_name(TuneConfig(), "../x")  # the default name from a run date
    assert study_name(TuneConfig(), RUN_DATE) == f"meli-tune-{RUN_DATE}"
    # from the CLI: refused before any work starts
    with pytest.raises(ValueError, match="study '../evil'"):
        main(["tune", "--study", "../evil", "--run-date", RUN_DATE])
    with pytest.raises(ValueError, match="recipe '../evil'"):
        main(["train", "--recipe", "../evil", "--run-date", RUN_DATE])
    assert not settings.tune_dir.exists() and not settings.run_dir(RUN_DATE).exists()
    # a recipe file whose id is not a valid name is refused too (the id names MLflow artifacts and tags)
    settings.recipes_dir.mkdir(parents=True)
    (settings.recipes_dir / "r1.json").write_text(json.dumps({"id": "../x", "created_at": "1", "params": {}}))
    with pytest.raises(ValueError, match="recipe id"):
        load_recipe(settings.recipes_dir, "r1")


def _client():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from pipelines.flows.airflow_ui import app

    root = FastAPI()
    root.mount("/meli", app())
    return TestClient(root)


def test_link_files_naming_etc_hostname_are_not_followed(settings, monkeypatch, airflow_tokens):
    from pipelines.data.validate import run_key, run_link
    from pipelines.registry.decisions import decision_for_run
    from pipelines.registry.records import run_link_path

    run_id = "manual__2026-11-21T02:00:00+00:00"
    secret = Path("/etc/hostname")
    if not secret.is_file():  # any file outside $MELI_HOME stands in for it
        secret = Path(__file__)
    # the drift report tab: a monitor link naming a page outside $MELI_HOME/monitor

    link = {"run_id": run_id, "report_html": str(secret), "report_json": None, "note": "x"}
    links.monitor_link_path(settings, run_id).parent.mkdir(parents=True)
    links.monitor_link_path(settings, run_id).write_text(json.dumps(link))
    assert links.monitor_link(settings, run_id) is None
    q = urllib.parse.quote(run_id, safe="")
    r = _client().get(f"/meli/runs/meli_score/{q}/monitor", headers=airflow_tokens["viewer"])
    assert r.status_code == 404 and secret.read_text()[:20] not in r.text
    # the Data Docs tab: a validation link naming a page outside the GX folder
    vpath = settings.home / "validation" / "by_run" / f"{run_key('meli_retrain', run_id)}.json"
    vpath.parent.mkdir(parents=True)
    vpath.write_text(json.dumps({"dag_id": "meli_retrain", "run_id": run_id, "data_docs_index": str(secret)}))
    assert run_link(settings, "meli_retrain", run_id) is None
    # the gate decision tab: a decision link naming files outside $MELI_HOME/work
    outside = settings.home.parent / "decision.json"
    outside.write_text(json.dumps({"dag_run_id": run_id, "challenger_version": "1"}))
    dpath = run_link_path(settings, run_id)
    dpath.parent.mkdir(parents=True)
    dpath.write_text(json.dumps({"decision_json": str(outside), "decision_md": str(secret)}))
    assert decision_for_run(settings, run_id) is None
    assert _client().get(f"/meli/runs/meli_retrain/{q}/decision", headers=airflow_tokens["viewer"]).status_code == 404
    # a link inside its folder is still honoured
    page = settings.monitor_dir / "v1" / "r.html"
    page.parent.mkdir(parents=True)
    page.write_text("<h1>drift report</h1>")
    report = {"status": "ok", "version": "1", "run_date": "2026-11-21", "scored_rows": 900, "reason": ""}
    links.link_monitor_run(settings, run_id, report | {"estimate": {"macro_recall": 0.8}, "report_html": str(page)})
    r = _client().get(f"/meli/runs/meli_score/{q}/monitor", headers=airflow_tokens["viewer"])
    assert r.status_code == 200 and "drift report" in r.text


def test_a_tuning_study_whose_prepared_file_names_outside_folders_is_refused(settings):
    from pipelines.training.tune import TuneConfig, prepare

    root = settings.tune_dir / "s1"
    root.mkdir(parents=True)
    info = {"study": "s1", "dataset_dir": "/etc", "embedding_dir": str(root / "emb"), "epochs": 1}
    info |= {"mlflow_run_id": "r", "data_version": "d"}
    (root / "prepared.json").write_text(json.dumps(info))
    with pytest.raises(OutsideRoot, match="/etc"):
        prepare(settings, RUN_DATE, TuneConfig(study="s1"))
