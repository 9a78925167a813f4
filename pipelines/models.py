"""PyTorch title classifiers. Input: ids [B, T, K] (K = word id + its n-gram ids, 0 = padding),
lengths [B]. Each token vector is the mean of its K embeddings (FastText composition)."""

from __future__ import annotations

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

    def to_dict(self) -> dict:
        return asdict(self)


class TokenEmbedding(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # sparse gradients: only the rows a batch touches are updated (fast on CPU and GPU)
        self.emb = nn.Embedding(cfg.num_embeddings, cfg.dim, padding_idx=0, sparse=True)
        self.emb.weight.requires_grad_(not cfg.freeze_embedding)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B,T,K] -> token vectors [B,T,D] and token mask [B,T]."""
        sub_mask = (ids != 0).unsqueeze(-1).to(self.emb.weight.dtype)
        vecs = (self.emb(ids) * sub_mask).sum(2)
        count = sub_mask.sum(2)
        token_mask = count.squeeze(-1) > 0
        return vecs / count.clamp(min=1.0), token_mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (
        x.masked_fill(~mask.unsqueeze(-1), torch.finfo(x.dtype).min)
        .amax(1)
        .masked_fill(~mask.any(1, keepdim=True), 0.0)
    )


class MLPClassifier(nn.Module):
    """Mean- and max-pooled token vectors -> hidden layer -> classes."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed = TokenEmbedding(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc1 = nn.Linear(2 * cfg.dim, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.num_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x, mask = self.embed(ids)
        pooled = torch.cat([masked_mean(x, mask), masked_max(x, mask)], dim=-1)
        h = self.drop(F.gelu(self.norm(self.fc1(self.drop(pooled)))))
        return self.out(h)


class CNNClassifier(nn.Module):
    """1-D convolutions of several widths over the token sequence, max-pooled over time."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed = TokenEmbedding(cfg)
        self.convs = nn.ModuleList(nn.Conv1d(cfg.dim, cfg.filters, k, padding=k // 2) for k in cfg.filter_sizes)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.filters * len(cfg.filter_sizes) + cfg.dim, cfg.num_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x, mask = self.embed(ids)
        T = x.shape[1]
        xt = self.drop(x).transpose(1, 2)  # [B, D, T]
        pooled = [masked_max(F.relu(conv(xt))[:, :, :T].transpose(1, 2), mask) for conv in self.convs]
        pooled.append(masked_mean(x, mask))
        return self.out(self.drop(torch.cat(pooled, dim=-1)))


class BiLSTMClassifier(nn.Module):
    """Bidirectional LSTM over packed sequences; max- and mean-pooled outputs."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed = TokenEmbedding(cfg)
        self.lstm = nn.LSTM(cfg.dim, cfg.lstm_hidden, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(4 * cfg.lstm_hidden, cfg.num_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x, mask = self.embed(ids)
        lens = lengths.clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.drop(x), lens, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        pooled = torch.cat([masked_max(out, mask), masked_mean(out, mask)], dim=-1)
        return self.out(self.drop(pooled))


def build_model(cfg: ModelConfig) -> nn.Module:
    classes = {"mlp": MLPClassifier, "cnn": CNNClassifier, "bilstm": BiLSTMClassifier}
    if cfg.kind not in classes:
        raise ValueError(f"unknown model type {cfg.kind!r}; choose from {MODEL_TYPES}")
    if cfg.num_embeddings <= 0 or cfg.num_classes <= 0:
        raise ValueError("num_embeddings and num_classes must be set")
    return classes[cfg.kind](cfg)
