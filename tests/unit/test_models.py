"""Models, encoder and the logged pyfunc on tiny data (CPU)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.config import MODEL_TYPES, TrainConfig
from pipelines.features import EmbeddingConfig, TitleEncoder, build_vocab, embedding_matrix, train_fasttext
from pipelines.models import ModelConfig, build_model
from pipelines.pyfunc import OUTPUT_COLUMNS, collate, pick_device
from pipelines.text import TextConfig, tokenize

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
    return TitleEncoder(build_vocab(toks), TextConfig(), EMB), ft


def test_tokenizer_normalizes_consistently():
    assert tokenize("Zapatillas  NIKE <b>Air</b> Máx, 42!!") == ["zapatillas", "nike", "air", "max", "42"]
    assert tokenize("Capinha para o celular 7898357417892") == ["capinha", "celular", "<num13>"]
    assert tokenize("") == [] and tokenize("de la y") == []


def test_encoder_gives_oov_words_subword_ids_and_roundtrips(tmp_path):
    enc, ft = encoder_and_ft()
    known, oov = enc.token_ids("zapatillas"), enc.token_ids("zapatilla")
    assert known[0] == enc.stoi["zapatillas"] and len(known) > 1
    assert all(i >= len(enc.itos) for i in oov) and len(oov) > 0  # only n-grams, no <unk>
    enc.save(tmp_path / "e.json")
    again = TitleEncoder.load(tmp_path / "e.json")
    assert [list(a) for a in again.encode(TITLES[0])] == [list(a) for a in enc.encode(TITLES[0])]
    m = embedding_matrix(enc, ft)
    assert m.shape == (enc.num_embeddings, EMB.dim)


@pytest.mark.parametrize("kind", MODEL_TYPES)
def test_forward_and_one_training_step(kind):
    torch.manual_seed(0)
    enc, ft = encoder_and_ft()
    cfg = ModelConfig(
        kind=kind, num_embeddings=enc.num_embeddings, dim=EMB.dim, num_classes=3, hidden=32, filters=8, lstm_hidden=8
    )
    model = build_model(cfg)
    with torch.no_grad():
        model.embed.emb.weight.copy_(torch.from_numpy(embedding_matrix(enc, ft)))
    ids, lengths = collate(enc.encode_many(TITLES + [""]), enc.width)  # includes an empty title
    logits = model(ids, lengths)
    assert logits.shape == (len(TITLES) + 1, 3) and torch.isfinite(logits).all()
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    dense = [p for n, p in model.named_parameters() if not n.startswith("embed.")]
    opt, sparse = torch.optim.AdamW(dense, lr=1e-2), torch.optim.SparseAdam([model.embed.emb.weight], lr=1e-2)
    before = model.embed.emb.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(model(ids, lengths), y)
    loss.backward()
    opt.step()
    sparse.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, model.embed.emb.weight.detach())  # fine-tuned embedding moved
    assert torch.equal(before[0], model.embed.emb.weight.detach()[0])  # padding row untouched


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

    from pipelines.features import prepare_dataset, train_embedding
    from pipelines.ingest import ingest
    from pipelines.train import embedding_config, start_parent_run, train_classifier

    ingest([synthetic_jsonl(800, seed=3)], "2026-11-01", settings)
    ds = prepare_dataset(settings, "2026-11-01")
    cfg = TrainConfig(models=["mlp"], epochs=2, embedding_epochs=2, embedding_dim=16, bucket=5000, device="cpu")
    emb = train_embedding(ds["dir"], embedding_config(cfg), TextConfig(), cfg.seed)
    parent = start_parent_run(settings, "2026-11-01", ds)
    res = train_classifier(settings, ds["dir"], emb["dir"], "mlp", cfg, parent, "2026-11-01")
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
