"""Shared fixtures. Every test gets its own MELI_HOME under pytest's tmp_path, so nothing a test
writes lands in the repo, and tests never see each other's lake, MLflow store or Airflow DB."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MELI_SHARED_DATA", REPO.parent / "shared" / "data" / "meli2019"))

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


@pytest.fixture(autouse=True)
def _no_inherited_tracking_uri(monkeypatch):
    """No test reads another's MLflow store through a leftover MLFLOW_TRACKING_URI/REGISTRY_URI
    (mlflow.set_tracking_uri exports the variable): a test that wants one sets it itself."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def meli_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "meli"
    monkeypatch.setenv("MELI_HOME", str(home))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MELI_LAKE_URI"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def settings(meli_home):
    from pipelines.settings import get_settings

    return get_settings().ensure()


@pytest.fixture
def synthetic_jsonl(tmp_path):
    """A factory: write n SYNTHETIC listings as DiploDatos jsonl(.gz)."""
    from pipelines.data.synthetic import write_jsonl

    def make(n: int = 600, seed: int = 0, dirty: int = 0, name: str = "listings.jsonl.gz") -> Path:
        return write_jsonl(tmp_path / "in" / name, n, seed=seed, dirty=dirty)

    return make


@pytest.fixture
def real_jsonl() -> Path:
    path = SHARED_DATA / "spanish.sample.jsonl.gz"
    if not path.exists():
        pytest.skip(f"real MeLi sample not present at {path}")
    return path


@pytest.fixture
def real_challenge_csv() -> Path:
    path = SHARED_DATA / "challenge_train_head.csv"
    if not path.exists():
        pytest.skip(f"real challenge CSV not present at {path}")
    return path


@pytest.fixture(scope="module")
def airflow_tokens(tmp_path_factory):
    """Airflow's auth manager as the api-server sets it up, and a token per role (a real
    SimpleAuthManager and its JWTs over an empty metadata DB): headers for the /meli plugin routes."""
    home = tmp_path_factory.mktemp("airflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_HOME", str(home))  # read when airflow is first imported: nothing under ~
        mp.setenv(
            "AIRFLOW__CORE__AUTH_MANAGER",
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        )
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,viewer:viewer")
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(home / "passwords.json"))
        mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "unit-test-" + "s" * 64)
        mp.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home / 'airflow.db'}")
        from airflow import settings as airflow_settings
        from airflow.api_fastapi import app as airflow_app
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
        from airflow.models import import_all_models
        from airflow.models.base import Base

        # the tables the checks read (revoked tokens, a DAG's team), empty: no `airflow db migrate` needed
        import_all_models()
        Base.metadata.create_all(airflow_settings.engine)
        airflow_app.purge_cached_app()
        manager = airflow_app.init_auth_manager()
        yield {
            role: {"Authorization": f"Bearer {manager.generate_jwt(SimpleAuthManagerUser(username=role, role=role))}"}
            for role in ("admin", "viewer")
        }
        airflow_app.purge_cached_app()
