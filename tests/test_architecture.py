"""The layout docs/ARCHITECTURE.md promises: the data flows one way, into the hub's loop."""

from __future__ import annotations

import ast
from pathlib import Path

import zmq_mq.router

ROUTER = Path(zmq_mq.router.__file__).parent
# metrics.py serves the hub's statistics over HTTP: it takes a Hub (a type hint only);
# cluster_hub.py is the hub in cluster mode (a Hub subclass, so the single hub runs none of it)
USES_THE_HUB = {"hub", "metrics", "cluster_hub"}


def _router_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names.update(a.name for a in node.names)
    return names


def test_no_router_module_imports_the_hub_so_each_stands_alone():
    # Given every module of router/ but the hub and its HTTP view
    modules = [p for p in ROUTER.glob("*.py") if p.stem not in USES_THE_HUB]
    assert {p.stem for p in modules} >= {"requests", "turn", "handlers", "admin", "staging",
                                         "attachments", "groups", "schedule", "access"}
    # Then none of them imports router/hub.py
    importers = [p.stem for p in modules if "hub" in _router_imports(p)]
    assert importers == []


def test_the_hub_module_is_the_loop_and_little_else():
    lines = (ROUTER / "hub.py").read_text().count("\n")
    assert lines < 800, f"router/hub.py grew to {lines} lines: move the new concept to its module"
