"""A work-queue worker: start several; each task goes to exactly one of them.

    zmq-mq run examples/workqueue/worker.py     # in several terminals
    python examples/workqueue/submit.py 100

All workers attach to the same subscription ("workers" on topic "tasks"), so they compete for
its messages; each holds at most ``concurrency`` tasks (credit follows free workers).
"""

from __future__ import annotations

import hashlib
import os

from zmq_mq.actors import Actor

worker = Actor(name=f"worker-{os.getpid()}", concurrency=2)


@worker.subscribe("tasks", group="workers")
def work(msg):
    digest = hashlib.sha256(msg.payload * 1000).hexdigest()[:12]  # some CPU work
    # one write per line (end=""): two worker threads print at once
    print(f"{worker.name} did {msg.text()} -> {digest}\n", end="", flush=True)
