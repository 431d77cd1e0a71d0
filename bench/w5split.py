"""Where W5's publish -> handler latency goes: the README-default Actor and a Consumer
(credit 1000), alternating on one hub at the same steady rate, with the time split in three.

For each round and kind it reports, from the publish call (CLOCK_MONOTONIC in payload bytes
8-16, as W5):

- ``handler``: to the handler's start (Actor) or ``receive()`` returning (Consumer): W5's number;
- ``handoff`` (Actor only): to the actor's loop taking the delivered batch from its session
  (before the hand-off to the workers): what is left, ``handler - handoff``, is the Actor's own
  queueing and worker wake-up;
- the cyclic GC's passes in the sink's and the hub's process (counts per generation, total
  and longest pause: a pass stops the whole process, so a long one is a latency tail);
- the hub's side over the same span: its loop turns, the time in its commits (the fsync with
  ``--sync full``; how many of them, and how long, committed acks alone: no publish in them,
  yet a publish arriving meanwhile waits for them) and the p50 / p99 / max of one turn: a turn
  is what a published message waits for before it is confirmed and delivered.

So a slow W5 can be pinned on the hub (long turns: the commit), the Actor (``handler`` well above
``handoff``) or neither (the Consumer as slow as the Actor). The hub runs in a child process of
this script (not ``zmq-mq hub``) so that its turns can be timed; the sinks and the producer are
child processes too.

    python bench/w5split.py --rate 10000 --duration 5 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import threading
import time

PAD = bytes(112)  # 128-byte payloads, as W5


def _pct(values: list[float]) -> dict:
    if not values:
        return {}
    v = sorted(values)

    def at(q: float) -> float:
        return round(v[min(len(v) - 1, int(q * len(v)))], 3)

    return {"n": len(v), "p50": at(0.5), "p99": at(0.99), "p99.9": at(0.999), "max": round(v[-1], 3)}


def _gc_watch() -> dict:
    """Time this process's cyclic-GC passes (a pass stops every thread of the process): counts
    per generation, total and longest pause in ms; ``gc_report`` reads and resets it."""
    import gc

    stats = {"n": [0, 0, 0], "total_ms": 0.0, "max_ms": 0.0, "t0": 0.0}

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            stats["t0"] = time.perf_counter()
            return
        took = (time.perf_counter() - stats["t0"]) * 1000
        stats["n"][info["generation"]] += 1
        stats["total_ms"] += took
        stats["max_ms"] = max(stats["max_ms"], took)

    gc.callbacks.append(callback)
    return stats


def gc_report(stats: dict) -> dict:
    out = {"collections": list(stats["n"]), "total_ms": round(stats["total_ms"], 1),
           "max_ms": round(stats["max_ms"], 2)}
    stats.update(n=[0, 0, 0], total_ms=0.0, max_ms=0.0)
    return out


def _hub(sync: bool, endpoint_q, cmd_q) -> None:
    from zmq_mq.router.config import HubConfig
    from zmq_mq.router.hub import Hub

    with tempfile.TemporaryDirectory(prefix="zmq-mq-w5split-") as tmp:
        hub = Hub(HubConfig(data_dir=tmp, bind="tcp://127.0.0.1:*", pub="tcp://127.0.0.1:*",
                            sync=sync))
        turns: list[float] = []
        commit_s = [0.0]
        gcs = _gc_watch()
        turn, commit = hub._turn, hub._commit

        def timed_turn() -> None:
            t = time.perf_counter()
            turn()
            turns.append(time.perf_counter() - t)

        acks_only = [0, 0.0]  # commits of cursor changes alone (acks: no publish waits), s

        def timed_commit():
            t = time.perf_counter()
            alone = not hub.turn.appends and any(sub.dirty for sub in hub.subs.values())
            try:
                return commit()
            finally:
                took = time.perf_counter() - t
                commit_s[0] += took
                if alone:
                    acks_only[0] += 1
                    acks_only[1] += took

        hub._turn, hub._commit = timed_turn, timed_commit  # this instance only
        hub.bind()
        endpoint_q.put(hub.endpoint)
        runner = threading.Thread(target=hub.run, daemon=True)
        runner.start()
        try:
            while cmd_q.get() != "stop":  # "mark": report and restart the counts
                done, commit_s[0], ms = commit_s[0], 0.0, [x * 1000 for x in turns]
                turns.clear()
                alone, acks_only[:] = list(acks_only), [0, 0.0]
                endpoint_q.put({"turns": len(ms), "commit_s": round(done, 3),
                                "ack_commits": alone[0], "ack_commit_s": round(alone[1], 3),
                                "gc": gc_report(gcs),
                                "turn_ms": _pct(ms)})
        finally:
            hub.stop()
            runner.join(10)
            hub.close()


def _producer(endpoint: str, topic: str, rate: int, duration: float, go) -> None:
    from zmq_mq.actors import Producer

    n, step = int(rate * duration), 1e9 / rate
    with Producer(endpoint) as p:
        go.wait()
        t0, i = time.monotonic_ns(), 0
        while i < n:
            t = time.monotonic_ns()
            if t < t0 + i * step:
                time.sleep((t0 + i * step - t) / 1e9)
                continue
            while i < n and t0 + i * step <= t:
                stamp = time.monotonic_ns()
                p.publish_async(topic, i.to_bytes(8, "big") + stamp.to_bytes(8, "big") + PAD)
                i += 1
        p.flush(60)


def _since_publish(payload: bytes, now_ns: int) -> float:
    return (now_ns - int.from_bytes(payload[8:16], "big")) / 1e6


def _sink(kind: str, endpoint: str, topic: str, n: int, timeout: float, ready, go, out) -> None:
    handler: list[float] = []
    handoff: list[float] = []
    gcs = _gc_watch()
    if kind == "consumer":
        from zmq_mq.actors import Consumer

        with Consumer(endpoint) as c:
            c.subscribe(topic, "w5split", credit=1000)
            ready.set()
            gc_report(gcs)  # from here on
            go.wait()
            while len(handler) < n:
                msg = c.receive(timeout=timeout)
                if msg is None:
                    break
                handler.append(_since_publish(msg.payload, time.monotonic_ns()))
                msg.ack()
    else:
        from zmq_mq.actors import Actor

        done, lock = threading.Event(), threading.Lock()
        actor = Actor(endpoint)  # the README's defaults

        @actor.subscribe(topic, group="w5split")
        def handle(msg) -> None:
            t = time.monotonic_ns()
            with lock:
                handler.append(_since_publish(msg.payload, t))
                if len(handler) >= n:
                    done.set()

        take = getattr(actor, "_take_inbox", None)  # the loop's hand-off; skipped if renamed
        if take is not None:
            def stamped_take(session) -> None:
                if session.inbox:
                    t = time.monotonic_ns()
                    handoff.extend(_since_publish(m.payload, t) for m in session.inbox)
                take(session)

            actor._take_inbox = stamped_take  # this instance only
        actor.start()
        ready.set()
        gc_report(gcs)  # from here on
        go.wait()
        done.wait(timeout)
        actor.stop()
    out.put({"kind": kind, "handler_ms": _pct(handler), "handoff_ms": _pct(handoff),
             "gc": gc_report(gcs)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=10000, help="messages per second")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of publishing per run")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of (actor, consumer)")
    ap.add_argument("--sync", choices=("full", "none"), default="full", help="the hub's --sync")
    ap.add_argument("--json-out", help="also write the runs here as JSON")
    args = ap.parse_args(argv)
    if args.rate < 1 or args.duration <= 0 or args.rounds < 1:
        print("error: --rate, --duration and --rounds must be positive", file=sys.stderr)
        return 2
    ctx = mp.get_context("spawn")
    endpoint_q, cmd_q = ctx.Queue(), ctx.Queue()
    hub = ctx.Process(target=_hub, args=(args.sync == "full", endpoint_q, cmd_q), daemon=True)
    hub.start()
    runs = []
    ok = True
    try:
        endpoint = endpoint_q.get(timeout=60)
        n = int(args.rate * args.duration)
        timeout = args.duration + 60
        for r in range(args.rounds):
            for kind in ("actor", "consumer"):
                topic = f"w5split.{kind}.{r}"
                ready, go, out = ctx.Event(), ctx.Event(), ctx.Queue()
                procs = [ctx.Process(target=_sink, args=(kind, endpoint, topic, n, timeout,
                                                         ready, go, out)),
                         ctx.Process(target=_producer, args=(endpoint, topic, args.rate,
                                                             args.duration, go))]
                for p in procs:
                    p.start()
                ready.wait(60)
                cmd_q.put("mark")
                endpoint_q.get(timeout=60)
                go.set()
                res = out.get(timeout=timeout + 30)
                for p in procs:
                    p.join(60)
                cmd_q.put("mark")
                res.update(round=r, hub=endpoint_q.get(timeout=60))
                ok = ok and res["handler_ms"].get("n") == n
                runs.append(res)
                h, s, hub_s = res["handler_ms"], res["handoff_ms"], res["hub"]
                print(f"round {r} {kind:8s} handler p50 {h.get('p50')} p99 {h.get('p99')} "
                      f"p99.9 {h.get('p99.9')} max {h.get('max')} ms | hand-off p50 "
                      f"{s.get('p50', '-')} p99 {s.get('p99', '-')} ms | hub {hub_s['turns']} "
                      f"turns, {hub_s['commit_s']} s in commits ({hub_s['ack_commits']} "
                      f"of acks alone: {hub_s['ack_commit_s']} s), turn p50 "
                      f"{hub_s['turn_ms'].get('p50')} p99 {hub_s['turn_ms'].get('p99')} max "
                      f"{hub_s['turn_ms'].get('max')} ms", flush=True)
                for who, g in ((kind, res.get("gc")), ("hub", hub_s.get("gc"))):
                    if g:
                        print(f"        gc in {who}: {g['collections']} collections (gen 0/1/2), "
                              f"{g['total_ms']} ms, longest {g['max_ms']} ms", flush=True)
    finally:
        cmd_q.put("stop")
        hub.join(30)
        if hub.is_alive():
            hub.kill()
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"ok": ok, "rate": args.rate, "duration": args.duration, "runs": runs}, f,
                      indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
