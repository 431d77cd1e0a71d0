"""Work-queue fairness: does a slow actor hoard messages that an idle actor of its group could take?

    python bench/workqueue.py [--messages 10000] [--slow-ms 50] [--ack-wait 30] [--sync full]
                              [--handler sync|async] [--json-out FILE]

One hub (``zmq-mq hub`` subprocess, fresh data directory, as ``zmq-mq bench`` starts its hubs).
Two Actor processes, each on the README defaults (``Actor(endpoint)``, one subscription of group
``work``): *slow*, whose handler sleeps ``--slow-ms``, and *fast*, whose handler does nothing
(``--handler async``: both ``async def``, the slow one awaiting ``asyncio.sleep``).
Once both are attached, ``--messages`` messages are published as fast as the producer allows.
Reported: how many each actor handled (the issue's acceptance: fast >= 90 %), lost and duplicate
handlings, the most deliveries any message had (1: none waited in an actor until its ack_wait
ran out), the most messages the slow actor held at once (sampled every 10 ms) and the longest
publish-to-handler-start time of a message the slow actor ran (an upper bound of its wait in the
slow actor), and the drain time. Output: a table and a JSON report.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time

from zmq_mq.bench import BenchHub, git_info, machine_info, now

TOPIC, GROUP = "work", "work"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--slow-ms", type=float, default=50.0)
    ap.add_argument("--ack-wait", type=float, default=30.0)
    ap.add_argument("--sync", default="full", choices=["full", "none"])
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--handler", default="sync", choices=["sync", "async"])
    ap.add_argument("--json-out")
    args = ap.parse_args()
    n = args.messages

    from zmq_mq.actors import Admin, Producer

    hub = BenchHub(args.sync).start()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    stop = {role: ctx.Event() for role in ("slow", "fast")}
    procs = [ctx.Process(target=_actor_main, args=(hub.endpoint, role,
                                                    args.slow_ms / 1000 if role == "slow" else 0.0,
                                                    args.ack_wait, out, stop[role], args.handler))
             for role in ("slow", "fast")]
    report: dict = {}
    try:
        for p in procs:
            p.start()
        ready = set()
        while len(ready) < 2:
            kind, role, *_ = out.get(timeout=60)
            ready.add(role)
        t0 = now()
        with Producer(hub.endpoint, timeout=60) as prod:
            for _ in range(n):
                prod.publish_async(TOPIC, b"%-20.6f" % time.time() + b"x" * 108)
            prod.flush()
        # drained: the subscription has nothing pending or in flight
        with Admin(hub.endpoint) as admin:
            deadline = now() + args.timeout
            while now() < deadline:
                subs = [s for t in admin.topics() if t["topic"] == TOPIC
                        for s in t["subscriptions"] if s["group"] == GROUP]
                if subs and subs[0]["pending"] == 0 and subs[0]["in_flight"] == 0:
                    break
                time.sleep(0.01)
        drain_s = now() - t0
        for e in stop.values():
            e.set()
        got = {}
        for _ in procs:
            _kind, role, handled, held_max = out.get(timeout=120)
            got[role] = (handled, held_max)
        for p in procs:
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        hub.stop()
    seqs = [s for handled, _ in got.values() for s, _, _ in handled]
    distinct = set(seqs)
    slow, fast = got["slow"], got["fast"]
    report = {
        "script": "workqueue.py", "messages": n, "slow_ms": args.slow_ms, "handler": args.handler,
        "ack_wait_s": args.ack_wait,
        "sync": args.sync, "machine": machine_info(), "git": git_info(),
        "slow_handled": len(slow[0]), "fast_handled": len(fast[0]),
        "fast_share": len(fast[0]) / n if n else 0.0,
        "lost": n - len(distinct), "duplicates": len(seqs) - len(distinct),
        "max_deliveries": max((d for handled, _ in got.values() for _, d, _ in handled), default=0),
        "slow_held_max": slow[1],
        "slow_publish_to_start_max_s": max((w for _, _, w in slow[0]), default=0.0),
        "drain_s": drain_s,
    }
    report["ok"] = (report["lost"] == 0 and report["fast_share"] >= 0.9
                    and report["max_deliveries"] <= 1
                    and report["slow_publish_to_start_max_s"] < args.ack_wait)
    for k in ("messages", "slow_handled", "fast_handled", "fast_share", "lost", "duplicates",
              "max_deliveries", "slow_held_max", "slow_publish_to_start_max_s", "drain_s", "ok"):
        v = report[k]
        print(f"{k:32} {v:.3f}" if isinstance(v, float) else f"{k:32} {v}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if report["lost"] == 0 and report["duplicates"] == 0 else 1


def _actor_main(endpoint: str, role: str, work_s: float, ack_wait: float, out, stop,
                handler: str = "sync") -> None:
    import asyncio

    from zmq_mq.actors import Actor

    handled: list[tuple[int, int, float]] = []  # seq, deliveries, publish -> start (s)
    actor = Actor(endpoint, name=role)

    def handle(msg):
        started = time.time()
        handled.append((msg.seq, msg.deliveries, started - float(msg.payload[:20])))
        if work_s:
            time.sleep(work_s)  # the slow handler's work

    async def handle_async(msg):
        started = time.time()
        handled.append((msg.seq, msg.deliveries, started - float(msg.payload[:20])))
        if work_s:
            await asyncio.sleep(work_s)

    actor.add_handler(TOPIC, handle_async if handler == "async" else handle, group=GROUP,
                      ack_wait=ack_wait)

    actor.start()
    out.put(("ready", role))
    held_max = 0
    while not stop.wait(0.01):
        held_max = max(held_max, len(actor._running))  # handed to its worker, not finished
    actor.stop()
    out.put(("done", role, handled, held_max))


if __name__ == "__main__":
    sys.exit(main())
