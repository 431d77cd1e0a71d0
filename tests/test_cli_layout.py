"""The house of cli/: one module per thing the user does, and only the hub's command imports the
hub. Read from the source (ast), so an import added anywhere in a module counts, even one inside
a function."""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "cli"

# router modules any command may use: the wire format, the endpoint check, the dead-letter record
# layout and where key files live. Every other router module is the hub (or its configuration).
# router/cluster is the cluster's coordination (ZooKeeper reads, topic placement), which
# clients share (docs/CLUSTER.md); the cluster hub itself is router/cluster_hub.py.
SHARED_ROUTER_MODULES = {"protocol", "endpoint", "deadletters", "security", "cluster"}
# the one cli module allowed to import the hub: `zmq-mq demo` starts its hub through it
HUB_COMMAND = "hub.py"


def _imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) for every import in a cli module, relative imports resolved
    (``from ..router import config`` gives module ``zmq_mq.router`` and name ``config``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "zmq_mq.cli" if node.level else ""
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = ".".join(part for part in (base, node.module) if part)
            found += [(node.lineno, module, alias.name) for alias in node.names]
    return found


def _is_hub_side(module: str, name: str) -> bool:
    for candidate in (module, f"{module}.{name}"):
        parts = candidate.split(".")
        if candidate == "zmq_mq.testing":  # HubThread / HubProcess: a hub
            return True
        if parts[:2] == ["zmq_mq", "router"] and len(parts) > 2:
            if parts[2] not in SHARED_ROUTER_MODULES:
                return True
    return False


def _cli_modules() -> list[Path]:
    modules = sorted(CLI.glob("*.py"))
    assert len(modules) > 5, f"expected the cli modules in {CLI}"
    return modules


def test_only_the_hub_command_imports_the_hub_or_its_configuration():
    offenders = [
        f"cli/{path.name}:{line} imports {module}{'.' + name if name else ''}"
        for path in _cli_modules() if path.name != HUB_COMMAND
        for line, module, name in _imports(path) if _is_hub_side(module, name)
    ]
    assert offenders == []
    # and the hub command does import it (else the rule above guards nothing)
    assert any(_is_hub_side(m, n) for _, m, n in _imports(CLI / HUB_COMMAND))


def test_no_cli_module_uses_a_private_name_of_another_cli_module():
    offenders = []
    for path in _cli_modules():
        tree = ast.parse(path.read_text(), str(path))
        cli_module_names = set()  # local names bound to a cli module (`from . import ops as o`)
        for line, module, name in _imports(path):
            if module.startswith("zmq_mq.cli") and name.startswith("_"):
                offenders.append(f"cli/{path.name}:{line} imports {name} from {module}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module is None:
                cli_module_names |= {alias.asname or alias.name for alias in node.names}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in cli_module_names and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                offenders.append(f"cli/{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert offenders == []


def test_cli_main_only_assembles_the_app():
    tree = ast.parse((CLI / "main.py").read_text())
    defined = [node.name for node in ast.walk(tree)
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    assert defined == ["main"]


def test_the_log_formatter_has_one_home_that_imports_neither_the_hub_nor_the_client():
    from zmq_mq import logs
    from zmq_mq.router import config

    # the hub's configuration module re-exports it for old imports, it does not define its own
    assert config.JsonLogFormatter is logs.JsonLogFormatter
    tree = ast.parse((ROOT / "zmq_mq" / "logs.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module or "." for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 if node.module != "__future__"}
    assert all(name.split(".")[0] in sys.stdlib_module_names for name in imported), imported


def test_a_json_log_record_is_one_object_with_its_traceback():
    from zmq_mq.logs import JsonLogFormatter

    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        record = logging.getLogger("zmq_mq.hub").makeRecord(
            "zmq_mq.hub", logging.ERROR, __file__, 1, "commit failed: %s", ("EIO",), sys.exc_info())
    line = JsonLogFormatter().format(record)
    assert "\n" not in line
    obj = json.loads(line)
    assert (obj["level"], obj["logger"], obj["message"]) == ("error", "zmq_mq.hub",
                                                             "commit failed: EIO")
    assert obj["ts"].endswith("+00:00") and "disk on fire" in obj["exc"]


def test_setup_logging_writes_json_lines_or_text_to_stderr():
    code = ("import logging, sys; from zmq_mq.logs import setup_logging; "
            "setup_logging(sys.argv[1], sys.argv[2]); "
            "logging.getLogger('zmq_mq.run').info('hello'); logging.getLogger('x').debug('quiet')")
    as_json = subprocess.run([sys.executable, "-c", code, "info", "json"], capture_output=True,
                             timeout=60)
    lines = as_json.stderr.decode().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["hello"], as_json.stderr
    as_text = subprocess.run([sys.executable, "-c", code, "debug", "text"], capture_output=True,
                             timeout=60)
    lines = as_text.stderr.decode().splitlines()
    assert len(lines) == 2 and lines[0].endswith("INFO zmq_mq.run: hello"), as_text.stderr
    assert lines[1].endswith("DEBUG x: quiet")
