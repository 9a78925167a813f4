"""Encoded arrays, the vectorised training step and warm start, on tiny data (CPU)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.config import MODEL_TYPES, TrainConfig
from pipelines.features.batches import EncodedSplit, gather_keys, gather_keys_t
from pipelines.features.encoded import EncodedDataset, encode_dataset, encode_titles
from pipelines.features.text import TextConfig, tokenize
from pipelines.training.loop import batch_branches, wide_idf
from pipelines.training.rows import RowAdam, RowTables, apply_rows
from tests.unit.model.test_models import TITLES, encoder_and_ft, tiny_model

LONG = " ".join(f"palabra{i}" for i in range(80))  # longer than the tokenizer's 48-token cap
EDGE = TITLES + ["", None, "de la y", "zapatilla nuevaxyz qqqq", LONG, "Tenis Adidas corrida Tenis Adidas"]


def _today(enc, title) -> np.ndarray:
    """What the model saw before the arrays: today's encoder, padded to [T, K]."""
    toks = enc.encode(title)
    out = np.zeros((max(1, len(toks)), enc.width), dtype=np.int64)
    for t, ids in enumerate(toks):
        out[t, : len(ids)] = ids[: enc.width]
    return out, len(toks)


def test_the_arrays_give_the_model_the_same_ids_as_the_encoder(tmp_path):
    enc, _ = encoder_and_ft()
    split, table = encode_titles(enc, EDGE)
    tokens = table.table()
    assert tokens.dtype == np.int32 and split.keys.dtype == np.int32 and not tokens[0].any()
    assert len(tokens) - 1 == len({w for t in EDGE for w in tokenize(t or "")})  # each distinct token once
    keys, lengths = split.batch(np.arange(len(EDGE)))
    for i, title in enumerate(EDGE):
        want, n = _today(enc, title)
        assert lengths[i] == n
        np.testing.assert_array_equal(tokens[keys[i, : max(1, n)]] if n else np.zeros_like(want), want)
    assert lengths[EDGE.index(LONG)] == TextConfig().max_tokens
    oov = EDGE.index("zapatilla nuevaxyz qqqq")
    assert list(tokens[keys[oov, 2]][:1]) == [1]  # no known n-gram at all: <unk>, as the encoder says

    # a subset, a concatenation and the numpy/torch gathers agree
    idx = np.array([3, 0, len(EDGE) - 1, 6])
    sub = split.take(idx)
    np.testing.assert_array_equal(sub.batch(np.arange(4))[0], split.batch(idx)[0])
    both = EncodedSplit.concat([split, sub])
    np.testing.assert_array_equal(both.batch(np.arange(len(EDGE), len(EDGE) + 4))[0], split.batch(idx)[0])
    k_t = gather_keys_t(
        torch.from_numpy(split.keys.astype(np.int64)),
        torch.from_numpy(split.offsets),
        torch.from_numpy(idx),
        torch.from_numpy(lengths[idx]),
        int(lengths[idx].max()),
    )
    np.testing.assert_array_equal(k_t.numpy(), gather_keys(split.keys, split.offsets, idx)[0])


def test_encode_dataset_writes_every_split_once_and_memory_maps(tmp_path):
    enc, ft = encoder_and_ft()
    ds, emb = tmp_path / "dataset", tmp_path / "embedding"
    ds.mkdir()
    emb.mkdir()
    enc.save(emb / "encoder.json")
    cats = ["A", "B", "C"]
    for split, titles in (("train", TITLES), ("validation", EDGE[:8]), ("test", EDGE[6:])):
        cat = [cats[i % 3] if split == "train" else ("Z" if i == 0 else cats[i % 3]) for i in range(len(titles))]
        pq.write_table(pa.table({"title": titles, "category": cat}), ds / f"{split}.parquet")
    info = encode_dataset(ds, emb)
    loaded = EncodedDataset.load(info["dir"])
    assert loaded.labels == cats and isinstance(loaded.tokens, np.memmap)
    val = loaded.split("validation")
    assert isinstance(val.keys, np.memmap) and len(val) == 8
    assert val.labels[0] == -1 and list(val.labels[1:3]) == [1, 2]  # a class train lacks: -1
    for i, title in enumerate(EDGE[:8]):
        want, n = _today(enc, title)
        keys, lengths = val.batch(np.array([i]))
        assert lengths[0] == n
        if n:
            np.testing.assert_array_equal(loaded.tokens[keys[0, :n]], want)


def _tiny_batch(kind: str, wide: bool = True, sentence: int = 0):
    torch.manual_seed(0)
    enc, ft = encoder_and_ft()
    model = tiny_model(kind, enc, ft, wide)
    if sentence:  # the same model with a sentence branch (random vectors: the step does not care)
        from pipelines.model.modules import ModelConfig, build_model

        base, model = model, build_model(ModelConfig(**{**model.cfg.to_dict(), "sentence_dim": sentence}))
        model.load_state_dict(base.state_dict(), strict=False)
    split, table = encode_titles(enc, TITLES + ["", "zapatilla nike nueva", "Tenis Adidas corrida Tenis Adidas"])
    tokens = torch.from_numpy(table.table().astype(np.int64))
    keys, lengths = split.batch(np.arange(len(split)))
    return model, tokens, torch.from_numpy(keys), torch.from_numpy(lengths)


@pytest.mark.parametrize("kind", MODEL_TYPES)
@pytest.mark.parametrize("wide,sentence", [(True, 0), (False, 0), (True, 24)])
def test_one_step_of_the_new_loop_gathered_equals_dense(kind, wide, sentence):
    """The CPU step (distinct tokens over gathered table slices, RowAdam.update) and the CUDA step
    (whole tables, dense gradients, RowAdam.update_dense) compute the same logits and the same update."""
    import copy

    model, tokens, keys, lengths = _tiny_batch(kind, wide, sentence)
    sent = None
    if sentence:
        sent = torch.randn(len(tokens), sentence).to(torch.float16)
        sent[0] = 0
    model.eval()  # no dropout: both paths must agree exactly
    twin = copy.deepcopy(model)
    y = torch.arange(len(keys)) % 3
    outs = []
    for m, gather in ((model, True), (twin, False)):
        tables = RowTables(m) if gather else None
        opt = RowAdam(tables.tensors if gather else [m.emb.weight] + ([m.wide.table.weight] if wide else []), lr=0.05)
        branches, rows = batch_branches(m, tokens, keys, lengths, gather, tables, sent)
        assert len(branches) == 1 + wide + bool(sentence) and all(torch.isfinite(b).all() for b in branches)
        loss = sum(torch.nn.functional.cross_entropy(b, y) for b in branches)
        loss.backward()
        apply_rows(opt, rows, tables)
        if gather:
            tables.write_back(m)
        outs.append((torch.stack(branches).detach(), m))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)
    a, b = outs[0][1], outs[1][1]
    torch.testing.assert_close(a.emb.weight, b.emb.weight, rtol=1e-5, atol=1e-6)
    assert not a.emb.weight[0].any()  # padding row stays zero
    if wide:
        torch.testing.assert_close(a.wide.table.weight, b.wide.table.weight, rtol=1e-5, atol=1e-6)


def test_row_update_only_moves_touched_rows():
    model, tokens, keys, lengths = _tiny_batch("mlp")
    before = model.emb.weight.detach().clone()
    tables = RowTables(model)
    opt = RowAdam(tables.tensors, lr=0.05)
    branches, rows = batch_branches(model, tokens, keys[:2], lengths[:2], True, tables)
    sum(b.sum() for b in branches).backward()
    apply_rows(opt, rows, tables)
    tables.write_back(model)
    touched = torch.unique(tokens[keys[:2]])
    moved = (model.emb.weight.detach() != before).any(1).nonzero().flatten()
    assert set(moved.tolist()) <= set(touched.tolist()) - {0} and len(moved) > 0


def test_wide_idf_counts_titles_per_id():
    enc, ft = encoder_and_ft()
    model = tiny_model("mlp", enc, ft)
    split, table = encode_titles(enc, ["nike nike air", "nike", "air max"])
    idf = wide_idf(model.wide, split, table.table().astype(np.int64))
    nike = enc.stoi["nike"]
    n = 3
    assert idf[nike] == pytest.approx(np.log((1 + n) / (1 + 2)) + 1)  # in two titles (twice in one)
    assert idf[enc.stoi["max"]] == pytest.approx(np.log((1 + n) / (1 + 1)) + 1)
    assert idf[enc.stoi["zapatillas"]] == pytest.approx(np.log((1 + n) / 1) + 1)  # in none


@pytest.mark.parametrize("sentence", ["none", "use"])
def test_the_fit_loop_learns_tiny_data(tmp_path, sentence):
    """Fit.run on encoded rows: a few epochs of each type drive the training loss down (with and
    without a sentence branch; its vectors here are random: the loop does not care where they come from)."""
    from pipelines.features.embedding import TitleEncoder, embedding_digests
    from pipelines.training.loop import Fit

    enc, ft = encoder_and_ft()
    ft.save(str(tmp_path / "fasttext.model"))
    split, table = encode_titles(enc, TITLES * 8)
    split.labels = np.tile(np.array([0, 1, 2, 0, 1, 2], dtype=np.int32), 8)
    tokens = table.table()
    vectors = None
    if sentence != "none":
        vectors = np.random.default_rng(0).normal(size=(len(tokens), 512)).astype(np.float16)
        vectors[0] = 0
    for kind in MODEL_TYPES:
        cfg = TrainConfig(
            models=[kind], batch_size=8, hidden=16, wide_dim=8, wide_bigrams=50, seed=1, sentence_encoder=sentence
        )
        enc_file, digests = _save(enc, tmp_path), embedding_digests(tmp_path)
        fit = Fit(kind, cfg, TitleEncoder.load(enc_file), ["a", "b", "c"], torch.device("cpu"), tmp_path, digests)
        fit.set_tokens(tokens, vectors)
        model = fit.new_model(split)
        losses: list[float] = []
        fit.run(model, split, 6, _recorder(losses))
        assert len(losses) == 6 and losses[-1] < losses[0], (kind, losses)


def _recorder(losses: list[float]):
    def on_epoch(model, epoch, loss, seconds) -> bool:
        losses.append(loss)
        return True

    return on_epoch


def _save(enc, tmp_path):
    path = tmp_path / "encoder.json"
    enc.save(path)
    return path


def test_gpu_recipe_scales_batch_and_learning_rates():
    from pipelines.training.loop import effective_recipe

    cfg = TrainConfig()
    assert effective_recipe(cfg, torch.device("cpu")) == (cfg.batch_size, cfg.lr, cfg.embedding_lr)
    bs, lr, elr = effective_recipe(cfg, torch.device("cuda"))
    assert bs == 1024 and lr == pytest.approx(cfg.lr * 2) and elr == pytest.approx(cfg.embedding_lr * 2)
    # small data: the batch halves while an epoch has under 100 steps (not under 32), rates by sqrt
    assert effective_recipe(cfg, torch.device("cpu"), 33_407)[0] == 256
    bs, lr, _ = effective_recipe(cfg, torch.device("cpu"), 3_000)
    assert bs == 32 and lr == pytest.approx(cfg.lr * (32 / 256) ** 0.5)
    assert effective_recipe(cfg, torch.device("cpu"), 12_800)[0] == 128
    assert effective_recipe(cfg, torch.device("cuda"), 1_000_000)[0] == 1024
    off = TrainConfig(gpu_batch_size=0)
    assert effective_recipe(off, torch.device("cuda")) == (off.batch_size, off.lr, off.embedding_lr)


# ------------------------------------------------------------------------------------------
# Warm start
# ------------------------------------------------------------------------------------------
NEW_TITLES = ["Zapatillas Puma Suede rojas", "Celular Motorola Edge 256gb", "Zapatillas Nike Air Max negras"]


def _bundle(tmp_path, kind, enc, ft, labels):
    model = tiny_model(kind, enc, ft)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # "fine-tuned": not the FastText init any more
    d = tmp_path / f"bundle-{kind}"
    d.mkdir()
    enc.save(d / "encoder.json")
    torch.save(model.state_dict(), d / "weights.pt")
    (d / "labels.json").write_text(json.dumps(labels))
    (d / "config.json").write_text(json.dumps({"model": model.cfg.to_dict()}))
    return d, model


@pytest.mark.parametrize("kind", MODEL_TYPES)
def test_warm_start_extends_the_vocabulary_and_keeps_old_rows_bit_identical(tmp_path, kind):
    from pipelines.model.modules import ModelConfig, build_model
    from pipelines.training.warm import extend_encoder, parent_state

    old_enc, ft = encoder_and_ft()
    bundle, parent = _bundle(tmp_path, kind, old_enc, ft, ["a", "b", "c"])
    enc = extend_encoder(old_enc, [tokenize(t) for t in NEW_TITLES])
    assert enc.itos[: len(old_enc.itos)] == old_enc.itos  # old words keep their ids
    assert enc.ngrams[: len(old_enc.ngrams)] == old_enc.ngrams
    assert {"puma", "suede", "edge"} <= set(enc.itos[len(old_enc.itos) :])
    assert len(set(enc.itos)) == len(enc.itos)  # "zapatillas", "motorola" were known: not added again

    labels = ["a", "c", "d"]  # "b" dropped, "d" new
    cfg = ModelConfig(**{**parent.cfg.to_dict(), "num_embeddings": enc.num_embeddings, "vocab_size": len(enc.itos)})
    cfg.num_classes = len(labels)
    fresh = build_model(cfg).state_dict()
    state = parent_state(fresh, cfg, enc, labels, bundle)
    old = parent.state_dict()
    n_old_words, n_words = len(old_enc.itos), len(enc.itos)
    # every old word row and every old n-gram row (moved by the new words' count) bit-identical
    assert torch.equal(state["emb.weight"][:n_old_words], old["emb.weight"][:n_old_words])
    g = len(old_enc.ngrams)
    assert torch.equal(state["emb.weight"][n_words : n_words + g], old["emb.weight"][n_old_words : n_old_words + g])
    assert torch.equal(state["wide.table.weight"][:n_old_words], old["wide.table.weight"][:n_old_words])
    # new rows: the fresh model's (FastText-initialised in training)
    assert torch.equal(state["emb.weight"][n_old_words:n_words], fresh["emb.weight"][n_old_words:n_words])
    # same word ids -> same bigram buckets: the bigram block moves whole
    b = parent.cfg.wide_bigrams
    assert torch.equal(
        state["wide.table.weight"][enc.num_embeddings : enc.num_embeddings + b],
        old["wide.table.weight"][old_enc.num_embeddings : old_enc.num_embeddings + b],
    )
    # class rows by label; a new class keeps its fresh row
    for new_i, old_i in ((0, 0), (1, 2)):
        assert torch.equal(state["out.weight"][new_i], old["out.weight"][old_i])
        assert torch.equal(state["wide.out.weight"][new_i], old["wide.out.weight"][old_i])
    assert torch.equal(state["out.weight"][2], fresh["out.weight"][2])
    body = [k for k in old if not k.startswith(("emb.", "wide.table", "wide.idf")) and "out." not in k]
    assert body and all(torch.equal(state[k], old[k]) for k in body)
    build_model(cfg).load_state_dict(state)  # loads into this run's architecture


def test_warm_start_refuses_another_architecture(tmp_path):
    from pipelines.model.modules import ModelConfig, build_model
    from pipelines.training.warm import WarmStartError, parent_state

    enc, ft = encoder_and_ft()
    bundle, parent = _bundle(tmp_path, "mlp", enc, ft, ["a", "b", "c"])
    cfg = ModelConfig(**{**parent.cfg.to_dict(), "hidden": 64})
    with pytest.raises(WarmStartError, match="hidden"):
        parent_state(build_model(cfg).state_dict(), cfg, enc, ["a", "b", "c"], bundle)


def test_warm_rows_are_the_new_partitions_plus_a_seeded_replay():
    from pipelines.training.warm import new_partitions, parent_new_rows, parse_lake_versions, warm_rows

    dates = np.array(["2026-01-01"] * 50 + ["2026-01-02"] * 30 + ["2026-01-03"] * 20)
    snap = {"2026-01-01": 1, "2026-01-02": 2, "2026-01-03": 1}
    parent = parse_lake_versions("2026-01-01@v1,2026-01-02@v1")
    new = new_partitions(snap, parent)
    assert new == ["2026-01-02", "2026-01-03"]  # re-ingested (v2) and new: their rows are compared
    is_new = parent_new_rows({"new_partitions": new}, dates)  # a plan without a saved mask: all their rows
    idx, n_new, n_replay = warm_rows(is_new, 10, seed=3)
    assert (n_new, n_replay) == (50, 10) and len(idx) == 60 and np.all(np.diff(idx) > 0)
    assert set(range(50, 100)) <= set(idx.tolist())
    assert np.array_equal(idx, warm_rows(is_new, 10, seed=3)[0])
    assert warm_rows(is_new, 1000, seed=3)[2] == 50  # never more than the older rows


class _Plan:
    """A dataset dir, a base model's embedding dir, and find_parents faked to return them."""

    def __init__(self, tmp_path, monkeypatch, settings):
        from pipelines.features.embedding import (
            EmbeddingConfig,
            TitleEncoder,
            build_ngram_vocab,
            build_vocab,
            embedding_digests,
        )

        self.settings = settings
        self.ds = tmp_path / "work" / "2026-11-10" / "dataset"
        self.ds.mkdir(parents=True)
        old_titles, new_titles = TITLES * 3, TITLES[:4]
        titles = old_titles + new_titles
        dates = ["2026-11-01"] * len(old_titles) + ["2026-11-10"] * len(new_titles)
        pq.write_table(pa.table({"title": titles, "ingest_date": dates}), self.ds / "train.parquet")
        (self.ds / "dataset.json").write_text(
            json.dumps({"lake_versions": {"2026-11-01": 1, "2026-11-10": 1}, "dir": str(self.ds)})
        )
        self.emb = tmp_path / "work" / "2026-11-01" / "embedding"
        self.emb.mkdir(parents=True)
        toks = [tokenize(t) for t in TITLES]
        vocab = build_vocab(toks)
        emb_cfg = EmbeddingConfig(dim=100, bucket=100_000)
        TitleEncoder(vocab, TextConfig(), emb_cfg, build_ngram_vocab(vocab[2:], emb_cfg)).save(
            self.emb / "encoder.json"
        )
        (self.emb / "fasttext.model").write_bytes(b"placeholder")
        (self.emb.parent / "encoded").mkdir()
        (self.emb.parent / "encoded" / "meta.json").write_text(json.dumps({"sentence_encoder": "use"}))
        self.base = {
            "version": "4",
            "model_type": "mlp",
            "members": [],
            "run_date": "2026-11-01",
            "full_run_date": "2026-11-05",
            "lake_versions": {"2026-11-01": 1},
            "model_uri": "models:/m/4",
            "embedding_dir": str(self.emb),
            "embedding_sha256": embedding_digests(self.emb),  # as recorded in MLflow when it was trained
        }
        self.parents = {"mlp": self.base, "cnn": None}
        monkeypatch.setattr("pipelines.training.warm.find_parents", lambda s, kinds: (self.base, self.parents))

    def plan(self, **cfg):
        from pipelines.training.warm import plan_run

        c = TrainConfig(models=["mlp", "cnn"], **cfg)
        return plan_run(self.settings, {"dir": str(self.ds), "run_date": "2026-11-10"}, c, "2026-11-10")


def test_auto_picks_warm_or_full_by_its_rules(tmp_path, monkeypatch):
    from dataclasses import replace

    from pipelines.settings import Settings
    from pipelines.training.warm import WarmStartError

    settings = Settings()
    p = _Plan(tmp_path, monkeypatch, settings)
    plan = p.plan()
    assert plan["mode"] == "warm" and plan["new_partitions"] == ["2026-11-10"], plan
    assert plan["types"] == {"mlp": "warm", "cnn": "full"}  # no cnn anywhere: that type trains full
    assert plan["parents"]["mlp"]["new_partitions"] == ["2026-11-10"] and plan["vocab_growth"] == 0.0

    assert p.plan(mode="full")["mode"] == "full"
    # the base read other pretrained word vectors (or its encoded splits are gone): its weights do not fit
    assert "sentence_encoder=use (this run: none)" in (r := p.plan(sentence_encoder="none"))["reason"]
    assert r["mode"] == "full"
    meta = p.emb.parent / "encoded" / "meta.json"
    meta.rename(meta.with_suffix(".bak"))
    assert "encoded splits are gone" in (r := p.plan())["reason"] and r["mode"] == "full"
    meta.with_suffix(".bak").rename(meta)
    p.settings = replace(settings, warm_max_age_days=3)  # last full retrain 2026-11-05: 5 days old
    assert "5 days old" in (r := p.plan())["reason"] and r["mode"] == "full"
    assert p.plan(mode="warm")["mode"] == "warm"  # asked for explicitly: the age rule does not apply
    p.settings = settings

    pq.write_table(
        pa.table(
            {
                "title": TITLES * 3 + ["Bicicleta rodado aluminio shimano"],
                "ingest_date": ["2026-11-01"] * 18 + ["2026-11-10"],
            }
        ),
        p.ds / "train.parquet",
    )
    assert "vocabulary grew" in (r := p.plan())["reason"] and r["mode"] == "full"

    (p.emb / "fasttext.model").unlink()
    assert "gone" in (r := p.plan())["reason"] and r["mode"] == "full"
    with pytest.raises(WarmStartError, match="mode=warm: the embedding of version 4 is gone"):
        p.plan(mode="warm")
    p.base = None
    assert p.plan()["reason"] == "no registered model to start from"
    with pytest.raises(WarmStartError, match="no registered model"):
        p.plan(mode="warm")


def test_encoding_in_worker_processes_gives_the_same_arrays(monkeypatch):
    import pipelines.features.encoded as E

    enc, _ = encoder_and_ft()
    one, t1 = encode_titles(enc, EDGE * 3)
    monkeypatch.setattr(E, "CHUNK", 4)  # several chunks, tokenized by two processes
    two, t2 = encode_titles(enc, EDGE * 3, workers=2)
    np.testing.assert_array_equal(one.keys, two.keys)
    np.testing.assert_array_equal(one.offsets, two.offsets)
    np.testing.assert_array_equal(t1.table(), t2.table())
