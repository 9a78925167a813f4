"""Refuse placeholder secrets before any service of docker/compose.yaml starts.

``python docker/check_secrets.py`` is the one-shot ``secrets-check`` service every other service waits
for (``service_completed_successfully``). Compose's ``${VAR:?}`` already refuses a secret that is unset
or empty; this refuses what compose cannot see: a placeholder (``change-me`` from .env.example, or
another well-known one), a short value, and a Fernet key that is not one. It prints the names of the
bad variables, never their values, and exits 1. Standard library only.
"""

from __future__ import annotations

import base64
import binascii
import os
import sys

# variable -> minimum length (the Fernet key is checked as a key instead)
SECRETS = {
    "POSTGRES_PASSWORD": 12,
    "REDIS_PASSWORD": 12,
    "AIRFLOW_ADMIN_PASSWORD": 12,
    "AIRFLOW_JWT_SECRET": 32,  # signs every API and task token (HS512)
    "AIRFLOW_FERNET_KEY": 0,
    "MLFLOW_ADMIN_PASSWORD": 12,
    "MLFLOW_SERVICE_PASSWORD": 12,
    "MLFLOW_FLASK_SECRET_KEY": 32,
}
PLACEHOLDERS = ("change-me", "changeme", "change_me", "replace-me", "secret", "password", "admin", "xxx")


def fernet_key_problem(value: str) -> str | None:
    """None when ``value`` is a Fernet key, or several comma-separated (new,old: while rotating)."""
    for key in value.split(","):
        try:
            raw = base64.urlsafe_b64decode(key.strip().encode())
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) == 32:
            continue
        return (
            "is not a Fernet key (32 url-safe base64 bytes): "
            'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
        )
    return None


def problems(env: dict[str, str]) -> list[str]:
    """One line per bad secret of ``env`` (names only)."""
    out = []
    for name, min_len in SECRETS.items():
        value = env.get(name, "")
        low = value.strip().lower()
        if not low:
            out.append(f"{name} is empty")
        elif any(p in low for p in PLACEHOLDERS[:4]) or low in PLACEHOLDERS:
            out.append(f"{name} is a placeholder: set a real secret in docker/.env")
        elif name == "AIRFLOW_FERNET_KEY":
            if problem := fernet_key_problem(value.strip()):
                out.append(f"{name} {problem}")
        elif len(value) < min_len:
            out.append(f"{name} has {len(value)} characters: at least {min_len}")
    return out


def main() -> int:
    bad = problems(dict(os.environ))
    for line in bad:
        print(f"secrets-check: {line}", file=sys.stderr)
    if bad:
        print(
            'secrets-check: refusing to start; generate secrets with: python -c "import secrets; '
            'print(secrets.token_urlsafe(32))"',
            file=sys.stderr,
        )
        return 1
    print(f"secrets-check: {len(SECRETS)} secrets set")
    return 0


if __name__ == "__main__":
    sys.exit(main())
