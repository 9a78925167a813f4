"""Issue 35 item 9: every numeric Param has an upper bound, and the trigger form, TrainConfig (the CLI,
the DAG tasks) and tuned recipes read the same bounds (pipelines/config.py TRAIN_BOUNDS, tune.py
TUNE_BOUNDS)."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest

from pipelines.config import TRAIN_BOUNDS, TrainConfig, apply_recipe, load_recipe
from pipelines.training.tune import SEARCH_SPACE, TUNE_BOUNDS, TuneConfig
from tests.unit.core.test_confinement import dag  # noqa: F401  (the DAG-loading fixture)

DAGS = ("meli_retrain", "meli_score", "meli_tune")


def _numeric(d) -> dict[str, dict]:
    out = {}
    for name in d.params:
        schema = d.params.get_param(name).schema
        types = schema.get("type")
        types = types if isinstance(types, list) else [types]
        if {"integer", "number"} & set(types):
            out[name] = schema
    return out


def test_every_numeric_param_has_a_maximum_and_a_minimum(dag):  # noqa: F811
    seen = 0
    for dag_id in DAGS:
        for name, schema in _numeric(dag(dag_id)).items():
            seen += 1
            assert "maximum" in schema, (dag_id, name, schema)
            assert "minimum" in schema or "exclusiveMinimum" in schema, (dag_id, name, schema)
    assert seen >= 25


def test_the_forms_bounds_are_the_configs_bounds(dag):  # noqa: F811
    retrain = _numeric(dag("meli_retrain"))
    trained = {k: v for k, v in retrain.items() if k in TRAIN_BOUNDS}
    assert {"hidden", "embedding_dim", "batch_size", "gpu_batch_size", "wide_bigrams", "replay_rows"} <= set(trained)
    for name, schema in trained.items():
        want = TRAIN_BOUNDS[name].schema()
        assert {k: schema.get(k) for k in want} == want, name
    # a numeric Param of TrainConfig's fields without an entry in the table would escape it
    from dataclasses import fields

    train_fields = {f.name for f in fields(TrainConfig)}
    assert set(retrain) & train_fields <= set(TRAIN_BOUNDS)
    tune = _numeric(dag("meli_tune"))
    for name, schema in tune.items():
        want = (TUNE_BOUNDS.get(name) or TRAIN_BOUNDS[name]).schema()
        assert {k: schema.get(k) for k in want} == want, name
    # dropout: the form and the code agree (0.9 inclusive)
    assert retrain["dropout"]["maximum"] == 0.9
    TrainConfig(dropout=0.9)
    with pytest.raises(ValueError, match="dropout must be <= 0.9"):
        TrainConfig(dropout=0.95)


@pytest.mark.parametrize(
    "field,value",
    [
        ("hidden", 10**7),
        ("epochs", 100_000),
        ("embedding_dim", 10**6),
        ("batch_size", 10**6),
        ("gpu_batch_size", 10**7),
        ("wide_bigrams", 10**9),
        ("replay_rows", 10**9),
        ("embedding_epochs", 10**4),
        ("patience", 10**5),
        ("lr", 5.0),
        ("bucket", 10**9),
        ("lr", 0.0),
        ("hidden", 1),
    ],
)
def test_train_config_refuses_values_outside_the_bounds_in_one_line(field, value):
    with pytest.raises(ValueError) as err:
        TrainConfig(**{field: value})
    msg = str(err.value)
    bound = TRAIN_BOUNDS[field]
    assert msg.startswith(f"{field} must be ") and "\n" not in msg
    assert str(bound.hi if value > bound.hi else bound.lo) in msg


def test_tune_config_has_bounds_too():
    with pytest.raises(ValueError, match="trials must be <= 10000"):
        TuneConfig(trials=10**6)
    with pytest.raises(ValueError, match="budget_s must be <= 43200"):
        TuneConfig(budget_s=10**9)


def test_a_recipe_outside_the_bounds_is_refused(tmp_path):
    recipe = {"id": "s-r1", "created_at": "2026-01-01T00:00:00", "params": {"mlp": {"hidden": 10**7, "lr": 0.002}}}
    (tmp_path / "s-r1.json").write_text(json.dumps(recipe))
    for name in ("s-r1", "tuned"):
        with pytest.raises(ValueError, match=r"recipe s-r1: mlp\.hidden must be <= 4096; got 10000000"):
            load_recipe(tmp_path, name)
    with pytest.raises(ValueError, match="hidden must be <= 4096"):  # applied directly: the same check
        apply_recipe(TrainConfig(), "mlp", recipe)
    recipe["params"]["mlp"] = {"not_a_field": 1}
    (tmp_path / "s-r1.json").write_text(json.dumps(recipe))
    with pytest.raises(ValueError, match="not a training parameter"):
        load_recipe(tmp_path, "s-r1")


def test_the_search_space_lies_inside_the_bounds():
    """A tuned recipe is always within the bounds: every value Optuna may suggest is."""
    for space in SEARCH_SPACE.values():
        for name, spec in space.items():
            values = spec[1] if spec[0] == "cat" else [spec[1], spec[2]]
            for v in values:
                TRAIN_BOUNDS[name].check(name, v)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--epochs", "100000"],
        ["retrain", "listings.jsonl.gz", "--hidden", "10000000"],
        ["tune", "--embedding-dim", "100000"],
    ],
)
def test_cli_refuses_out_of_bounds_flags_before_any_work(settings, monkeypatch, capsys, argv):
    from pipelines.flows.cli import entrypoint

    monkeypatch.setattr(sys, "argv", ["pipelines", *argv, "--run-date", "2026-11-01"])
    with pytest.raises(SystemExit) as exit_:
        entrypoint()
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "must be <=" in err and len(err.splitlines()) == 1
    assert not settings.run_dir("2026-11-01").exists() and not settings.tune_dir.exists()
    assert not (settings.listings_dir / "ingest_date=2026-11-01").exists()


@pytest.mark.parametrize(
    "values, product",
    [
        ({"bucket": 10_000_000, "embedding_dim": 1024}, "bucket x embedding_dim"),  # a 38 GiB gensim table
        ({"wide_bigrams": 4_000_000, "wide_dim": 4096}, "wide_bigrams x wide_dim"),  # the wide table at the maxima
    ],
)
def test_products_of_the_bounds_are_capped_in_one_line(tmp_path, values, product):
    """Security item 2: each field within its bound, the tables they multiply into are not: refused
    before any work, by TrainConfig (CLI, DAG) and by a recipe."""
    from pipelines.config import MAX_TABLE_BYTES

    for name, value in values.items():
        TrainConfig(**{name: value})  # alone, within the bounds and the cap
    with pytest.raises(ValueError) as err:
        TrainConfig(**values)
    msg = str(err.value)
    assert product in msg and f"{MAX_TABLE_BYTES / 2**30:g} GiB cap" in msg and "\n" not in msg
    recipe = {"id": "s-r2", "created_at": "2026-01-01T00:00:00", "params": {"cnn": values}}
    (tmp_path / "s-r2.json").write_text(json.dumps(recipe))
    with pytest.raises(ValueError, match=f"recipe s-r2: cnn: .*{product}"):
        load_recipe(tmp_path, "s-r2")


def test_the_models_data_dependent_tables_are_capped_before_they_are_built(monkeypatch):
    """The embedding and wide tables' rows come from the data (vocabulary + n-grams): checked when the
    model is configured, before a table is allocated or a FastText loaded."""
    import torch

    from pipelines.training.loop import Fit

    enc = SimpleNamespace(num_embeddings=9_000_000, emb=SimpleNamespace(dim=100), itos=["<pad>", "<unk>"])
    cfg = TrainConfig(models=["mlp"], sentence_encoder="none")
    with pytest.raises(ValueError, match=r"the wide table \(vocabulary \+ n-grams \+ wide_bigrams\) x wide_dim"):
        Fit("mlp", cfg, enc, ["a", "b"], torch.device("cpu"), "/nonexistent", {"fasttext.model": "0" * 64})
    enc.num_embeddings = 20_000_000
    with pytest.raises(ValueError, match=r"the embedding table \(vocabulary \+ n-grams\) x embedding_dim"):
        Fit("mlp", TrainConfig(wide_dim=0), enc, ["a", "b"], torch.device("cpu"), "/nonexistent", None)


def test_a_trigger_sets_only_the_forms_params(dag, settings):  # noqa: F811
    """Security item 2: Airflow merges any dag_run.conf key into params; meli_retrain's training
    config reads only its declared Params, and a run whose conf names another key fails at ingest."""
    from airflow.sdk.exceptions import AirflowFailException

    d = dag("meli_retrain")
    ingest = d.get_task("ingest").python_callable
    train_cfg = ingest.__globals__["_train_cfg"]
    params = {k: d.params[k] for k in d.params} | {"bucket": 10_000_000, "seed": 7}
    cfg = train_cfg(params | {"embedding_dim": 1024})
    assert cfg.bucket == TrainConfig().bucket and cfg.seed == TrainConfig().seed and cfg.embedding_dim == 1024
    conf = {"embedding_dim": 1024, "bucket": 10_000_000}
    with pytest.raises(AirflowFailException, match=r"unknown trigger parameters 'bucket': a run may set only"):
        ingest(params=params | conf, dag_run=SimpleNamespace(conf=conf, run_id="r1", dag_id="meli_retrain"))
    assert not settings.listings_dir.exists() or not any(settings.listings_dir.iterdir())
