"""The package's import graph: one downward order of layers, no cycle.

Every ``import`` and ``from ... import`` in ``seqmodel/**/*.py`` counts, at any level (inside
functions too: a lazy import is still a dependency). ``from package import name`` where
``package.name`` is a module counts as an import of that module (as import-linter reads it).
``seqmodel/__init__.py`` is the public facade that re-exports everything: it sits above every
layer and nothing inside the package may import it.
"""

import ast
import pathlib

import pytest

PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent.parent / "seqmodel"

# Low to high: the folders of seqmodel/ (a folder is one layer with its modules). A module may
# import modules of its own layer or of lower layers (within its own layer, only without closing
# a cycle).
LAYERS = [
    "_version", "configs", "errors",
    "data",
    "nn",
    "decoding",
    "training",
    "forecasting",
    "interop",
    "cli",
    "__main__",
]
RANK = {name: rank for rank, name in enumerate(LAYERS)}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def imported_modules(name: str, path: pathlib.Path) -> set[str]:
    """The ``seqmodel`` modules that the module ``name`` imports, anywhere in its source."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                found.add(candidate if candidate in MODULES else source)
    return {module for module in found if module == "seqmodel" or module.startswith("seqmodel.")}


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def layer_of(module: str) -> str:
    return module.split(".")[1] if module != "seqmodel" else "seqmodel"


def test_every_module_has_a_layer():
    unplaced = sorted(name for name in MODULES
                      if name != "seqmodel" and layer_of(name) not in RANK)
    assert not unplaced, f"add these modules to LAYERS in tests/test_imports.py: {unplaced}"


def test_imports_go_down_the_layers():
    upward = []
    for module, imports in GRAPH.items():
        if module == "seqmodel":
            continue
        for imported in imports:
            if imported == "seqmodel":
                upward.append(f"{module} imports the package root (seqmodel/__init__.py)")
            elif RANK[layer_of(imported)] > RANK[layer_of(module)]:
                upward.append(f"{module} ({layer_of(module)}) imports {imported} "
                              f"({layer_of(imported)}), a higher layer")
    assert not upward, "\n".join(sorted(upward))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the stack, "done" after
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == "open":
                return stack[stack.index(child):] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle({module: imports - {"seqmodel"} for module, imports in GRAPH.items()})
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_a_cycle_and_an_upward_import():
    # The checks themselves: a graph with a cycle, and the order that the layers forbid.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert RANK["nn"] < RANK["decoding"] < RANK["training"] < RANK["forecasting"] < RANK["cli"]


@pytest.mark.parametrize("module", ["seqmodel.training.optimization", "seqmodel.training.distributed",
                                    "seqmodel.cli.train"])
def test_the_graph_sees_imports_inside_functions(module):
    # cli imports nearly everything lazily, inside its commands; the walk must see those imports.
    assert GRAPH[module], f"{module}: no seqmodel import found"
    if module == "seqmodel.cli.train":
        assert "seqmodel.data" in GRAPH[module] and "seqmodel.training.checkpoint" in GRAPH[module]


def test_users_import_the_errors_and_results_from_the_top_without_orbax():
    # In a fresh process: importing seqmodel and its exceptions must not load orbax (slow to
    # import), matplotlib or tensorboardX; they load when a checkpoint, plot or event file is used.
    import subprocess
    import sys

    code = ("import sys, seqmodel\n"
            "from seqmodel import (CheckpointError, DataError, DistributedError, EvalResult,\n"
            "                      FitResult, TrainingError, fit, evaluate)\n"
            "loaded = [m for m in ('orbax', 'matplotlib', 'tensorboardX') if m in sys.modules]\n"
            "print(','.join(loaded))\n")
    environment = {"PYTHONPATH": str(PACKAGE_ROOT.parent), "JAX_PLATFORMS": "cpu",
                   "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ""
