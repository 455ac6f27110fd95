"""The rules of the house (DESIGN.md), checked on the source: no import circle among pyanom's modules
(imports inside functions count too), the bottom layer imports nothing of pyanom, the core never
reaches into a plugin's attributes, and nothing reads source code for help."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "pyanom"


def _module_of(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_of(p): p for p in CORE.rglob("*.py")}


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The pyanom modules a file imports, wherever the import stands."""
    me = _module_of(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names]
            names = subs + ([base] if not all(n in known for n in subs) else [])
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != me:
                found.add(name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    known = _modules()
    graph = {m: {i for i in _imports(p, known) if i != "pyanom"} for m, p in known.items()}
    assert _cycles(graph) == []


def test_the_bottom_layer_imports_nothing_of_pyanom():
    known = _modules()
    assert _imports(CORE / "_fs.py", known) == set()


def test_the_core_never_reaches_into_a_plugin():
    """Memory banks go through pyanom.memory's interface; no plugin is named in the core's code."""
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("patch_features", "_patch_features"):
                raise AssertionError(f"{path.relative_to(REPO)}:{node.lineno} calls a plugin's {node.attr}")
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and target.attr == "memory_bank" and path.name != "memory.py":
                        raise AssertionError(f"{path.relative_to(REPO)}:{node.lineno} sets memory_bank")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.startswith("pyanom_plugins") for n in names), f"{path}:{node.lineno}"


def test_no_regular_expression_reads_source_code_for_help():
    for path in (CORE / "cli.py", CORE / "settings.py", CORE / "registry.py"):
        text = path.read_text()
        assert "getsource" not in text and "import re\n" not in text, path


def test_the_command_line_module_is_parsing_and_printing():
    assert len((CORE / "cli.py").read_text().splitlines()) < 300
