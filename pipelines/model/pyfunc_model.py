"""The logged model's code (MLflow "models from code"): ``log_served_model`` passes this file as the
pyfunc's ``python_model``, so MLflow stores code, not a pickled object (no CloudPickle)."""

import mlflow

from pipelines.model.pyfunc import TitleClassifierModel

mlflow.models.set_model(TitleClassifierModel())
