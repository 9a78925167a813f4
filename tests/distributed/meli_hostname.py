"""``[core] hostname_callable`` for the distributed test: several Airflow workers on one machine.

In a real deployment every worker runs on its own host or container, so the default (FQDN) tells
them apart. The distributed test runs two Celery workers side by side on 127.0.0.1; each one gets
``MELI_WORKER_HOSTNAME`` (the same name as its ``--celery-hostname``) so that the hostname Airflow
records on a task instance says which worker ran it.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("MELI_WORKER_HOSTNAME") or socket.getfqdn()
