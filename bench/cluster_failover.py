"""Cluster failover time: leader kill -9 to the first confirmed publish on the new leader.

Starts one ZooKeeper and ``--hubs`` ``zmq-mq hub --cluster`` processes on loopback
(``zmq_mq.testing.Cluster``), creates a topic of ``--partitions`` partitions with ``--replicas``
replicas and ``--min-insync 1`` (so the survivor takes publishes alone at once), and keeps a
``Producer("zk://...")`` publishing to one partition, one message at a time, each with a msg_id.
Then, ``--kills`` times: choose the next partition, kill -9 its leader, and time

* ``moved_s``: the kill to the instant ZooKeeper names a new leader (polled every 20 ms): the
  hubs' ZooKeeper session timeout (``--session``, the failure detector) plus the controller's
  election;
* ``failover_s``: the kill to the confirm of the first message *sent after the kill* to that
  partition (so confirmed by the new leader: the old one is dead). The message in flight at the
  kill is resent by the producer and confirmed just before it.

Between kills the killed hub is restarted on its data and the script waits until every
partition has all its replicas in sync again, so each kill starts from a healthy cluster.

    python bench/cluster_failover.py --kills 20 --session 2 --json-out failover.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from zmq_mq.actors import Producer
from zmq_mq.router import protocol
from zmq_mq.testing import Cluster

TOPIC = "failover"


def key_of(partition: int, partitions: int) -> str:
    return next(k for k in (f"k{i}" for i in range(100_000))
                if protocol.partition_of(k, partitions) == partition)


class Load(threading.Thread):
    """One publish at a time to the partition of ``target``; records (sent, confirmed, part)."""

    def __init__(self, url: str, partitions: int) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.keys = [key_of(p, partitions) for p in range(partitions)]
        self.target = 0
        self.confirms: list[tuple[float, float, int]] = []
        self.failures = 0
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Producer(self.url, timeout=60.0) as producer:
                i = 0
                while not self.stop_event.is_set():
                    p = self.target
                    sent = time.monotonic()
                    try:
                        producer.publish(TOPIC, b"x", key=self.keys[p], msg_id=f"m{i}",
                                         timeout=60.0)
                    except Exception:
                        self.failures += 1
                    else:
                        self.confirms.append((sent, time.monotonic(), p))
                    i += 1
        except BaseException as exc:
            self.error = exc


def wait(predicate, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--hubs", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--session", type=float, default=2.0,
                    help="the hubs' ZooKeeper session timeout, s (the failure detector)")
    ap.add_argument("--sync", default="full", choices=["full", "none"])
    ap.add_argument("--timeout", type=float, default=60.0, help="per step, s")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="zmq-mq-failover-"))
    cluster = Cluster(tmp, [f"hub{n}" for n in range(args.hubs)], chroot="/failover",
                      session=args.session, sync=args.sync)
    url = cluster.url
    load = None
    kills = []
    try:
        cluster.start()
        client = cluster.client
        cluster.create_topic(TOPIC, args.partitions, args.replicas, min_insync=1,
                             timeout=args.timeout)
        load = Load(url, args.partitions)
        load.start()
        for k in range(args.kills):
            p = k % args.partitions
            part = f"{TOPIC}.{p}"
            load.target = p
            wait(lambda: sum(c[2] == p for c in load.confirms[-5:]) >= 5, args.timeout,
                 f"confirms on {part}")
            state = client.partition(part)
            victim, epoch = state.leader, state.epoch
            killed = time.monotonic()
            cluster.kill(victim)
            moved = None
            while time.monotonic() - killed < args.timeout:
                if moved is None:
                    s = client.partition(part)
                    if s.leader not in (None, victim) and s.epoch > epoch:
                        moved = time.monotonic() - killed
                after = [c for c in load.confirms[-50:] if c[0] > killed and c[2] == p]
                if after and moved is not None:
                    break
                time.sleep(0.02)
            else:
                raise SystemExit(f"kill {k}: no confirm on {part} within {args.timeout:g} s")
            failover = after[0][1] - killed
            kills.append({"kill": k, "partition": part, "victim": victim,
                          "moved_s": round(moved, 4), "failover_s": round(failover, 4)})
            print(f"kill {k:3d} {part:12s} {victim:6s} moved {moved * 1000:7.0f} ms "
                  f"failover {failover * 1000:7.0f} ms", flush=True)
            cluster.restart(victim)
            cluster.wait_settled(TOPIC, args.timeout)  # the restarted hub back in sync
        load.stop_event.set()
        load.join(args.timeout)
        if load.error is not None:
            raise SystemExit(f"the producer failed: {load.error}")
    finally:
        if load is not None:
            load.stop_event.set()
        cluster.stop()
    shutil.rmtree(tmp, ignore_errors=True)  # reached only when the run completed
    fo = [k["failover_s"] for k in kills]
    mv = [k["moved_s"] for k in kills]
    report = {
        "kills": kills, "hubs": args.hubs, "partitions": args.partitions,
        "replicas": args.replicas, "min_insync": 1, "session_timeout_s": args.session,
        "sync": args.sync, "zookeeper_tick_ms": cluster.zookeeper_server.tick_ms,
        "failover_p50_s": statistics.median(fo), "failover_max_s": max(fo),
        "moved_p50_s": statistics.median(mv), "moved_max_s": max(mv),
        "publish_failures": load.failures if load else 0,
    }
    print(f"\n{'':12s} {'p50 ms':>8s} {'p90 ms':>8s} {'max ms':>8s}   "
          f"({len(kills)} kills, session {args.session:g} s, sync {args.sync})")
    for name, values in (("moved", mv), ("failover", fo)):
        print(f"{name:12s} {statistics.median(values) * 1000:8.0f} "
              f"{pct(values, 0.9) * 1000:8.0f} {max(values) * 1000:8.0f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
