"""No import cycle among the project's modules (network/, utils/, dataset/ and the stage scripts).

Every `import` statement of a module counts, at its top level or inside a function, class or `if`: a
function-local import does not make a cycle go away, it only postpones it to the call. Imports are read with
`ast` (nothing is imported), resolved to the project's modules, and the graph is searched for a cycle.
Importing `a.b` runs `a/__init__.py` first, but that edge is not counted: a package's `__init__` importing
its own modules is how a package exposes them, not a cycle.
"""
import ast
import os
from typing import Optional

from conftest import ROOT

SKIP = {"tests", "resource", "docs", "out", "demo"}  # folders of no project module


def project_modules(root: str = ROOT) -> dict:
    """{module name: file path}. Folders named like identifiers (network, utils, dataset) are packages
    (`utils.stages.cli`); the stage folders' scripts are named by their path (`cub200-cam/train.py`)."""
    modules = {}
    for top in sorted(os.listdir(root)):
        folder = os.path.join(root, top)
        if top in SKIP or top.startswith(".") or not os.path.isdir(folder):
            continue
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
            for name in sorted(filenames):
                if not name.endswith(".py"):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                if not top.isidentifier():
                    modules[rel] = path
                    continue
                parts = rel[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict) -> Optional[str]:
    """The project module `name` is, or is inside (`utils.stages.cli.parse` -> `utils.stages.cli`); None: not ours."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def imports_of(module: str, path: str, modules: dict) -> set:
    """The project modules that `module` imports anywhere in its file."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if os.path.basename(path) == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` folders up
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from utils.stages import cli` imports the module utils.stages.cli; `from utils.stages.cli import x`, too
            names = [f"{base}.{alias.name}" if _resolve(f"{base}.{alias.name}", modules) == f"{base}.{alias.name}"
                     else base for alias in node.names]
        else:
            continue
        found.update(m for m in (_resolve(n, modules) for n in names) if m is not None and m != module)
    return found


def find_cycle(graph: dict) -> Optional[list]:
    """One cycle of `graph` ({node: set of nodes}) as [a, b, ..., a], or None."""
    state = {}  # node -> "open" while on the DFS stack, "done" after

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, stack)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_cycles_and_only_them():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None          # a diamond is no cycle
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"a"}, "a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_imports_are_resolved_to_project_modules(tmp_path):
    (tmp_path / "pkg").mkdir()
    files = {"pkg/__init__.py": "from pkg.a import f\n",
             "pkg/a.py": "import os\nimport torch.nn as nn\nfrom pkg import b\n\ndef f():\n    from pkg.c import g\n",
             "pkg/b.py": "from . import c\nfrom .c import g\n",
             "pkg/c.py": "def g():\n    import pkg.a\n",
             "stage-x/train.py": "from pkg import f\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = project_modules(str(tmp_path))
    assert sorted(modules) == ["pkg", "pkg.a", "pkg.b", "pkg.c", os.path.join("stage-x", "train.py")]
    graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
    assert graph["pkg"] == {"pkg.a"} and graph["pkg.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.a"] == {"pkg.b", "pkg.c"}                             # the function-level import counts
    assert graph[os.path.join("stage-x", "train.py")] == {"pkg"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]


def test_no_import_cycle_among_the_project_modules():
    modules = project_modules()
    assert {"network.mffnet", "utils.engine.checkpoint", "utils.stages.cli", "dataset.prepare",
            os.path.join("cub200-cam", "train.py")} <= set(modules)
    graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
    assert "utils.engine.checkpoint" in graph["utils.stages.cli"]          # the graph has the project's edges
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
