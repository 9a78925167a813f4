"""The serving model: a bundle directory (written by pipelines/training/train.py) loaded as encoder, model(s)
and labels, and titles scored batch by batch into top-k categories with their probabilities.

Tokenizer config, vocabulary, embedding (inside the weights) and label map live in one bundle
directory logged with the model, so scoring runs exactly the preprocessing that training ran.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipelines.core.fs import reading
from pipelines.core.system import pick_device
from pipelines.features.batches import collate, pad_keys

TOP_K = 3
OUTPUT_COLUMNS = ["predicted_category", "probability", "top_k_categories", "top_k_probabilities"]


def _json(root: Path, path: Path):
    with reading(root, path):
        return json.loads(path.read_text())


class Bundle:
    """Encoder + model + labels, loaded from a bundle directory.

    Serving path: titles -> token keys (one per distinct word seen, ``encode_keys``) -> the model's
    per-token features, computed once per key and cached (``TitleClassifier.token_features``) ->
    ``classify``. The cache holds at most ``max_cached_words`` words; it is emptied (between
    ``encode_keys`` calls, never under keys still in use) when full, so memory stays bounded however
    many titles are scored. The ids path (``predict_*_encoded``) runs the whole model, as training does.
    """

    def __init__(self, path: str | Path, device: str = "auto", max_cached_words: int = 200_000):
        from pipelines.features.embedding import TitleEncoder

        path = Path(path)
        self.root = path
        cfg = _json(path, path / "config.json")
        self.labels: list[str] = _json(path, path / "labels.json")
        with reading(path, path / "encoder.json"):
            self.encoder = TitleEncoder.load(path / "encoder.json")
        self.device = pick_device(device)
        # an ensemble bundle lists member bundles (same encoder and labels); its prediction is the
        # mean of the members' probabilities
        self.members: list[str] = list(cfg.get("members", []))
        self.models = [self._load_model(path / m) for m in self.members] if self.members else [self._load_model(path)]
        self.model, self.model_cfg = self.models[0], self.models[0].cfg
        # pretrained word vectors (pipelines/features/sentence.py): the training vocabulary's rows ship in the
        # bundle; a word they lack is encoded with the same encoder (its package must be installed)
        self.sentence = None
        if any(m.cfg.sentence_dim for m in self.models):
            from pipelines.features.sentence import SentenceTable

            if not (path / "sentence" / "meta.json").exists():
                raise ValueError(f"{path}: the model reads pretrained word vectors but the bundle has no sentence/")
            self.sentence = SentenceTable(path / "sentence", root=path)
        self.max_cached_words = max_cached_words
        self._reset_token_cache()

    def _load_model(self, path: Path):
        import torch

        from pipelines.model.modules import ModelConfig, build_model, upgrade_state_dict

        cfg = _json(self.root, path / "config.json")
        if _json(self.root, path / "labels.json") != self.labels:
            raise ValueError(f"{path}: labels differ from the bundle's")
        with reading(self.root, path / "config.json"):
            model = build_model(ModelConfig(**cfg["model"]))
        with reading(self.root, path / "weights.pt"):
            state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
            model.load_state_dict(upgrade_state_dict(state))
        return model.to(self.device).eval()

    # ---- serving path: token keys and cached token features --------------------------------
    def _reset_token_cache(self) -> None:
        import torch

        self._key: dict[str, int] = {}
        self._pending: list[np.ndarray] = []  # subword ids of keys whose features are not computed yet
        self._pending_words: list[str] = []  # and their tokens (for the pretrained word vectors)
        self._feats = [torch.zeros(1, m.feature_dim, device=self.device) for m in self.models]  # row 0 = padding
        self._words = torch.zeros(1, dtype=torch.int64, device=self.device)  # word id per key
        dim = self.sentence.dim if self.sentence is not None else 0
        self._sent = torch.zeros(1, dim, dtype=torch.float16, device=self.device)  # pretrained vector per key

    def encode_keys(self, titles) -> list[list[int]]:
        """Token keys per title (an empty list for a title with no tokens, None or blank)."""
        from pipelines.features.text import tokenize

        if len(self._key) > self.max_cached_words:
            self._reset_token_cache()
        key, pending, text = self._key, self._pending, self.encoder.text
        base = len(self._words)
        out = []
        for title in titles:
            row = []
            for tok in tokenize(title, text) if title else ():
                k = key.get(tok)
                if k is None:
                    k = key[tok] = base + len(pending)
                    pending.append(self.encoder.token_ids(tok, cache=False))
                    self._pending_words.append(tok)
                row.append(k)
            out.append(row)
        return out

    def _compute_pending(self) -> None:
        import torch

        if not self._pending:
            return
        width = self.encoder.width
        new_feats, new_words, new_sent = [[] for _ in self.models], [], []
        with torch.inference_mode():
            for s in range(0, len(self._pending), 8192):
                part = self._pending[s : s + 8192]
                ids = np.zeros((len(part), width), dtype=np.int64)
                for i, sub in enumerate(part):
                    ids[i, : len(sub)] = sub[:width]
                t = torch.from_numpy(ids).to(self.device)
                if self.sentence is not None:
                    new_sent.append(torch.from_numpy(self.sentence.lookup(self._pending_words[s : s + 8192])))
                for feats, model in zip(new_feats, self.models):
                    feats.append(model.token_features(t).float())
                new_words.append(t[:, 0])
        self._feats = [torch.cat([old, *new]) for old, new in zip(self._feats, new_feats)]
        self._words = torch.cat([self._words, *new_words])
        if new_sent:
            self._sent = torch.cat([self._sent, *(v.to(self.device) for v in new_sent)])
        self._pending, self._pending_words = [], []

    def _probabilities_keys(self, keys: list[list[int]], batch_size: int):
        import torch

        from pipelines.model.modules import sentence_mean

        self._compute_pending()
        order = np.argsort(np.fromiter(map(len, keys), dtype=np.int64, count=len(keys)), kind="stable")
        with torch.inference_mode():
            for s in range(0, len(keys), batch_size):
                idx = order[s : s + batch_size]
                k, lengths = pad_keys([keys[i] for i in idx])
                kt = torch.from_numpy(k).to(self.device, non_blocking=True)
                mask, lens, words = kt != 0, torch.from_numpy(lengths), self._words[kt]
                sentence = sentence_mean(self._sent, kt) if self.sentence is not None else None
                probs = [
                    torch.softmax(
                        m.classify(f[kt], mask, lens, words, sentence if m.cfg.sentence_dim else None).float(), dim=-1
                    )
                    for m, f in zip(self.models, self._feats)
                ]
                yield idx, probs[0] if len(probs) == 1 else torch.stack(probs).mean(0)

    # ---- ids path: the whole model, as in training -----------------------------------------
    def _probabilities(self, encoded: list[list[np.ndarray]], batch_size: int):
        """Yield (row indices, class probabilities) batch by batch; batches are length-sorted."""
        import torch

        if self.sentence is not None:
            raise ValueError("this model reads pretrained word vectors, which need the tokens: use predict_*_keys")
        order = np.argsort([len(e) for e in encoded], kind="stable")
        with torch.inference_mode():
            for s in range(0, len(encoded), batch_size):
                idx = order[s : s + batch_size]
                ids, lengths = collate([encoded[i] for i in idx], self.encoder.width)
                ids = ids.to(self.device, non_blocking=True)
                probs = [torch.softmax(m(ids, lengths).float(), dim=-1) for m in self.models]
                yield idx, probs[0] if len(probs) == 1 else torch.stack(probs).mean(0)

    def _proba(self, batches, n: int) -> np.ndarray:
        out = np.zeros((n, len(self.labels)), dtype=np.float32)
        for idx, probs in batches:
            out[idx] = probs.cpu().numpy()
        return out

    def _topk(self, batches, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k class indices and probabilities [N, k], batch by batch (never the full N x classes
        matrix), in input order."""
        k = min(k, len(self.labels))
        top_i = np.zeros((n, k), dtype=np.int64)
        top_p = np.zeros((n, k), dtype=np.float64)
        for idx, probs in batches:
            p, i = probs.topk(k, dim=-1)
            top_i[idx] = i.cpu().numpy()
            top_p[idx] = p.cpu().numpy()
        return top_i, top_p

    def predict_proba_encoded(self, encoded: list[list[np.ndarray]], batch_size: int = 1024) -> np.ndarray:
        """Class probabilities [N, C] for id-encoded titles, in input order."""
        return self._proba(self._probabilities(encoded, batch_size), len(encoded))

    def predict_topk_encoded(self, encoded, k: int = TOP_K, batch_size: int = 1024):
        return self._topk(self._probabilities(encoded, batch_size), len(encoded), k)

    def predict_proba_keys(self, keys: list[list[int]], batch_size: int = 1024) -> np.ndarray:
        """Class probabilities [N, C] for titles encoded by ``encode_keys``, in input order."""
        return self._proba(self._probabilities_keys(keys, batch_size), len(keys))

    def predict_topk_keys(self, keys: list[list[int]], k: int = TOP_K, batch_size: int = 1024):
        return self._topk(self._probabilities_keys(keys, batch_size), len(keys), k)

    def predict(self, titles, k: int = TOP_K):
        import pandas as pd

        titles = ["" if t is None or (isinstance(t, float) and np.isnan(t)) else str(t) for t in titles]
        top, top_p = self.predict_topk_keys(self.encode_keys(titles), k)
        labels = np.asarray(self.labels, dtype=object)
        return pd.DataFrame(
            {
                "predicted_category": labels[top[:, 0]],
                "probability": top_p[:, 0].astype(np.float64),
                "top_k_categories": [list(r) for r in labels[top]],
                "top_k_probabilities": [list(map(float, r)) for r in top_p],
            }
        )
