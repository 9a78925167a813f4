"""Issue 34 (scale): one trained row per word, the row optimisers, the cost policy, bf16 and dropout."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from pipelines.config import MODEL_TYPES, TrainConfig
from pipelines.features.embedding import compose_word_rows, embedding_epochs, embedding_matrix
from pipelines.features.encoded import encode_titles
from pipelines.model.modules import Dropout, ModelConfig, build_model
from pipelines.training.loop import WordRows, batch_branches, checks_per_epoch, planned_epochs, refit_plan
from pipelines.training.rows import RowAdagrad, RowAdam, RowTables, apply_rows, row_optimizer, trainable_rows
from tests.unit.model.test_models import TITLES, encoder_and_ft, tiny_model

NEVER_SEEN = "zapatillasxyz"  # its n-grams are known, the word is not


def _word_model(kind: str = "mlp", wide: bool = True):
    """A word-rows model over FastText rows composed as training composes them, and the classic one."""
    torch.manual_seed(0)
    enc, ft = encoder_and_ft()
    classic = tiny_model(kind, enc, ft, wide)
    model = build_model(ModelConfig(**{**classic.cfg.to_dict(), "word_rows": True}))
    model.load_state_dict(classic.state_dict())
    with torch.no_grad():
        model.emb.weight.copy_(torch.from_numpy(compose_word_rows(enc, embedding_matrix(enc, ft))))
    return enc, ft, classic, model


def _ids(enc, word: str) -> torch.Tensor:
    ids = enc.token_ids(word)
    out = torch.zeros(1, enc.width, dtype=torch.int64)
    out[0, : len(ids)] = torch.from_numpy(ids)
    return out


def test_word_rows_start_as_the_composed_fasttext_vectors():
    """Each word's row is the mean of its word and n-gram rows: a word-rows model starts with the
    same token vectors as the classic model (FastText's composition), for known and unseen words."""
    enc, ft, classic, model = _word_model()
    matrix = embedding_matrix(enc, ft)
    composed = compose_word_rows(enc, matrix)
    for word in ("zapatillas", "nike", "adidas"):
        ids = enc.token_ids(word)
        assert ids[0] == enc.stoi[word]
        np.testing.assert_allclose(composed[enc.stoi[word]], matrix[ids].mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(composed[len(enc.itos) :], matrix[len(enc.itos) :])  # n-gram rows untouched
    for word in ("zapatillas", "nike", NEVER_SEEN):
        ids = _ids(enc, word)
        dim = model.cfg.dim
        torch.testing.assert_close(model.token_features(ids)[..., :dim], classic.token_features(ids)[..., :dim])
    # the wide parts are the classic ones too (every id, idf-weighted; the word's row included)
    for word in ("nike", NEVER_SEEN):
        ids = _ids(enc, word)
        torch.testing.assert_close(
            model.token_features(ids)[..., model.cfg.dim :], classic.token_features(ids)[..., classic.cfg.dim :]
        )


def _train_steps(model, tokens, keys, lengths, steps: int = 3, opt_name: str = "adam"):
    model.eval()  # no dropout: the comparison is exact
    tables = RowTables(model)
    words = WordRows(model, tokens)
    opt = row_optimizer(opt_name, tables.tensors, 0.05)
    y = torch.arange(len(keys)) % 3
    for _ in range(steps):
        branches, rows = batch_branches(model, tokens, keys, lengths, True, tables, None, words)
        sum(torch.nn.functional.cross_entropy(b, y) for b in branches).backward()
        apply_rows(opt, rows, tables)
    tables.write_back(model)
    return words


def _batch(enc, titles):
    split, table = encode_titles(enc, titles)
    tokens = torch.from_numpy(table.table().astype(np.int64))
    keys, lengths = split.batch(np.arange(len(split)))
    return tokens, torch.from_numpy(keys), torch.from_numpy(lengths)


@pytest.mark.parametrize("kind", MODEL_TYPES)
def test_a_never_seen_word_gets_the_same_vector_at_serving_as_at_training(kind):
    """Training moves word rows only; the frozen n-gram rows give a word never seen in training the
    same features in the training step as the serving path (``token_features``), before and after."""
    enc, _, _, model = _word_model(kind)
    titles = TITLES + [f"{NEVER_SEEN} nike", "zapatillas nike nueva"]
    tokens, keys, lengths = _batch(enc, titles)
    unseen = _ids(enc, NEVER_SEEN)
    served_before = model.token_features(unseen).detach().clone()
    grams_before = model.emb.weight[len(enc.itos) :].detach().clone()
    words = _train_steps(model, tokens, keys, lengths)
    torch.testing.assert_close(model.emb.weight[len(enc.itos) :], grams_before, rtol=0, atol=0)
    served_after = model.token_features(unseen).detach()
    torch.testing.assert_close(served_after, served_before)
    key = [i for i, row in enumerate(tokens) if torch.equal(row, unseen[0])]
    assert key, "the never-seen word is a token of the batch"
    trained_path = words.frozen[key[0]] + model.word_features(
        words.word[key[0]], model.emb.weight[0], model.wide.table.weight[0]
    )
    torch.testing.assert_close(trained_path, served_after[0])


@pytest.mark.parametrize("kind", MODEL_TYPES)
def test_the_word_rows_step_gives_the_serving_logits_and_moves_only_its_words(kind):
    enc, _, _, model = _word_model(kind)
    tokens, keys, lengths = _batch(enc, TITLES + [f"{NEVER_SEEN} nike"])
    model.eval()
    words = WordRows(model, tokens)
    tables = RowTables(model)
    branches, rows = batch_branches(model, tokens, keys, lengths, True, tables, None, words)
    served = model.forward_branches(tokens[keys], lengths)
    for a, b in zip(branches, served, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # one trained row per distinct word of the batch (not ~25 subword rows per token)
    batch_words = set(model.word_of(tokens[keys]).flatten().tolist()) - {0}
    assert set(rows[0][1].tolist()) - {0} == batch_words
    before = tables.tok.clone()
    sum(b.sum() for b in branches).backward()
    apply_rows(RowAdam(tables.tensors, lr=0.05), rows, tables)
    moved = set((tables.tok != before).any(1).nonzero().flatten().tolist())
    assert moved and moved <= batch_words


@pytest.mark.parametrize("opt_cls", [RowAdam, RowAdagrad])
def test_the_row_optimisers_update_only_touched_rows_as_their_dense_twins(opt_cls):
    """RowAdagrad equals torch's Adagrad on the touched rows and leaves every other row (and its
    state) alone; both row optimisers' CUDA form (update_dense) gives the same rows as the gathered one."""
    torch.manual_seed(0)
    p = torch.randn(10, 4)
    rows = torch.tensor([2, 5, 7])
    grads = [torch.randn(3, 4) for _ in range(3)]
    a, b = p.clone(), p.clone().requires_grad_(True)
    opt = opt_cls([a], lr=0.1)
    twin = opt_cls([b], lr=0.1)
    for g in grads:
        opt.update(a, rows, g)
        dense = torch.zeros_like(p)
        dense[rows] = g
        b.grad = dense
        twin.update_dense(b)
    untouched = [i for i in range(10) if i not in rows.tolist()]
    torch.testing.assert_close(a[untouched], p[untouched], rtol=0, atol=0)
    torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    if opt_cls is RowAdagrad:
        ref = p.clone().requires_grad_(True)
        torch_opt = torch.optim.Adagrad([ref], lr=0.1, eps=1e-10)
        for g in grads:
            dense = torch.zeros_like(p)
            dense[rows] = g
            ref.grad = dense
            torch_opt.step()
        torch.testing.assert_close(a, ref.detach(), rtol=1e-5, atol=1e-6)
        assert not opt.state[id(a)]["sum"][untouched].any()


def test_row_optimizer_by_name():
    p = torch.zeros(3, 2)
    assert isinstance(row_optimizer("adagrad", [p], 0.1), RowAdagrad)
    assert type(row_optimizer("adam", [p], 0.1)) is RowAdam
    with pytest.raises(ValueError, match="unknown row optimiser"):
        row_optimizer("sgd2", [p], 0.1)
    with pytest.raises(ValueError, match="row_optimizer must be one of"):
        TrainConfig(row_optimizer="sgd2")


def test_the_cuda_path_masks_the_frozen_rows():
    enc, _, _, model = _word_model()
    v, n = model.cfg.vocab_size, model.cfg.num_embeddings
    emb_mask = trainable_rows(model, model.emb.weight)
    wide_mask = trainable_rows(model, model.wide.table.weight)
    assert emb_mask[:2].sum() == 0 and emb_mask[2:v].all() and emb_mask[v:].sum() == 0
    assert wide_mask[2:v].all() and wide_mask[v:n].sum() == 0 and wide_mask[n:].all()
    classic = tiny_model("mlp", enc, encoder_and_ft()[1])
    assert trainable_rows(classic, classic.emb.weight) is None
    # the dense (CUDA) step of a word-rows model moves no n-gram row
    tokens, keys, lengths = _batch(enc, TITLES)
    m = copy.deepcopy(model).eval()
    opt = RowAdam([m.emb.weight, m.wide.table.weight], lr=0.05)
    branches, rows = batch_branches(m, tokens, keys, lengths, False)
    sum(b.sum() for b in branches).backward()
    apply_rows(opt, rows, None)
    torch.testing.assert_close(m.emb.weight[v:], model.emb.weight[v:], rtol=0, atol=0)
    torch.testing.assert_close(m.wide.table.weight[v:n], model.wide.table.weight[v:n], rtol=0, atol=0)
    assert not torch.equal(m.emb.weight[2:v], model.emb.weight[2:v])


def test_the_budget_policy_picks_epochs_checks_and_refit_by_rows():
    cfg = TrainConfig()  # sample_budget 6M, epochs 15, min_epochs 2, eval_every 400k, refit_max_rows 250k
    assert planned_epochs(cfg, 33_407) == 15  # the real sample: the epoch cap
    assert planned_epochs(cfg, 748_824) == 9  # 1M titles: ceil(6M / 748,824)
    assert planned_epochs(cfg, 3_750_000) == 2  # 5M titles: min_epochs
    assert planned_epochs(cfg, 50_000_000) == 2
    assert planned_epochs(TrainConfig(epochs=4), 33_407) == 4
    assert checks_per_epoch(cfg, 33_407) == 1 and checks_per_epoch(cfg, 748_824) == 2
    assert checks_per_epoch(cfg, 3_750_000) == 9
    assert refit_plan(cfg, "full", 33_407)[0] is True
    ok, why = refit_plan(cfg, "full", 748_824)
    assert ok is False and "refit_max_rows" in why
    assert refit_plan(cfg, "warm", 1_000)[0] is False
    assert refit_plan(TrainConfig(refit=False), "full", 1_000) == (False, "refit=false")
    # FastText: its epochs on the sample, 4 at 1M titles, never under 3
    assert embedding_epochs(cfg, 33_407) == 20 and embedding_epochs(cfg, 748_824) == 5
    assert embedding_epochs(cfg, 3_750_000) == 3 and embedding_epochs(cfg, None) == 20


def test_dropout_drops_at_its_rate_and_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.ones(400, 500)
    d = Dropout(0.3).train()
    y = d(x)
    assert abs((y == 0).float().mean().item() - 0.3) < 0.01
    assert abs(y.mean().item() - 1.0) < 0.02
    values = torch.unique(y).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.7)
    assert torch.equal(d.eval()(x), x) and torch.equal(Dropout(0.0).train()(x), x)
    x.requires_grad_(True)
    Dropout(0.5).train()(x).sum().backward()
    assert set(torch.unique(x.grad).tolist()) <= {0.0, 2.0}


def test_bf16_on_the_cpu_follows_the_config_and_the_cpu(monkeypatch):
    from pipelines.training import loop

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for has, flag, want in ((True, True, True), (True, False, False), (False, True, False)):
        monkeypatch.setattr(loop, "cpu_has_bf16", lambda has=has: has)
        assert loop.use_bf16(TrainConfig(cpu_bf16=flag), cpu) is want
        assert loop.use_bf16(TrainConfig(cpu_bf16=flag), cuda) is True
    monkeypatch.undo()
    assert isinstance(loop.cpu_has_bf16(), bool)


def test_a_run_records_its_cost_policy_checks_sampled_validation_and_no_refit(settings, synthetic_jsonl):
    """A training run applies the policy to its data and says so: checks every ``eval_every`` samples
    (several per epoch), each on the fixed validation sample, the kept weights scored on the whole
    split, no refit past ``refit_max_rows``, the planned epochs and the refit's reason recorded."""
    import mlflow

    from pipelines.data.ingest import ingest
    from pipelines.data.lake import record_validation
    from pipelines.features.embedding import embedding_config, prepare_dataset, train_embedding
    from pipelines.features.text import TextConfig
    from pipelines.training.runs import start_parent_run
    from pipelines.training.train import train_classifier

    r = ingest([synthetic_jsonl(3000, seed=5)], "2026-11-01", settings)
    record_validation(r.partition, r.version, "passed")
    ds = prepare_dataset(settings, "2026-11-01")
    n_train = ds["counts"]["train"]
    cfg = TrainConfig(
        models=["mlp"], epochs=2, embedding_epochs=2, embedding_dim=16, bucket=5000, device="cpu",
        eval_every=1000, val_sample_rows=100, refit_max_rows=1000, patience=50,
    )  # fmt: skip
    emb = train_embedding(ds["dir"], embedding_config(cfg, n_train), TextConfig(), cfg.seed)
    parent = start_parent_run(settings, "2026-11-01", ds)
    res = train_classifier(
        settings, ds["dir"], emb["dir"], "mlp", cfg, parent, "2026-11-01", embedding_sha256=emb["sha256"]
    )
    run = mlflow.get_run(res["run_id"])
    m, client = run.data.metrics, mlflow.MlflowClient()
    checks = checks_per_epoch(cfg, n_train)
    assert checks == round(n_train / 1000) >= 2
    assert m["planned_epochs"] == planned_epochs(cfg, n_train) == 2 and m["checks_per_epoch"] == checks
    assert len(client.get_metric_history(res["run_id"], "train_loss")) == 2 * checks
    assert m["val_check_rows"] == 100 and "val_check_macro_recall" in m
    assert res["refit"] is False and "refit_rows" not in m
    assert run.data.tags["meli.refit"].startswith("no: ") and "refit_max_rows" in run.data.tags["meli.refit"]
    assert run.data.params["word_rows"] == "True" and run.data.params["bf16"] in ("True", "False")
    assert 0 <= res["val_macro_recall"] <= 1
