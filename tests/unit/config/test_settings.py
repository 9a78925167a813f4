"""Settings read from the environment: training threads."""

from __future__ import annotations

import os

import pytest

from pipelines.core.system import train_threads, usable_cores
from pipelines.settings import Settings


def test_training_threads_share_the_cores(meli_home, monkeypatch):
    monkeypatch.delenv("MELI_TORCH_THREADS", raising=False)
    monkeypatch.setenv("MELI_TRAIN_CONCURRENCY", "4")
    s = Settings()
    assert train_threads(s, 1, cores=16) == 16  # alone: every core
    assert train_threads(s, 2, cores=16) == 8  # two model types: both run at once
    assert train_threads(s, 3, cores=16) == 5  # three at once
    assert train_threads(s, 6, cores=16) == 4  # more types than slots: MELI_TRAIN_CONCURRENCY at once
    assert train_threads(Settings(), 3, cores=2) == 1  # never zero
    monkeypatch.setenv("MELI_TORCH_THREADS", "3")
    assert train_threads(Settings(), 2, cores=16) == 3  # explicit wins


def test_the_usable_cores_follow_the_cpu_affinity(monkeypatch):
    """A container or ``taskset`` gives a task fewer cores than the host has: count those."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert usable_cores() == 3


@pytest.mark.parametrize(("var", "value"), [("MELI_TRAIN_CONCURRENCY", "0"), ("MELI_TORCH_THREADS", "-1")])
def test_bad_thread_settings_are_clear(meli_home, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=var):
        Settings()
