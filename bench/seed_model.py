"""The seed's load model: one Actor process with slow ``async def`` handlers drains a backlog.

    python bench/seed_model.py [--messages 100000] [--work-ms 100] [--concurrency 5000]
                               [--credit C] [--sync full] [--loop-io on|off]
                               [--event-loop auto|asyncio|uvloop]
                               [--json-out FILE]

``--credit 0`` gives the subscription no credit: the Actor's default, 1.5 x concurrency.

One hub (``zmq-mq hub`` subprocess, fresh data directory, as ``zmq-mq bench`` starts its hubs).
A backlog of ``--messages`` messages of 128 bytes is published durably first (confirmed), then
one Actor *process* (not the publisher) attaches with ``Actor(concurrency=C)`` and one
subscription of ``credit=C`` (``--credit``: another credit, to see what a deeper window
buys) whose ``async def`` handler does ``await asyncio.sleep(work)``.
The ideal rate is ``C / work`` (50,000 msg/s for 5,000 handlers of 100 ms): every handler slot
always busy. Reported: msg/s from the actor's attach to the last ack at the hub, % of the ideal,
the hub's and the actor process's CPU over the drain, the hub's in-flight count for the
subscription (STATS, sampled every 20 ms: min, median, mean over the drain's steady part, the
first and last ``work`` seconds left out), lost and duplicate handlings. Output: a table and a
JSON report.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time

from zmq_mq.bench import BenchHub, cpu_seconds, git_info, machine_info, now
from zmq_mq.bench.measure import cpu_share

TOPIC, GROUP = "seed", "seed"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--work-ms", type=float, default=100.0)
    ap.add_argument("--concurrency", type=int, default=5_000)
    ap.add_argument("--credit", type=int, default=None,
                    help="the subscription's credit (default: --concurrency, as in the seed's "
                         "model; 0: none given, the Actor's default of 1.5 x concurrency)")
    ap.add_argument("--sync", default="full", choices=["full", "none"])
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--loop-io", default="on", choices=["on", "off"],
                    help="Actor(loop_io=...): the hub socket on the handlers' asyncio loop "
                         "(on, the default) or on a thread of its own (off)")
    ap.add_argument("--event-loop", choices=["auto", "asyncio", "uvloop"],
                    help="Actor(event_loop=...): the handlers' loop (default: the Actor's own "
                         "default, not passed, so older Actors run the script too)")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    n, c, work_s = args.messages, args.concurrency, args.work_ms / 1000
    credit = c if args.credit is None else args.credit  # 0: the Actor's default
    from zmq_mq.actors.actor import default_credit

    credit_shown = credit or f"default ({default_credit(c)})"

    from zmq_mq.actors import Admin, Producer

    hub = BenchHub(args.sync).start()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    stop = ctx.Event()
    proc = ctx.Process(target=_actor_main, args=(hub.endpoint, c, credit, work_s, out, stop,
                                                   args.loop_io == "on", args.event_loop))
    samples: list[tuple[float, int]] = []
    try:
        with Producer(hub.endpoint, timeout=60) as prod:
            for _ in range(n):
                prod.publish_async(TOPIC, b"x" * 128)
            prod.flush()
        proc.start()
        kind, pid, attached_at = out.get(timeout=60)
        hub_cpu0, actor_cpu0 = cpu_seconds(hub.pid), cpu_seconds(pid)
        deadline = now() + args.timeout
        drained_at = None
        with Admin(hub.endpoint) as admin:
            while now() < deadline:
                subs = [s for t in admin.topics() if t["topic"] == TOPIC
                        for s in t["subscriptions"] if s["group"] == GROUP]
                t = now()
                if subs:
                    samples.append((t, subs[0]["in_flight"]))
                    if subs[0]["pending"] == 0 and subs[0]["in_flight"] == 0:
                        drained_at = t
                        break
                time.sleep(0.02)
        end = drained_at if drained_at is not None else now()
        hub_cpu, actor_cpu = cpu_seconds(hub.pid), cpu_seconds(pid)
        stop.set()
        _kind, handled = out.get(timeout=120)
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
        hub.stop()
    wall = end - attached_at
    rate = n / wall if wall > 0 else 0.0
    ideal = c / work_s if work_s > 0 else float("inf")
    steady = [f for t, f in samples if attached_at + work_s <= t <= end - work_s] or \
        [f for _, f in samples]
    seqs = [seq for seq, _, _ in handled]
    distinct = set(seqs)
    starts = sorted(t for _, t, _ in handled)
    runs = sorted(r for _, _, r in handled)
    # the steady part: handler starts after the first work period, before the last one
    mid = [t for t in starts if starts[0] + work_s <= t <= starts[-1] - work_s] if starts else []
    steady_rate = (len(mid) - 1) / (mid[-1] - mid[0]) if len(mid) > 1 and mid[-1] > mid[0] else None
    report = {
        "script": "seed_model.py", "messages": n, "work_ms": args.work_ms, "concurrency": c,
        "credit": credit_shown, "loop_io": args.loop_io, "event_loop": args.event_loop or "default",
        "sync": args.sync, "machine": machine_info(), "git": git_info(),
        "drained": drained_at is not None, "drain_s": round(wall, 3),
        "msg_per_s": round(rate, 1), "ideal_msg_per_s": round(ideal, 1),
        "pct_of_ideal": round(100 * rate / ideal, 1) if ideal else None,
        "hub_cpu": cpu_share((hub_cpu or 0) - (hub_cpu0 or 0), wall, n),
        "actor_cpu": cpu_share((actor_cpu or 0) - (actor_cpu0 or 0), wall, n),
        "in_flight_min": min(steady, default=0), "in_flight_median": statistics.median(steady)
        if steady else 0, "in_flight_mean": round(statistics.fmean(steady), 1) if steady else 0,
        "in_flight_samples": len(steady),
        "attach_to_first_start_s": round(starts[0] - attached_at, 3) if starts else None,
        # the ramp: attach -> every slot started once (the concurrency-th handler start)
        "attach_to_full_s": round(starts[min(c, len(starts)) - 1] - attached_at, 3)
        if starts else None,
        # the tail: the last handler's end -> the hub has its ack (as sampled, every 20 ms)
        "last_end_to_drained_s": round(end - max(s + r for _, s, r in handled), 3)
        if handled else None,
        # Where the slot time goes, in % of concurrency x drain time: handlers waiting for the
        # work (ideally all of it), their timers firing late (run - work), slots idle during
        # the ramp (attach -> every slot started), the steady part and the tail (the last
        # ``work`` seconds, slots emptying as the last messages finish).
        **_slot_use(handled, c, work_s, attached_at, end,
                    starts[min(c, len(starts)) - 1] if starts else attached_at),
        "steady_msg_per_s": round(steady_rate, 1) if steady_rate else None,
        "steady_pct_of_ideal": round(100 * steady_rate / ideal, 1) if steady_rate and ideal else None,
        "handler_run_ms_p50": round(runs[len(runs) // 2] * 1000, 2) if runs else None,
        "handler_run_ms_p99": round(runs[int(len(runs) * 0.99)] * 1000, 2) if runs else None,
        "lost": n - len(distinct), "duplicates": len(seqs) - len(distinct),
    }
    report["ok"] = report["drained"] and report["lost"] == 0
    for k in ("messages", "work_ms", "concurrency", "credit", "sync", "drain_s", "msg_per_s",
              "ideal_msg_per_s", "pct_of_ideal", "in_flight_min", "in_flight_median",
              "in_flight_mean", "attach_to_first_start_s", "attach_to_full_s",
              "last_end_to_drained_s", "slot_work_pct", "slot_late_pct", "slot_idle_ramp_pct",
              "slot_idle_steady_pct", "slot_idle_tail_pct", "steady_msg_per_s", "steady_pct_of_ideal",
              "handler_run_ms_p50", "handler_run_ms_p99", "lost", "duplicates", "ok"):
        print(f"{k:24} {report[k]}")
    for who in ("hub_cpu", "actor_cpu"):
        cpu = report[who]
        print(f"{who:24} {cpu['cpu_pct']} % of a core, {cpu.get('us_per_msg')} us/msg")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if report["ok"] and report["duplicates"] == 0 else 1


def _slot_use(handled: list, c: int, work_s: float, t0: float, end: float,
              full: float) -> dict:
    """Slot time in % of ``c`` x (end - t0): working, late timers, idle by phase."""
    total = c * (end - t0)
    if total <= 0 or not handled:
        return {}
    tail_from = max(full, end - work_s)
    busy = {"ramp": 0.0, "steady": 0.0, "tail": 0.0}
    late = 0.0
    for _, start, run in handled:
        stop = start + run
        late += max(0.0, run - work_s)
        for phase, lo, hi in (("ramp", t0, full), ("steady", full, tail_from),
                              ("tail", tail_from, end)):
            overlap = min(stop, hi) - max(start, lo)
            if overlap > 0:
                busy[phase] += overlap
    spans = {"ramp": full - t0, "steady": tail_from - full, "tail": end - tail_from}

    def pct(x: float) -> float:
        return round(100 * x / total, 2)

    out = {"slot_work_pct": pct(len(handled) * work_s), "slot_late_pct": pct(late)}
    for phase in ("ramp", "steady", "tail"):
        out[f"slot_idle_{phase}_pct"] = pct(max(0.0, c * spans[phase] - busy[phase]))
    return out


def _actor_main(endpoint: str, concurrency: int, credit: int, work_s: float, out, stop,
                loop_io: bool = True, event_loop: str | None = None) -> None:
    import asyncio
    import os

    from zmq_mq.actors import Actor

    handled: list[tuple[int, float, float]] = []  # seq, handler start, its run time (s)
    kw = {} if event_loop is None else {"event_loop": event_loop}
    actor = Actor(endpoint, name="seed", concurrency=concurrency, loop_io=loop_io, **kw)

    @actor.subscribe(TOPIC, group=GROUP, credit=credit or None)
    async def handle(msg):
        started = now()
        await asyncio.sleep(work_s)
        handled.append((msg.seq, started, now() - started))

    t0 = now()
    actor.start()
    out.put(("ready", os.getpid(), t0))
    stop.wait()
    actor.stop()
    out.put(("done", handled))


if __name__ == "__main__":
    sys.exit(main())
