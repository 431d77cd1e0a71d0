"""The cost of replication: W1 (durable publish) and W2 (publish + consume end to end) through
the cluster clients on a topic of one partition with 2 replicas, against a single hub, same run,
legs alternating round by round.

Legs (each round runs every leg once, in turn):

* ``single``: one plain ``zmq-mq hub`` (no ZooKeeper), ``Producer(endpoint)``;
* ``cluster-r1``: two ``zmq-mq hub --cluster`` processes, a topic of 1 partition, 1 replica,
  through ``Producer("zk://...")``: the cluster clients and hub without replication;
* ``cluster-r2``: the same two hubs, 1 partition, 2 replicas, default min_insync (2): every
  confirm waits for the follower to have fetched and committed the batch;
* ``direct-r1`` / ``direct-r2``: the same topics, but a plain ``Producer``/``Consumer`` given
  the leader's endpoint and the partition's name (``topic.0``): the cluster hub without the
  cluster clients, to tell the clients' cost from the hub's.

W1: ``--messages`` messages of 128 bytes with ``publish_async``, then ``flush``: msg/s from the
first publish to the last confirm. W2: a ``Consumer`` process subscribed before the producer
starts, acking everything: msg/s from the first publish to the last message received.
Every hub runs ``--sync`` (full by default: an fsync per group commit, on every replica).

    python bench/cluster_replication.py --messages 50000 --rounds 3 --json-out repl.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

from zmq_mq.actors import Admin, Consumer, Producer
from zmq_mq.testing import Cluster, HubProcess

PAYLOAD = 128


def payload(i: int) -> bytes:
    return i.to_bytes(8, "big") + b"\x00" * (PAYLOAD - 8)


def w1(endpoint: str, topic: str, n: int, timeout: float) -> float:
    with Producer(endpoint, timeout=timeout) as p:
        t0 = time.perf_counter()
        futures = [p.publish_async(topic, payload(i)) for i in range(n)]
        p.flush(timeout)
        elapsed = time.perf_counter() - t0
        assert all(f.done() and isinstance(f.result(0), int) for f in futures), "unconfirmed"
    return n / elapsed


def _consume(endpoint: str, topic: str, n: int, timeout: float, ready, out) -> None:
    with Consumer(endpoint, timeout=timeout) as c:
        c.subscribe(topic, "bench", credit=1000)
        ready.set()
        seen = set()
        deadline = time.monotonic() + timeout
        while len(seen) < n and time.monotonic() < deadline:
            msg = c.receive(timeout=5.0)
            if msg is None:
                break
            seen.add(msg.payload[:8])
            msg.ack()
        out.put((len(seen), time.perf_counter()))


def w2(endpoint: str, topic: str, n: int, timeout: float) -> float:
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_consume, args=(endpoint, topic, n, timeout, ready, out))
    proc.start()
    try:
        if not ready.wait(timeout):
            raise SystemExit("the W2 consumer did not subscribe")
        time.sleep(0.2)  # its SUBSCRIBE reached the leader
        t0 = time.perf_counter()  # perf_counter is CLOCK_MONOTONIC: one clock across processes
        with Producer(endpoint, timeout=timeout) as p:
            for i in range(n):
                p.publish_async(topic, payload(i))
            p.flush(timeout)
        got, t_end = out.get(timeout=timeout)
    finally:
        proc.join(timeout)
    if got < n:
        raise SystemExit(f"W2 consumer received {got} of {n}")
    return n / (t_end - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sync", default="full", choices=["full", "none"])
    ap.add_argument("--session", type=float, default=6.0, help="hubs' ZooKeeper session, s")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="zmq-mq-repl-"))
    cluster = Cluster(tmp, ("a", "b"), chroot="/repl", session=args.session, sync=args.sync,
                      tick_ms=500)
    url = cluster.url
    single = HubProcess(tmp / "single" / "data", ["--sync", args.sync], log_dir=tmp / "single")
    results: dict[str, dict[str, list[float]]] = {}
    try:
        single.start()
        cluster.start()
        legs = [("single", single.endpoint, None), ("cluster-r1", url, 1),
                ("cluster-r2", url, 2), ("direct-r1", None, 1), ("direct-r2", None, 2)]
        leaders = {}
        admin_topics: list[str] = []
        with Admin(url, timeout=args.timeout) as admin:
            for r in range(args.rounds):
                for name, _, replicas in legs:
                    if replicas:
                        for w in ("w1", "w2"):
                            admin.create_topic(f"{w}.{name}.{r}", partitions=1,
                                               replicas=replicas)
                            admin_topics.append(f"{w}.{name}.{r}")
        for name in admin_topics:
            cluster.wait_settled(name, args.timeout)  # led, every replica in sync
        hubs = cluster.client.hubs()
        for name, state in cluster.client.partitions().items():
            leaders[name] = hubs[state.leader].endpoint
        for r in range(args.rounds):
            for name, endpoint, _ in legs:
                for w, fn in (("w1", w1), ("w2", w2)):
                    topic = f"{w}.{name}.{r}"
                    if endpoint is None:  # direct: the partition on its leader
                        endpoint, topic = leaders[f"{topic}.0"], f"{topic}.0"
                    rate = fn(endpoint, topic, args.messages, args.timeout)
                    endpoint = dict((n, e) for n, e, _ in legs)[name]
                    results.setdefault(name, {}).setdefault(w, []).append(rate)
                    print(f"round {r} {name:11s} {w.upper()} {rate:10,.0f} msg/s", flush=True)
    finally:
        single.stop()
        cluster.stop()
    shutil.rmtree(tmp, ignore_errors=True)  # reached only when the run completed
    report = {"messages": args.messages, "rounds": args.rounds, "sync": args.sync,
              "payload_bytes": PAYLOAD, "legs": {}}
    print(f"\n{'leg':12s} {'W1 median':>12s} {'W2 median':>12s}   (msg/s, {args.rounds} rounds, "
          f"{args.messages} messages, sync {args.sync})")
    base = {w: statistics.median(results["single"][w]) for w in ("w1", "w2")}
    for name, runs in results.items():
        med = {w: statistics.median(v) for w, v in runs.items()}
        report["legs"][name] = {"runs": runs, "median": med,
                                "vs_single": {w: med[w] / base[w] for w in med}}
        print(f"{name:12s} {med['w1']:12,.0f} {med['w2']:12,.0f}   "
              f"({med['w1'] / base['w1']:.2f}x, {med['w2'] / base['w2']:.2f}x of single)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
