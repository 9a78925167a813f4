#!/bin/sh
# Runs once, on the first start of an empty postgres volume (docker-entrypoint-initdb.d):
# the image creates POSTGRES_DB (Airflow metadata); MLflow gets its own database on the same server
# (both use Alembic with an `alembic_version` table, so they cannot share one), and MLflow's auth
# store (users, permissions of `mlflow server --app-name basic-auth`) one more. On a volume
# initialised before auth was on, docker/mlflow_auth.py creates the auth database at the server's start.
set -eu
for db in "${MLFLOW_DB:-mlflow}" "${MLFLOW_AUTH_DB:-mlflow_auth}"; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\""
done
