"""Airflow UI plugin: a "Data Docs" tab on every DAG run page, serving that run's GX report.

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
        {"name": "Data Docs (all runs)", "href": "meli/docs/index.html", "destination": "nav", "category": "browse"},
    ]
