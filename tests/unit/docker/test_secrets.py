"""Secrets: the embedded profile's JWT secret is made per $MELI_HOME (no secret in airflow.cfg), and a
failing alert webhook never writes its URL to the logs."""

from __future__ import annotations

import configparser
import json
import shlex
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.integration.airflow_env import REPO, airflow_env

_AIRFLOW_JWT = "from airflow.configuration import conf; print(conf.get('api_auth', 'jwt_secret'))"


def _cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO / "airflow.cfg")
    return cfg


def _airflow_jwt(home: Path) -> str:
    r = subprocess.run([sys.executable, "-c", _AIRFLOW_JWT], env=airflow_env(home), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1]


def test_airflow_cfg_holds_no_jwt_secret_and_each_meli_home_gets_its_own(tmp_path):
    cfg = _cfg()
    assert not cfg.has_option("api_auth", "jwt_secret"), "a JWT secret written in airflow.cfg is everybody's"
    assert "change-me" not in (REPO / "airflow.cfg").read_text()

    a, b = tmp_path / "a", tmp_path / "b"
    first = _airflow_jwt(a)  # what Airflow itself reads (jwt_secret_cmd), in a fresh home
    assert len(first) >= 64 and first == _airflow_jwt(a)  # made once, then the same for every process
    assert _airflow_jwt(b) != first
    secret = a / "airflow" / "jwt_secret"
    assert secret.read_text() == first and secret.stat().st_mode & 0o777 == 0o600

    # many processes starting at once in a fresh home (standalone: scheduler, api-server, ...) agree
    argv = shlex.split(cfg.get("api_auth", "jwt_secret_cmd"))  # as Airflow runs it (no shell, no expansion)
    c = tmp_path / "c"
    env = airflow_env(c)
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda _: subprocess.run(argv, env=env, capture_output=True, text=True), range(16)))
    assert all(o.returncode == 0 for o in outs), [o.stderr for o in outs]
    assert len({o.stdout for o in outs}) == 1 and len(outs[0].stdout) == 64
    assert sorted(p.name for p in (c / "airflow").iterdir()) == ["jwt_secret"]  # no temp file left


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_a_failing_webhook_never_logs_its_url(caplog, monkeypatch, meli_home):
    import logging

    from pipelines.core import alerts
    from pipelines.settings import get_settings

    token = "T0KEN-s3cr3t-path-xyz"
    url = f"http://user:pa55word@127.0.0.1:{_closed_port()}/hooks/{token}?key=query-s3cr3t"
    monkeypatch.setenv("MELI_ALERT_WEBHOOK_URL", url)
    with caplog.at_level(logging.DEBUG):
        alerts.notify("Meli retrain failed", "task train failed")
    text = caplog.text + "".join(str(r.args) + str(r.exc_info) for r in caplog.records)
    assert "webhook" in caplog.text.lower(), caplog.text  # the failure is logged ...
    for secret in (token, "query-s3cr3t", "pa55word", "/hooks/", url):
        assert secret not in text, caplog.text  # ... without the URL or any part of its secret
    shown = json.dumps(get_settings().as_dict())  # `python -m pipelines settings` shows the host only
    assert "127.0.0.1" in shown and not any(secret in shown for secret in (token, "query-s3cr3t", "pa55word"))
