"""meli_score for real (dag.test() on a SQLite Airflow DB, real MLflow): with a champion and a newer
rejected challenger, one run writes the served scores, the challenger's shadow scores and the
agreement report, and its XCom names them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import pytest

from pipelines.data.lake import read_partition, versions
from tests.integration.airflow_env import PY, airflow_env, dag_test, migrate

pytestmark = pytest.mark.slow

_XCOM = r"""
import json, sys
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
query = XComModel.get_many(run_id=sys.argv[1], key="return_value", task_ids="score", dag_ids="meli_score")
with create_session() as s:
    row = s.scalars(query).first()
    print("@@XCOM@@" + json.dumps(XComModel.deserialize_value(row)))
"""


def _xcom(home: Path, run_id: str) -> dict:
    r = subprocess.run([PY, "-c", _XCOM, run_id], env=airflow_env(home), capture_output=True, text=True, timeout=120)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("@@XCOM@@")), None)
    assert line, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads(line[len("@@XCOM@@") :])


def test_score_dag_shadows_a_rejected_challenger(trained_home, monkeypatch):
    from pipelines.settings import get_settings

    home = trained_home  # v1 the champion, v2 a rejected challenger (tests/conftest.py)
    monkeypatch.delenv("MELI_SHADOW", raising=False)
    s = get_settings()
    migrate(home)

    res = dag_test(home, "meli_score", {"run_date": "2026-11-03"})
    assert res["state"].endswith("success") and res["tasks"]["score"] == res["tasks"]["monitor"] == "success", res

    served = read_partition(s.scored_dir / "run_date=2026-11-03")
    shadow = read_partition(s.shadow_dir / "run_date=2026-11-03")
    assert served.num_rows == shadow.num_rows == read_partition(s.listings_dir / "ingest_date=2026-11-02").num_rows
    assert set(served.column("model_version").to_pylist()) == {"1"}
    assert set(shadow.column("model_version").to_pylist()) == {"2"}
    assert shadow.column("listing_id").to_pylist() == served.column("listing_id").to_pylist()

    folder = home / "shadow" / s.model_name / "v2"
    report = json.loads((folder / "2026-11-03.json").read_text())
    assert report["champion_version"] == "1" and report["challenger_version"] == "2"
    assert report["shadow_output"] == str(s.shadow_dir / "run_date=2026-11-03")
    assert report["champion_output"] == str(s.scored_dir / "run_date=2026-11-03")
    assert 0 < report["rows"] <= served.num_rows and 0 <= report["agreement"] <= 1
    assert report["agree"] == round(report["agreement"] * report["rows"])
    assert (folder / "2026-11-03.md").read_text().startswith("# Shadow: ")

    client = mlflow.MlflowClient(s.tracking_uri, s.registry_uri)  # this home's store
    run = client.get_run(report["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == f"{s.experiment}-shadow"
    assert run.info.run_name == "shadow-v2-vs-v1-2026-11-03"
    assert run.data.metrics["agreement"] == pytest.approx(report["agreement"])
    assert run.data.metrics["rows"] == report["rows"]
    mv = client.get_model_version(s.model_name, "2")
    assert mv.tags["meli.decision"] == "rejected"
    assert mv.tags["meli.shadow_report"] == str(folder / "2026-11-03.json")
    assert mv.tags["meli.shadow_mlflow_run"] == report["mlflow_run_id"]
    assert float(mv.tags["meli.shadow_agreement"]) == pytest.approx(report["agreement"])

    xcom = _xcom(home, res["run_id"])
    assert xcom["model_version"] == "1" and xcom["output"] == str(s.scored_dir / "run_date=2026-11-03")
    sh = xcom["shadow"]
    assert sh["challenger_version"] == "2" and sh["champion_version"] == "1"
    assert sh["shadow_output"] == report["shadow_output"] and sh["agreement"] == pytest.approx(report["agreement"])
    assert sh["report_json"] == report["report_json"] and sh["report_md"] == str(folder / "2026-11-03.md")
    assert sh["mlflow_run_id"] == report["mlflow_run_id"]
    assert len(json.dumps(xcom)) < 4000  # a summary, not the report
    log = Path(res["log"]).read_text()
    assert f"shadow: v2 agrees with v1 on {report['agreement']:.2%}" in log and report["report_json"] in log

    # the form's switch: shadow off scores without touching the shadow partition or the report
    before = (folder / "2026-11-03.json").read_text()
    off = dag_test(home, "meli_score", {"run_date": "2026-11-03", "shadow": False})
    assert off["tasks"]["score"] == "success", off
    assert _xcom(home, off["run_id"])["shadow"] is None
    assert (folder / "2026-11-03.json").read_text() == before
    assert [v.number for v in versions(s.shadow_dir / "run_date=2026-11-03")] == [1]
    assert [v.number for v in versions(s.scored_dir / "run_date=2026-11-03")] == [2, 1]
