"""The model server's import graph, rebuilt from the AST: no cycles (``TYPE_CHECKING`` imports included).

A cycle hidden behind ``TYPE_CHECKING`` still tells a reader that two modules need each
other; names are imported from the module that defines them, never through a re-export.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE, FOLDER = "llmcache.model_server", ROOT / "model_server"


def import_graph() -> dict[str, set[str]]:
    """``module → model-server modules it imports`` (any import statement, wherever it sits)."""
    modules = {p.stem for p in FOLDER.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in modules:
        tree = ast.parse((FOLDER / f"{name}.py").read_text(encoding="utf-8"))
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == PACKAGE:
                    deps.update(a.name for a in node.names if a.name in modules)
                elif node.module.startswith(PACKAGE + "."):
                    deps.add(node.module.removeprefix(PACKAGE + ".").split(".")[0])
            elif isinstance(node, ast.Import):
                deps.update(a.name.removeprefix(PACKAGE + ".").split(".")[0] for a in node.names
                            if a.name.startswith(PACKAGE + "."))
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_graph_is_read_from_the_sources() -> None:
    graph = import_graph()
    assert {"scheduler", "request", "radix"} <= graph["generate"]  # the check sees real edges


def test_no_import_cycle_inside_the_model_server() -> None:
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_a_type_checking_cycle() -> None:
    assert find_cycle({"generate": {"scheduler"}, "scheduler": {"generate"}}) == ["generate", "scheduler", "generate"]
