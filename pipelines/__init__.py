"""meli-retrain: the importable package with all the logic (the DAGs only wire these calls).

Stages: ingest -> validate -> features -> train -> evaluate/registry (gate) -> score.
Importing the package is cheap: heavy libraries are imported inside the functions that need them.
"""

__version__ = "0.1.0"
