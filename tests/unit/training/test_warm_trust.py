"""Warm start unpickles the base's FastText (gensim) only when its files are the bytes recorded in
MLflow when it was trained, from a run dir named by a validated tag inside ``$MELI_HOME/work``."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

from pipelines.config import TrainConfig
from tests.unit.model.test_models import encoder_and_ft
from tests.unit.training.test_scale import _Plan


class _Marker:
    """A pickle that creates ``path`` when it is unpickled: proof that nothing was unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _tamper(path, marker) -> None:
    path.write_bytes(pickle.dumps(_Marker(marker)))


@pytest.fixture
def plan(tmp_path, monkeypatch, settings):
    """_Plan (test_scale) with a real FastText saved as several files (gensim's .npy side files)."""
    from pipelines.features.embedding import embedding_digests

    p = _Plan(tmp_path, monkeypatch, settings)
    _, ft = encoder_and_ft()
    ft.save(str(p.emb / "fasttext.model"), sep_limit=0)  # every array in its own .npy, as a real one
    p.base["embedding_sha256"] = embedding_digests(p.emb)
    assert len(p.base["embedding_sha256"]) > 1, p.base["embedding_sha256"]
    return p


def test_a_tampered_embedding_is_refused_before_it_is_unpickled(plan, tmp_path):
    from pipelines.training.warm import WarmStartError, warm_embedding

    good = plan.plan(mode="warm")
    assert good["mode"] == "warm"
    marker = tmp_path / "unpickled"
    model = plan.emb / "fasttext.model"
    original = model.read_bytes()
    _tamper(model, marker)

    with pytest.raises(WarmStartError, match="mode=warm: the embedding of version 4 cannot be trusted: .*fasttext"):
        plan.plan(mode="warm")
    auto = plan.plan()  # mode=auto: trains full, and says why
    assert auto["mode"] == "full" and "does not match the sha256 recorded" in auto["reason"], auto
    # swapped after the plan checked it: warm_embedding checks (and loads) its own copy
    with pytest.raises(WarmStartError, match="warm start from version 4 refused"):
        warm_embedding(plan.ds, good, seed=1)
    assert not marker.exists()

    model.write_bytes(original)  # a side file changed is refused too
    npy = sorted(plan.emb.glob("fasttext.model.*.npy"))[0]
    npy.write_bytes(npy.read_bytes()[:-4] + b"\0\0\0\1")
    assert "does not match" in plan.plan()["reason"]
    npy.unlink()
    assert f"{npy} is missing" in plan.plan()["reason"]


def test_no_record_no_warm_start_and_the_recorded_bytes_do_load(plan, tmp_path):
    from pipelines.training.warm import WarmStartError, warm_embedding

    out = warm_embedding(plan.ds, plan.plan(mode="warm"), seed=1)  # the recorded bytes: loaded and continued
    from pipelines.features.embedding import embedding_digests

    assert out["sha256"] == embedding_digests(out["dir"]) and "fasttext.model" in out["sha256"]

    plan.base["embedding_sha256"] = {}  # a version trained before the record existed
    assert "no sha256 of its files was recorded" in (r := plan.plan())["reason"] and r["mode"] == "full"
    plan.base["embedding_sha256"] = {"../../etc/passwd": "0" * 64, "fasttext.model": "0" * 64}
    with pytest.raises(WarmStartError, match="record of its files is malformed"):
        plan.plan(mode="warm")


@pytest.mark.parametrize(
    "run_date, why",
    [
        ("../../etc", "not a YYYY-MM-DD date"),
        ("2026-11-01/../../../tmp", "not a YYYY-MM-DD date"),
        ("2026-13-01", "not a YYYY-MM-DD date"),
        ("2026-1-05", "not a YYYY-MM-DD date"),
        ("/etc", "not a YYYY-MM-DD date"),
        ("2026-11-01", "resolves outside"),  # its run dir is a link to elsewhere
    ],
)
def test_a_tag_value_that_builds_a_path_is_validated_and_confined(settings, tmp_path, monkeypatch, run_date, why):
    from pipelines.training.warm import plan_run, version_info

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "embedding").mkdir(parents=True)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    (settings.work_dir / "2026-11-01").symlink_to(elsewhere, target_is_directory=True)
    mv = SimpleNamespace(version=4, run_id="a" * 32, tags={"meli.run_date": run_date, "meli.model_type": "mlp"})
    info = version_info(settings, mv)
    assert info["embedding_dir"] == "" and why in info["problem"], info

    monkeypatch.setattr("pipelines.training.warm.find_parents", lambda s, kinds: (info, {"mlp": info}))
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "dataset.json").write_text('{"lake_versions": {}}')
    r = plan_run(settings, {"dir": str(ds)}, TrainConfig(models=["mlp"]), "2026-11-10")
    assert r["mode"] == "full" and "its tags name no usable run" in r["reason"], r

    ok = version_info(settings, SimpleNamespace(version=5, run_id="b" * 32, tags={"meli.run_date": "2026-11-02"}))
    assert ok["embedding_dir"] == str(settings.work_dir / "2026-11-02" / "embedding") and not ok["problem"]


def test_the_retrain_records_the_embedding_and_warm_start_checks_it(settings, synthetic_jsonl, tmp_path):
    """A real champion: its run records the sha256 of its FastText files; a warm run from it works;
    its files swapped for a pickle are refused before unpickling; a tag pointing elsewhere is refused."""
    import json

    import mlflow

    from pipelines.core.tracking import configure
    from pipelines.features.embedding import EMBEDDING_SHA_TAG, embedding_digests
    from pipelines.flows.retrain import run_all
    from pipelines.training.warm import WarmStartError, plan_run

    src = synthetic_jsonl(600, seed=3)
    tiny = dict(models=["mlp"], epochs=1, embedding_epochs=1, embedding_dim=16, bucket=5000, sentence_encoder="none")
    first = run_all(settings, [str(src)], "2026-11-01", TrainConfig(**tiny), force_promote=True)
    configure(settings)
    client = mlflow.MlflowClient()
    tag = client.get_run(first["dataset"]["parent_run_id"]).data.tags[EMBEDDING_SHA_TAG]
    emb1 = settings.run_dir("2026-11-01") / "embedding"
    assert json.loads(tag) == embedding_digests(emb1)

    # new listings on the second night (the same file again would be nothing new: the run would skip)
    src2 = synthetic_jsonl(300, seed=4, name="night2.jsonl.gz")
    second = run_all(settings, [str(src2)], "2026-11-02", TrainConfig(mode="warm", **tiny), force_promote=True)
    assert client.get_run(second["dataset"]["parent_run_id"]).data.tags["meli.mode"] == "warm"

    marker = tmp_path / "unpickled"
    for day in ("2026-11-01", "2026-11-02"):
        _tamper(settings.run_dir(day) / "embedding" / "fasttext.model", marker)
    with pytest.raises(WarmStartError, match="cannot be trusted: .*does not match the sha256"):
        run_all(settings, [str(src)], "2026-11-03", TrainConfig(mode="warm", **tiny))
    assert not marker.exists()

    champion = client.get_model_version_by_alias(settings.model_name, "champion")
    client.set_model_version_tag(settings.model_name, champion.version, "meli.run_date", "../../etc")
    dataset = {"dir": str(settings.run_dir("2026-11-03") / "dataset")}
    r = plan_run(settings, dataset, TrainConfig(**tiny), "2026-11-03")
    assert r["mode"] == "full" and "'../../etc' is not a YYYY-MM-DD date" in r["reason"], r
    assert not marker.exists()


def test_a_training_without_an_embedding_record_unpickles_nothing(tmp_path):
    """Security item 4: the train/tune loop (``Fit``) loads a FastText only against its recorded sha256;
    with none (None, {}) it refuses in one line before anything is unpickled."""
    import torch

    from pipelines.features.embedding import EmbeddingIntegrityError, embedding_digests
    from pipelines.training.loop import Fit

    enc, ft = encoder_and_ft()
    ft.save(str(tmp_path / "fasttext.model"))
    digests = embedding_digests(tmp_path)
    cfg = TrainConfig(models=["mlp"], hidden=16, wide_dim=8, wide_bigrams=50)
    fit = Fit("mlp", cfg, enc, ["a", "b", "c"], torch.device("cpu"), tmp_path, digests)  # recorded: loads
    assert fit.init_vectors.shape[0] == enc.num_embeddings
    marker = tmp_path / "unpickled"
    _tamper(tmp_path / "fasttext.model", marker)
    for record in (None, {}):
        with pytest.raises(EmbeddingIntegrityError, match="no sha256 of its files was recorded"):
            Fit("mlp", cfg, enc, ["a", "b", "c"], torch.device("cpu"), tmp_path, record)
    with pytest.raises(EmbeddingIntegrityError, match="does not match"):
        Fit("mlp", cfg, enc, ["a", "b", "c"], torch.device("cpu"), tmp_path, digests)
    assert not marker.exists()


def test_a_tuning_study_needs_a_valid_run_id_and_its_embedding_record(settings, tmp_path, monkeypatch):
    """Security item 4: ``prepared.json`` is writable: its MLflow run id must look like one; a study
    whose run records no sha256 of its FastText trains nothing (never an unchecked load)."""
    import json

    import mlflow

    from pipelines.features.embedding import EmbeddingIntegrityError
    from pipelines.training.tune import objective, prepared_study, tune_settings

    root = settings.tune_dir / "s1"
    (root / "emb").mkdir(parents=True)
    info = {"study": "s1", "run_date": "2026-11-21", "dataset_dir": str(root / "ds"), "epochs": 1}
    info |= {"embedding_dir": str(root / "emb"), "data_version": "d"}
    for bad in ("../../etc", "r", None, "0" * 31 + "/"):
        (root / "prepared.json").write_text(json.dumps(info | {"mlflow_run_id": bad}))
        with pytest.raises(ValueError, match="is not an MLflow run id"):
            prepared_study(settings, "s1")
    run_id = "0123456789abcdef" * 2
    (root / "prepared.json").write_text(json.dumps(info | {"mlflow_run_id": run_id}))
    assert prepared_study(settings, "s1")["mlflow_run_id"] == run_id

    class _Run:
        data = SimpleNamespace(tags={})  # a study run from before the record existed

    monkeypatch.setattr(mlflow.MlflowClient, "get_run", lambda self, rid: _Run())
    trained = []
    monkeypatch.setattr("pipelines.training.train.train_classifier", lambda *a, **k: trained.append(k))
    trial = SimpleNamespace(suggest_float=lambda n, lo, hi, log=False: lo, suggest_int=lambda n, lo, hi: lo)
    trial.suggest_categorical = lambda n, choices: choices[0]
    with pytest.raises(EmbeddingIntegrityError, match=f"study s1: its MLflow run {run_id} records no sha256"):
        objective(trial, tune_settings(settings), prepared_study(settings, "s1"), TrainConfig(), "mlp", 1)
    assert trained == []
