"""Issue 33 (operator view): the schedule a person sees, runs with nothing new skipped, quiet logs,
MLflow that reads at a glance, a complete logged model, and the CLI's edges.

One tiny CLI retrain (in a subprocess, as a person runs it) serves the MLflow and CLI checks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipelines.flows.cli import main

REPO = Path(__file__).resolve().parents[3]
RUN_DATE = "2026-11-01"
TINY = ["--models", "mlp", "--epochs", "2", "--embedding-epochs", "2", "--no-refit", "--no-ensemble"]
TINY += ["--sentence-encoder", "none", "--embedding-dim", "16", "--bucket", "5000"]


def _env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "MLFLOW_TRACKING_URI")}
    env.pop("MLFLOW_REGISTRY_URI", None)
    env.pop("MELI_LAKE_URI", None)
    return env | {"MELI_HOME": str(home), "PYTHONPATH": str(REPO), "GX_ANALYTICS_ENABLED": "false"} | extra


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    """A MELI_HOME after one CLI retrain (v1 promoted), and that command's stderr."""
    from pipelines.data.synthetic import write_jsonl

    home = tmp_path_factory.mktemp("operator") / "meli"
    src = write_jsonl(home.parent / "listings.jsonl.gz", 900, seed=11)
    argv = ["retrain", str(src), "--run-date", RUN_DATE, *TINY, "--min-macro-recall", "0", "--min-behaviour-pass", "0"]
    # system metrics sampled every second, so that a seconds-long training records some
    env = _env(home, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1", MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING="1")
    r = subprocess.run(
        [sys.executable, "-m", "pipelines", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return {"home": home, "src": src, "stderr": r.stderr, "stdout": r.stdout}


@pytest.fixture
def s(retrained, monkeypatch):
    from pipelines.settings import get_settings

    monkeypatch.setenv("MELI_HOME", str(retrained["home"]))
    return get_settings()


# ------------------------------------------------------------------------------------------
# 1, 2: one-off runs and the schedule Airflow shows
# ------------------------------------------------------------------------------------------
_PARSE = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization
bag = DagBag(sys.argv[1])
assert not bag.import_errors, bag.import_errors
dag = bag.dags["meli_retrain"]
ser = DagSerialization.from_dict(DagSerialization.to_dict(dag))
info = ser.next_dagrun_info(last_automated_run_info=None)
print(json.dumps({"periodic": ser.timetable.periodic, "summary": ser.timetable.summary,
                  "next": info.run_after.isoformat() if info else None,
                  "tags": sorted(dag.tags), "description": dag.description}))
"""


def _parse_retrain_dag(tmp_path, **env) -> dict:
    from tests.integration.airflow_env import airflow_env

    base = airflow_env(tmp_path / "home")
    base.pop("MELI_RETRAIN_SCHEDULE", None)
    r = subprocess.run(
        [sys.executable, "-c", _PARSE, str(REPO / "dags")], env=base | env, capture_output=True, text=True, timeout=180
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _shown_in_dag_list(tags: list[str]) -> list[str]:
    """The tags Airflow 3's DAG list shows without "+N more": the API sorts a DAG's tags by name
    (airflow/api_fastapi/core_api/datamodels/dags.py serialize_tags) and the list's tag cell shows the
    first 3 (the UI's DagTags, maxItems 3)."""
    return sorted(tags)[:3]


def test_embedded_profile_has_no_time_schedule_so_unpausing_for_a_one_off_run_starts_no_nightly(tmp_path):
    out = _parse_retrain_dag(tmp_path)
    assert out["periodic"] is False and out["next"] is None  # only drift (and people) start runs
    assert "on drift (meli_drift) only (no time schedule)" in _shown_in_dag_list(out["tags"])
    assert "on drift (meli_drift) only" in out["description"]


def test_a_nightly_schedule_is_shown_and_its_next_run_is_in_the_future(tmp_path):
    out = _parse_retrain_dag(tmp_path, MELI_RETRAIN_SCHEDULE="0 2 * * *")
    assert out["periodic"] is True and out["summary"] == "Asset or 0 2 * * *"
    assert datetime.fromisoformat(out["next"]) > datetime.now(UTC)  # never the latest *past* 02:00
    assert "nightly 02:00 UTC or on drift (meli_drift)" in _shown_in_dag_list(out["tags"])
    assert "nightly 02:00 UTC or on drift" in out["description"]
    compose = (REPO / "docker" / "compose.yaml").read_text()
    assert "MELI_RETRAIN_SCHEDULE: ${MELI_RETRAIN_SCHEDULE-0 2 * * *}" in compose


def test_schedule_words():
    from pipelines.flows.schedules import cron_text, retrain_schedule_text

    assert cron_text("30 1 * * *") == "nightly 01:30 UTC" and cron_text("@weekly") == "cron '@weekly' UTC"
    assert retrain_schedule_text("") == "on drift (meli_drift) only (no time schedule)"


# ------------------------------------------------------------------------------------------
# 5: quiet logs
# ------------------------------------------------------------------------------------------
def test_a_successful_cli_retrain_logs_no_error_or_warning(retrained):
    noisy = [ln for ln in retrained["stderr"].splitlines() if re.search(r"ERROR|WARNING|Warning|warn\(", ln)]
    assert noisy == [], "\n".join(noisy)


def test_the_tuning_storage_raises_no_deprecation_or_experimental_warning(settings):
    import warnings

    from pipelines.training.tune import storage

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        storage(settings)
    assert [str(w.message) for w in caught] == []


def test_shadow_with_nothing_to_shadow_is_said_once():
    source = (REPO / "dags" / "meli_score.py").read_text()
    assert "no registered version above" not in source  # pipelines/serving/shadow.py's INFO line is the one


# ------------------------------------------------------------------------------------------
# 6, 7: MLflow readable, the logged model complete
# ------------------------------------------------------------------------------------------
def test_mlflow_names_describes_and_keeps_few_tags(s):
    import mlflow

    from pipelines.core.tracking import configure

    configure(s)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(s.experiment)
    assert "one parent run per retraining" in exp.tags["mlflow.note.content"]
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`meli.stage` = 'retrain'")
    assert re.fullmatch(rf"retrain {RUN_DATE} full \d\d:\d\d:\d\dZ", parent.info.run_name), parent.info.run_name
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith(f"Retraining on the lake as of {RUN_DATE}") and "Gate: **PROMOTED**" in note
    assert "decision is added here" not in note and note.endswith("CLI run.")  # a CLI retrain: no DAG run
    mv = client.get_model_version(s.model_name, "1")
    assert mv.description.startswith("**PROMOTED** by rule `first_model`") and "Test macro-recall" in mv.description
    assert mv.description.endswith("CLI run.") and "DAG run -" not in mv.description
    assert len(mv.tags) <= 14, sorted(mv.tags)
    assert not {"meli.reason", "meli.data_manifest", "meli.ci", "meli.val_macro_recall"} & set(mv.tags)
    assert {"meli.decision", "meli.model_type", "meli.run_date", "meli.lake_versions"} <= set(mv.tags)
    # the splits are MLflow datasets named by the data version; the metrics sit on the LoggedModel
    data_version = json.loads((s.run_dir(RUN_DATE) / "dataset" / "dataset.json").read_text())["data_version"]
    run = client.get_run(mv.run_id)
    inputs = {d.dataset.name: [t.value for t in d.tags if t.key == "mlflow.data.context"] for d in run.inputs.dataset_inputs}  # fmt: skip  # noqa: E501
    contexts = (("train", "training"), ("validation", "validation"), ("test", "test"))
    assert inputs == {f"{x}@{data_version}": [ctx] for x, ctx in contexts}
    model = client.get_logged_model(mv.source.removeprefix("models:/"))
    metrics = {m.key: m for m in model.metrics}
    assert metrics["test_macro_recall"].dataset_name == f"test@{data_version}"
    assert metrics["val_macro_recall"].dataset_name == f"validation@{data_version}"
    decision = json.loads((s.run_dir(RUN_DATE) / "evaluation" / "decision.json").read_text())
    assert metrics["test_macro_recall"].value == pytest.approx(decision["challenger_macro_recall"])


def test_the_logged_model_has_outputs_params_an_example_and_system_metrics(s):
    import mlflow
    import pandas as pd

    from pipelines.core.tracking import configure

    configure(s)
    model = mlflow.pyfunc.load_model(f"models:/{s.model_name}@champion")
    sig = model.metadata.signature
    assert sig.outputs.input_names() == ["predicted_category", "probability", "top_k_categories", "top_k_probabilities"]
    assert [(p.name, p.default) for p in sig.params.params] == [("top_k", 3)]
    assert model.metadata.saved_input_example_info["type"] == "dataframe"
    out = model.predict(pd.DataFrame({"title": ["Zapatillas Nike running", "Celular Samsung"]}), params={"top_k": 5})
    assert [len(k) for k in out["top_k_categories"]] == [5, 5]
    assert len(model.predict(pd.DataFrame({"title": ["Celular Samsung"]}))["top_k_categories"][0]) == 3
    run = mlflow.MlflowClient().get_run(mlflow.MlflowClient().get_model_version(s.model_name, "1").run_id)
    assert any(k.startswith("system/") for k in run.data.metrics), sorted(run.data.metrics)


def test_the_card_links_to_the_mlflow_ui_when_its_url_is_set(s, monkeypatch):
    import mlflow

    from pipelines.registry.card import gather, markdown

    assert "MLflow run: `" in markdown(gather(s, "1"))  # no UI URL: the id
    monkeypatch.setenv("MELI_MLFLOW_UI_URL", "http://mlflow.example:5000/")
    ctx = gather(s, "1")
    exp = mlflow.get_run(ctx["run_id"]).info.experiment_id
    md = markdown(ctx)
    assert f"[{ctx['run_id']}](http://mlflow.example:5000/#/experiments/{exp}/runs/{ctx['run_id']})" in md
    assert "(http://mlflow.example:5000/#/models/meli-title-classifier/versions/1)" in md


# ------------------------------------------------------------------------------------------
# 9: CLI edges
# ------------------------------------------------------------------------------------------
def test_cli_edges(s, retrained, capsys, monkeypatch):
    with pytest.raises(LookupError, match=r"'champoin' is not a version or alias of meli-title-classifier"):
        main(["score", str(retrained["src"]), "--model", "champoin"])
    assert main(["registry", "status"]) == 0
    table = capsys.readouterr().out
    assert re.search(r"champion: +v1 \(mlp, run date 2026-11-01, test macro-recall 0\.\d{4}\)", table), table
    assert main(["registry", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["champion"]["version"] == "1"
    assert main(["registry", "history"]) == 0
    heads = capsys.readouterr().out.splitlines()[0].split()
    assert heads[-3:] == ["review", "by", "why"]
    monkeypatch.setenv("MELI_MODEL_NAME", "meli-title-clasifier")
    assert main(["registry", "status"]) == 1
    assert "registered model 'meli-title-clasifier' does not exist" in capsys.readouterr().err
    monkeypatch.delenv("MELI_MODEL_NAME")
    from pipelines.flows.cli_parser import build_parser
    from tests.unit.flows.test_cli import _subparsers

    for name in ("settings", "lake"):
        assert _subparsers(build_parser())[name].description, name


def test_the_summary_of_a_gated_run_not_scored_yet_says_how_to_score_it(s, capsys):
    assert main(["summary", "--run-date", RUN_DATE]) == 0  # a CLI retrain gates; scoring is its own step
    out = capsys.readouterr().out
    assert "decision:            PROMOTED by rule 'first_model'" in out
    listings = s.home / "lake" / "listings" / f"ingest_date={RUN_DATE}"
    line = next(ln for ln in out.splitlines() if ln.startswith("scored Parquet:"))
    assert line == (
        f"scored Parquet:      not scored yet (meli score {listings} --run-date {RUN_DATE} / the meli_score DAG)"
    )


def test_the_readme_lists_each_place_once():
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Where things land", 1)[1].split("\n## ", 1)[0]
    paths = [ln.split("|")[1].strip() for ln in table.splitlines() if ln.startswith("| `")]
    assert len(paths) > 10 and len(paths) == len(set(paths)), sorted(p for p in paths if paths.count(p) > 1)
    listings = next(ln for ln in table.splitlines() if ln.startswith("| `lake/listings/"))
    assert "`raw_bytes` its whole length" in listings and "`_validation.json`" in listings
    assert "`mlflow/leases/`" in table and "`jwt_secret`" in table


def test_the_summary_after_a_promotion_names_the_new_champion_and_the_replaced_one():
    from pipelines.flows.cli import champion_line

    d = {"decision": "promoted", "challenger_version": "2", "champion_version": "1", "champion_macro_recall": 0.972}
    assert champion_line(d) == "v2 (this run's challenger, promoted); it replaced v1 (test macro-recall 0.9720)"
    assert champion_line({**d, "decision": "rejected"}) == "v1 (test macro-recall 0.9720), unchanged"
    readme = (REPO / "README.md").read_text()
    assert "typically *rejected: not_better* the second time" not in readme
    assert "the second run of `make demo` re-ingests the same file: nothing is new" in readme


# ------------------------------------------------------------------------------------------
# 4: a warm run with nothing new trains and registers nothing (last: it adds a run)
# ------------------------------------------------------------------------------------------
def test_a_warm_run_with_no_new_rows_skips_with_the_reason(s, retrained, capsys):
    import mlflow

    from pipelines.registry.decisions import decision_note

    argv = ["retrain", str(retrained["src"]), "--run-date", RUN_DATE, *TINY]  # the same file again
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("skipped: nothing new to train on: no new or changed rows since version 1")
    assert [str(v.version) for v in mlflow.MlflowClient().search_model_versions(f"name='{s.model_name}'")] == ["1"]
    assert main(["summary", "--run-date", RUN_DATE]) == 0
    summary = capsys.readouterr().out
    assert "decision:            SKIPPED by rule 'nothing_new'" in summary and "v1 (unchanged)" in summary
    record = json.loads((s.run_dir(RUN_DATE) / "skipped.json").read_text())
    assert decision_note(record).startswith("**SKIPPED** by rule `nothing_new`: nothing new to train on")
    runs = mlflow.search_runs(filter_string="tags.`meli.decision` = 'skipped'", output_format="list")
    assert len(runs) == 1 and re.fullmatch(rf"retrain {RUN_DATE} skip \d\d:\d\d:\d\dZ", runs[0].info.run_name)
    # the same file on the next night: a new partition, but the listings v1 trained on: nothing new
    assert main(["retrain", str(retrained["src"]), "--run-date", "2026-11-02", *TINY]) == 0
    out = capsys.readouterr().out
    assert out.startswith("skipped: nothing new to train on: no new or changed rows since version 1"), out
    assert [str(v.version) for v in mlflow.MlflowClient().search_model_versions(f"name='{s.model_name}'")] == ["1"]
    assert json.loads((s.run_dir("2026-11-02") / "skipped.json").read_text())["rule"] == "nothing_new"
    # new rows in the partition: trained again (warm), on those rows (plus the replay), not the partition
    from pipelines.data.synthetic import write_jsonl

    more = write_jsonl(retrained["home"].parent / "more.jsonl.gz", 950, seed=11)
    assert main(["retrain", str(more), "--run-date", RUN_DATE, *TINY, "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["challenger_version"] == "2"
    assert not (s.run_dir(RUN_DATE) / "skipped.json").exists()
    plan = json.loads((s.run_dir(RUN_DATE) / "embedding" / "warm.json").read_text())
    assert plan["mode"] == "warm" and 0 < plan["new_rows"] <= 50, plan["reason"]  # the 50 listings more.jsonl adds
