"""The layout's rules, checked from the source (no import of the project): run ``python tests/check_layout.py``.

``pipelines/`` is a stack of packages, each importing only from the ones before it::

    settings, config < core < data < features < model < training < serving < registry < monitoring < flows

Reported (exit 1 when any):

- **cycles**: modules that import each other, directly or through others, counting imports inside
  functions (a cycle closed by a late import is still a cycle);
- **order**: an import from a package later in the stack (``pipelines.__main__`` may import anything);
- **private**: a name starting with ``_`` taken from another module, by import, by attribute
  (``mod._name``) or by a patch target string (``"pipelines.x.y._name"``), in ``pipelines/``, ``dags/``,
  ``tests/`` or ``benchmarks/``;
- **facades**: ``import x`` re-exports, or a package ``__init__`` whose exports are not exactly the
  public names its modules define (``--fix`` rewrites the ``__init__`` files);
- **loggers**: ``logging.getLogger("pipelines...")`` with a literal name instead of ``__name__``.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "pipelines"
BASE = ("settings", "config", "exports")  # top-level modules under every package
ORDER = ("core", "data", "features", "model", "training", "serving", "registry", "monitoring", "flows")
SCANNED = ("pipelines", "dags", "tests", "benchmarks", "docker")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def level(mod: str) -> int:
    parts = mod.split(".")
    if len(parts) == 1:
        return -1  # the package itself
    if parts[1] in BASE:
        return 0
    if parts[1] in ORDER:
        return 1 + ORDER.index(parts[1])
    return 1 + len(ORDER)  # pipelines.__main__: the entry point


def defined_names(tree: ast.Module) -> set[str]:
    """Every name a module binds at top level by a definition (not an import), private ones too."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def public_names(tree: ast.Module) -> list[str]:
    """Names a module defines at top level (not imports), public ones only."""
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return sorted({n for n in names if not n.startswith("_") and n != "log"})


class Imports(ast.NodeVisitor):
    """Every pipelines import of a file: (target module, imported name or None, line)."""

    def __init__(self, mods: dict[str, Path], here: str, is_pkg: bool):
        self.mods, self.found, self.aliases = mods, [], {}
        self.pkg = here if is_pkg else here.rpartition(".")[0]

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name in self.mods:
                self.found.append((a.name, None, node.lineno))
                if a.asname:
                    self.aliases[a.asname] = a.name

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        if node.level:
            base = self.pkg.split(".")[: len(self.pkg.split(".")) - (node.level - 1)]
            mod = ".".join(base + ([mod] if mod else []))
        if mod.split(".")[0] != "pipelines":
            return
        for a in node.names:
            sub = f"{mod}.{a.name}"
            if sub in self.mods:  # a module imported from its package
                self.found.append((sub, None, node.lineno))
                self.aliases[a.asname or a.name] = sub
            elif mod in self.mods:
                self.found.append((mod, a.name, node.lineno))
                if a.asname == a.name:
                    self.found.append((mod, "<facade>", node.lineno))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id in self.aliases and not node.attr.startswith("__"):
            target = self.aliases[node.value.id]
            if f"{target}.{node.attr}" not in self.mods:
                self.found.append((target, node.attr, node.lineno))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        if getattr(f, "attr", getattr(f, "id", None)) == "setattr" and len(node.args) >= 2:
            target, name = node.args[0], node.args[1]
            if isinstance(target, ast.Name) and target.id in self.aliases and isinstance(name, ast.Constant):
                if str(name.value).startswith("_") and not str(name.value).startswith("__"):
                    self.found.append((self.aliases[target.id], name.value, node.lineno))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            m = re.fullmatch(r"(pipelines(?:\.\w+)+)\.(_\w+)", node.value)
            if m and m[1] in self.mods and not m[2].startswith("__"):
                self.found.append((m[1], m[2], node.lineno))


def export_block(package: str, mods: dict[str, Path]) -> dict[str, list[str]]:
    """{submodule: its public names} for a package's direct modules."""
    out = {}
    for name, path in mods.items():
        if name.rpartition(".")[0] == package and path.name != "__init__.py":
            out[name.rpartition(".")[2]] = public_names(ast.parse(path.read_text()))
    return out


def init_text(package: str, doc: str, exports: dict[str, list[str]]) -> str:
    seen: dict[str, int] = defaultdict(int)
    for names in exports.values():
        for n in names:
            seen[n] += 1
    doc = "\n".join(textwrap.fill(par, 110) for par in doc.split("\n\n"))
    lines = [f'"""{doc}"""', "", "from pipelines.exports import lazy_exports", "", "EXPORTS = {"]
    for mod in sorted(exports):
        names = [n for n in exports[mod] if seen[n] == 1]  # a name two modules define: import it from its module
        if len(names) < 2:  # the shape ruff format keeps
            lines.append(f'    "{mod}": (' + "".join(f'"{n}",' for n in names) + "),")
        else:
            lines += [f'    "{mod}": ('] + [f'        "{n}",' for n in names] + ["    ),"]
    lines += ["}", "__all__, __getattr__, __dir__ = lazy_exports(__name__, EXPORTS)", ""]
    return "\n".join(lines)


def exports_of(text: str) -> dict | None:
    """The ``EXPORTS`` table an ``__init__`` declares (None when it has none), however it is formatted."""
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == ["EXPORTS"]:
            return ast.literal_eval(node.value)
    return None


def check(fix: bool = False) -> list[str]:
    mods = project_modules()
    problems: list[str] = []
    defined = {m: defined_names(ast.parse(p.read_text())) for m, p in mods.items()}
    graph: dict[str, set[str]] = defaultdict(set)
    files = [p for top in SCANNED if (REPO / top).exists() for p in sorted((REPO / top).rglob("*.py"))]
    for path in files:
        if ".venv" in path.parts:
            continue
        rel = path.relative_to(REPO)
        here = module_name(path)
        tree = ast.parse(path.read_text(), str(rel))
        v = Imports(mods, here, path.name == "__init__.py")
        v.visit(tree)
        in_pkg = here in mods
        for target, name, line in v.found:
            if name == "<facade>":
                if in_pkg:
                    problems.append(f"facade   {rel}:{line}: re-exports a name of {target} ('x')")
                continue
            if (
                name
                and mods[target].name != "__init__.py"
                and name not in defined[target]
                and not name.startswith("<")
                and target != here
            ):
                problems.append(f"facade   {rel}:{line}: {name} is not defined in {target} (import it from its home)")
            if name and name.startswith("_") and target != here:
                problems.append(f"private  {rel}:{line}: {target}.{name}")
            if in_pkg and target != here and not target.startswith(here + ".") and here != "pipelines":
                graph[here].add(target)
        if in_pkg and path.name != "__init__.py":
            for node in tree.body:  # an __all__ naming what the module only imports: a re-export list
                if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == ["__all__"]:
                    foreign = sorted(set(ast.literal_eval(node.value)) - defined[here])
                    if foreign:
                        problems.append(f"facade   {rel}:{node.lineno}: __all__ re-exports {', '.join(foreign)}")
        if in_pkg:
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "attr", None) == "getLogger"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and str(node.args[0].value).startswith(("pipelines", "meli"))
                ):
                    problems.append(f"logger   {rel}:{node.lineno}: getLogger({node.args[0].value!r}), use __name__")
    for src, targets in sorted(graph.items()):
        for t in sorted(targets):
            if level(t) > level(src) and level(src) >= 0 and not (t.startswith(src + ".")):
                problems.append(f"order    {src} imports {t} (a later package)")
    problems += [f"cycle    {' -> '.join(c)}" for c in cycles(graph)]
    for package in sorted(m for m, p in mods.items() if p.name == "__init__.py" and m != "pipelines"):
        init = mods[package]
        tree = ast.parse(init.read_text())
        doc = ast.get_docstring(tree) or package
        want = init_text(package, doc, export_block(package, mods))
        if fix:
            init.write_text(want)
        elif exports_of(init.read_text()) != exports_of(want):
            problems.append(f"exports  {init.relative_to(REPO)}: not its modules' public names (run with --fix)")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fix", action="store_true", help="rewrite the package __init__ exports (default: only check)")
    args = ap.parse_args()
    problems = check(fix=args.fix)
    for p in problems:
        print(p)
    kinds = defaultdict(int)
    for p in problems:
        kinds[p.split()[0]] += 1
    summary = ", ".join(f"{kinds[k]} {k}" for k in ("cycle", "order", "private", "facade", "exports", "logger"))
    print(f"layout: {summary} ({'FAIL' if problems else 'ok'})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
