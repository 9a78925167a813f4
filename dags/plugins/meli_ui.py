"""Airflow UI plugin: a "Models" entry in the navigation (the champion, since when, the previous
version, the versions waiting for approval, the last decisions) and "Data Docs", "Gate decision", "Model
card" and "Drift report" tabs on every DAG run page.

Airflow 3 shows a plugin's run tabs on the runs of every DAG (``external_views`` are filtered by
destination only, no DAG filter), so each tab means something on both DAGs' runs: on a meli_retrain
run the run's validation report, gate decision and the card of the version it registered, and the
champion's latest drift report; on a meli_score run a pointer to the scored partition's validation,
the decision and the card of the version that scored, and the drift report of its batch.

Thin wiring; the app lives in pipelines.flows.airflow_ui.
"""

from airflow.plugins_manager import AirflowPlugin


class MeliUIPlugin(AirflowPlugin):
    name = "meli_ui"

    @property
    def fastapi_apps(self):  # built lazily: the app imports nothing heavy, but keep parse cheap
        from pipelines.flows.airflow_ui import app

        return [{"app": app(), "url_prefix": "/meli", "name": "MeLi validation reports"}]

    external_views = [
        {
            "name": "Data Docs",
            "href": "meli/runs/{DAG_ID}/{RUN_ID}",
            "destination": "dag_run",
            "url_route": "meli_data_docs",
        },
        {
            "name": "Gate decision",
            "href": "meli/runs/{DAG_ID}/{RUN_ID}/decision",
            "destination": "dag_run",
            "url_route": "meli_gate_decision",
        },
        {
            "name": "Model card",
            "href": "meli/runs/{DAG_ID}/{RUN_ID}/card",
            "destination": "dag_run",
            "url_route": "meli_model_card",
        },
        {
            "name": "Drift report",
            "href": "meli/runs/{DAG_ID}/{RUN_ID}/monitor",
            "destination": "dag_run",
            "url_route": "meli_drift_report",
        },
        {
            "name": "Models",
            "href": "meli/models",
            "destination": "nav",
            "url_route": "meli_models",
            "nav_top_level": True,
        },
        {"name": "Data Docs (all runs)", "href": "meli/docs/index.html", "destination": "nav", "category": "browse"},
    ]
