"""Issue 32: each field declared once (pipelines/config.py ``declare``, pipelines/settings.py ``setting``);
the DAGs' Params, the CLI flags and a recipe's check are generated from that declaration."""

from __future__ import annotations

import os
from dataclasses import fields

import pytest

from pipelines.config import (
    SECTIONS,
    TRAIN_BOUNDS,
    RunOptions,
    TrainConfig,
    bounds_of,
    check_recipe,
    declared,
    params_for,
)
from pipelines.settings import RULE_OVERRIDES, GateRules, Monitor, Settings, Thresholds
from pipelines.training.tune import TUNE_BOUNDS, TuneConfig
from tests.unit.core.test_confinement import dag  # noqa: F401  (the DAG-loading fixture)


def test_every_training_field_is_declared_with_a_title_help_and_section():
    for cls in (TrainConfig, TuneConfig, RunOptions):
        assert set(declared(cls)) == {f.name for f in fields(cls)}, cls
        for name, (_, s) in declared(cls).items():
            assert s.title and s.help and s.section in SECTIONS, (cls, name)
    assert TRAIN_BOUNDS == bounds_of(TrainConfig) and TUNE_BOUNDS == bounds_of(TuneConfig)
    assert set(RULE_OVERRIDES) == {"min_improvement", "min_macro_recall", "max_class_drop"} | {
        "max_share_classes_dropped",
        "min_behaviour_pass",
    }


@pytest.mark.parametrize("dag_id, sections", [("meli_retrain", SECTIONS[:6]), ("meli_tune", SECTIONS[:3])])
def test_each_param_has_a_title_a_description_and_a_section(dag, dag_id, sections):  # noqa: F811
    d = dag(dag_id)
    seen = []
    for name in d.params:
        p = d.params.get_param(name)
        assert p.schema.get("title") and p.description, (dag_id, name)
        seen.append(p.schema["section"])
    assert tuple(dict.fromkeys(seen)) == sections  # grouped, in the declared order


def test_the_retrain_forms_params_are_the_declaration(dag):  # noqa: F811
    """The form's schema (type, bounds, choices, default, title, description, section) is what params_for
    generates from the declarations: TrainConfig's form fields, the run's options and the overridable rules."""
    d = dag("meli_retrain")
    want = {**params_for(RunOptions), **params_for(TrainConfig), **params_for(GateRules())}
    assert set(d.params) == set(want)
    for name, kw in want.items():
        p = d.params.get_param(name)
        schema = {k: v for k, v in kw.items() if k not in ("default", "description")}
        assert p.schema == schema, name
        if name != "require_approval":  # its default is MELI_REQUIRE_APPROVAL, its help names the timeout
            assert p.value == kw["default"] and p.description == kw["description"], name
    for name, bound in TRAIN_BOUNDS.items():  # every bounded form field carries its declared bound
        if name in d.params:
            schema = d.params.get_param(name).schema
            assert {k: schema.get(k) for k in bound.schema()} == bound.schema(), name
    # TrainConfig's fields left off the form (security item 2: a run cannot set them) are declared so
    assert {n for n, (_, s) in declared(TrainConfig).items() if not s.param} == {
        "weight_decay",
        "label_smoothing",
        "seed",
        "bucket",
    }
    assert not {"weight_decay", "label_smoothing", "seed", "bucket"} & set(d.params)


def test_the_tune_forms_params_are_the_declaration(dag):  # noqa: F811
    d = dag("meli_tune")
    want = {**params_for(TuneConfig), **params_for(TrainConfig, names=("epochs", "sentence_encoder", "device"))}
    assert set(d.params) == set(want) | {"run_date"}
    for name, kw in want.items():
        p = d.params.get_param(name)
        assert p.schema == {k: v for k, v in kw.items() if k not in ("default", "description")}, name
        assert p.value == kw["default"], name


def test_gate_rule_params_default_to_the_environment(monkeypatch):
    monkeypatch.setenv("MELI_GATE_MIN_MACRO_RECALL", "0.4")
    kw = params_for(GateRules())["min_macro_recall"]
    assert kw["default"] == 0.4 and kw["maximum"] == 1 and kw["section"] == "Gate"


@pytest.mark.parametrize(
    "params, message",
    [
        ({"dropout": 0.95}, r"recipe r-1: mlp\.dropout must be <= 0.9"),
        ({"epochs": 201}, r"recipe r-1: mlp\.epochs must be <= 200"),
        ({"lr": 0}, r"recipe r-1: mlp\.lr must be > 0"),
        ({"balance": "oversample"}, r"recipe r-1: mlp: balance must be one of"),
        ({"models": ["mlp"]}, r"mlp\.models is not a training parameter"),
    ],
)
def test_a_recipe_is_checked_by_the_same_declaration(params, message):
    with pytest.raises(ValueError, match=message):
        check_recipe({"id": "r-1", "params": {"mlp": params}})
    name, value = next(iter(params.items()))
    if name != "models":  # the same value from a flag or the form: TrainConfig refuses it too
        with pytest.raises(ValueError, match=name):
            TrainConfig(**{name: value})


def test_every_setting_declares_its_variable_default_and_help(monkeypatch):
    """One declaration per setting (pipelines/settings.py ``setting``): variable, default, help; the
    resolved value of an unset variable is its declared default."""
    seen = set()
    for cls in (Settings, Thresholds, GateRules, Monitor):
        for f in fields(cls):
            if f.name in ("thresholds", "gate", "monitor"):
                continue
            meta = f.metadata
            assert meta.get("env") and meta.get("help"), (cls, f.name)
            assert meta["env"] not in seen
            seen.add(meta["env"])
    for var in seen:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MELI_HOME", os.environ.get("MELI_HOME", "/tmp/meli-declared"))
    g = GateRules()
    for f in fields(GateRules):
        assert getattr(g, f.name) == f.metadata["default"], f.name
    monkeypatch.setenv("MELI_GATE_BOOTSTRAP", "7")
    assert GateRules().bootstrap_samples == 7
