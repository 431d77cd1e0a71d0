"""What ``zmq-mq run`` does: load a script or module, find its Actors, run them until a signal.

``target`` is ``path/to/actors.py``, ``package.module``, or either followed by ``:attr`` naming
an Actor (or a list of Actors) in it. Without ``:attr`` every module-level Actor instance runs.
The module is imported under its own name, not ``__main__``, so a script may keep its
``if __name__ == "__main__": actor.run()`` for running it directly.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Iterable

from .actor import Actor

log = logging.getLogger("zmq_mq.run")

__all__ = ["load_actors", "run_actors"]


class LoadError(Exception):
    """The target names no loadable module or no Actor."""


def _load_module(spec: str) -> ModuleType:
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise LoadError(f"no such file: {spec}")
        path = path.resolve()
        # the script's folder first on sys.path, as `python script.py` would have it
        sys.path.insert(0, str(path.parent))
        name = path.stem
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise LoadError(f"cannot load {spec}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        raise LoadError(f"no module named {spec!r} ({exc})") from None


def load_actors(target: str) -> list[Actor]:
    """The Actors that ``target`` names (see the module docstring)."""
    spec, sep, attr = target.rpartition(":")
    if not sep or not attr or "/" in attr or "\\" in attr:
        spec, attr = target, ""
    module = _load_module(spec)
    if attr:
        obj = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise LoadError(f"{spec} has no attribute {attr!r}") from None
        found = [obj] if isinstance(obj, Actor) else list(obj) if isinstance(obj, (list, tuple)) else []
        if not found or not all(isinstance(a, Actor) for a in found):
            raise LoadError(f"{target} is not an Actor or a list of Actors")
        return found
    found = []
    for value in vars(module).values():
        if isinstance(value, Actor) and all(value is not a for a in found):
            found.append(value)
    if not found:
        raise LoadError(f"no Actor found at module level in {spec}")
    return found


def run_actors(actors: Iterable[Actor], stop: threading.Event | None = None) -> int:
    """Run the actors until SIGINT / SIGTERM (or ``stop``), then stop each gracefully.

    Returns 0 if every actor ended cleanly, 1 if one failed. When one actor ends by itself (a
    handler raised SystemExit, it could not attach), the others are stopped too.
    """
    actors = list(actors)
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, _frame: _on_signal(signum, stop))
    failed = False
    try:
        started = []
        for actor in actors:
            try:
                started.append(actor.start())
            except Exception as exc:
                log.error("actor %s could not start: %s", actor.name, exc)
                failed = True
                stop.set()
                break
        while not stop.is_set() and all(a.running for a in started):
            stop.wait(0.2)
        log.info("stopping %d actors", len(started))
        threads = [threading.Thread(target=a.stop) for a in started]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failed = failed or any(a.error is not None for a in started)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0


def _on_signal(signum: int, stop: threading.Event) -> None:
    log.info("received %s: stopping gracefully", signal.Signals(signum).name)
    stop.set()
