"""The house's layers: no import circle among the project's modules, no module imports an
entry-point script, and importing any library module never imports train.py.
Imports are read from the source (top-level and inside functions alike)."""
import ast
import json
import subprocess
import sys

from conftest import REPO

# Run as `python X.py`; what they hold that others need lives in a library module.
SCRIPTS = {"train", "upload_to_hub", "infer", "evaluate", "win_rate", "extension.verify",
           "extension.data_preparation"}


def project_modules() -> dict[str, object]:
    """{module name: path} of every project .py file but tests."""
    found = {}
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in ("tests", "patches") or any(p.startswith(".") for p in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                candidates = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in modules and c != name}
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_graph_reader_finds_a_circle_and_the_real_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    assert {"flags", "logs", "errors"} <= graph["train"] and "checkpoints" in graph["models"]


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_no_module_imports_an_entry_point_script():
    graph = import_graph()
    offenders = {name: sorted(targets & SCRIPTS) for name, targets in graph.items() if targets & SCRIPTS}
    assert offenders == {}


def test_importing_the_library_never_imports_a_script():
    library = sorted(n for n in project_modules() if n not in SCRIPTS and n.split(".")[0] not in ("bench", "experiments"))
    code = ("import importlib, json, sys\n"
            f"for name in {library!r}:\n    importlib.import_module(name)\n"
            f"print(json.dumps(sorted(set(sys.modules) & set({sorted(SCRIPTS)!r}))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
