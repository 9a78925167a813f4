"""MLflow's built-in authentication (``mlflow server --app-name basic-auth``) for the distributed profile.

One file, three steps, used the same way by docker/compose.yaml and by tests/distributed:

``python docker/mlflow_auth.py serve -- mlflow server --app-name basic-auth ...``
    the MLflow server's entrypoint: writes the auth config (``MLFLOW_AUTH_CONFIG_PATH``, mode 0600)
    from the environment, creates the auth database when it is a Postgres one that does not exist
    yet, then execs the command.
``python docker/mlflow_auth.py bootstrap``
    the one-shot step once the server is healthy (safe at every start): with the admin credentials
    it creates the pipelines' service account (an existing one is no error: its password is set to
    the configured one, and it is made no admin), grants it MANAGE on the registered model (by
    name, so before the model exists too) and on the pipelines' experiments that already exist
    (``MELI_EXPERIMENT`` and its ``-promotions`` / ``-shadow`` siblings, e.g. created before auth
    was on); the experiments it creates itself it owns (MANAGE) anyway.
``python docker/mlflow_auth.py config PATH``
    only writes the auth config (for a server started some other way).

Environment (docker/compose.yaml maps docker/.env onto these; tests/distributed sets them):

* ``MLFLOW_AUTH_CONFIG_PATH``: where the auth config is written (MLflow reads it from there);
* ``MELI_MLFLOW_AUTH_DB_URI``: the auth store (users, permissions), a SQLAlchemy URL;
* ``MELI_MLFLOW_ADMIN_USER`` / ``MELI_MLFLOW_ADMIN_PASSWORD``: the admin account, created by the
  server on its first start (the password is ignored once the admin exists);
* ``MELI_MLFLOW_SERVICE_USER`` / ``MELI_MLFLOW_SERVICE_PASSWORD``: the pipelines' account (bootstrap);
* ``MLFLOW_TRACKING_URI``: the server (bootstrap); ``MELI_MODEL_NAME``, ``MELI_EXPERIMENT``: what
  the service account must own (read through pipelines.settings).

Everything a client sends goes through MLflow's auth REST API (paths as in
``mlflow/server/auth/routes.py``); the pipelines themselves only see ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``, read by MLflow's client. Only the standard library is needed for
``bootstrap`` (psycopg2 for ``serve`` on Postgres).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

# MLflow 3 auth REST API (mlflow/server/auth/routes.py; tests/unit/docker/test_compose.py checks these)
CREATE_USER = "/api/2.0/mlflow/users/create"
GET_USER = "/api/2.0/mlflow/users/get"
GET_CURRENT_USER = "/api/2.0/mlflow/users/current"
UPDATE_USER_PASSWORD = "/api/2.0/mlflow/users/update-password"
UPDATE_USER_ADMIN = "/api/2.0/mlflow/users/update-admin"
GRANT_USER_PERMISSION = "/api/3.0/mlflow/users/permissions/grant"
REVOKE_USER_PERMISSION = "/api/3.0/mlflow/users/permissions/revoke"
GET_USER_PERMISSION = "/api/3.0/mlflow/users/permissions/get"
SEARCH_EXPERIMENTS = "/api/2.0/mlflow/experiments/search"

AUTHORIZATION_FUNCTION = "mlflow.server.auth:authenticate_request_basic_auth"
DEFAULT_PERMISSION = "READ"  # every authenticated user reads; writes need a grant (or ownership)
MIN_PASSWORD = 12  # MLflow's own policy (mlflow.utils.validation._validate_password)
PLACEHOLDERS = {"change-me"}


class AuthSetupError(RuntimeError):
    """A configuration or server problem, reported in one line."""


def _log(msg: str) -> None:
    print(f"[mlflow-auth] {msg}", file=sys.stderr, flush=True)


def _required(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise AuthSetupError(f"{name} is not set")
    return value


def _password(name: str) -> str:
    value = _required(name)
    if value in PLACEHOLDERS or len(value) < MIN_PASSWORD:
        raise AuthSetupError(f"{name} must be a real password of at least {MIN_PASSWORD} characters")
    return value


# ---- the auth config -----------------------------------------------------------------------------
def render_config(database_uri: str, admin_user: str, admin_password: str) -> str:
    """The ``[mlflow]`` section of the auth ini (keys as in mlflow/server/auth/basic_auth.ini)."""
    values = {
        "default_permission": DEFAULT_PERMISSION,
        "database_uri": database_uri,
        "admin_username": admin_user,
        "admin_password": admin_password,
        "authorization_function": AUTHORIZATION_FUNCTION,
        "grant_default_workspace_access": "false",
    }
    for key, value in values.items():
        if "\n" in value or "\r" in value or value != value.strip():
            raise AuthSetupError(f"the auth config's {key} must be one line without surrounding blanks")
    # MLflow reads the file with configparser's default (%-)interpolation: a literal % is written %%
    body = "".join(f"{key} = {value.replace('%', '%%')}\n" for key, value in values.items())
    return "# written at start-up by docker/mlflow_auth.py from the environment: holds secrets\n[mlflow]\n" + body


def write_config(path: str | Path) -> Path:
    path = Path(path)
    text = render_config(
        _required("MELI_MLFLOW_AUTH_DB_URI"),
        _required("MELI_MLFLOW_ADMIN_USER"),
        _password("MELI_MLFLOW_ADMIN_PASSWORD"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


def ensure_database(uri: str) -> None:
    """Create the auth database when it is a Postgres one that does not exist yet (best effort:
    postgres-init.sh creates it on a fresh volume; this covers volumes initialised before auth)."""
    parsed = urllib.parse.urlsplit(uri)
    if not parsed.scheme.startswith("postgresql"):
        return
    name = urllib.parse.unquote(parsed.path.lstrip("/"))
    try:
        import psycopg2
    except ImportError:
        return
    kwargs = {
        "host": parsed.hostname,
        "port": parsed.port or 5432,
        "user": urllib.parse.unquote(parsed.username or "") or None,
        "password": urllib.parse.unquote(parsed.password or "") or None,
        "connect_timeout": 10,
    }
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = psycopg2.connect(dbname="postgres", **kwargs)
            break
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                _log(f"could not check the auth database {name!r} ({str(exc).strip()}); starting anyway")
                return
            time.sleep(2)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
                _log(f"created the auth database {name!r}")
    except psycopg2.Error as exc:
        _log(f"could not create the auth database {name!r}: {str(exc).strip()}")
    finally:
        conn.close()


def serve(argv: list[str]) -> None:
    if not argv:
        raise AuthSetupError("serve needs the server command after --")
    if "--app-name" not in argv or argv[argv.index("--app-name") + 1 : argv.index("--app-name") + 2] != ["basic-auth"]:
        raise AuthSetupError("serve runs `mlflow server --app-name basic-auth ...` only")
    write_config(_required("MLFLOW_AUTH_CONFIG_PATH"))
    _required("MLFLOW_FLASK_SERVER_SECRET_KEY")  # the auth app refuses to start without it
    ensure_database(os.environ["MELI_MLFLOW_AUTH_DB_URI"])
    sys.stdout.flush()
    os.execvp(argv[0], argv)


# ---- bootstrap through the auth REST API ---------------------------------------------------------
class Server:
    def __init__(self, url: str, user: str, password: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.user = user
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict | None = None, params: dict | None = None):
        """(status, parsed JSON or text); HTTP errors are returned, not raised."""
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", self._auth)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw) if raw else {}
        except ValueError:
            return status, raw.decode(errors="replace").strip()

    def ok(self, method: str, path: str, body: dict | None = None, params: dict | None = None, what: str = ""):
        status, payload = self.call(method, path, body, params)
        if status != 200:
            raise AuthSetupError(f"{what or path}: HTTP {status} {payload}")
        return payload


def _error_code(payload) -> str:
    return payload.get("error_code", "") if isinstance(payload, dict) else ""


def wait_healthy(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (OSError, ValueError) as exc:
            last = exc
        time.sleep(2)
    raise AuthSetupError(f"MLflow server {url} not healthy after {timeout:.0f}s ({last})")


def ensure_user(admin: Server, username: str, password: str) -> str:
    """Create ``username``; an existing one gets ``password`` (the env file is the source of truth)."""
    status, payload = admin.call("POST", CREATE_USER, {"username": username, "password": password})
    if status == 200:
        action = "created"
    elif _error_code(payload) == "RESOURCE_ALREADY_EXISTS":
        admin.ok(
            "PATCH",
            UPDATE_USER_PASSWORD,
            {"username": username, "password": password},
            what=f"set the password of existing user {username!r}",
        )
        action = "exists (password set from the environment)"
    else:
        raise AuthSetupError(f"create user {username!r}: HTTP {status} {payload}")
    user = admin.ok("GET", GET_USER, params={"username": username}, what=f"get user {username!r}")["user"]
    if user.get("is_admin"):
        admin.ok("PATCH", UPDATE_USER_ADMIN, {"username": username, "is_admin": False}, what="drop admin")
        action += "; admin flag removed (the service account is no admin)"
    return action


def ensure_permission(admin: Server, username: str, resource_type: str, resource_id: str, permission: str) -> str:
    """Grant ``permission`` (idempotent: an existing grant of another level is replaced)."""
    body = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
    status, payload = admin.call("POST", GRANT_USER_PERMISSION, {**body, "permission": permission})
    if status == 200:
        return "granted"
    if _error_code(payload) != "RESOURCE_ALREADY_EXISTS":
        raise AuthSetupError(f"grant {permission} on {resource_type} {resource_id!r}: HTTP {status} {payload}")
    current = admin.ok("GET", GET_USER_PERMISSION, params=body, what="get permission").get("permission")
    if current == permission:
        return "already granted"
    admin.ok("POST", REVOKE_USER_PERMISSION, body, what=f"revoke {current} on {resource_type} {resource_id!r}")
    admin.ok("POST", GRANT_USER_PERMISSION, {**body, "permission": permission}, what="grant")
    return f"replaced {current}"


def pipeline_resources() -> tuple[str, str]:
    """The registered model and the experiment the pipelines write (pipelines.settings)."""
    try:
        from pipelines.settings import Settings

        settings = Settings()
        return settings.model_name, settings.experiment
    except ImportError:  # not next to the pipelines package: the same defaults
        return (
            os.environ.get("MELI_MODEL_NAME") or "meli-title-classifier",
            os.environ.get("MELI_EXPERIMENT") or "meli-retrain",
        )


def pipeline_experiments(admin: Server, experiment: str) -> list[tuple[str, str]]:
    """(name, id) of the existing experiments the pipelines write: ``experiment`` and its ``experiment-*``
    siblings (pipelines/registry/gate.py's ``-promotions``, pipelines/serving/shadow.py's ``-shadow``)."""
    found, token = [], None
    while True:
        body = {"max_results": 1000, "filter": f"name LIKE '{experiment.replace(chr(39), '')}%'"}
        if token:
            body["page_token"] = token
        page = admin.ok("POST", SEARCH_EXPERIMENTS, body, what="search experiments")
        for exp in page.get("experiments", []):
            if exp["name"] == experiment or exp["name"].startswith(experiment + "-"):
                found.append((exp["name"], exp["experiment_id"]))
        token = page.get("next_page_token")
        if not token:
            return sorted(found)


def bootstrap(timeout: float = 180.0) -> list[str]:
    url = _required("MLFLOW_TRACKING_URI")
    if not url.startswith(("http://", "https://")):
        raise AuthSetupError(f"MLFLOW_TRACKING_URI must be the tracking server's http(s) URL, not {url!r}")
    admin_user = _required("MELI_MLFLOW_ADMIN_USER")
    service_user = _required("MELI_MLFLOW_SERVICE_USER")
    service_password = _password("MELI_MLFLOW_SERVICE_PASSWORD")
    if service_user == admin_user:
        raise AuthSetupError("the service account must not be the admin account")
    wait_healthy(url, timeout)
    admin = Server(url, admin_user, _required("MELI_MLFLOW_ADMIN_PASSWORD"))
    status, me = admin.call("GET", GET_CURRENT_USER)
    if status == 401:
        raise AuthSetupError(
            f"the server rejects admin {admin_user!r}: the admin password is only used on the server's first "
            "start; after a change in the env file, set it through users/update-password first"
        )
    if status != 200 or not (isinstance(me, dict) and me.get("user", {}).get("is_admin")):
        raise AuthSetupError(f"{admin_user!r} is not an admin of {url} (HTTP {status} {me})")

    done = [f"service account {service_user!r}: {ensure_user(admin, service_user, service_password)}"]
    model, experiment = pipeline_resources()
    # by name: holds before the model exists too (and if some other user registered the name first)
    state = ensure_permission(admin, service_user, "registered_model", model, "MANAGE")
    done.append(f"MANAGE on registered model {model!r}: {state}")
    # experiments are granted by id, so only those that exist (created before auth was on); the
    # service account owns (MANAGE) every experiment it creates itself
    existing = pipeline_experiments(admin, experiment)
    for name, exp_id in existing:
        state = ensure_permission(admin, service_user, "experiment", exp_id, "MANAGE")
        done.append(f"MANAGE on experiment {name!r} (id {exp_id}): {state}")
    if not existing:
        done.append(f"no experiment {experiment!r}[-*] yet: the service account will create and own them")
    # the service account can log in
    status, me = Server(url, service_user, service_password).call("GET", GET_CURRENT_USER)
    if status != 200:
        raise AuthSetupError(f"the service account cannot log in: HTTP {status} {me}")
    return done


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["serve"]:
            rest = argv[1:]
            serve(rest[1:] if rest[:1] == ["--"] else rest)
        elif argv[:1] == ["bootstrap"]:
            for line in bootstrap(float(os.environ.get("MELI_MLFLOW_BOOTSTRAP_TIMEOUT_S", "180"))):
                _log(line)
        elif argv[:1] == ["config"] and len(argv) == 2:
            _log(f"wrote {write_config(argv[1])}")
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except AuthSetupError as exc:
        _log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
