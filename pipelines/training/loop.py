"""The training loop: a model, its batches, optimisers and learning-rate schedule, on CPU or CUDA.

No MLflow here: ``select`` (the selection pass, early stopping on validation macro-recall) and
``refit`` take a ``log_metrics(metrics, step=...)`` callable, and pipelines/training/train.py passes MLflow's.
On CPU a step updates only the embedding rows its batch touches (``RowTables``, ``RowAdam``); on
CUDA the split lives on the device and batches are gathered there (bf16 autocast, no host sync).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass

import numpy as np

from pipelines.config import TrainConfig, check_tables
from pipelines.features.batches import EncodedSplit, gather_keys_t, length_bucketed_batches
from pipelines.features.embedding import TitleEncoder
from pipelines.features.sentence import dim as sentence_dim
from pipelines.training.rows import RowTables, apply_rows, row_optimizer, row_tables, trainable_rows

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Fit:
    """One training recipe (model config, initialisation, optimisers, schedule), run on any rows.

    Rows are an ``EncodedSplit`` over the run's ``tokens`` table (pipelines/features/encoded.py): a batch is
    an index array, gathered and padded as arrays. On CPU a step gathers the embedding rows its
    tokens touch once (``torch.unique``), runs ``embedding_bag`` over that slice and updates exactly
    those rows (dense [rows, dim] gradients, no sparse tensors); each distinct token of the batch is
    computed once. On CUDA the arrays live on the device, batches are drawn there, and the tables
    get dense gradients with a masked row update: no host sync per step.
    """

    def __init__(
        self, kind: str, cfg: TrainConfig, encoder: TitleEncoder, labels: list[str], device, embedding_dir, sha256=None
    ):
        from pipelines.features.embedding import EmbeddingIntegrityError, embedding_matrix, load_fasttext
        from pipelines.model.modules import ModelConfig

        self.cfg, self.encoder, self.labels, self.device = cfg, encoder, labels, device
        self.model_cfg = ModelConfig(
            kind=kind,
            num_embeddings=encoder.num_embeddings,
            dim=encoder.emb.dim,
            num_classes=len(labels),
            hidden=cfg.hidden,
            dropout=cfg.dropout,
            freeze_embedding=cfg.freeze_embedding,
            vocab_size=len(encoder.itos),
            wide_dim=cfg.wide_dim,
            wide_bigrams=cfg.wide_bigrams if cfg.wide_dim else 0,
            sentence_dim=sentence_dim(cfg.sentence_encoder),
            word_rows=cfg.word_rows,
        )
        check_tables(  # rows from the data (vocabulary + char n-grams): before any table is allocated
            {
                "the embedding table (vocabulary + n-grams) x embedding_dim": (encoder.num_embeddings, encoder.emb.dim),
                "the wide table (vocabulary + n-grams + wide_bigrams) x wide_dim": (
                    encoder.num_embeddings + self.model_cfg.wide_bigrams,
                    cfg.wide_dim,
                ),
            }
        )
        # the run's own embedding, as its embedding step recorded it: the FastText is a pickle (gensim),
        # unpickled only from files whose sha256 match that record; no record, no load
        if not sha256:
            raise EmbeddingIntegrityError(
                f"refusing to load the FastText in {embedding_dir}: no sha256 of its files was recorded when it was "
                "trained (train the embedding again)"
            )
        ft = load_fasttext(embedding_dir, sha256)
        self.init_vectors = embedding_matrix(encoder, ft)
        if cfg.word_rows:  # each word's row starts as its composed FastText vector (word + n-grams)
            from pipelines.features.embedding import compose_word_rows

            self.init_vectors = compose_word_rows(encoder, self.init_vectors)
        self.init_vectors[0] = 0.0
        self.parent = None  # warm start: (bundle dir, fresh state -> the parent's state on this vocabulary)
        self.batch_size, self.lr, self.embedding_lr = effective_recipe(cfg, device)  # size_for sets them by rows
        self.on_device = device.type == "cuda"
        # bf16 autocast: on CUDA, and on a CPU with native bf16 arithmetic (AVX512-BF16 or AMX: its
        # bf16 GEMMs run ~4.5x the fp32 ones on the 2-core benchmark VM), unless cfg.cpu_bf16 is off
        self.bf16 = use_bf16(cfg, device)
        self.tokens_t = None  # the run's token table on the device (set_tokens)
        self.sent_t = None  # float16 [V, S]: each token's pretrained vector (a sentence encoder), or None

    def size_for(self, rows: int) -> None:
        """The batch and learning rates for ``rows`` training rows (``effective_recipe``): every pass
        of the run (selection and refit) uses them."""
        self.batch_size, self.lr, self.embedding_lr = effective_recipe(self.cfg, self.device, rows)

    def set_tokens(self, tokens: np.ndarray, sentence: np.ndarray | None = None) -> None:
        import torch

        self.tokens_t = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).to(self.device)
        if self.model_cfg.sentence_dim and sentence is None:
            raise ValueError(f"sentence_encoder={self.cfg.sentence_encoder!r} but the encoded splits carry no vectors")
        if sentence is not None and self.model_cfg.sentence_dim:
            self.sent_t = torch.from_numpy(np.array(sentence, dtype=np.float16)).to(self.device)  # a copy: writable

    def new_model(self, data: EncodedSplit | None):
        """A freshly initialised model (seeded: the same weights every call; warm: the parent's
        weights on this vocabulary, new rows from FastText); the wide idf from ``data``."""
        import torch

        from pipelines.model.modules import build_model

        seed_everything(self.cfg.seed)
        model = build_model(self.model_cfg)
        with torch.no_grad():
            model.emb.weight.copy_(torch.from_numpy(self.init_vectors))
            if self.parent is not None:
                model.load_state_dict(self.parent[1](model.state_dict()))
            if model.wide is not None and data is not None:
                model.wide.idf.copy_(torch.from_numpy(wide_idf(model.wide, data, self.tokens_t.cpu().numpy())))
        return model.to(self.device)

    def run(self, model, data: EncodedSplit, epochs: int, on_check, checks_per_epoch: int = 1) -> tuple[int, float]:
        """Up to ``epochs`` epochs (warm-up + cosine over all of them), ``checks_per_epoch`` checks in
        each: ``on_check(model, check, train_loss, seconds)`` after each (checks numbered from 1), in
        eval mode, returns False to stop. Returns (samples seen, training seconds)."""
        import torch
        import torch.nn.functional as F

        cfg, device, on_device = self.cfg, self.device, self.on_device
        y = np.asarray(data.labels, dtype=np.int64)
        lengths = np.asarray(data.lengths)
        class_w, sampler_w = self._balance(y)
        dense, opt, tables, row_opt = self._optimisers(model)
        rng = np.random.default_rng(cfg.seed)
        batch_size = self.batch_size
        steps_per_epoch = math.ceil(len(y) / batch_size)
        total_steps = steps_per_epoch * epochs
        warm = max(1, steps_per_epoch // 2)

        def checks_in(n_batches: int) -> set[int]:  # the epoch's batches after which validation is checked
            cpe = max(1, min(checks_per_epoch, n_batches))
            return {math.ceil(n_batches * (j + 1) / cpe) for j in range(cpe)}

        words = WordRows(model, self.tokens_t) if tables is not None and model.cfg.word_rows else None

        def set_lr(step: int) -> None:  # linear warm-up, cosine decay
            decay = 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))
            f = step / warm if step < warm else decay
            for g in opt.param_groups:
                g["lr"] = self.lr * f
            row_opt.param_groups[0]["lr"] = self.embedding_lr * f

        on_gpu = None
        if on_device:  # the whole split on the GPU once; batches are gathered there
            on_gpu = tuple(
                torch.from_numpy(a).to(device)
                for a in (np.asarray(data.keys, dtype=np.int64), np.asarray(data.offsets), y)
            )

        step, seen, seconds, check = 0, 0, 0.0, 0
        for _epoch in range(1, epochs + 1):
            model.train()
            t0 = time.perf_counter()
            total_loss, nb = torch.zeros((), device=device), 0  # summed on the device: no sync per step
            epoch_batches = length_bucketed_batches(lengths, batch_size, rng, sampler_w)
            check_at = checks_in(len(epoch_batches))
            for i, b_idx in enumerate(epoch_batches, start=1):
                keys, lens, target = self._batch(b_idx, data, y, lengths, on_gpu)
                set_lr(step)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    # multi-branch models: one loss per branch (an ensemble trained in one pass)
                    branches, rows = batch_branches(
                        model, self.tokens_t, keys, lens, not on_device, tables, self.sent_t, words
                    )
                loss = sum(
                    F.cross_entropy(lg.float(), target, weight=class_w, label_smoothing=cfg.label_smoothing)
                    for lg in branches
                ) / len(branches)
                opt.zero_grad(set_to_none=True)
                row_opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(dense, 5.0)
                opt.step()
                apply_rows(row_opt, rows, tables)
                total_loss += loss.detach()
                nb += 1
                step += 1
                seen += len(b_idx)
                if i not in check_at:
                    continue
                if on_device:
                    torch.cuda.synchronize(device)  # the check's time includes its queued GPU work
                part_s = time.perf_counter() - t0
                seconds += part_s
                if tables is not None:
                    tables.write_back(model)
                model.eval()
                check += 1
                if not on_check(model, check, float(total_loss) / max(nb, 1), part_s):
                    model.eval()
                    return seen, seconds
                model.train()
                t0 = time.perf_counter()
                total_loss, nb = torch.zeros((), device=device), 0
        model.eval()
        return seen, seconds

    def _balance(self, y: np.ndarray):
        """(class weights of the loss, sampling weights of the rows) for ``cfg.balance``."""
        import torch

        counts = np.bincount(y, minlength=len(self.labels)).astype(np.float64)
        class_w, sampler_w = None, None
        if self.cfg.balance == "weighted":
            w = len(y) / (len(self.labels) * np.maximum(counts, 1))
            class_w = torch.tensor(w, dtype=torch.float32, device=self.device)
        elif self.cfg.balance == "sampler":
            sampler_w = 1.0 / counts[y]
        return class_w, sampler_w

    def _optimisers(self, model):
        """(dense parameters, AdamW over them, the CPU row tables or None, RowAdam over the tables)."""
        import torch

        table_params = {id(model.emb.weight)} | ({id(model.wide.table.weight)} if model.wide is not None else set())
        dense = [p for p in model.parameters() if p.requires_grad and id(p) not in table_params]
        # fused: one kernel per step on CUDA (a step is ~1 ms of GPU work behind ~300 kernel launches)
        opt = torch.optim.AdamW(dense, lr=self.lr, weight_decay=self.cfg.weight_decay, fused=self.on_device or None)
        # CPU: the tables' rows live in RowTables during the run; CUDA: the model's own tables
        tables = None if self.on_device else RowTables(model)
        params = row_tables(model) if self.on_device else tables.tensors
        return dense, opt, tables, row_optimizer(self.cfg.row_optimizer, params, self.embedding_lr)

    def _batch(self, b_idx: np.ndarray, data: EncodedSplit, y: np.ndarray, lengths: np.ndarray, on_gpu):
        """A batch's (keys [B, T], lengths [B], targets [B]): gathered on the GPU from ``on_gpu``
        (the split's keys, offsets and labels there), else padded in numpy."""
        import torch

        T = max(1, int(lengths[b_idx].max(initial=0)))
        lens = torch.from_numpy(lengths[b_idx])
        if on_gpu is not None:
            keys_d, offsets_d, y_d = on_gpu
            idx = torch.from_numpy(b_idx).pin_memory().to(self.device, non_blocking=True)
            keys = gather_keys_t(keys_d, offsets_d, idx, lens.pin_memory().to(self.device, non_blocking=True), T)
            return keys, lens, y_d[idx]
        return torch.from_numpy(data.batch(b_idx)[0]), lens, torch.from_numpy(y[b_idx])


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles), not by emulation."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without the probes: assume not
        return False


def use_bf16(cfg: TrainConfig, device) -> bool:
    """bf16 autocast for training on ``device``: always on CUDA; on a CPU when ``cfg.cpu_bf16`` and the
    CPU computes bf16 natively."""
    return device.type == "cuda" or (device.type == "cpu" and cfg.cpu_bf16 and cpu_has_bf16())


MIN_STEPS_PER_EPOCH = 100  # a smaller training set halves the batch (down to 32) until an epoch has this many


def effective_recipe(cfg: TrainConfig, device, rows: int | None = None) -> tuple[int, float, float]:
    """(batch size, dense lr, embedding lr) on ``device`` for ``rows`` training rows. On CUDA, unless
    ``cfg.gpu_batch_size`` is 0, the GPU recipe: that batch size. Small data: the batch halves (not
    under 32) while an epoch would have fewer than MIN_STEPS_PER_EPOCH steps. Both learning rates
    scale by sqrt(the batch's ratio to ``cfg.batch_size``), the rule that held for batch 512 at x2.83
    on an H100 and for 256 at x2 on the CPU (the sample's validation macro-recall within noise)."""
    batch = cfg.batch_size
    if device.type == "cuda" and cfg.gpu_batch_size and cfg.gpu_batch_size > cfg.batch_size:
        batch = cfg.gpu_batch_size
    while rows is not None and batch > 32 and rows / batch < MIN_STEPS_PER_EPOCH:
        batch //= 2
    if batch == cfg.batch_size:
        return batch, cfg.lr, cfg.embedding_lr
    scale = math.sqrt(batch / cfg.batch_size)
    return batch, cfg.lr * scale, cfg.embedding_lr * scale


class WordRows:
    """A word-rows model's run (``ModelConfig.word_rows``, CPU): per token key, its word (0: a word
    never seen in training) and its frozen features (``frozen_features``: the n-gram rows never
    change, so they are computed once per run, not per step). A step then gathers one row per word."""

    def __init__(self, model, tokens):
        import torch

        with torch.no_grad():
            self.word = model.word_of(tokens)
            self.first = tokens[:, 0].contiguous()
            self.frozen = torch.cat(
                [model.frozen_features(tokens[s : s + 16384]).float() for s in range(0, len(tokens), 16384)]
            )


def batch_branches(
    model, tokens, keys, lengths, gather: bool = True, tables: RowTables | None = None, sent=None, words=None
):
    """One batch of token keys [B, T] through ``model.branches``. Returns (branch logits, rows):
    rows is [(table, row ids, leaf)] to update after backward with ``leaf.grad``; row 0 (padding)
    is never updated. ``sent``: the pretrained vector of every key (models that read them).

    ``gather`` (CPU): each distinct token of the batch is computed once, over the rows of
    ``tables`` (RowTables) it touches, gathered into one leaf: its gradient is the rows' gradient,
    dense and small. Without (CUDA): the whole model on the ids, leaf None, the tables' own
    ``.grad`` dense (times the mask of its trainable rows). ``words`` (``WordRows``, CPU): a
    word-rows model's step, one row per distinct word of the batch."""
    import torch

    mask = keys != 0
    if not gather:
        ids = tokens[keys]
        rows = model.__dict__.get("_dense_rows")  # the tables and their trainable-row masks: built once per model
        if rows is None:
            rows = model.__dict__["_dense_rows"] = [(p, trainable_rows(model, p), None) for p in row_tables(model)]
        from pipelines.model.modules import sentence_mean

        sentence = None if sent is None else sentence_mean(sent, keys)
        return model.forward_branches(ids, lengths, sentence), rows
    tables = tables or RowTables(model)
    if words is not None:
        return _word_row_branches(model, keys, mask, lengths, tables, sent, words)
    # index_select, not advanced indexing: ~6x faster on CPU
    uk, inv = torch.unique(keys, return_inverse=True)
    sub = tokens.index_select(0, uk)  # [U, K] ids of the batch's distinct tokens
    r_tok, local = torch.unique(sub, return_inverse=True)
    words = sub[:, 0].index_select(0, inv.flatten()).view_as(inv)
    leaf = tables.tok.index_select(0, r_tok).requires_grad_(True)
    rows = [(tables.tok, r_tok, leaf)]
    emb, wide, bigrams, sentence = leaf[:, : tables.dim], None, None, None
    if model.wide is not None:
        wide = leaf[:, tables.dim :]
        bigrams = _bigram_parts(model, words, tables, rows)
    feats_u = model.token_features(sub, local, emb, wide)
    feats = feats_u.index_select(0, inv.flatten()).view(*inv.shape, feats_u.shape[-1])
    if sent is not None:
        from pipelines.model.modules import sentence_mean

        sentence = sentence_mean(sent, keys)
    return model.branches(feats, mask, lengths, words, bigrams, sentence), rows


def _word_row_branches(model, keys, mask, lengths, tables: RowTables, sent, words: WordRows):
    """``batch_branches`` of a word-rows model: token features = its frozen features + its word's row."""
    import torch

    uk, inv = torch.unique(keys, return_inverse=True)
    w_u = words.word.index_select(0, uk)
    r_w, local = torch.unique(w_u, return_inverse=True)  # row 0: tokens without a trained word row
    leaf = tables.tok.index_select(0, r_w).requires_grad_(True)
    rows = [(tables.tok, r_w, leaf)]
    g = leaf.index_select(0, local)
    wide_rows = g[:, tables.dim :] if model.wide is not None else None
    feats_u = words.frozen.index_select(0, uk) + model.word_features(w_u, g[:, : tables.dim], wide_rows)
    feats = feats_u.index_select(0, inv.flatten()).view(*inv.shape, feats_u.shape[-1])
    first = words.first.index_select(0, uk).index_select(0, inv.flatten()).view_as(inv)
    bigrams = _bigram_parts(model, first, tables, rows) if model.wide is not None else None
    sentence = None
    if sent is not None:
        from pipelines.model.modules import sentence_mean

        sentence = sentence_mean(sent, keys)
    return model.branches(feats, mask, lengths, first, bigrams, sentence), rows


def _bigram_parts(model, words, tables: RowTables, rows: list):
    """The wide bag of the batch's hashed word bigrams over the gathered bigram rows (appended to
    ``rows``); None without bigrams. ``words`` [B, T]: each token's first id."""
    import torch

    w = model.wide
    if w.cfg.wide_bigrams <= 0 or words.shape[1] <= 1:
        return None
    b = w.bigram_rows(words)  # rows of the wide table: >= n, 0 = none
    r_bi, b_local = torch.unique(b, return_inverse=True)
    bi_leaf = tables.bi.index_select(0, (r_bi - tables.n).clamp(min=0)).requires_grad_(True)
    rows.append((tables.bi, torch.where(r_bi > 0, r_bi - tables.n + 1, 0), bi_leaf))
    return w.token_parts(b, b_local, bi_leaf)


def wide_idf(wide, data: EncodedSplit, tokens: np.ndarray) -> np.ndarray:
    """Smoothed idf (sklearn's formula) of every wide-bag id (subword ids and hashed word-bigram
    rows) over the titles of ``data``: per chunk of titles, the (title, id) pairs of their tokens
    (no padding), made distinct with one sort, counted with one bincount."""
    from pipelines.model.modules import BIGRAM_PRIME

    rows, cfg = wide.idf.shape[0], wide.cfg
    df = np.zeros(rows, dtype=np.int64)
    n, offsets = len(data), np.asarray(data.offsets)
    for s in range(0, n, 65536):
        e = min(n, s + 65536)
        keys = np.asarray(data.keys[offsets[s] : offsets[e]], dtype=np.int64)
        title = np.repeat(np.arange(e - s, dtype=np.int64), np.diff(offsets[s : e + 1]))
        ids = tokens[keys]  # [tokens, K]
        r, c = np.nonzero(ids)
        parts = [title[r] * rows + ids[r, c]]
        if cfg.wide_bigrams > 0 and len(keys) > 1:  # as models.bigram_ids: both in-vocabulary words
            w = ids[:, 0]
            same = title[1:] == title[:-1]
            ok = same & (w[:-1] >= 2) & (w[:-1] < cfg.vocab_size) & (w[1:] >= 2) & (w[1:] < cfg.vocab_size)
            b = (w[:-1][ok] * BIGRAM_PRIME + w[1:][ok]) % cfg.wide_bigrams + cfg.num_embeddings
            parts.append(title[:-1][ok] * rows + b)
        pair = np.sort(np.concatenate(parts))  # (np.unique is ~20x slower than a sort here)
        pair = pair[np.concatenate(([True], pair[1:] != pair[:-1]))]  # one per title and id
        df += np.bincount(pair % rows, minlength=rows)
    df[0] = 0
    return (np.log((1 + n) / (1 + df)) + 1).astype(np.float32)


def predict_split(
    model, tokens, data: EncodedSplit, device, batch_size: int = 2048, sent=None
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (float16 [n, C]) and each row's probability of its label (float32; 0
    where the label is -1) of an encoded split. Every distinct token's features are computed once,
    then titles are classified in length-sorted batches (the serving bundle's path)."""
    import torch

    from pipelines.model.modules import sentence_mean

    n = len(data)
    probs = np.zeros((n, model.cfg.num_classes), dtype=np.float16)
    p_true = np.zeros(n, dtype=np.float32)
    y = np.asarray(data.labels, dtype=np.int64)
    with torch.inference_mode():
        tok = tokens if torch.is_tensor(tokens) else torch.from_numpy(np.asarray(tokens, dtype=np.int64))
        tok = tok.to(device)
        if sent is not None and not torch.is_tensor(sent):
            sent = torch.from_numpy(np.array(sent, dtype=np.float16))
        sent = None if sent is None or not model.cfg.sentence_dim else sent.to(device)
        feats = torch.cat([model.token_features(tok[s : s + 16384]).float() for s in range(0, len(tok), 16384)])
        words = tok[:, 0]
        order = np.argsort(data.lengths, kind="stable")
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            keys, lengths = data.batch(idx)
            kt = torch.from_numpy(keys).to(device)
            sentence = None if sent is None else sentence_mean(sent, kt)
            logits = model.classify(feats[kt], kt != 0, torch.from_numpy(lengths), words[kt], sentence)
            pr = torch.softmax(logits.float(), -1)
            pr = pr.cpu().numpy()
            probs[idx] = pr
            yi = y[idx]
            p_true[idx] = np.where(yi >= 0, pr[np.arange(len(idx)), np.maximum(yi, 0)], 0.0)
    return probs, p_true


@dataclass
class Selection:
    """What the selection pass keeps: the best epoch, its weights (on the CPU) and validation
    probabilities, and the samples and seconds the pass took."""

    val: float = -1.0
    epoch: int = 0
    state: dict | None = None
    probs: np.ndarray | None = None
    seen: int = 0
    seconds: float = 0.0
    val_check: float | None = None  # the best check's macro-recall on the validation sample (when sampled)


def evaluate_split(fit: Fit, model, data: EncodedSplit, y: np.ndarray, y_names: list[str]):
    """(macro-recall, mean log loss, probabilities) of ``model`` on a labelled split; ``y`` are
    label ids (-1: a class the train split lacks, which counts as a miss), ``y_names`` the labels."""
    from pipelines.model.metrics import macro_recall

    probs, p_true = predict_split(model, fit.tokens_t, data, fit.device, sent=fit.sent_t)
    p_true = np.where(y >= 0, p_true, 1e-9)
    loss = float(-np.log(np.clip(p_true, 1e-9, 1)).mean())
    pred = np.asarray(fit.labels, dtype=object)[probs.argmax(1)]
    return macro_recall(y_names, list(pred)), loss, probs


def planned_epochs(cfg: TrainConfig, rows: int) -> int:
    """A full run's epochs for ``rows`` training rows (the sample budget): ``cfg.epochs`` on small data,
    fewer as the rows grow (``cfg.sample_budget`` samples), never under ``cfg.min_epochs``."""
    if rows <= 0:
        return cfg.epochs
    return max(1, min(cfg.epochs, max(cfg.min_epochs, math.ceil(cfg.sample_budget / rows))))


def checks_per_epoch(cfg: TrainConfig, rows: int) -> int:
    """Validation checks per epoch: one every ``cfg.eval_every`` samples, at least one per epoch."""
    return max(1, round(rows / cfg.eval_every))


def refit_plan(cfg: TrainConfig, mode: str, train_rows: int) -> tuple[bool, str]:
    """Whether the served model is refitted on train + validation, and why (recorded per run)."""
    if not cfg.refit:
        return False, "refit=false"
    if mode != "full":
        return False, "a warm run serves its selection pass"
    if train_rows > cfg.refit_max_rows:
        return False, f"{train_rows:,} training rows > refit_max_rows {cfg.refit_max_rows:,}"
    return True, f"{train_rows:,} training rows <= refit_max_rows {cfg.refit_max_rows:,}"


def select(
    fit: Fit,
    init: EncodedSplit,
    rows: EncodedSplit,
    epochs: int,
    evaluate,
    log_metrics,
    epoch_callback=None,
    checks: int = 1,
):
    """The selection pass: a fresh model (its wide idf from ``init``) trained on ``rows`` for up to
    ``epochs`` epochs, ``checks`` validation checks per epoch, ``evaluate(model) -> (macro-recall,
    loss, probs)`` at each; the best check's weights are kept, and it stops ``cfg.patience`` checks
    after the best. ``epoch_callback(check, val_macro_recall)`` may raise to stop the run (tuning's
    pruning). With one check per epoch (data under ``cfg.eval_every`` rows) checks are epochs."""
    cfg, kind = fit.cfg, fit.model_cfg.kind
    best = Selection()
    total = epochs * checks

    def on_check(model, check: int, train_loss: float, part_s: float) -> bool:
        val_mr, val_loss, probs = evaluate(model)
        log_metrics(
            {
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_macro_recall": val_mr,
                "epoch_samples_per_s": len(rows) / checks / part_s,
            },
            step=check,
        )
        log.info(
            "%s check %d/%d (epoch %.2f): train_loss %.4f val_loss %.4f val_macro_recall %.4f (%.1fs)",
            kind, check, total, check / checks, train_loss, val_loss, val_mr, part_s,
        )  # fmt: skip
        if epoch_callback is not None:
            epoch_callback(check, val_mr)
        if val_mr > best.val:
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best.val, best.epoch, best.state, best.probs = val_mr, check, state, probs
        elif check - best.epoch >= cfg.patience:
            log.info("%s: early stop after check %d (best check %d)", kind, check, best.epoch)
            return False
        return True

    best.seen, best.seconds = fit.run(fit.new_model(init), rows, epochs, on_check, checks)
    return best


def refit(
    fit: Fit, rows: EncodedSplit, epochs: int, best_epoch: int, log_metrics, checks: int = 1
) -> tuple[dict, float]:
    """The served model: the same recipe from the same initialisation on ``rows`` (train +
    validation), stopped after ``best_epoch`` checks (``checks`` per epoch, as the selection pass's)
    of the ``epochs``-long schedule. Returns (its weights on the CPU, seconds)."""
    kind = fit.model_cfg.kind

    def on_refit_check(model, check: int, train_loss: float, part_s: float) -> bool:
        log_metrics({"refit_train_loss": train_loss}, step=check)
        log.info("%s refit check %d/%d: loss %.4f (%.1fs)", kind, check, best_epoch, train_loss, part_s)
        return check < best_epoch

    model = fit.new_model(rows)
    _, seconds = fit.run(model, rows, epochs, on_refit_check, checks)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, seconds
