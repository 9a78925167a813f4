"""meli-retrain: the importable package with all the logic (the DAGs only wire calls to ``flows``).

A stack of packages, each importing only from those before it: settings and config < core < data <
features < model < training < serving < registry < monitoring < flows (README "Layout";
tests/check_layout.py checks it). Importing a package is cheap: its names load on first use, and heavy
libraries are imported by the modules that need them.
"""

__version__ = "0.1.0"
