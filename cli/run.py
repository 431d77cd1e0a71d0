"""``zmq-mq run``: run the Actors of a script or module until SIGINT or SIGTERM (the loading and
running are actors/runner.py's; this is the command line around it)."""

from __future__ import annotations

import logging
import os
from typing import Optional

import typer

from ..actors.connection import ENV_HUB
from ..logs import setup_logging
from .common import HubOption, fail


def run(
    target: str = typer.Argument(..., help="path/to/actors.py, a module, or either with :attr naming an Actor (or a list of them)."),
    hub: Optional[str] = HubOption,
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    """Run the Actors of a script or module until SIGINT or SIGTERM (then stop them gracefully)."""
    from ..actors.runner import LoadError, load_actors, run_actors

    setup_logging(log_level)
    if hub:
        os.environ[ENV_HUB] = hub  # actors created without an endpoint connect here
    try:
        actors = load_actors(target)
    except LoadError as exc:
        fail(str(exc), 2)
    except Exception as exc:  # the user's module raised while importing
        logging.getLogger("zmq_mq.run").exception("loading %s failed", target)
        fail(f"cannot load {target}: {exc!r}", 2)
    logging.getLogger("zmq_mq.run").info(
        "running %s", ", ".join(f"{a.name} (concurrency {a.concurrency})" for a in actors)
    )
    raise typer.Exit(run_actors(actors))
