"""The logged model: an MLflow pyfunc that takes a DataFrame with ``title`` and returns
``predicted_category``, ``probability``, ``top_k_categories`` and ``top_k_probabilities``.

Tokenizer config, vocabulary, embedding (inside the weights) and label map live in one bundle
directory logged with the model, so scoring runs exactly the preprocessing that training ran.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

try:  # mlflow is a hard dependency at run time; the guard keeps this module importable for docs
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[misc,assignment]

TOP_K = 3
OUTPUT_COLUMNS = ["predicted_category", "probability", "top_k_categories", "top_k_probabilities"]


def pick_device(requested: str = "auto"):
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def collate(encoded: list[list[np.ndarray]], width: int):
    """Pad a batch of encoded titles to ids [B, T, K] and lengths [B] (T >= 1)."""
    import torch

    B = len(encoded)
    T = max(1, max((len(e) for e in encoded), default=1))
    ids = np.zeros((B, T, width), dtype=np.int64)
    lengths = np.zeros(B, dtype=np.int64)
    for b, toks in enumerate(encoded):
        lengths[b] = len(toks)
        for t, tok in enumerate(toks):
            ids[b, t, : len(tok)] = tok[:width]
    return torch.from_numpy(ids), torch.from_numpy(lengths)


class Bundle:
    """Encoder + model + labels, loaded from a bundle directory."""

    def __init__(self, path: str | Path, device: str = "auto"):
        import torch

        from pipelines.features import TitleEncoder
        from pipelines.models import ModelConfig, build_model

        path = Path(path)
        cfg = json.loads((path / "config.json").read_text())
        self.labels: list[str] = json.loads((path / "labels.json").read_text())
        self.encoder = TitleEncoder.load(path / "encoder.json")
        self.model_cfg = ModelConfig(**cfg["model"])
        self.device = pick_device(device)
        self.model = build_model(self.model_cfg)
        state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.to(self.device).eval()

    def _probabilities(self, encoded: list[list[np.ndarray]], batch_size: int):
        """Yield (row indices, class probabilities) batch by batch; batches are length-sorted."""
        import torch

        order = np.argsort([len(e) for e in encoded], kind="stable")
        with torch.inference_mode():
            for s in range(0, len(encoded), batch_size):
                idx = order[s : s + batch_size]
                ids, lengths = collate([encoded[i] for i in idx], self.encoder.width)
                logits = self.model(ids.to(self.device, non_blocking=True), lengths)
                yield idx, torch.softmax(logits.float(), dim=-1)

    def predict_proba_encoded(self, encoded: list[list[np.ndarray]], batch_size: int = 1024) -> np.ndarray:
        """Class probabilities [N, C] for encoded titles, in input order."""
        out = np.zeros((len(encoded), len(self.labels)), dtype=np.float32)
        for idx, probs in self._probabilities(encoded, batch_size):
            out[idx] = probs.cpu().numpy()
        return out

    def predict_topk_encoded(
        self, encoded: list[list[np.ndarray]], k: int = TOP_K, batch_size: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k class indices and probabilities [N, k], computed batch by batch (never the full
        N x classes matrix), in input order."""
        k = min(k, len(self.labels))
        top_i = np.zeros((len(encoded), k), dtype=np.int64)
        top_p = np.zeros((len(encoded), k), dtype=np.float64)
        for idx, probs in self._probabilities(encoded, batch_size):
            p, i = probs.topk(k, dim=-1)
            top_i[idx] = i.cpu().numpy()
            top_p[idx] = p.cpu().numpy()
        return top_i, top_p

    def predict(self, titles, k: int = TOP_K):
        import pandas as pd

        titles = ["" if t is None or (isinstance(t, float) and np.isnan(t)) else str(t) for t in titles]
        top, top_p = self.predict_topk_encoded(self.encoder.encode_many(titles), k)
        labels = np.asarray(self.labels, dtype=object)
        return pd.DataFrame(
            {
                "predicted_category": labels[top[:, 0]],
                "probability": top_p[:, 0].astype(np.float64),
                "top_k_categories": [list(r) for r in labels[top]],
                "top_k_probabilities": [list(map(float, r)) for r in top_p],
            }
        )


class TitleClassifierModel(PythonModel):
    """pyfunc wrapper around a Bundle (artifact key ``bundle``)."""

    def load_context(self, context):
        import os

        self.bundle = Bundle(context.artifacts["bundle"], device=os.environ.get("MELI_DEVICE", "auto"))

    def predict(self, context, model_input, params=None):
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            if "title" not in model_input.columns:
                raise ValueError(f"input needs a 'title' column; got {list(model_input.columns)}")
            titles = model_input["title"].tolist()
        else:
            titles = list(model_input)
        k = int((params or {}).get("top_k", TOP_K))
        return self.bundle.predict(titles, k=k)
