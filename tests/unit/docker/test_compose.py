"""Static checks of the distributed deployment in docker/: compose.yaml, .env.example, Dockerfiles,
and the MLflow auth entrypoint docker/mlflow_auth.py (its config and REST paths against MLflow's own)."""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[3] / "docker"
SERVICES = {
    "secrets-check",
    "postgres",
    "redis",
    "mlflow",
    "mlflow-auth-init",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-worker-gpu",
}
ONE_SHOT = {"airflow-init", "mlflow-auth-init", "secrets-check"}
AIRFLOW = {s for s in SERVICES if s.startswith("airflow-")}
SECRET_KEY = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|FERNET|CREDENTIAL|API_KEY|_AUTH$", re.I)
INTERPOLATED = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?[-?])[^}]*)?\}$")
VAR_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?][^}]*)?\}")
URL_CREDENTIALS = re.compile(r"://[^/@\s]*:([^/@\s]+)@")
REQUIRED = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*):\?set \1 in docker/\.env\}$")  # ${VAR:?set VAR in docker/.env}
AUTH_SCRIPT = "/opt/meli/docker/mlflow_auth.py"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"meli_docker_{name}", DOCKER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _load_mlflow_auth():
    spec = importlib.util.spec_from_file_location("meli_docker_mlflow_auth", DOCKER / "mlflow_auth.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    out = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _argv(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _queues(service: dict) -> list[str]:
    argv = _argv(service["command"])
    assert argv[:3] == ["airflow", "celery", "worker"], argv
    for flag in ("--queues", "-q"):
        if flag in argv:
            return argv[argv.index(flag) + 1].split(",")
    raise AssertionError(f"worker without --queues: {argv}")


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _walk_strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_strings(v)
    elif isinstance(node, str):
        yield node


def test_services_exist(compose):
    assert SERVICES <= set(compose["services"]), SERVICES - set(compose["services"])


def test_workers_listen_on_their_queues(compose):
    services = compose["services"]
    assert _queues(services["airflow-worker-gpu"]) == ["gpu"]
    assert _queues(services["airflow-worker"]) == ["default"]
    gpu_argv = _argv(services["airflow-worker-gpu"]["command"])
    # trainings share the worker's GPU: the pool `gpu` has as many slots as one gpu worker runs tasks
    concurrency = re.fullmatch(
        r"\$\{MELI_GPU_WORKER_CONCURRENCY:-(\d+)\}", gpu_argv[gpu_argv.index("--concurrency") + 1]
    )
    slots = re.search(r"pools set gpu \"\$\$\{MELI_GPU_POOL_SLOTS:-(\d+)\}\"", str(services["airflow-init"]["command"]))
    assert concurrency and slots and concurrency[1] == slots[1] == "3", (concurrency, slots)


def test_gpu_worker_reserves_an_nvidia_gpu_and_uses_the_cuda_image(compose):
    gpu = compose["services"]["airflow-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    nvidia = [d for d in devices if d.get("driver") == "nvidia"]
    assert nvidia, devices
    assert "gpu" in nvidia[0]["capabilities"]
    assert nvidia[0].get("count") or nvidia[0].get("device_ids")
    assert gpu["build"]["dockerfile"].endswith("Dockerfile.cuda")
    assert compose["services"]["airflow-worker"]["build"]["dockerfile"].endswith("Dockerfile.cpu")
    assert "deploy" not in compose["services"]["airflow-worker"]


def test_long_running_services_have_healthchecks(compose):
    for name, svc in compose["services"].items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", f"{name} is one-shot"
            continue
        hc = svc.get("healthcheck") or {}
        assert hc.get("test") and not hc.get("disable"), f"{name} has no healthcheck"


def test_named_volumes_are_declared_and_shared(compose):
    declared = set(compose.get("volumes") or {})
    assert {"meli-home", "mlflow-artifacts", "postgres-data"} <= declared
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes") or []:
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if source and not source.startswith((".", "/", "~", "$")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
    for name in AIRFLOW:
        mounts = compose["services"][name].get("volumes") or []
        assert "meli-home:/shared/meli" in mounts, f"{name} does not share MELI_HOME"
        assert _env(compose["services"][name]).get("MELI_HOME") == "/shared/meli"
    mlflow = compose["services"]["mlflow"]
    argv = _argv(mlflow["command"])
    assert "--serve-artifacts" in argv
    dest = argv[argv.index("--artifacts-destination") + 1]
    assert any(
        m.startswith("mlflow-artifacts:") and dest.removeprefix("file://").startswith(m.split(":")[1])
        for m in mlflow["volumes"]
    ), (dest, mlflow["volumes"])


def test_airflow_services_run_the_distributed_profile(compose):
    for name in AIRFLOW:
        svc = compose["services"][name]
        env = _env(svc)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://"), name
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://"), name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].endswith("/execution/"), name
        assert env["MLFLOW_TRACKING_URI"].startswith("http://mlflow:"), name
        env_file = svc.get("env_file")
        assert env_file in (".env", [".env"]) or ".env" in (env_file or []), f"{name}: env_file .env"
        assert env["MELI_REQUIRE_APPROVAL"].endswith(":-1}"), f"{name}: a team's promotions wait for a person"
    init = " ".join(_argv(compose["services"]["airflow-init"]["command"]))
    assert "airflow db migrate" in init and "airflow pools set gpu" in init


def test_no_plaintext_secrets(compose):
    for name, svc in compose["services"].items():
        for key, value in _env(svc).items():
            if SECRET_KEY.search(key) and "FILE" not in key.upper() and value:
                assert INTERPOLATED.match(value), f"{name}: {key} must come from ${{VAR}}, got {value!r}"
    for text in _walk_strings(compose):
        for secret in URL_CREDENTIALS.findall(text):
            assert INTERPOLATED.match(secret), f"credentials in URL must be ${{VAR}}: {text!r}"


def test_env_example_documents_every_variable_with_placeholders_only(compose, env_example):
    raw = (DOCKER / "compose.yaml").read_text()
    required = {m.group(1) for m in VAR_REF.finditer(raw) if not (m.group(2) or "").lstrip(":").startswith("-")}
    assert required <= set(env_example), f"undocumented in .env.example: {required - set(env_example)}"
    for key, value in env_example.items():
        if SECRET_KEY.search(key):
            assert value in ("", "change-me"), f".env.example must hold placeholders only: {key}={value!r}"
    assert env_example["MELI_TRAIN_QUEUE"] == "gpu" and env_example["MELI_TRAIN_POOL"] == "gpu"
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


def test_dockerfiles_share_requirements_and_pin_torch():
    cpu = (DOCKER / "Dockerfile.cpu").read_text()
    cuda = (DOCKER / "Dockerfile.cuda").read_text()
    for text in (cpu, cuda):
        assert "pip install -r requirements.txt" in text
        assert "ARG TORCH_VERSION=2.13.0" in text
        assert "FROM python:3.11" in text
    assert "download.pytorch.org/whl/cpu" in cpu
    assert re.search(r"download\.pytorch\.org/whl/\$\{TORCH_CUDA\}", cuda) and "ARG TORCH_CUDA=cu" in cuda


# ---- MLflow's authentication (basic-auth) ---------------------------------------------------------
def _required_var(value: str) -> str:
    m = REQUIRED.match(value)
    assert m, f"{value!r} is not ${{VAR:?set VAR in docker/.env}}"
    return m[1]


def test_mlflow_server_runs_basic_auth_through_the_entrypoint(compose):
    mlflow = compose["services"]["mlflow"]
    argv = _argv(mlflow["command"])
    assert argv[:2] == ["mlflow", "server"], argv
    assert argv[argv.index("--app-name") + 1] == "basic-auth", argv
    # the entrypoint writes the auth config from the environment, then execs the command
    assert _argv(mlflow["entrypoint"]) == ["python", AUTH_SCRIPT, "serve", "--"]
    assert f"./mlflow_auth.py:{AUTH_SCRIPT}:ro" in mlflow["volumes"]
    env = _env(mlflow)
    config = env["MLFLOW_AUTH_CONFIG_PATH"]
    assert config.startswith("/tmp/"), "the auth config (it holds secrets) stays inside the container"
    assert not any(config.startswith(v.split(":")[1]) for v in mlflow["volumes"] if v.count(":") >= 1)
    auth_db = env["MELI_MLFLOW_AUTH_DB_URI"]
    assert auth_db.startswith("postgresql+psycopg2://") and auth_db.endswith("/${MLFLOW_AUTH_DB:-mlflow_auth}")
    assert _required_var(env["MELI_MLFLOW_ADMIN_PASSWORD"]) == "MLFLOW_ADMIN_PASSWORD"
    assert _required_var(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == "MLFLOW_FLASK_SECRET_KEY"
    assert "MLFLOW_TRACKING_PASSWORD" not in env and "MELI_MLFLOW_SERVICE_PASSWORD" not in env
    assert "/health" in " ".join(_argv(mlflow["healthcheck"]["test"]))  # answers without a login
    # a fresh postgres volume gets the auth database too
    assert "MLFLOW_AUTH_DB" in _env(compose["services"]["postgres"])
    assert "MLFLOW_AUTH_DB" in (DOCKER / "postgres-init.sh").read_text()


def test_auth_bootstrap_creates_the_service_account_before_airflow_starts(compose):
    services = compose["services"]
    init = services["mlflow-auth-init"]
    assert _argv(init["command"]) == ["python", AUTH_SCRIPT, "bootstrap"]
    assert f"./mlflow_auth.py:{AUTH_SCRIPT}:ro" in init["volumes"]
    assert init["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert "env_file" not in init, "the bootstrap gets exactly the variables it needs"
    env = _env(init)
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert _required_var(env["MELI_MLFLOW_ADMIN_PASSWORD"]) == "MLFLOW_ADMIN_PASSWORD"
    assert _required_var(env["MELI_MLFLOW_SERVICE_PASSWORD"]) == "MLFLOW_SERVICE_PASSWORD"
    assert env["MELI_MLFLOW_ADMIN_USER"] == _env(services["mlflow"])["MELI_MLFLOW_ADMIN_USER"]
    assert env["MELI_MLFLOW_SERVICE_USER"] == "${MLFLOW_SERVICE_USER:-meli-pipelines}"
    for name in AIRFLOW - {"airflow-init"}:
        deps = services[name]["depends_on"]
        assert deps["mlflow-auth-init"]["condition"] == "service_completed_successfully", name


def test_airflow_services_log_in_to_mlflow_as_the_service_account(compose):
    for name in AIRFLOW:
        env = _env(compose["services"][name])
        assert env["MLFLOW_TRACKING_USERNAME"] == "${MLFLOW_SERVICE_USER:-meli-pipelines}", name
        assert _required_var(env["MLFLOW_TRACKING_PASSWORD"]) == "MLFLOW_SERVICE_PASSWORD", name
        # env_file hands them all of docker/.env: the admin's secrets are blanked (environment wins)
        assert env.get("MLFLOW_ADMIN_PASSWORD") == "" and env.get("MLFLOW_FLASK_SECRET_KEY") == "", name
        assert not any("MLFLOW_ADMIN_PASSWORD" in v for v in env.values()), name


def test_no_literal_mlflow_password_in_compose(compose, env_example):
    for text in _walk_strings(compose):  # every value (comments aside): no placeholder, no password
        assert "change-me" not in text, text
    for name, svc in compose["services"].items():
        for key, value in _env(svc).items():
            if re.search(r"PASSWORD|SECRET", key) and "FILE" not in key and value:
                assert _required_var(value), (name, key)
    for key in ("MLFLOW_ADMIN_PASSWORD", "MLFLOW_SERVICE_PASSWORD", "MLFLOW_FLASK_SECRET_KEY"):
        assert env_example[key] == "change-me", key


def test_auth_script_talks_mlflows_own_rest_api():
    from mlflow.server.auth import routes

    auth = _load_mlflow_auth()
    for name in (
        "CREATE_USER",
        "GET_USER",
        "GET_CURRENT_USER",
        "UPDATE_USER_PASSWORD",
        "UPDATE_USER_ADMIN",
        "GRANT_USER_PERMISSION",
        "REVOKE_USER_PERMISSION",
        "GET_USER_PERMISSION",
    ):
        assert getattr(auth, name) == getattr(routes, name), name
    assert auth.MIN_PASSWORD == 12


def test_auth_config_is_what_mlflow_reads(tmp_path, monkeypatch):
    from mlflow.server.auth.config import read_auth_config

    auth = _load_mlflow_auth()
    path = tmp_path / "cfg" / "basic_auth.ini"
    uri = "postgresql+psycopg2://meli:p%40ss@postgres:5432/mlflow_auth"  # a %-escaped URL password
    monkeypatch.setenv("MELI_MLFLOW_AUTH_DB_URI", uri)
    monkeypatch.setenv("MELI_MLFLOW_ADMIN_USER", "mlflow-admin")
    monkeypatch.setenv("MELI_MLFLOW_ADMIN_PASSWORD", "adm%n-passw0rd-xyz")
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    for var in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    auth.write_config(path)
    assert path.stat().st_mode & 0o777 == 0o600
    cfg = read_auth_config()
    assert cfg.default_permission == "READ"
    assert cfg.database_uri == uri
    assert (cfg.admin_username, cfg.admin_password) == ("mlflow-admin", "adm%n-passw0rd-xyz")
    assert cfg.authorization_function == "mlflow.server.auth:authenticate_request_basic_auth"
    # placeholders and short passwords are refused before any server sees them
    for bad in ("change-me", "short"):
        monkeypatch.setenv("MELI_MLFLOW_ADMIN_PASSWORD", bad)
        with pytest.raises(auth.AuthSetupError, match="at least 12"):
            auth.write_config(path)


# ---- every secret: required, checked before anything starts, and only where it is needed ----------
def _secrets(env_example: dict[str, str]) -> set[str]:
    return {k for k in env_example if SECRET_KEY.search(k)}


# the secrets of docker/.env each service may hold (by any name, in its environment or its command)
CONTROL = {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "MLFLOW_SERVICE_PASSWORD", "AIRFLOW_FERNET_KEY"}
NEEDS = {
    "postgres": {"POSTGRES_PASSWORD"},
    "redis": {"REDIS_PASSWORD"},
    "mlflow": {"POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_FLASK_SECRET_KEY"},
    "mlflow-auth-init": {"MLFLOW_ADMIN_PASSWORD", "MLFLOW_SERVICE_PASSWORD"},
    "airflow-init": CONTROL,
    "airflow-dag-processor": CONTROL,
    "airflow-triggerer": CONTROL,
    "airflow-scheduler": CONTROL | {"AIRFLOW_JWT_SECRET"},  # signs the tasks' execution-API tokens
    "airflow-apiserver": CONTROL | {"AIRFLOW_JWT_SECRET", "AIRFLOW_ADMIN_PASSWORD"},
    # tasks talk to Airflow with the token the scheduler issued: no JWT secret, no Fernet key, no admin
    "airflow-worker": {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "MLFLOW_SERVICE_PASSWORD"},
    "airflow-worker-gpu": {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "MLFLOW_SERVICE_PASSWORD"},
}


def _held(service: dict, secrets: set[str]) -> set[str]:
    """The secrets of docker/.env a container of ``service`` ends up with: referenced in its
    environment or command, or handed over by env_file and not blanked in its environment."""
    env = _env(service)
    text = " ".join(_walk_strings({"environment": env, "command": service.get("command") or ""}))
    held = {s for s in secrets if re.search(r"\$\{" + s + r"\b", text)}
    if service.get("env_file"):
        held |= {s for s in secrets if s not in env}  # env_file gives it, nothing blanks it
        held -= {s for s in secrets if env.get(s) == "" and not re.search(r"\$\{" + s + r"\b", text)}
    return held


def test_every_secret_is_required_and_never_defaulted(compose, env_example):
    secrets = _secrets(env_example)
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_JWT_SECRET"} <= secrets
    assert {"AIRFLOW_FERNET_KEY", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_SERVICE_PASSWORD"} <= secrets
    raw = (DOCKER / "compose.yaml").read_text()
    for m in VAR_REF.finditer(raw):
        if m[1] in secrets:  # ${SECRET:?set SECRET in docker/.env}: compose refuses it unset or empty
            assert (m[2] or "") == f":?set {m[1]} in docker/.env", m[0]
    check = compose["services"]["secrets-check"]
    assert {k: _required_var(v) for k, v in _env(check).items()} == {s: s for s in secrets}
    assert set(_load_script("check_secrets").SECRETS) == secrets
    assert _env(compose["services"]["airflow-init"])["AIRFLOW__CORE__FERNET_KEY"].startswith(
        "${AIRFLOW_FERNET_KEY:?"
    ), "a Fernet key is required"
    for key, value in env_example.items():
        if key in secrets:
            assert value == "change-me", f"{key}: a placeholder the check refuses, not an empty default"


def test_nothing_starts_before_the_secrets_check(compose):
    services = compose["services"]
    check = services["secrets-check"]
    assert _argv(check["command"]) == ["python", "/opt/meli/docker/check_secrets.py"]
    assert "./check_secrets.py:/opt/meli/docker/check_secrets.py:ro" in check["volumes"]
    assert "env_file" not in check and not check.get("depends_on") and check.get("restart") == "no"

    def reaches(name: str, seen=()) -> bool:
        deps = services[name].get("depends_on") or {}
        if "secrets-check" in deps:
            assert deps["secrets-check"]["condition"] == "service_completed_successfully", name
            return True
        return any(reaches(d, (*seen, name)) for d in deps if d not in seen)

    for name in set(services) - {"secrets-check"}:
        assert reaches(name), f"{name} may start before the secrets are checked"


def test_the_secrets_check_refuses_placeholders_and_never_prints_a_value(monkeypatch, capsys):
    check = _load_script("check_secrets")
    good = {name: f"{name.lower()}-{'x9' * 20}" for name in check.SECRETS}
    good["AIRFLOW_FERNET_KEY"] = "ZmDfcTF7_60GrrY167zsiPd67pEvs0aGOv2oasOM1Pg="  # a Fernet key's shape
    assert check.problems(good) == []
    for name in check.SECRETS:
        for bad in ("", "change-me", "CHANGE-ME-please-0123456789abcdefghij", "password", "short"):
            found = check.problems({**good, name: bad})
            assert len(found) == 1 and found[0].startswith(f"{name} "), (name, bad, found)
    assert "not a Fernet key" in check.problems({**good, "AIRFLOW_FERNET_KEY": "x" * 44})[0]
    key = good["AIRFLOW_FERNET_KEY"]
    assert check.problems({**good, "AIRFLOW_FERNET_KEY": f"{key},{key}"}) == []  # new,old while rotating
    assert "at least 32" in check.problems({**good, "AIRFLOW_JWT_SECRET": "a-20-character-value"})[0]
    secret = "hunter2-but-change-me-anyway"
    monkeypatch.setattr(check.os, "environ", {**good, "REDIS_PASSWORD": secret})
    assert check.main() == 1
    out = capsys.readouterr()
    assert "REDIS_PASSWORD is a placeholder" in out.err and secret not in out.err + out.out


def test_each_service_gets_only_the_secrets_it_needs(compose, env_example):
    secrets = _secrets(env_example)
    for name, svc in compose["services"].items():
        want = secrets if name == "secrets-check" else NEEDS[name]
        assert _held(svc, secrets) == want, f"{name}: holds {sorted(_held(svc, secrets))}, needs {sorted(want)}"


def test_the_airflow_admin_password_stays_in_the_api_server(compose):
    services = compose["services"]
    api = services["airflow-apiserver"]
    path = _env(api)["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    mounts = [v.split(":")[1] for v in api.get("volumes") or [] if ":" in v]
    assert path.startswith("/tmp/") and not any(path.startswith(m) for m in mounts), path  # not on a shared volume
    script = " ".join(_argv(api["command"]))
    assert "0o600" in script and "unset AIRFLOW_ADMIN_PASSWORD" in script and "exec airflow api-server" in script
    for name in set(services) - {"airflow-apiserver"}:
        assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" not in _env(services[name]), name
    # what older deployments left on the volume every task reads goes
    assert 'rm -f "$${MELI_HOME}/airflow/simple_auth_manager_passwords.json"' in str(
        services["airflow-init"]["command"]
    )
