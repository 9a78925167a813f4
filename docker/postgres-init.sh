#!/bin/sh
# Runs once, on the first start of an empty postgres volume (docker-entrypoint-initdb.d):
# the image creates POSTGRES_DB (Airflow metadata); MLflow gets its own database on the same server
# (both use Alembic with an `alembic_version` table, so they cannot share one).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "CREATE DATABASE \"${MLFLOW_DB:-mlflow}\" OWNER \"$POSTGRES_USER\""
