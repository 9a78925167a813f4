"""Shared fixtures. Every test gets its own MELI_HOME under pytest's tmp_path, so nothing a test
writes lands in the repo, and tests never see each other's lake, MLflow store or Airflow DB."""

from __future__ import annotations

import os
import shutil
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


TINY = {"models": ["mlp"], "epochs": 2, "embedding_epochs": 2, "embedding_dim": 16, "bucket": 5000}


def train_champion_and_rejected_challenger(settings, source: Path) -> None:
    """v1 promoted (forced: the gate's other rules are not what these tests are about), v2 registered
    and rejected (no tiny model beats another by a whole point of macro-recall)."""
    from dataclasses import replace

    from pipelines.config import TrainConfig
    from pipelines.flows.retrain import run_all

    cfg = TrainConfig(**TINY)
    run_all(settings, [str(source)], "2026-11-01", cfg, force_promote=True)
    # mode full: a warm run of the same rows would skip (nothing new to train on)
    decision = run_all(settings, [str(source)], "2026-11-02", replace(cfg, mode="full"), min_improvement=1.0)[
        "decision"
    ]
    assert decision["decision"] == "rejected" and decision["challenger_version"] == "2", decision


def _trained_home_env(mp: pytest.MonkeyPatch, home: Path) -> None:
    mp.setenv("MELI_HOME", str(home))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MELI_LAKE_URI"):
        mp.delenv(var, raising=False)
    # MLflow keeps one SQLAlchemy engine per store URI for the whole process; pooled connections would
    # keep reading a replaced mlflow.db (its deleted file): without a pool each call opens the file anew
    mp.setenv("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")


def restore_trained_home(template: Path, home: Path) -> Path:
    """``home`` as the template was trained, at the path it was trained at: the MLflow store holds
    absolute artifact locations, so a copy elsewhere would still read and write the template's files."""
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(template, home, symlinks=True)
    return home


@pytest.fixture(scope="session")
def trained_home_template(tmp_path_factory) -> tuple[Path, Path]:
    """Trained once per session (tiny recipe, SYNTHETIC listings, two dates): v1 the champion, v2 a
    rejected challenger, both ingest partitions in the lake. (home, template): every test of
    ``trained_home`` works in ``home``, restored from ``template`` first."""
    from pipelines.data.synthetic import write_jsonl
    from pipelines.settings import get_settings

    root = tmp_path_factory.mktemp("trained")
    home, template = root / "meli", root / "template"
    with pytest.MonkeyPatch.context() as mp:
        _trained_home_env(mp, home)
        train_champion_and_rejected_challenger(get_settings(), write_jsonl(root / "train.jsonl.gz", 900, seed=11))
    shutil.copytree(home, template, symlinks=True)
    return home, template


@pytest.fixture
def trained_home(trained_home_template, monkeypatch) -> Path:
    """MELI_HOME with a champion (v1) and a rejected challenger (v2), a fresh copy for this test (what a
    test writes there is gone for the next one), at the same absolute path for every test."""
    home, template = trained_home_template
    _trained_home_env(monkeypatch, home)
    return restore_trained_home(template, home)


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
