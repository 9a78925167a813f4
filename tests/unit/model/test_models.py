"""Models, encoder and the logged pyfunc on tiny data (CPU)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.config import MODEL_TYPES, TrainConfig
from pipelines.core.system import pick_device
from pipelines.features.batches import collate
from pipelines.features.embedding import (
    EmbeddingConfig,
    TitleEncoder,
    build_ngram_vocab,
    build_vocab,
    char_ngrams,
    embedding_matrix,
    train_fasttext,
)
from pipelines.features.text import TextConfig, tokenize
from pipelines.model.bundle import OUTPUT_COLUMNS
from pipelines.model.modules import ModelConfig, build_model
from pipelines.training.rows import RowAdam

TITLES = [
    "Zapatillas Nike Air Max negras",
    "Celular Samsung Galaxy S10 128gb",
    "Funda silicona iPhone 11",
    "Tenis Adidas corrida",
    "Smartphone Xiaomi Redmi Note",
    "Capinha celular Motorola",
]
EMB = EmbeddingConfig(dim=16, epochs=2, bucket=2000, workers=1)


def encoder_and_ft():
    toks = [tokenize(t) for t in TITLES]
    ft = train_fasttext(toks, EMB, seed=1)
    vocab = build_vocab(toks)
    return TitleEncoder(vocab, TextConfig(), EMB, build_ngram_vocab(vocab[2:], EMB)), ft


def tiny_model(kind: str, enc: TitleEncoder, ft, wide: bool = True):
    cfg = ModelConfig(
        kind=kind,
        num_embeddings=enc.num_embeddings,
        dim=EMB.dim,
        num_classes=3,
        hidden=32,
        filters=8,
        lstm_hidden=8,
        vocab_size=len(enc.itos),
        wide_dim=8 if wide else 0,
        wide_bigrams=50 if wide else 0,
    )
    model = build_model(cfg)
    with torch.no_grad():
        model.emb.weight.copy_(torch.from_numpy(embedding_matrix(enc, ft)))
        if model.wide is not None:
            model.wide.idf.uniform_(1.0, 3.0)  # not all ones, so the weighting is exercised
    return model


def test_tokenizer_normalizes_consistently():
    assert tokenize("Zapatillas  NIKE <b>Air</b> Máx, 42!!") == ["zapatillas", "nike", "air", "max", "42"]
    assert tokenize("Capinha para o celular 7898357417892") == ["capinha", "celular", "<num13>"]
    assert tokenize("") == [] and tokenize("de la y") == []


def test_encoder_gives_oov_words_subword_ids_and_roundtrips(tmp_path):
    enc, ft = encoder_and_ft()
    known, oov = enc.token_ids("zapatillas"), enc.token_ids("zapatilla")
    assert known[0] == enc.stoi["zapatillas"] and len(known) > 1
    assert all(i >= len(enc.itos) for i in oov) and len(oov) > 0  # only n-grams, no <unk>
    # exact n-gram vocabulary: one row per distinct n-gram, unseen n-grams left out
    known_grams = set(enc.ngrams)
    expected = [g for g in char_ngrams("zapatilla", EMB) if g in known_grams]
    assert [enc.ngrams[i - len(enc.itos)] for i in oov] == expected and "lla>" not in expected
    assert char_ngrams("sol", EMB)[:2] == ["<sol>", "<sol"]  # longest first
    assert list(enc.token_ids("qqqq")) == [1]  # no known n-gram at all -> <unk>
    enc.save(tmp_path / "e.json")
    again = TitleEncoder.load(tmp_path / "e.json")
    assert [list(a) for a in again.encode(TITLES[0])] == [list(a) for a in enc.encode(TITLES[0])]
    m = embedding_matrix(enc, ft)
    assert m.shape == (enc.num_embeddings, EMB.dim)


@pytest.mark.parametrize("kind", MODEL_TYPES)
def test_forward_and_one_training_step(kind):
    torch.manual_seed(0)
    enc, ft = encoder_and_ft()
    model = tiny_model(kind, enc, ft)
    ids, lengths = collate(enc.encode_many(TITLES + [""]), enc.width)  # includes an empty title
    logits = model(ids, lengths)
    assert logits.shape == (len(TITLES) + 1, 3) and torch.isfinite(logits).all()
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    tables = [model.emb.weight, model.wide.table.weight]
    dense = [p for p in model.parameters() if all(p is not t for t in tables)]
    opt, sparse = torch.optim.AdamW(dense, lr=1e-2), RowAdam(tables, lr=1e-2)
    before = model.emb.weight.detach().clone()
    branches = model.forward_branches(ids, lengths)
    assert len(branches) == 2  # deep + wide, one loss each
    loss = sum(torch.nn.functional.cross_entropy(b, y) for b in branches)
    loss.backward()
    opt.step()
    sparse.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, model.emb.weight.detach())  # fine-tuned embedding moved
    assert torch.equal(before[0], model.emb.weight.detach()[0])  # padding row untouched


@pytest.mark.parametrize("kind", MODEL_TYPES)
@pytest.mark.parametrize("wide", [True, False])
def test_serving_path_matches_the_training_forward(kind, wide, tmp_path):
    """Cached per-word features + classify == the whole model on subword ids (what training ran)."""
    import json

    from pipelines.model.bundle import Bundle

    torch.manual_seed(0)
    enc, ft = encoder_and_ft()
    model = tiny_model(kind, enc, ft, wide).eval()
    enc.save(tmp_path / "encoder.json")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "labels.json").write_text(json.dumps(["a", "b", "c"]))
    (tmp_path / "config.json").write_text(json.dumps({"model": model.cfg.to_dict()}))
    bundle = Bundle(tmp_path, device="cpu", max_cached_words=5)
    titles = TITLES + ["", "zapatilla nike nueva", "Tenis Adidas corrida Tenis Adidas"]
    ids_path = bundle.predict_proba_encoded(enc.encode_many(titles))
    keys_path = bundle.predict_proba_keys(bundle.encode_keys(titles))
    np.testing.assert_allclose(keys_path, ids_path, rtol=1e-4, atol=1e-6)
    assert len(bundle._key) > 5  # over the cap: the next call starts a fresh cache, same answers
    np.testing.assert_allclose(bundle.predict_proba_keys(bundle.encode_keys(titles)), ids_path, rtol=1e-4, atol=1e-6)
    assert len(bundle._key) <= len({w for t in titles for w in tokenize(t)})


def test_row_adam_is_sparse_adam():
    """RowAdam is torch's SparseAdam update (only touched rows; repeated ids summed), just faster."""
    torch.manual_seed(0)
    a, b = (torch.nn.Embedding(500, 8, sparse=True) for _ in range(2))
    b.weight.data.copy_(a.weight.data)
    ref, ours = torch.optim.SparseAdam([a.weight], lr=1e-2), RowAdam([b.weight], lr=1e-2)
    untouched = b.weight.detach()[400:].clone()
    for i in range(30):
        ids = torch.randint(0, 40 if i % 2 else 400, (16, 5))  # repeated ids within a batch
        target = torch.randn(16, 5, 8)
        for emb, opt in ((a, ref), (b, ours)):
            opt.zero_grad()
            ((emb(ids) - target) ** 2).sum().backward()
            opt.step()
        ours.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = 1e-2 * (1 - i / 30)  # schedules apply
    torch.testing.assert_close(b.weight, a.weight, rtol=1e-5, atol=1e-6)
    assert torch.equal(b.weight.detach()[400:], untouched)


def test_weights_saved_before_the_two_stage_models_still_load():
    from pipelines.model.modules import upgrade_state_dict

    enc, ft = encoder_and_ft()
    model = tiny_model("mlp", enc, ft, wide=False)
    old = {("embed.emb.weight" if k == "emb.weight" else k): v for k, v in model.state_dict().items()}
    model.load_state_dict(upgrade_state_dict(old))


def test_unknown_model_type_and_bad_config_are_clear():
    with pytest.raises(ValueError, match="models must be"):
        TrainConfig(models=["transformer"])
    with pytest.raises(ValueError, match="balance"):
        TrainConfig(balance="magic")
    with pytest.raises(ValueError, match="unknown training parameters"):
        TrainConfig.from_dict({"epoch": 3})
    assert TrainConfig(models="mlp, cnn,mlp").models == ["mlp", "cnn"]


def test_cpu_fallback_when_no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto").type == "cpu"


@pytest.mark.slow
def test_train_log_load_predict_roundtrip(settings, synthetic_jsonl):
    """Train (CPU), log as pyfunc, load by URI, predict: the documented columns come back."""
    import mlflow

    from pipelines.data.ingest import ingest
    from pipelines.data.lake import record_validation
    from pipelines.features.embedding import embedding_config, prepare_dataset, train_embedding
    from pipelines.training.runs import start_parent_run
    from pipelines.training.train import train_classifier

    r = ingest([synthetic_jsonl(800, seed=3)], "2026-11-01", settings)
    record_validation(r.partition, r.version, "passed")  # as if GX passed it: only passed data is trained on
    ds = prepare_dataset(settings, "2026-11-01")
    cfg = TrainConfig(models=["mlp"], epochs=2, embedding_epochs=2, embedding_dim=16, bucket=5000, device="cpu")
    emb = train_embedding(ds["dir"], embedding_config(cfg), TextConfig(), cfg.seed)
    parent = start_parent_run(settings, "2026-11-01", ds)
    res = train_classifier(
        settings, ds["dir"], emb["dir"], "mlp", cfg, parent, "2026-11-01", embedding_sha256=emb["sha256"]
    )
    assert res["device"] == "cpu" and 0 <= res["val_macro_recall"] <= 1
    run = mlflow.get_run(res["run_id"])
    assert "val_macro_recall" in run.data.metrics and run.data.tags["mlflow.parentRunId"] == parent
    hist = mlflow.MlflowClient().get_metric_history(res["run_id"], "val_loss")
    assert len(hist) >= 1
    model = mlflow.pyfunc.load_model(res["model_uri"])
    out = model.predict(pd.DataFrame({"title": ["Zapatillas Nike running", "", None]}))
    assert list(out.columns) == OUTPUT_COLUMNS and len(out) == 3
    assert np.all((out["probability"] > 0) & (out["probability"] <= 1))
    assert all(len(k) == 3 for k in out["top_k_categories"])
    assert out["predicted_category"].iloc[0] == out["top_k_categories"].iloc[0][0]

    # refit (default): the served model was retrained on train + validation for the best epoch count;
    # the selection pass's validation probabilities are logged for diagnostics and the ensemble search
    from pipelines.features.embedding import read_split
    from pipelines.model.metrics import macro_recall
    from pipelines.training.runs import member_val_probs

    val = read_split(ds["dir"], "validation")
    metrics = run.data.metrics
    assert metrics["refit_rows"] == ds["counts"]["train"] + ds["counts"]["validation"]
    assert metrics["refit_epochs"] == res["best_epoch"] and res["refit"] is True
    assert len(mlflow.MlflowClient().get_metric_history(res["run_id"], "refit_train_loss")) == res["best_epoch"]
    labels = np.asarray(model.unwrap_python_model().bundle.labels, dtype=object)
    probs = member_val_probs(res, len(val))
    assert probs.shape == (len(val), len(labels))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=2e-2)
    assert macro_recall(val["category"].tolist(), list(labels[probs.argmax(1)])) == pytest.approx(
        res["val_macro_recall"], abs=0.02
    )

    # A second model type and the ensemble candidate: members fetched from MLflow, mean of their
    # probabilities, logged as its own child run and loadable by URI like any model.
    from pipelines.model.bundle import Bundle
    from pipelines.training.train import pick_challenger, train_ensemble

    no_refit = TrainConfig(**{**cfg.to_dict(), "refit": False})
    dirs, sha = (ds["dir"], emb["dir"]), emb["sha256"]
    cnn = train_classifier(settings, *dirs, "cnn", no_refit, parent, "2026-11-01", 1, embedding_sha256=sha)
    assert "refit_rows" not in mlflow.get_run(cnn["run_id"]).data.metrics
    served = mlflow.pyfunc.load_model(cnn["model_uri"]).unwrap_python_model().bundle
    # without refit the logged selection probabilities are the served model's own (float16)
    served_val = served.predict_proba_keys(served.encode_keys(val["title"].tolist()))
    np.testing.assert_allclose(member_val_probs(cnn, len(val)), served_val, atol=2e-3)
    assert train_ensemble(settings, ds["dir"], [res], parent, "2026-11-01") is None  # one model: nothing to average
    ens = train_ensemble(settings, ds["dir"], [res, cnn], parent, "2026-11-01")
    assert ens["model_type"] == "ensemble" and 0 <= ens["val_macro_recall"] <= 1
    assert ens["members"] == ["cnn", "mlp"]  # the only subset of two
    mean = (member_val_probs(res, len(val)) + member_val_probs(cnn, len(val))) / 2  # selection passes'
    expected = macro_recall(val["category"].tolist(), list(labels[mean.argmax(1)]))
    assert ens["val_macro_recall"] == pytest.approx(expected, abs=1e-6)
    assert mlflow.get_run(ens["run_id"]).data.tags["mlflow.parentRunId"] == parent
    assert pick_challenger([res, cnn, ens])["val_macro_recall"] == max(r["val_macro_recall"] for r in (res, cnn, ens))
    titles = ["Zapatillas Nike running", "Celular Samsung", "x"]
    members = [mlflow.pyfunc.load_model(r["model_uri"]).unwrap_python_model().bundle for r in (res, cnn)]
    ensemble = mlflow.pyfunc.load_model(ens["model_uri"]).unwrap_python_model().bundle
    assert isinstance(ensemble, Bundle) and len(ensemble.models) == 2
    mean = sum(b.predict_proba_keys(b.encode_keys(titles)) for b in members) / 2
    np.testing.assert_allclose(ensemble.predict_proba_keys(ensemble.encode_keys(titles)), mean, rtol=1e-5, atol=1e-6)
    out = mlflow.pyfunc.load_model(ens["model_uri"]).predict(pd.DataFrame({"title": titles}))
    assert list(out.columns) == OUTPUT_COLUMNS and len(out) == 3


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")
def test_cuda_training_and_serving_match_the_cpu(settings, synthetic_jsonl):
    """The CUDA path (bf16 autocast, pinned memory, fused AdamW, sync-free loss sum): each type trains
    on the GPU, and its logged bundle predicts the same on the GPU as on the CPU."""
    import mlflow

    from pipelines.data.ingest import ingest
    from pipelines.data.lake import record_validation
    from pipelines.features.embedding import embedding_config, prepare_dataset, train_embedding
    from pipelines.model.bundle import Bundle
    from pipelines.training.train import train_classifier

    r = ingest([synthetic_jsonl(800, seed=5)], "2026-11-02", settings)
    record_validation(r.partition, r.version, "passed")  # as if GX passed it: only passed data is trained on
    ds = prepare_dataset(settings, "2026-11-02")
    cfg = TrainConfig(epochs=2, embedding_epochs=2, embedding_dim=16, bucket=5000, device="cuda")
    emb = train_embedding(ds["dir"], embedding_config(cfg), TextConfig(), cfg.seed)
    titles = ["Zapatillas Nike running", "Celular Samsung Galaxy", "", "x"]
    for kind in MODEL_TYPES:
        res = train_classifier(
            settings, ds["dir"], emb["dir"], kind, cfg, run_date="2026-11-02", embedding_sha256=emb["sha256"]
        )
        assert res["device"].startswith("cuda") and 0 <= res["val_macro_recall"] <= 1
        loss = mlflow.MlflowClient().get_metric_history(res["run_id"], "train_loss")
        assert len(loss) >= 1 and all(np.isfinite(m.value) for m in loss)
        on_gpu = mlflow.pyfunc.load_model(res["model_uri"]).unwrap_python_model().bundle
        assert on_gpu.device.type == "cuda"
        bundle_dir = settings.run_dir("2026-11-02") / "models" / kind / "bundle"
        on_cpu = Bundle(bundle_dir, device="cpu")
        p_gpu = on_gpu.predict_proba_keys(on_gpu.encode_keys(titles))
        p_cpu = on_cpu.predict_proba_keys(on_cpu.encode_keys(titles))
        np.testing.assert_allclose(p_gpu, p_cpu, atol=5e-3)  # cuDNN convolutions use TF32
        out = on_cpu.predict(titles)
        assert list(out.columns) == OUTPUT_COLUMNS and len(out) == len(titles)


def test_a_warm_pass_logs_its_own_epoch_count(caplog):
    """`--warm-epochs 3 --epochs 2`: a warm pass runs 3 epochs and says "check 3/3", not "3/2"."""
    from types import SimpleNamespace

    from pipelines.training.loop import select

    def run(model, rows, epochs, on_check, checks=1):
        for epoch in range(1, epochs + 1):
            if not on_check(model, epoch, 1.0, 0.1):
                break
        return len(rows) * epochs, 0.3

    fit = SimpleNamespace(
        cfg=TrainConfig(models=["mlp"], epochs=2, warm_epochs=3, patience=5),
        model_cfg=SimpleNamespace(kind="mlp"),
        new_model=lambda init: torch.nn.Linear(2, 2),
        run=run,
    )
    scores = iter([0.5, 0.6, 0.7])
    caplog.set_level("INFO", logger="pipelines.training")
    best = select(fit, None, [0] * 10, 3, lambda m: (next(scores), 1.0, None), lambda *a, **k: None)
    assert best.epoch == 3
    lines = [r.getMessage() for r in caplog.records if " check " in r.getMessage()]
    assert [line.split(" (")[0] for line in lines] == ["mlp check 1/3", "mlp check 2/3", "mlp check 3/3"]
