"""Airflow UI plugin: "Data Docs", "Gate decision", "Model card" and "Drift report" tabs on every DAG run
page (that run's GX report, promotion decision, the model card of the version it registered, and the
drift report of the batch a meli_score run scored).

Thin wiring; the app lives in pipelines.airflow_ui.
"""

from airflow.plugins_manager import AirflowPlugin


class MeliUIPlugin(AirflowPlugin):
    name = "meli_ui"

    @property
    def fastapi_apps(self):  # built lazily: the app imports nothing heavy, but keep parse cheap
        from pipelines.airflow_ui import app

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
        {"name": "Data Docs (all runs)", "href": "meli/docs/index.html", "destination": "nav", "category": "browse"},
    ]
