"""The house rules of fleet/'s layout, read from the import statements themselves (Python's `ast`, every import,
including those inside functions and under `if TYPE_CHECKING`): no circles, no import from a lower layer into a
higher one, imports inside functions only in the CLI (or with a one-line reason), and nothing at fleet/'s top level
but the CLI. docs/architecture.md draws the same layers.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# lowest first: a module may import from its own layer and the layers before it, never from one after it
LAYERS = ("fleet", "fleet.base", "fleet.phoneconf", "fleet.config", "fleet.drivers", "fleet.state", "fleet.phones",
          "fleet.sites", "fleet.evidence", "fleet.worker", "fleet.experiment", "fleet.incident",
          "fleet.rollout", "fleet.testing", "fleet.cli")
IN_FUNCTION_REASON = "# in-function:"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    in_function: bool
    reason: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: str = "fleet") -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_package: bool, known) -> list[str]:
    """The modules of ours an import statement loads (a name imported from a package counts as its submodule
    when there is one)."""
    if isinstance(node, ast.Import):
        wanted = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = name.split(".") if is_package else name.split(".")[:-1]
            parts = parts[:len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        wanted = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    found = []
    for target in wanted:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.append(target)
    return found


def edges_of(sources: dict[str, tuple[str, bool]]) -> list[Edge]:
    """Every import between the modules of `sources` (name -> (source text, is a package's __init__))."""
    out: list[Edge] = []
    for name, (source, is_package) in sources.items():
        lines = source.splitlines()

        def walk(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    reason = IN_FUNCTION_REASON in lines[child.lineno - 1]
                    for target in _targets(child, name, is_package, sources):
                        out.append(Edge(name, target, child.lineno, in_function, reason))
                walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
        walk(ast.parse(source), False)
    return out


def edges(package: str = "fleet") -> list[Edge]:
    return edges_of({name: (path.read_text(), path.name == "__init__.py") for name, path in modules(package).items()})


def upward(found: list[Edge]) -> list[str]:
    return [f"{e.source}:{e.line} imports {e.target}" for e in found
            if e.target.startswith("fleet") and layer(e.target) > layer(e.source)]


def hidden(found: list[Edge]) -> list[str]:
    return [f"{e.source}:{e.line} imports {e.target}" for e in found
            if e.in_function and not e.source.startswith("fleet.cli") and not e.reason]


def graph_of(found: list[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for e in found:
        if e.target.startswith("fleet"):
            graph[e.source].add(e.target)
    return graph


def layer(module: str) -> int:
    """The index in LAYERS of the deepest layer that contains `module`."""
    best = -1
    for i, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            best = i if best < 0 or len(prefix) > len(LAYERS[best]) else best
    assert best >= 0, f"{module} belongs to no layer: add its package to LAYERS and to docs/architecture.md"
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_of_fleet_has_no_circle():
    assert cycles(graph_of(edges())) == []


def test_no_layer_imports_from_a_layer_above_it():
    assert upward(edges()) == []


def test_imports_inside_functions_only_in_the_cli_or_with_a_reason():
    assert hidden(edges()) == []


def test_fleet_top_level_holds_only_the_cli():
    top = sorted(p.name for p in (ROOT / "fleet").glob("*.py"))
    assert top == ["__init__.py"] and (ROOT / "fleet/cli/__init__.py").is_file()
    for path in (ROOT / "fleet").rglob("*"):
        if path.is_dir() and path.name != "__pycache__":
            assert (path / "__init__.py").is_file(), f"{path} is a folder of fleet without __init__.py"


def test_fleet_never_imports_the_lab():
    assert not [line for p in (ROOT / "fleet").rglob("*.py") for line in p.read_text().splitlines()
                if line.strip().startswith(("import hil", "from hil"))]


def test_the_checker_finds_a_circle_an_upward_import_and_a_hidden_import():
    """The rules above can fail: the same functions on a small package written here."""
    sources = {
        "fleet": ("", True),
        "fleet.state": ("", True),
        "fleet.state.store": ("from fleet.rollout import driver\n", False),            # upward, and a circle
        "fleet.rollout": ("", True),
        "fleet.rollout.driver": ("def f():\n    from fleet.state import store\n", False),   # hidden
        "fleet.rollout.plan": ("def g():\n    from . import driver  # in-function: a reason\n", False),
    }
    found = edges_of(sources)
    assert cycles(graph_of(found)) == [["fleet.rollout.driver", "fleet.state.store"]]
    assert upward(found) == ["fleet.state.store:1 imports fleet.rollout.driver"]
    assert hidden(found) == ["fleet.rollout.driver:2 imports fleet.state.store"]
