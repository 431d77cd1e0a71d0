"""``zmq-mq demo``: start a hub in this process and show messages flowing, a work queue (two
billing workers share the orders) and a fan-out (the emails group gets its own copy).

The hub is started by the hub command's module (cli/hub.py), so this one does not import the hub.
"""

from __future__ import annotations

import threading

import typer

from ..actors import Actor, Producer
from ..router.protocol import DEFAULT_BIND, DEFAULT_PUB
from .hub import DEFAULT_DATA_DIR, start_in_thread


def demo(
    messages: int = typer.Option(12, "--messages", help="Orders to publish."),
    data: str = typer.Option(DEFAULT_DATA_DIR, "--data"),
    bind: str = typer.Option(DEFAULT_BIND, "--bind"),
    pub: str = typer.Option(DEFAULT_PUB, "--pub"),
    serve: bool = typer.Option(False, "--serve", help="Keep the hub running after the demo (Ctrl-C stops)."),
) -> None:
    """Start the hub on its defaults and show messages flowing: a work queue and a fan-out."""
    from rich.console import Console

    console = Console()
    hub_thread = start_in_thread(data, bind, pub)
    console.print(f"[bold]hub[/] serving on {hub_thread.endpoint} (data in {data})")
    endpoint = hub_thread.endpoint
    lock = threading.Lock()
    seen: dict[str, int] = {}
    done = threading.Event()
    total_expected = messages * 2  # every order: once to a billing worker, once to emails

    def handler(worker: str, colour: str):
        def handle(msg):
            with lock:
                console.print(f"  [{colour}]{worker:<10}[/] got {msg.topic} seq {msg.seq}: {msg.text()}")
                seen[worker] = seen.get(worker, 0) + 1
                if sum(seen.values()) >= total_expected:
                    done.set()
        return handle

    actors = []
    for worker, group, colour in (("billing-1", "billing", "cyan"), ("billing-2", "billing", "cyan"),
                                  ("emails-1", "emails", "magenta")):
        actor = Actor(endpoint, name=worker)
        actor.add_handler("orders", handler(worker, colour), group=group, credit=2, start="new")
        actors.append(actor.start())
    try:
        with Producer(endpoint) as producer:
            console.print(f"[bold]producer[/] publishing {messages} orders to topic 'orders'")
            for i in range(1, messages + 1):
                seq = producer.publish("orders", f"order #{i}".encode(), key=f"user-{i % 3}")
                console.print(f"  [green]producer[/]   order #{i} durable as seq {seq}")
        if not done.wait(30):
            console.print("[red]not every message arrived within 30 s[/]")
    finally:
        for actor in actors:
            actor.stop()
    console.print(
        f"[bold]done:[/] billing workers shared the orders ({seen.get('billing-1', 0)} + "
        f"{seen.get('billing-2', 0)}), emails got its own copy of all {seen.get('emails-1', 0)}."
    )
    if serve:
        console.print(f"hub still serving on {endpoint}; Ctrl-C to stop")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    hub_thread.stop()
