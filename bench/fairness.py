"""Fairness: does one client flooding publishes starve another client's deliveries and acks?

    python bench/fairness.py [--seconds 10] [--interval-ms 5] [--sync full] [--json-out FILE]

One hub (``zmq-mq hub`` subprocess, fresh data directory, started as ``zmq-mq bench`` starts
its hubs). A *probe* client does round trips on topic ``probe``: publish one message and wait
for its confirm, receive it through a subscription with credit 1 and ack it (with credit 1 the
next delivery cannot leave the hub before the previous ack was handled, so acks are inside the measured loop), one round trip every
``--interval-ms``. It runs twice for ``--seconds``: alone (``quiet``), then while a separate
process floods topic ``flood`` with publishes at full speed (``flood``: ``publish_async`` as fast
as the producer window allows). Reported: the probe's confirm latency (publish -> confirm) and
round-trip latency (publish -> delivered), p50 / p90 / p99 / p99.9 / max, and the flood's
confirmed rate. Output: a rich table and a JSON report.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from zmq_mq.bench import BenchHub, background_cpu, git_info, machine_info, now, percentiles

PAYLOAD = b"p" * 128


def flood(endpoint: str, seconds: float, rate: float = 0) -> None:
    """Publish 128-byte messages for ``seconds``, as fast as the producer allows (``rate`` 0)
    or at ``rate`` msg/s; print counts."""
    from zmq_mq.actors import Producer

    with Producer(endpoint, name="flood", timeout=60) as p:
        sent = 0
        t0 = now()
        print(json.dumps({"ready": True}), flush=True)
        while now() - t0 < seconds:
            for _ in range(1000):
                p.publish_async("flood", PAYLOAD)
            sent += 1000
            if rate:
                delay = t0 + sent / rate - now()
                if delay > 0:
                    time.sleep(delay)
        p.flush(120)
        elapsed = now() - t0
    print(json.dumps({"sent": sent, "seconds": elapsed, "rate": sent / elapsed}), flush=True)


def probe(endpoint: str, seconds: float, interval: float) -> dict:
    """Round trips for ``seconds``; returns the latency percentiles in ms."""
    from zmq_mq.actors import Consumer, Producer

    confirm: list[float] = []
    trip: list[float] = []
    errors = 0
    with Producer(endpoint, name="probe-producer", timeout=30) as p, \
            Consumer(endpoint, name="probe-consumer", timeout=30) as c:
        c.subscribe("probe", "probe", credit=1, start="new")
        t_end = now() + seconds
        next_at = now()
        while now() < t_end:
            t0 = now()
            seq = p.publish("probe", PAYLOAD)
            t1 = now()
            msg = c.receive(timeout=30)
            t2 = now()
            if msg is None or msg.seq != seq:
                errors += 1
                continue
            msg.ack()
            confirm.append(t1 - t0)
            trip.append(t2 - t0)
            next_at += interval
            delay = next_at - now()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = now()
    confirm.sort()
    trip.sort()
    return {"round_trips": len(trip), "errors": errors, "confirm_ms": percentiles(confirm),
            "round_trip_ms": percentiles(trip)}


def run(args) -> dict:
    hub = BenchHub(args.sync).start()
    report: dict = {"config": vars(args).copy(), "machine": machine_info(), "git": git_info()}
    report["config"].pop("json_out", None)
    report["busy_before"] = background_cpu(1.0)  # other processes on the machine
    try:
        report["quiet"] = probe(hub.endpoint, args.seconds, args.interval_ms / 1000)
        proc = subprocess.Popen([sys.executable, __file__, "--flood", hub.endpoint,
                                 "--seconds", str(args.seconds + 4), "--flood-rate", str(args.flood_rate)],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert json.loads(proc.stdout.readline()).get("ready")
            time.sleep(2.0)  # the flood at full speed before measuring
            report["flood"] = probe(hub.endpoint, args.seconds, args.interval_ms / 1000)
            out, _ = proc.communicate(timeout=180)
            report["flood"]["flooder"] = json.loads(out.strip().splitlines()[-1])
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        report["hub"] = hub.status()
    finally:
        hub.stop()
    return report


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    m = report["machine"]
    console.print(f"fairness: {m.get('nproc')} cores, {m.get('mem_total_gib')} GiB, "
                  f"sync {report['config']['sync']}, "
                  f"flood rate {report['config']['flood_rate'] or 'full speed'}, "
                  f"probe every {report['config']['interval_ms']} ms "
                  f"for {report['config']['seconds']} s; commit {report['git'].get('commit', '?')[:7]}"
                  f"{' (dirty)' if report['git'].get('dirty') else ''}; busy before "
                  f"{report.get('busy_before', {})}")
    table = Table()
    for col in ("phase", "latency", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "round trips",
                "flood msg/s"):
        table.add_column(col, justify="left" if col in ("phase", "latency") else "right")
    for phase in ("quiet", "flood"):
        r = report.get(phase)
        if not r:
            continue
        rate = r.get("flooder", {}).get("rate")
        for kind, label in (("confirm_ms", "publish->confirm"), ("round_trip_ms", "publish->delivered")):
            q = r[kind]
            cells = (f"{q.get(k, 0):.2f}" for k in ("p50", "p90", "p99", "p99.9", "max"))
            table.add_row(phase, label, *cells,
                          str(r["round_trips"]), f"{rate:,.0f}" if rate and kind == "confirm_ms" else "")
    console.print(table)


def main() -> int:
    ap = argparse.ArgumentParser(description="zmq-mq fairness under a publish flood")
    ap.add_argument("--seconds", type=float, default=10.0, help="per phase")
    ap.add_argument("--interval-ms", type=float, default=5.0, help="between probe round trips")
    ap.add_argument("--sync", choices=("full", "none"), default="full")
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--flood-rate", type=float, default=0, help="flood msg/s (0: full speed)")
    ap.add_argument("--flood", metavar="ENDPOINT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.flood:
        flood(args.flood, args.seconds, args.flood_rate)
        return 0
    report = run(args)
    print_table(report)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2))
    return 0 if report.get("flood", {}).get("errors", 1) == 0 and report["quiet"]["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
