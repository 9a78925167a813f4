"""Static checks of the distributed deployment in docker/: compose.yaml, .env.example, Dockerfiles."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"
SERVICES = {
    "postgres",
    "redis",
    "mlflow",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-worker-gpu",
}
ONE_SHOT = {"airflow-init"}
AIRFLOW = {s for s in SERVICES if s.startswith("airflow-")}
SECRET_KEY = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|FERNET|CREDENTIAL|API_KEY|_AUTH$", re.I)
INTERPOLATED = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?[-?])[^}]*)?\}$")
VAR_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?][^}]*)?\}")
URL_CREDENTIALS = re.compile(r"://[^/@\s]*:([^/@\s]+)@")


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
