"""How a package exports its modules' public names without importing them: ``from pipelines.data import
ingest`` costs nothing until a name is used (PEP 562), so a DAG file that needs one constant does not
load numpy, pyarrow or torch. Each package ``__init__`` is generated and checked by
``tests/check_layout.py`` (``--fix`` rewrites it)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]) -> tuple[list[str], Callable, Callable]:
    """``(__all__, __getattr__, __dir__)`` for a package whose modules define ``exports`` ({module: names})."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{where[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(set(where) | set(exports))

    return sorted(where), __getattr__, __dir__
