"""A throwaway distributed meli-retrain deployment on 127.0.0.1, for tests/distributed.

The distributed profile is the embedded one (airflow.cfg, ``MELI_HOME``) plus environment variables
only (see docker/.env.example): CeleryExecutor, Postgres metadata DB, Redis broker, Postgres Celery
result backend, an MLflow tracking server on Postgres serving artifacts from a shared root, and
``MELI_TRAIN_POOL=gpu``. :class:`Cluster` builds exactly that from the local Postgres and Redis:

* three FRESH, uniquely named Postgres databases (Airflow metadata, MLflow, MLflow's auth store),
  dropped at the end;
* a Redis database number claimed for this run only (an owner key), flushed at the end;
* ``mlflow server --app-name basic-auth`` (MLflow's built-in authentication, started and
  bootstrapped by docker/mlflow_auth.py exactly as docker/compose.yaml does: ``serve`` writes the
  auth config, ``bootstrap`` creates the pipelines' service account), then ``airflow api-server``,
  ``scheduler``, ``dag-processor`` and two ``airflow celery worker`` processes (queues ``default``
  and ``gpu``), each logging to a file; every Airflow process logs in to MLflow as the service
  account (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``), none sees the admin's;
* everything it starts is stopped by PID (terminate, wait, kill; children included).

``python tests/distributed/meli_cluster.py --check`` exits 0 when Postgres and Redis answer on
127.0.0.1 and 1 (with the reason) otherwise; the Makefile uses it to decide whether to run the test.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENV_BIN = Path(sys.executable).parent
MLFLOW_AUTH = REPO / "docker" / "mlflow_auth.py"  # the MLflow server's entrypoint and auth bootstrap
HOST = "127.0.0.1"  # never anything else
PG_PORT = 5432
REDIS_PORT = 6379
PG_USER = os.environ.get("MELI_DIST_PG_USER", "postgres")
OWNER_KEY = "meli:distributed-test:owner"


# ---- service probes ------------------------------------------------------------------------------
def _port_open(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def services_available() -> tuple[bool, str]:
    """(True, "") when Postgres and Redis answer on 127.0.0.1, else (False, why)."""
    missing = []
    if not _port_open(PG_PORT):
        missing.append(f"Postgres on {HOST}:{PG_PORT}")
    if not _port_open(REDIS_PORT):
        missing.append(f"Redis on {HOST}:{REDIS_PORT}")
    if missing:
        return False, " and ".join(missing) + " not answering"
    try:
        import psycopg2

        psycopg2.connect(host=HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
        return False, f"Postgres on {HOST}:{PG_PORT} refused user {PG_USER!r}: {exc}".strip()
    try:
        import redis

        redis.Redis(host=HOST, port=REDIS_PORT, socket_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001
        return False, f"Redis on {HOST}:{REDIS_PORT} does not answer PING: {exc}"
    return True, ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---- Postgres / Redis isolation ------------------------------------------------------------------
def _pg_admin():
    import psycopg2

    conn = psycopg2.connect(host=HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=5)
    conn.autocommit = True
    return conn


def create_database(name: str) -> None:
    conn = _pg_admin()
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def drop_database(name: str) -> None:
    conn = _pg_admin()
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


def claim_redis_db(token: str) -> int:
    """Claim an empty Redis database number (15 down to 1) for this run with an owner key."""
    import redis

    wanted = os.environ.get("MELI_DIST_REDIS_DB")
    candidates = [int(wanted)] if wanted else list(range(15, 0, -1))
    for db in candidates:
        r = redis.Redis(host=HOST, port=REDIS_PORT, db=db, socket_timeout=3)
        try:
            if r.dbsize() == 0 and r.set(OWNER_KEY, token, nx=True, ex=3600):
                if r.dbsize() == 1:  # nobody else raced into it
                    return db
                if r.get(OWNER_KEY) == token.encode():
                    r.delete(OWNER_KEY)
        except redis.ResponseError:  # fewer databases configured than we tried
            continue
        finally:
            r.close()
    raise RuntimeError(f"no empty Redis database on {HOST}:{REDIS_PORT} to claim (tried {candidates})")


def release_redis_db(db: int, token: str) -> None:
    import redis

    r = redis.Redis(host=HOST, port=REDIS_PORT, db=db, socket_timeout=5)
    try:
        if r.get(OWNER_KEY) == token.encode():  # still ours: drop the Celery queues/results we left
            r.flushdb()
    finally:
        r.close()


# ---- processes -----------------------------------------------------------------------------------
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    env: dict[str, str] = field(default_factory=dict, repr=False)  # what it was started with

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


def _descendants(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:  # noqa: BLE001 - gone already, or psutil missing
        return []


def _pid_alive(pid: int) -> bool:
    try:
        import psutil

        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE
    except Exception:  # noqa: BLE001
        return False


def stop_process(proc: Proc, grace: float = 20.0) -> None:
    """Terminate a process we started, wait, then kill; its children (by PID) likewise."""
    children = _descendants(proc.pid)
    if proc.alive():
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(grace)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(10)
    children += [c for c in _descendants(proc.pid) if c not in children]
    deadline = time.monotonic() + 5
    for pid in children:
        if _pid_alive(pid):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
    for pid in children:
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM the child if the test process dies without cleaning up (e.g. killed by a CI timeout)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort (not Linux)
        pass


def _http(
    method: str,
    url: str,
    body: dict | None = None,
    token: str | None = None,
    timeout: float = 30,
    basic: tuple[str, str] | None = None,
):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if basic:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(basic).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw and raw[:1] in b"[{" else raw.decode(errors="replace"))
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


# ---- the cluster ---------------------------------------------------------------------------------
@dataclass
class Cluster:
    """The distributed profile on 127.0.0.1 under ``root`` (a tmp dir). Use as a context manager."""

    root: Path
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    procs: list[Proc] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)
    redis_db: int | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.home = self.root / "meli"  # MELI_HOME: the shared path (lake, work dirs, Airflow logs)
        self.logs = self.root / "logs"
        self.artifacts = self.root / "shared" / "mlflow-artifacts"  # the MLflow server's artifact root
        self.airflow_db = f"meli_dist_{self.uid}_airflow"
        self.mlflow_db = f"meli_dist_{self.uid}_mlflow"
        self.mlflow_auth_db = f"meli_dist_{self.uid}_mlflow_auth"
        self.api_port = free_port()
        self.mlflow_port = free_port()
        self.password = secrets.token_urlsafe(12)
        self.jwt_secret = secrets.token_urlsafe(32)  # shared by every component (signs API + task tokens)
        # MLflow basic-auth: the admin (manages users/permissions; only the server and the bootstrap
        # step see it) and the service account every Airflow process logs in with
        self.mlflow_admin = ("mlflow-admin", secrets.token_urlsafe(18))
        self.mlflow_service = ("meli-pipelines", secrets.token_urlsafe(18))
        self.mlflow_flask_secret = secrets.token_urlsafe(24)
        self.redis_token = f"{self.uid}:{os.getpid()}"
        self.worker_names = {"default": f"meli-default-{self.uid}", "gpu": f"meli-gpu-{self.uid}"}

    # -- URLs
    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    def _pg_url(self, db: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{PG_USER}@{HOST}:{PG_PORT}/{db}"

    # -- environment: the distributed profile, pointed at this cluster
    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "MLFLOW_", "MELI_"))
        }  # nothing leaks in from the caller
        env.update(
            {
                "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONPATH": f"{REPO}{os.pathsep}{HERE}",
                "PYTHONUNBUFFERED": "1",
                "GX_ANALYTICS_ENABLED": "false",
                "GIT_PYTHON_REFRESH": "quiet",
                "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning,ignore::UserWarning",
                # the embedded profile's files, relocated to this run's tmp dirs
                "MELI_REPO": str(REPO),
                "MELI_HOME": str(self.home),
                "AIRFLOW_HOME": str(self.home / "airflow"),
                "AIRFLOW_CONFIG": str(REPO / "airflow.cfg"),
                # --- the distributed profile (same variables as docker/.env.example + compose.yaml)
                "MELI_TRAIN_QUEUE": "gpu",
                "MELI_TRAIN_POOL": "gpu",
                "MLFLOW_TRACKING_URI": self.mlflow_url,
                # MLflow's client logs in with these (basic auth): the service account
                "MLFLOW_TRACKING_USERNAME": self.mlflow_service[0],
                "MLFLOW_TRACKING_PASSWORD": self.mlflow_service[1],
                "MELI_LOCK_URI": self._pg_url(self.airflow_db),  # the gate's lock: a Postgres advisory lock
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "120",
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self._pg_url(self.airflow_db),
                "AIRFLOW__CELERY__BROKER_URL": f"redis://{HOST}:{REDIS_PORT}/{self.redis_db}",
                "AIRFLOW__CELERY__RESULT_BACKEND": self._pg_url(self.airflow_db, "db+postgresql+psycopg2"),
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "default",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                "AIRFLOW__API__HOST": HOST,
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__BASE_URL": self.api_url,
                "AIRFLOW__API_AUTH__JWT_SECRET": self.jwt_secret,
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.root / "simple_auth_passwords.json"),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "meli_hostname.hostname",
                "AIRFLOW__SCHEDULER__PARSING_PROCESSES": "1",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            }
        )
        env.update(extra)
        return env

    # -- lifecycle
    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        for d in (self.home / "airflow", self.logs, self.artifacts):
            d.mkdir(parents=True, exist_ok=True)
        (self.root / "simple_auth_passwords.json").write_text(json.dumps({"admin": self.password}))
        self.redis_db = claim_redis_db(self.redis_token)
        for db in (self.airflow_db, self.mlflow_db, self.mlflow_auth_db):
            create_database(db)
            self.databases.append(db)

        # MLflow tracking server on Postgres with MLflow's authentication (basic-auth), through the
        # same entrypoint as docker/compose.yaml; artifacts proxied to the shared root
        self.spawn(
            "mlflow",
            [
                sys.executable,
                str(MLFLOW_AUTH),
                "serve",
                "--",
                "mlflow",
                "server",
                "--app-name",
                "basic-auth",
                "--backend-store-uri",
                self._pg_url(self.mlflow_db),
                "--serve-artifacts",
                "--artifacts-destination",
                self.artifacts.as_uri(),
                "--host",
                HOST,
                "--port",
                str(self.mlflow_port),
                "--workers",
                "1",
            ],
            **self._mlflow_admin_env(),
            MLFLOW_AUTH_CONFIG_PATH=str(self.root / "mlflow-auth" / "basic_auth.ini"),
            MELI_MLFLOW_AUTH_DB_URI=self._pg_url(self.mlflow_auth_db),
            MLFLOW_FLASK_SERVER_SECRET_KEY=self.mlflow_flask_secret,
        )
        self.run("airflow-db-migrate", ["airflow", "db", "migrate"], timeout=300)
        self.run(
            "airflow-pools-set",
            ["airflow", "pools", "set", "gpu", "1", "GPU slots: one training task per GPU"],
            timeout=120,
        )
        # the service account, before any Airflow component starts (compose: mlflow-auth-init)
        self.run(
            "mlflow-auth-bootstrap",
            [sys.executable, str(MLFLOW_AUTH), "bootstrap"],
            timeout=300,
            **self._mlflow_admin_env(),
            MELI_MLFLOW_SERVICE_USER=self.mlflow_service[0],
            MELI_MLFLOW_SERVICE_PASSWORD=self.mlflow_service[1],
            MELI_MLFLOW_BOOTSTRAP_TIMEOUT_S="240",
        )
        self.spawn(
            "api-server", ["airflow", "api-server", "--host", HOST, "--port", str(self.api_port), "--workers", "1"]
        )
        self.spawn("scheduler", ["airflow", "scheduler", "--skip-serve-logs"])
        self.spawn("dag-processor", ["airflow", "dag-processor"])
        for queue, name in self.worker_names.items():
            self.spawn(
                f"worker-{queue}",
                [
                    "airflow",
                    "celery",
                    "worker",
                    "--queues",
                    queue,
                    "--concurrency",
                    "1",
                    "--celery-hostname",
                    name,
                    "--skip-serve-logs",
                    "--without-mingle",
                    "--without-gossip",
                ],
                MELI_WORKER_HOSTNAME=name,
            )

    def _mlflow_admin_env(self) -> dict[str, str]:
        """The MLflow admin's credentials: for the server and the bootstrap step only."""
        return {
            "MELI_MLFLOW_ADMIN_USER": self.mlflow_admin[0],
            "MELI_MLFLOW_ADMIN_PASSWORD": self.mlflow_admin[1],
            "MLFLOW_TRACKING_USERNAME": "",
            "MLFLOW_TRACKING_PASSWORD": "",
        }

    def stop(self) -> None:
        # workers first (no new task processes), then the control plane, then MLflow
        order = {"worker-gpu": 0, "worker-default": 0, "scheduler": 1, "dag-processor": 2, "api-server": 3}
        for proc in sorted(self.procs, key=lambda p: order.get(p.name, 9)):
            try:
                stop_process(proc)
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"[meli_cluster] could not stop {proc.name} (pid {proc.pid}): {exc}", file=sys.stderr)
        for db in list(self.databases):
            try:
                drop_database(db)
                self.databases.remove(db)
            except Exception as exc:  # noqa: BLE001
                print(f"[meli_cluster] could not drop database {db}: {exc}", file=sys.stderr)
        if self.redis_db is not None:
            try:
                release_redis_db(self.redis_db, self.redis_token)
            except Exception as exc:  # noqa: BLE001
                print(f"[meli_cluster] could not release Redis db {self.redis_db}: {exc}", file=sys.stderr)
            self.redis_db = None

    def spawn(self, name: str, argv: list[str], **extra: str) -> Proc:
        log = self.logs / f"{name}.log"
        fh = open(log, "ab")  # noqa: SIM115 - the child owns it; closed when we close our copy below
        env = self.env(**extra)
        try:
            popen = subprocess.Popen(
                argv,
                cwd=self.root,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            fh.close()
        proc = Proc(name, popen, log, env)
        self.procs.append(proc)
        return proc

    def run(self, name: str, argv: list[str], timeout: float, **extra: str) -> None:
        """Run a one-shot command to completion (killed by PID on timeout); raise with its log on failure."""
        proc = self.spawn(name, argv, **extra)
        try:
            rc = proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(proc, grace=5)
            raise RuntimeError(f"{' '.join(argv)} timed out after {timeout}s:\n{proc.tail()}") from None
        finally:
            self.procs.remove(proc)
        if rc != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {rc}:\n{proc.tail()}")

    # -- readiness
    def check_alive(self) -> None:
        dead = [p for p in self.procs if not p.alive()]
        if dead:
            raise RuntimeError(
                "process(es) exited early:\n"
                + "\n".join(f"--- {p.name} (pid {p.pid}, rc {p.popen.returncode}) {p.log}\n{p.tail()}" for p in dead)
            )

    def wait_for(self, what: str, predicate, timeout: float, interval: float = 2.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                result = predicate()
                if result:
                    return result
            except Exception as exc:  # noqa: BLE001 - not ready yet
                last = exc
            time.sleep(interval)
        raise TimeoutError(
            f"timed out after {timeout:.0f}s waiting for {what} (last error: {last!r})\n" + self.diagnostics()
        )

    def wait_ready(self, timeout: float = 300) -> None:
        """Wait (at most ``timeout`` seconds in all) until every component answers."""
        deadline = time.monotonic() + timeout
        left = lambda: max(1.0, deadline - time.monotonic())  # noqa: E731
        checks = [
            ("the MLflow server", lambda: _http("GET", f"{self.mlflow_url}/health", timeout=5)[0] == 200),
            ("the Airflow api-server", lambda: _http("GET", f"{self.api_url}/api/v2/version", timeout=5)[0] == 200),
        ]
        for what, predicate in checks:
            self.wait_for(what, predicate, left())
        self.token = self.wait_for("a token from POST /auth/token", self._login, min(60.0, left()))
        self.wait_for("the scheduler heartbeat", self._scheduler_healthy, left())
        self.wait_for(
            "the dag-processor to parse meli_retrain",
            lambda: self.api("GET", "/api/v2/dags/meli_retrain")[0] == 200,
            left(),
        )
        for queue in self.worker_names:
            self.wait_for(f"the {queue} Celery worker", lambda q=queue: self._worker_ready(q), left())

    def _login(self) -> str | None:
        status, body = _http(
            "POST", f"{self.api_url}/auth/token", {"username": "admin", "password": self.password}, timeout=10
        )
        return body["access_token"] if status in (200, 201) else None

    def _scheduler_healthy(self) -> bool:
        status, body = _http("GET", f"{self.api_url}/api/v2/monitor/health", timeout=5)
        return status == 200 and body.get("scheduler", {}).get("status") == "healthy"

    def _worker_ready(self, queue: str) -> bool:
        log = self.logs / f"worker-{queue}.log"
        return f"{self.worker_names[queue]} ready" in log.read_text(errors="replace")

    def api(self, method: str, path: str, body: dict | None = None):
        return _http(method, f"{self.api_url}{path}", body, token=self.token)

    def mlflow(self, method: str, path: str, body: dict | None = None, auth: tuple[str, str] | None = None):
        """An MLflow REST call as ``auth`` (username, password); None: no credentials at all."""
        return _http(method, f"{self.mlflow_url}{path}", body, basic=auth, timeout=30)

    # -- diagnostics
    def diagnostics(self, lines: int = 30) -> str:
        parts = [f"cluster root: {self.root}"]
        for p in self.procs:
            state = "running" if p.alive() else f"exited {p.popen.returncode}"
            parts.append(f"--- {p.name} (pid {p.pid}, {state}) {p.log}\n{p.tail(lines)}")
        return "\n".join(parts)

    def task_log_tails(self, lines: int = 30) -> str:
        out = []
        base = self.home / "airflow" / "logs"
        for path in sorted(base.rglob("*.log")) if base.is_dir() else []:
            if "dag_processor" in path.parts:
                continue
            out.append(
                f"--- {path.relative_to(base)}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            )
        return "\n".join(out)

    def keep_logs(self, dest: Path) -> None:
        """Copy process and task logs somewhere that outlives the tmp dir (best effort)."""
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.logs, dest / "processes", dirs_exist_ok=True)
        if (self.home / "airflow" / "logs").is_dir():
            shutil.copytree(self.home / "airflow" / "logs", dest / "tasks", dirs_exist_ok=True)


def main(argv: list[str]) -> int:
    if argv[1:] == ["--check"]:
        ok, why = services_available()
        if not ok:
            print(
                f"distributed test skipped: {why} (needs Postgres on {HOST}:{PG_PORT} and Redis on {HOST}:{REDIS_PORT})"
            )
        return 0 if ok else 1
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
