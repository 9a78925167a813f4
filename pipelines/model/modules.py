"""PyTorch title classifiers. Input: ids [B, T, K] (K = word id + its n-gram ids, 0 = padding),
lengths [B]. Each token vector is the mean of its K embeddings (FastText composition).

Every model is two stages, and both training and serving go through them:

- ``token_features(ids [N, K]) -> [N, F]``: what a model needs of one token, a pure function of
  the token (its subword rows); in eval mode it does not depend on the title around it.
- ``classify(feats [B, T, F], mask [B, T], lengths [B], words [B, T]) -> logits [B, C]``.

``forward(ids, lengths)`` chains them. The serving bundle caches ``token_features`` per distinct
word, so scoring does one [T, F] gather per title instead of a [T, K, D] one (pipelines/model/bundle.py).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipelines.config import MODEL_TYPES


@dataclass
class ModelConfig:
    kind: str = "mlp"
    num_embeddings: int = 0
    dim: int = 100
    num_classes: int = 0
    hidden: int = 512
    dropout: float = 0.3
    filter_sizes: list[int] = field(default_factory=lambda: [1, 2, 3])
    filters: int = 256
    lstm_hidden: int = 192
    freeze_embedding: bool = False
    # Options added later default to "off", so bundles written before them still load.
    vocab_size: int = 0  # ids in [2, vocab_size) are in-vocabulary word ids (for word bigrams)
    # "Wide" branch: an idf-weighted, L2-normalised bag of all the title's ids (words, char n-grams
    # and hashed word bigrams) through its own table -> its own classifier head. 0 = off.
    wide_dim: int = 0
    wide_bigrams: int = 0
    # Pretrained word vectors (pipelines/features/sentence.py), frozen, read as their mean over the title
    # (``sentence_mean``) by their own classifier head (own loss, averaged like the wide branch).
    # 0 = off. (Chosen on validation over joining the mean to the deep model's pooled features:
    # MLP 0.9403 vs 0.9378, none 0.9370; benchmarks/results/sentence.md.)
    sentence_dim: int = 0
    # One trained row per word (issue 34): an in-vocabulary token's vector is its word's row alone
    # (initialised from FastText's composed vector: the mean of the word's and its n-grams' rows), the
    # n-gram rows are frozen and compose the vector of a word never seen in training, as FastText does;
    # the wide bag keeps every id (its n-gram rows frozen too). False: the mean of the token's rows.
    word_rows: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


BIGRAM_PRIME = 1_000_003


def bigram_ids(words: torch.Tensor, vocab_size: int, buckets: int) -> torch.Tensor:
    """Word ids [B, T] -> hashed bigram buckets [B, T-1] in 1..buckets (0 where either token is not
    an in-vocabulary word). [B, 0] for one-token batches."""
    valid = (words >= 2) & (words < vocab_size)
    both = valid[:, :-1] & valid[:, 1:]
    h = (words[:, :-1] * BIGRAM_PRIME + words[:, 1:]) % buckets + 1
    return torch.where(both, h, torch.zeros_like(h))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    filled = x.masked_fill(~mask.unsqueeze(-1), torch.finfo(x.dtype).min).amax(1)
    return filled.masked_fill(~mask.any(1, keepdim=True), 0.0)


class Dropout(nn.Module):
    """``nn.Dropout``'s function (zero each element with probability ``p``, scale the rest by 1/(1-p))
    from a uniform draw compared with ``p``: on a CPU ``bernoulli_`` (what nn.Dropout draws with) costs
    ~8 ns an element, 3.7x a uniform draw, and was the largest op of an MLP step at batch 256."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class WideBag(nn.Module):
    """A TF-IDF-like view of the title: the idf-weighted, L2-normalised bag of all its ids (word
    ids, char n-grams, hashed word bigrams) times a table -> ReLU -> classes, i.e. an MLP over
    TF-IDF features. ``idf`` is a buffer set from the training split, so it ships in weights.pt.

    Per token it needs only ``sum_k idf_k * table_k`` and ``sum_k idf_k^2`` (token_parts), which is
    what makes the bag cacheable per word; bigrams are added per title."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        rows = cfg.num_embeddings + cfg.wide_bigrams
        self.table = nn.Embedding(rows, cfg.wide_dim, padding_idx=0, sparse=True)
        nn.init.normal_(self.table.weight, std=0.05)
        with torch.no_grad():
            self.table.weight[0].zero_()
        self.register_buffer("idf", torch.ones(rows))
        self.bias = nn.Parameter(torch.zeros(cfg.wide_dim))
        self.drop = Dropout(max(cfg.dropout, 0.5))
        self.out = nn.Linear(cfg.wide_dim, cfg.num_classes)

    def token_parts(self, ids: torch.Tensor, local: torch.Tensor | None = None, table=None) -> torch.Tensor:
        """ids [..., K] -> [..., wide_dim + 1]: idf-weighted sum of the rows, sum of squared idf.
        ``local``/``table``: the same ids as rows of a gathered slice of the table (training)."""
        w = self.idf[ids] * (ids != 0).to(self.idf.dtype)
        table = self.table.weight if table is None else table
        s = bag_sum(ids if local is None else local, table, w.to(table.dtype))
        return torch.cat([s, (w * w).sum(-1, keepdim=True).to(s.dtype)], dim=-1)

    def bigram_rows(self, words: torch.Tensor) -> torch.Tensor:
        b = bigram_ids(words, self.cfg.vocab_size, self.cfg.wide_bigrams)
        return torch.where(b > 0, b - 1 + self.cfg.num_embeddings, b)

    def bigram_parts(self, words: torch.Tensor) -> torch.Tensor | None:
        """The bag of a title's hashed word bigrams [B, wide_dim + 1] (None: no bigrams)."""
        if self.cfg.wide_bigrams <= 0 or words.shape[1] <= 1:
            return None
        return self.token_parts(self.bigram_rows(words))

    def forward(self, parts: torch.Tensor, mask: torch.Tensor, bigrams: torch.Tensor | None) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(parts.dtype)
        total = (parts * m).sum(1)  # [B, wide_dim + 1]
        if bigrams is not None:
            total = total + bigrams.to(total.dtype)
        h = total[:, :-1] / total[:, -1:].clamp(min=1e-12).sqrt() + self.bias
        return self.out(self.drop(F.relu(h)))


def bag_sum(ids: torch.Tensor, table: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_k weights[..., k] * table[ids[..., k]] -> [..., D], one fused ``embedding_bag``."""
    lead, k = ids.shape[:-1], ids.shape[-1]
    flat = ids.reshape(-1, k)
    if flat.shape[0] == 0 or k == 0:
        return table.new_zeros(*lead, table.shape[1])
    out = F.embedding_bag(flat, table, mode="sum", per_sample_weights=weights.reshape(-1, k))
    return out.reshape(*lead, table.shape[1])


def sentence_mean(table: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The mean of the titles' pretrained word vectors: ``table`` [V, S] (float16, row 0 = padding)
    read at ``keys`` [B, T] (0 = padding) -> [B, S] float32. Training and serving both call this,
    on their own key numbering of the same rows, so a title gets the same bits on both paths."""
    rows = table.index_select(0, keys.reshape(-1)).view(*keys.shape, table.shape[1]).float()
    return masked_mean(rows, keys != 0)


class SentenceBranch(nn.Module):
    """The mean of the title's pretrained word vectors -> LayerNorm -> dropout -> classes."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.sentence_dim)
        self.drop = Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.sentence_dim, cfg.num_classes)

    def forward(self, mean: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.norm(mean)))


class TitleClassifier(nn.Module):
    """Shared plumbing: the token embedding (mean of a token's K rows), the optional wide branch,
    the two-stage forward. Subclasses implement ``deep(x [B,T,D], mask, lengths) -> logits``.

    With a wide branch the model is a two-member ensemble trained in one pass: each branch gets
    its own loss (``forward_branches``) so they stay diverse; the prediction is their mean
    probability, returned as log-probabilities (softmax gives the probabilities back)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # sparse gradients: only the rows a batch touches are updated (fast on CPU and GPU)
        self.emb = nn.Embedding(cfg.num_embeddings, cfg.dim, padding_idx=0, sparse=True)
        self.emb.weight.requires_grad_(not cfg.freeze_embedding)
        self.wide = WideBag(cfg) if cfg.wide_dim > 0 else None
        self.sentence = SentenceBranch(cfg) if cfg.sentence_dim > 0 else None

    @property
    def feature_dim(self) -> int:
        return self.cfg.dim + (self.cfg.wide_dim + 1 if self.wide is not None else 0)

    def token_features(self, ids: torch.Tensor, local=None, emb=None, wide=None) -> torch.Tensor:
        """ids [..., K] -> [..., F]: the token vector (mean of its rows), then the wide parts.

        Training passes ``local``: the same ids as rows of ``emb`` / ``wide``, the slices of the two
        tables a batch touches (gathered once per step, so their gradients are dense and small)."""
        if self.cfg.word_rows and local is None:
            w = self.word_of(ids)
            return self.frozen_features(ids) + self.word_features(w, self.emb.weight[w], self._wide_rows(w))
        emb = self.emb.weight if emb is None else emb
        sub = (ids != 0).to(emb.dtype)
        vec = bag_sum(ids if local is None else local, emb, sub / sub.sum(-1, keepdim=True).clamp(min=1.0))
        if self.wide is None:
            return vec
        return torch.cat([vec, self.wide.token_parts(ids, local, wide).to(vec.dtype)], dim=-1)

    # ---- word rows (cfg.word_rows): features = frozen_features(ids) + word_features(word rows) ----
    def word_of(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [..., K] -> [...]: the token's in-vocabulary word id, 0 for a word never seen in training
        (its ids are n-grams only, or ``<unk>``)."""
        w = ids[..., 0]
        return torch.where((w >= 2) & (w < self.cfg.vocab_size), w, torch.zeros_like(w))

    def frozen_features(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [..., K] -> [..., F]: what a token's features owe to its frozen n-gram rows. Embedding: the
        mean of its n-gram rows for a word never seen in training (FastText's composition), 0 for a
        vocabulary word (its own row is the whole vector); wide: the idf-weighted sum of its n-gram rows
        and the squared idf of all its ids (the word's included)."""
        w = self.word_of(ids)
        grams = torch.cat([torch.where(w != 0, 0, ids[..., 0]).unsqueeze(-1), ids[..., 1:]], dim=-1)
        emb = self.emb.weight
        sub = (grams != 0).to(emb.dtype) * (w == 0).to(emb.dtype).unsqueeze(-1)
        vec = bag_sum(grams, emb, sub / sub.sum(-1, keepdim=True).clamp(min=1.0))
        if self.wide is None:
            return vec
        parts = self.wide.token_parts(grams).to(vec.dtype)
        idf_w = self.wide.idf[w] * (w != 0).to(self.wide.idf.dtype)
        parts = torch.cat([parts[..., :-1], parts[..., -1:] + (idf_w * idf_w).unsqueeze(-1).to(vec.dtype)], dim=-1)
        return torch.cat([vec, parts], dim=-1)

    def word_features(self, w: torch.Tensor, emb_rows: torch.Tensor, wide_rows: torch.Tensor | None) -> torch.Tensor:
        """[..., F]: a token's share of its word's trained rows (``emb_rows`` [..., dim], ``wide_rows``
        [..., wide_dim], rows of word ``w``; row 0, the padding, is zero for a word never seen)."""
        if self.wide is None:
            return emb_rows
        idf_w = (self.wide.idf[w] * (w != 0).to(self.wide.idf.dtype)).unsqueeze(-1).to(wide_rows.dtype)
        return torch.cat([emb_rows, wide_rows * idf_w, emb_rows.new_zeros(*emb_rows.shape[:-1], 1)], dim=-1)

    def _wide_rows(self, w: torch.Tensor) -> torch.Tensor | None:
        return None if self.wide is None else self.wide.table.weight[w]

    def deep(self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def branches(self, feats, mask, lengths, words, bigrams=None, sentence=None) -> list[torch.Tensor]:
        """``bigrams``: the wide bag of the titles' word bigrams, if the caller computed it;
        ``sentence`` [B, sentence_dim]: the titles' ``sentence_mean`` (models that read it)."""
        if self.sentence is not None and sentence is None:
            raise ValueError("this model reads pretrained word vectors: pass their title mean (sentence_mean)")
        out = [self.deep(feats[..., : self.cfg.dim], mask, lengths)]
        if self.wide is not None:
            if bigrams is None:
                bigrams = self.wide.bigram_parts(words)
            out.append(self.wide(feats[..., self.cfg.dim :], mask, bigrams))
        if self.sentence is not None:
            out.append(self.sentence(sentence.float()))
        return out

    def classify(self, feats, mask, lengths, words, sentence=None) -> torch.Tensor:
        return self.combine(self.branches(feats, mask, lengths, words, sentence=sentence))

    @staticmethod
    def combine(branches: list[torch.Tensor]) -> torch.Tensor:
        if len(branches) == 1:
            return branches[0]
        logp = torch.stack([F.log_softmax(b.float(), dim=-1) for b in branches])
        return torch.logsumexp(logp, dim=0) - math.log(len(branches))

    def _stages(self, ids: torch.Tensor, lengths: torch.Tensor):
        mask = (ids != 0).any(-1)
        return self.token_features(ids), mask, lengths, ids[..., 0]

    def forward_branches(self, ids: torch.Tensor, lengths: torch.Tensor, sentence=None) -> list[torch.Tensor]:
        return self.branches(*self._stages(ids, lengths), sentence=sentence)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, sentence=None) -> torch.Tensor:
        """``sentence`` [B, sentence_dim]: the titles' ``sentence_mean`` (models that read it)."""
        return self.classify(*self._stages(ids, lengths), sentence=sentence)


class MLPClassifier(TitleClassifier):
    """Mean- and max-pooled token vectors -> hidden layer -> classes."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.drop = Dropout(cfg.dropout)
        self.fc1 = nn.Linear(2 * cfg.dim, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.num_classes)

    def deep(self, x, mask, lengths):
        pooled = torch.cat([masked_mean(x, mask), masked_max(x, mask)], dim=-1)
        return self.out(self.drop(F.gelu(self.norm(self.fc1(self.drop(pooled))))))


class CNNClassifier(TitleClassifier):
    """1-D convolutions of several widths over the token sequence, max-pooled over time."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.convs = nn.ModuleList(nn.Conv1d(cfg.dim, cfg.filters, k, padding=k // 2) for k in cfg.filter_sizes)
        self.drop = Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.filters * len(cfg.filter_sizes) + cfg.dim, cfg.num_classes)

    def deep(self, x, mask, lengths):
        T = x.shape[1]
        xt = self.drop(x).transpose(1, 2)  # [B, D, T]
        pooled = [masked_max(F.relu(conv(xt))[:, :, :T].transpose(1, 2), mask) for conv in self.convs]
        pooled.append(masked_mean(x, mask))
        return self.out(self.drop(torch.cat(pooled, dim=-1)))


class BiLSTMClassifier(TitleClassifier):
    """Bidirectional LSTM over packed sequences; max- and mean-pooled outputs."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.lstm = nn.LSTM(cfg.dim, cfg.lstm_hidden, batch_first=True, bidirectional=True)
        self.drop = Dropout(cfg.dropout)
        self.out = nn.Linear(4 * cfg.lstm_hidden, cfg.num_classes)

    def deep(self, x, mask, lengths):
        lens = lengths.clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.drop(x), lens, batch_first=True, enforce_sorted=False)
        # on a CPU the LSTM runs in fp32 even under bf16 autocast: oneDNN's bf16 LSTM grew the training
        # task's memory by ~1 MB a batch (variable sequence shapes), fp32 stays flat (scale.md)
        with torch.autocast(device_type="cpu", enabled=False) if x.device.type == "cpu" else nullcontext():
            out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        pooled = torch.cat([masked_max(out, mask), masked_mean(out, mask)], dim=-1)
        return self.out(self.drop(pooled))


def upgrade_state_dict(state: dict) -> dict:
    """Weights saved before the two-stage refactor kept the token table at ``embed.emb``."""
    return {("emb.weight" if k == "embed.emb.weight" else k): v for k, v in state.items()}


def build_model(cfg: ModelConfig) -> TitleClassifier:
    classes = {"mlp": MLPClassifier, "cnn": CNNClassifier, "bilstm": BiLSTMClassifier}
    if cfg.kind not in classes:
        raise ValueError(f"unknown model type {cfg.kind!r}; choose from {MODEL_TYPES}")
    if cfg.num_embeddings <= 0 or cfg.num_classes <= 0:
        raise ValueError("num_embeddings and num_classes must be set")
    if cfg.wide_dim > 0 and cfg.wide_bigrams > 0 and cfg.vocab_size <= 0:
        raise ValueError("wide_bigrams needs vocab_size (the word vocabulary's size)")
    return classes[cfg.kind](cfg)
