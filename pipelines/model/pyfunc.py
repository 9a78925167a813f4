"""The logged model: an MLflow pyfunc that takes a DataFrame with ``title`` and returns
``predicted_category``, ``probability``, ``top_k_categories`` and ``top_k_probabilities``; the
scoring itself is pipelines/model/bundle.py's ``Bundle``.
"""

from __future__ import annotations

import pandas as pd

from pipelines.model.bundle import TOP_K, Bundle

try:  # mlflow is a hard dependency at run time; the guard keeps this module importable for docs
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[misc,assignment]


class TitleClassifierModel(PythonModel):
    """pyfunc wrapper around a Bundle (artifact key ``bundle``)."""

    def load_context(self, context):
        import os

        self.bundle = Bundle(context.artifacts["bundle"], device=os.environ.get("MELI_DEVICE", "auto"))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """``params={"top_k": k}`` (the signature's params schema): k categories a row."""
        if isinstance(model_input, pd.DataFrame):
            if "title" not in model_input.columns:
                raise ValueError(f"input needs a 'title' column; got {list(model_input.columns)}")
            titles = model_input["title"].tolist()
        else:
            titles = list(model_input)
        k = int((params or {}).get("top_k", TOP_K))
        return self.bundle.predict(titles, k=k)
