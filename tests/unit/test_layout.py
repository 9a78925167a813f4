"""The layout's rules hold (tests/check_layout.py): packages in one order, no import cycles, no
private reach-ins, no re-exports, package exports in step with their modules, loggers by __name__."""

import ast
import textwrap

from tests import check_layout


def test_the_layout_holds():
    problems = check_layout.check()
    assert problems == [], "\n".join(problems)


def _problems_of(tmp_path, monkeypatch, files: dict[str, str]) -> list[str]:
    """The checker run on a made-up project (``files``: path -> source) instead of this one."""
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    monkeypatch.setattr(check_layout, "REPO", tmp_path)
    monkeypatch.setattr(check_layout, "PKG", tmp_path / "pipelines")
    return check_layout.check()


def test_each_rule_is_found(tmp_path, monkeypatch):
    files = {
        "pipelines/__init__.py": "",
        "pipelines/settings.py": "X = 1\n",
        "pipelines/core/__init__.py": '"""Core."""\n',
        "pipelines/core/a.py": "import logging\nlog = logging.getLogger('pipelines.core.a')\n"
        "def f():\n    from pipelines.core.b import g\n    return g\n_hidden = 1\n",
        "pipelines/core/b.py": "from pipelines.core.a import f, _hidden\nfrom pipelines.data.c import h\ndef g():\n"
        "    return f, _hidden, h\n",
        "pipelines/data/__init__.py": '"""Data."""\n',
        "pipelines/data/c.py": "from pipelines.core.a import f as f\ndef h():\n    return f\n",
    }
    problems = _problems_of(tmp_path, monkeypatch, files)
    kinds = sorted({p.split()[0] for p in problems})
    assert kinds == ["cycle", "exports", "facade", "logger", "order", "private"], problems
    assert any("pipelines.core.a -> pipelines.core.b" in p for p in problems)  # closed inside a function
    assert any(p.startswith("order") and "pipelines.core.b imports pipelines.data.c" in p for p in problems)


def test_fix_writes_each_package_s_public_names(tmp_path, monkeypatch):
    files = {
        "pipelines/__init__.py": "",
        "pipelines/core/__init__.py": '"""Core: what every stage shares."""\n',
        "pipelines/core/a.py": "def f():\n    pass\n\ndef _g():\n    pass\n\nCONST = 1\n",
    }
    _problems_of(tmp_path, monkeypatch, files)
    check_layout.check(fix=True)
    init = (tmp_path / "pipelines/core/__init__.py").read_text()
    assert check_layout.exports_of(init) == {"a": ("CONST", "f")}
    assert ast.get_docstring(ast.parse(init)) == "Core: what every stage shares."
    assert check_layout.check() == []
