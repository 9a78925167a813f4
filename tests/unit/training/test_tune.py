"""Recipes (pipelines/config.py load_recipe / apply_recipe) and the tuning search space: no training."""

from __future__ import annotations

import json

import pytest

from pipelines.config import TrainConfig, apply_recipe, load_recipe
from pipelines.training.tune import SEARCH_SPACE, TuneConfig, default_params


def _recipe(d, rid: str, created: str, **params) -> dict:
    r = {"id": rid, "created_at": created, "params": {"mlp": params}}
    (d / f"{rid}.json").write_text(json.dumps(r))
    return r


def test_default_recipe_is_no_recipe(tmp_path):
    assert load_recipe(tmp_path, "default") is None
    cfg = TrainConfig(lr=0.01)
    assert apply_recipe(cfg, "mlp", None) == cfg


def test_tuned_is_the_latest_recipe_and_an_id_is_that_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `meli tune` first"):
        load_recipe(tmp_path, "tuned")
    _recipe(tmp_path, "s-r1", "2026-01-01T00:00:00", lr=0.001)
    _recipe(tmp_path, "s-r2", "2026-01-02T00:00:00", lr=0.002)
    assert load_recipe(tmp_path, "tuned")["id"] == "s-r2"
    assert load_recipe(tmp_path, "s-r1")["params"]["mlp"]["lr"] == 0.001
    with pytest.raises(FileNotFoundError, match="no recipe"):
        load_recipe(tmp_path, "s-r9")


def test_recipe_fills_defaults_but_a_set_field_wins(tmp_path):
    r = _recipe(tmp_path, "s-r1", "2026-01-01T00:00:00", lr=0.001, hidden=256, dropout=0.2)
    cfg = apply_recipe(TrainConfig(hidden=512), "mlp", r)
    assert (cfg.lr, cfg.dropout, cfg.hidden, cfg.recipe) == (0.001, 0.2, 512, "s-r1")
    other = apply_recipe(TrainConfig(), "cnn", r)  # no parameters for cnn in this recipe: the defaults
    assert other.lr == TrainConfig().lr and other.recipe == "s-r1"


def test_search_space_holds_the_defaults():
    """Trial 0 enqueues TrainConfig's defaults: each must lie inside its range (a fair comparison)."""
    for kind, space in SEARCH_SPACE.items():
        for name, value in default_params(kind).items():
            spec = space[name]
            assert value in spec[1] if spec[0] == "cat" else spec[1] <= value <= spec[2], (kind, name)
    with pytest.raises(ValueError):
        TuneConfig(pruner="random")
