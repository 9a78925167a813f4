"""Named crash points for the crash tests: ``MELI_FAULT=<name>`` kills the process there.

A crash test starts a real ``python -m pipelines ...`` with ``MELI_FAULT`` set to one of the names
below and checks what the next reader and writer see. Unset (always, in production) a point costs
one dictionary lookup.

* ``lake.staged``: a partition version's files are written, its commit pointer is not
* ``lake.committed``: the pointer names the new version; superseded versions not yet removed
* ``gate.decided``: the gate's decision is on disk as 'promoting'; no alias has moved
* ``gate.previous_moved``: alias 'previous' has moved, 'champion' not yet
* ``gate.champion_moved``: alias 'champion' has moved (journaled), the decision is not yet recorded
* ``approval.decided``, ``approval.previous_moved``, ``approval.champion_moved``: the same steps of a
  person's approval
* ``rollback.champion_moved``: a rollback moved 'champion' (journaled), not 'previous' nor its record
* ``register.registered``: a new version is registered and tagged; nothing evaluated or gated
* ``train.model_run``: a model's MLflow run is open (training under way)
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "lake.staged",
    "lake.committed",
    "gate.decided",
    "gate.previous_moved",
    "gate.champion_moved",
    "approval.decided",
    "approval.previous_moved",
    "approval.champion_moved",
    "rollback.champion_moved",
    "register.registered",
    "train.model_run",
)


def point(name: str) -> None:
    if os.environ.get("MELI_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
