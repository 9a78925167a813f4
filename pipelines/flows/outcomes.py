"""How a step says "stop" without being a crash, and how Airflow hears it.

``StopRun``: the input or the data is refused (bad parameters, a path outside its roots, a partition
that failed validation): the run fails at once, since a retry would be refused the same.
``NothingToDo``: there is nothing to work on (no new rows, an empty landing after drift): the task
and what follows it are skipped. The DAG's tasks run their step inside ``airflow_outcomes()``, which
turns these into Airflow's ``AirflowFailException`` and ``AirflowSkipException``; the CLI prints them
as one line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class StopRun(Exception):
    """Refused input or data: fail now, without retries."""


class NothingToDo(Exception):
    """Nothing to work on: skip this task and those after it."""


@contextmanager
def airflow_outcomes() -> Iterator[None]:
    """Inside an Airflow task: ``StopRun`` fails the task without retries, ``NothingToDo`` skips it."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    try:
        yield
    except StopRun as exc:
        raise AirflowFailException(str(exc)) from exc
    except NothingToDo as exc:
        raise AirflowSkipException(str(exc)) from exc
