"""
### meli_score: batch-score listings with the champion into Parquet

Runs on demand (form: input, output, model alias or version) and is scheduled by Airflow Assets:
when `meli_retrain` lands new listings in the lake that pass validation (`meli_lake_listings`) and
when it promotes a new champion (`meli_champion`). The model alias is resolved to one version at the start; that
version scores every row. Unscorable rows are kept with a null prediction and a reason.

Output: the given `.parquet` file, or `lake/scored/run_date=<date>/` (replaced atomically on rerun),
where the date is the form's `run_date`, else the run date of the retrain run whose partition is
scored, else the run's own date. Only the champion (or `MELI_SCORING_VERSION`) writes `lake/scored`:
a `model` naming another version scores to `$MELI_HOME/adhoc/scored/<input>-<UTC time>.parquet`
instead, and the task log says so.

Shadow (`shadow`, default `MELI_SHADOW`, on): when a version newer than the served one is registered
(rejected by the gate, pending approval, or not yet gated), it also scores the batch, into
`lake/shadow/run_date=<date>/` (or `<output stem>.shadow-v<N>.parquet`), and an agreement report is
written to `$MELI_HOME/shadow/<model>/v<N>/<date>.json|.md` and MLflow (experiment `<experiment>-shadow`).
A failure there is logged as a warning; the served scores stand.

Monitor (task `monitor`): the scored batch is compared with the champion's reference (its test-split
predictions and statistics, built when the version was evaluated): predicted-category mix, confidence,
out-of-vocabulary tokens, title length, language mix, unscorable rows, and a label-free estimate of
macro-recall (thresholds `MELI_MONITOR_*`). The report (JSON + HTML) is in
`$MELI_HOME/monitor/<model>/v<N>/` and MLflow (experiment `<experiment>-monitor`); the task log and
XCom carry its path. On a breach `announce_drift` emits the `meli_drift` asset (reason in its extra),
which schedules `meli_retrain`; within thresholds it is skipped and nothing is emitted.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, task

from pipelines.config import INPUT_FORMATS
from pipelines.settings import Settings

LISTINGS = Asset("meli_lake_listings")
CHAMPION = Asset("meli_champion")
DRIFT = Asset("meli_drift")


@dag(
    dag_id="meli_score",
    schedule=(LISTINGS | CHAMPION),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["meli", "scoring"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1), "owner": "meli-ml"},
    params={
        # optional fields are typed ["null", ...]: the trigger form treats a typed field as required
        "input": Param(
            None,
            type=["null", "string"],
            title="Input",
            description="File (jsonl[.gz], CSV, Parquet) or lake partition dir; empty = the partition "
            "named by the triggering asset event, else the newest listings partition.",
        ),
        "output": Param(
            None,
            type=["null", "string"],
            title="Output .parquet",
            description="Empty = lake/scored/run_date=<run date>/. Else a .parquet file under $MELI_HOME/adhoc/ "
            "(a relative path is taken there); an existing file is replaced only if it is a previous scoring output",
        ),
        "model": Param(
            "champion",
            type="string",
            title="Model alias or version",
            description="Resolved to one version at the start of the run. Only the champion (or "
            "MELI_SCORING_VERSION) writes lake/scored; another version scores to $MELI_HOME/adhoc/scored/",
        ),
        "input_format": Param("auto", enum=list(INPUT_FORMATS), title="Input format"),
        "run_date": Param(
            None,
            type=["null", "string"],
            title="Run date",
            pattern="^$|^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
            description="Partition date of the output; empty = the triggering retrain run's date, else this run's date",
        ),
        "shadow": Param(
            Settings().shadow,
            type="boolean",
            title="Shadow-score the challenger",
            description="Also score the batch with the newest registered version above the served one (rejected, "
            "pending approval or not yet gated) into lake/shadow/ and write an agreement report (default: MELI_SHADOW)",
        ),
    },
)
def meli_score():
    @task(multiple_outputs=True)
    def score(params=None, triggering_asset_events=None, **context) -> dict:
        from pipelines.config import run_date_from_context
        from pipelines.flows.outcomes import airflow_outcomes
        from pipelines.flows.scoring import score_run
        from pipelines.settings import get_settings

        extras = [e.extra or {} for events in (triggering_asset_events or {}).values() for e in events]
        with airflow_outcomes():  # a refused path fails the task at once: a retry would be refused the same
            return score_run(get_settings(), dict(params), extras, run_date_from_context({**context, "params": params}))

    @task(multiple_outputs=True)
    def monitor(scored: dict, dag_run=None) -> dict:
        """Drift of the batch against the served version's reference; the figures and report paths.
        The run's "Drift report" tab shows the report and its note says the status."""
        from pipelines.flows.scoring import monitor_run
        from pipelines.settings import get_settings

        return monitor_run(get_settings(), scored, dag_run.dag_id, dag_run.run_id)

    # emits meli_drift (scheduling meli_retrain) only on a breach: a skipped task emits no asset event
    @task(multiple_outputs=True, outlets=[DRIFT])
    def announce_drift(report: dict, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from pipelines.monitoring.batch import drift_event
        from pipelines.settings import get_settings

        extra = drift_event(get_settings(), report)
        if extra is None:
            raise AirflowSkipException(f"no meli_drift event: monitor status {report['status']}")
        outlet_events[DRIFT].extra = extra
        return extra

    announce_drift(monitor(score()))


meli_score()
