"""Settings read from the environment: training threads."""

from __future__ import annotations

import os

import pytest

from pipelines.settings import Settings


def test_training_threads_share_the_cores(meli_home, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.delenv("MELI_TORCH_THREADS", raising=False)
    monkeypatch.setenv("MELI_TRAIN_CONCURRENCY", "4")
    s = Settings()
    assert s.train_threads(1) == 16  # alone: every core
    assert s.train_threads(2) == 8  # two model types: both run at once
    assert s.train_threads(3) == 5  # three at once
    assert s.train_threads(6) == 4  # more types than slots: MELI_TRAIN_CONCURRENCY at once
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert Settings().train_threads(3) == 1  # never zero
    monkeypatch.setenv("MELI_TORCH_THREADS", "3")
    assert Settings().train_threads(2) == 3  # explicit wins


@pytest.mark.parametrize(("var", "value"), [("MELI_TRAIN_CONCURRENCY", "0"), ("MELI_TORCH_THREADS", "-1")])
def test_bad_thread_settings_are_clear(meli_home, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=var):
        Settings()
