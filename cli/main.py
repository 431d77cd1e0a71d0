"""The ``zmq-mq`` command: assembles the typer app from the command modules of cli/.

=============  ==================================================================
hub.py         ``hub`` (the only module that imports the hub; ``demo`` starts one
               through it)
messages.py    ``publish``, ``subscribe``, ``listen``
topics.py      ``topics`` and the ``topic create|config|delete`` group
keys.py        ``keygen``
demo.py        ``demo``
ops.py         ``stats``, the ``dlq`` group and ``bench`` (operator commands)
run.py         ``run`` (a script's Actors)
cluster.py     ``cluster status`` and the cluster form of ``topic create``
common.py      what they share: --hub, --timeout, CURVE client keys, the error exit
=============  ==================================================================

Commands are registered in the order ``zmq-mq --help`` lists them.
"""

from __future__ import annotations

import typer

from . import cluster, demo, hub, keys, messages, ops, run, topics

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="zmq-mq: a durable message queue over ZeroMQ and LMDB.",
)

app.command("hub")(hub.hub)
app.command("publish")(messages.publish)
app.command("subscribe")(messages.subscribe)
app.command("topics")(topics.topics)
app.command("keygen")(keys.keygen)
app.command("demo")(demo.demo)
app.command("stats")(ops.stats)
app.command("listen")(messages.listen)
app.add_typer(ops.dlq_app, name="dlq")
app.command("bench")(ops.bench)
app.add_typer(topics.topic_app, name="topic")
app.command("run")(run.run)
app.add_typer(cluster.cluster_app, name="cluster")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
