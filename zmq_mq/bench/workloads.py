"""The workloads: what each child process does (the producers, W2's consumer, W4's Actor, W3's
and W5's steady-rate producers, the README-default Actor of W2A, W5 and W6, the backlog
drainers of W6), the processes that run them, and each workload's summary.

Every child uses only the public client API (``Producer``, ``Consumer``, ``Actor`` from
``zmq_mq.actors``), as a user would, and reports the CPU it used (user + system, all its
threads) over its measured phase."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import time
import traceback

from .measure import CpuMark, now, percentiles, process_status

PAYLOAD_SIZE = 128
WORKLOAD_NAMES = {
    "W1": "durable publish (pipelined, all confirmed)",
    "W2": "end to end (1 producer + 1 consumer, all acked)",
    "W3": "publish-confirm latency at a steady rate",
    "W4": "end to end through an Actor (1 producer + 1 Actor process, all acked)",
    "W2A": "W2 through a Consumer and through the README-default Actor, alternating",
    "W5": "publish-to-handler latency through the README-default Actor at a steady rate",
    "W6": "backlog drain: N published first, then drained by a Consumer and by a default Actor",
}


def workload_names(spec: str) -> list[str]:
    """``"w1, W2"`` -> ``["W1", "W2"]``; raises ValueError naming unknown workloads."""
    names = [w.strip().upper() for w in spec.split(",") if w.strip()]
    unknown = [w for w in names if w not in WORKLOAD_NAMES]
    if unknown or not names:
        raise ValueError(f"unknown workloads {unknown or spec!r}; choose from {sorted(WORKLOAD_NAMES)}")
    return names


def make_payload(i: int) -> bytes:
    """128 bytes carrying the message number, so a consumer can tell messages apart."""
    return i.to_bytes(8, "big") + b"\x00" * (PAYLOAD_SIZE - 8)



# --- worker processes ----------------------------------------------------------------------


def _worker(kind: str, endpoint: str, params: dict, results, go) -> None:
    """Entry point of every child process: report ("ready"), wait for go, run, report result."""
    try:
        fn = {"w1": _producer("w1", "bench.w1"), "w2p": _producer("w2p", "bench.w2"),
              "w2c": _consumer("w2c", "bench.w2"), "w3": _run_w3_producer,
              "w4p": _producer("w4p", "bench.w4"), "w4a": _run_w4_actor,
              "w2ap": _producer("w2ap", "bench.w2a"), "w2ac": _consumer("w2ac", "bench.w2a"),
              "w2aa": _default_actor("w2aa", "bench.w2a"), "w5p": _run_w5_producer,
              "w5a": _default_actor("w5a", "bench.w5"), "w6p": _producer("w6p", "bench.w6"),
              "w6c": _consumer("w6c", "bench.w6"), "w6a": _default_actor("w6a", "bench.w6")}[kind]
        results.put((kind, "result", fn(endpoint, params, results, go)))
    except BaseException:
        results.put((kind, "error", traceback.format_exc()))
        raise SystemExit(1)


def _wait_go(kind: str, results, go, params: dict) -> None:
    results.put((kind, "ready", None))
    if not go.wait(params["timeout"]):
        raise TimeoutError("no start signal")


def _publish_all(p, topic: str, n: int, timeout: float) -> dict:
    payloads = [make_payload(i) for i in range(n)]
    futures = [None] * n
    publish_async = p.publish_async
    t_first = now()
    for i in range(n):
        futures[i] = publish_async(topic, payloads[i])
    t_sent = now()
    p.flush(timeout)
    t_last = now()
    seqs = []
    missing = 0
    for f in futures:
        if not f.done():
            missing += 1
            continue
        seq = f.result(0)
        if not isinstance(seq, int):
            missing += 1
        else:
            seqs.append(seq)
    distinct = len(set(seqs))
    return {
        "n": n, "t_first": t_first, "t_sent": t_sent, "t_last_confirm": t_last,
        "confirmed": len(seqs), "distinct_seqs": distinct, "unconfirmed": missing,
        "seq_min": min(seqs) if seqs else None, "seq_max": max(seqs) if seqs else None,
    }


def _producer(kind: str, default_topic: str):
    """The producer side of W1, W2 and W4: connect, report ready, publish N (see _publish_all)."""

    def run(endpoint: str, params: dict, results, go) -> dict:
        from zmq_mq.actors import Producer

        with Producer(endpoint, timeout=params["timeout"]) as p:
            _wait_go(kind, results, go, params)
            mark = CpuMark()
            r = _publish_all(p, params.get("topic", default_topic), params["n"], params["timeout"])
            r["cpu"] = mark.since(r["n"])
            return r

    return run


class _Tally:
    """What a receiving side saw: every delivery, distinct seqs and payload ids, first and last
    receive times (W2's consumer and W4's actor)."""

    __slots__ = ("seqs", "ids", "received", "bad", "t_first", "t_last")

    def __init__(self) -> None:
        self.seqs: set[int] = set()
        self.ids: set[int] = set()
        self.received = 0
        self.bad = 0
        self.t_first: float | None = None
        self.t_last: float | None = None

    def record(self, msg) -> None:
        t = now()
        if self.t_first is None:
            self.t_first = t
        self.t_last = t
        self.received += 1
        self.seqs.add(msg.seq)
        payload = msg.payload
        if len(payload) != PAYLOAD_SIZE:
            self.bad += 1
        else:
            self.ids.add(int.from_bytes(payload[:8], "big"))

    def result(self, n: int, close_s: float) -> dict:
        return {
            "n": n, "received": self.received, "distinct_seqs": len(self.seqs),
            "distinct_payload_ids": len(self.ids), "duplicates": self.received - len(self.seqs),
            "bad_payloads": self.bad, "t_first_recv": self.t_first, "t_last_recv": self.t_last,
            "close_s": close_s,
        }


def _consumer(kind: str, default_topic: str):
    """A ``Consumer`` that receives and acks until it has seen N distinct sequences (W2, the
    Consumer rounds of W2A, W6's Consumer drains): subscribed before it reports ready, or with
    ``attach_after_go`` (a backlog drain) connected and subscribed once told to go; its drain
    time then starts before it connects."""

    def run(endpoint: str, params: dict, results, go) -> dict:
        from zmq_mq.actors import Consumer

        n = params["n"]
        topic = params.get("topic", default_topic)
        group = params.get("group", "bench")
        after_go = params.get("attach_after_go", False)
        c = Consumer(endpoint, timeout=params["timeout"])
        closed = False
        try:
            if not after_go:
                c.connect()
                c.subscribe(topic, group, credit=params["credit"])
            _wait_go(kind, results, go, params)
            mark = CpuMark()
            t_start = now()
            if after_go:
                c.connect()
                c.subscribe(topic, group, credit=params["credit"])
            tally = _Tally()
            seqs = tally.seqs
            record = tally.record
            deadline = now() + params["timeout"]
            receive = c.receive
            idle_timeout = params["idle_timeout"]
            while len(seqs) < n and now() < deadline:
                msg = receive(timeout=idle_timeout)
                if msg is None:
                    break  # nothing for idle_timeout seconds: count what we have
                record(msg)
                msg.ack()
            cpu = mark.since(len(seqs))
            timed_out = len(seqs) < n and now() >= deadline
            t_close0 = now()
            c.close()
            closed = True
            return {**tally.result(n, now() - t_close0), "t_start": t_start, "cpu": cpu,
                    "group": group, "timed_out": timed_out,
                    "peak_rss_mb": process_status(os.getpid()).get("peak_rss_mb")}
        finally:
            if not closed:
                c.close(timeout=2.0)

    return run


def _run_w4_actor(endpoint: str, params: dict, results, go) -> dict:
    """An Actor with ``concurrency`` worker threads and a handler that only records the seq:
    what the runtime itself costs per message (hand-off to a worker thread, ack on return)."""
    from zmq_mq.actors import Actor

    n = params["n"]
    lock = threading.Lock()  # handlers run on several worker threads
    tally = _Tally()
    done = threading.Event()

    def handle(msg) -> None:
        with lock:
            tally.record(msg)
            if len(tally.seqs) >= n:
                done.set()

    actor = Actor(endpoint, name="bench-w4", concurrency=params["concurrency"],
                  prefetch=params["prefetch"], timeout=params["timeout"])
    actor.add_handler(params.get("topic", "bench.w4"), handle, group="bench",
                      credit=params["concurrency"] * params["prefetch"])
    actor.start()  # attached: the producer may start
    try:
        _wait_go("w4a", results, go, params)
        mark = CpuMark()
        deadline = now() + params["timeout"]
        idle = params["idle_timeout"]
        started = now()
        while not done.wait(0.2) and now() < deadline:
            last = tally.t_last or started
            if now() - last > idle:
                break  # nothing for idle_timeout seconds: count what we have
        cpu = mark.since(len(tally.seqs))
        t_close0 = now()
        actor.stop()  # handlers finish, acks committed, detached
        close_s = now() - t_close0
    finally:
        if actor.running:
            actor.stop(timeout=5.0)
    return {**tally.result(n, close_s), "cpu": cpu,
            "concurrency": params["concurrency"], "prefetch": params["prefetch"]}


def _run_w3_producer(endpoint: str, params: dict, results, go) -> dict:
    from zmq_mq.actors import Producer

    rate = params["rate"]
    n = int(rate * params["duration"])
    payloads = [make_payload(i) for i in range(n)]
    t_call = [0.0] * n
    t_done = [0.0] * n
    clock = time.perf_counter  # CLOCK_MONOTONIC as well, in one process: fine for latencies

    def on_done(i: int):
        def cb(fut) -> None:
            t_done[i] = clock()
        return cb

    topic = params.get("topic", "bench.w3")
    with Producer(endpoint, timeout=params["timeout"]) as p:
        _wait_go("w3", results, go, params)
        mark = CpuMark()
        publish_async = p.publish_async
        interval = 1.0 / rate
        t0_mono = now()
        t0 = clock()
        i = 0
        while i < n:
            t = clock()
            due = t0 + i * interval
            if t < due:
                # sleep, never spin: a spinning thread would hold the GIL that the producer's
                # I/O thread needs to send and to resolve confirms
                time.sleep(due - t)
                continue
            while i < n and t0 + i * interval <= t:  # everything due by now
                t_call[i] = clock()
                publish_async(topic, payloads[i]).add_done_callback(on_done(i))
                i += 1
        t_sent = clock()
        p.flush(params["timeout"])
        t_end = clock()
        cpu = mark.since(n)
    due0 = t0
    lat = []
    lat_sched = []
    unconfirmed = 0
    for k in range(n):
        if t_done[k] == 0.0:
            unconfirmed += 1
            continue
        lat.append(t_done[k] - t_call[k])
        lat_sched.append(t_done[k] - (due0 + k * interval))
    lat.sort()
    lat_sched.sort()
    # behind schedule: how late the publish_async calls were relative to their due time
    lateness = sorted(t_call[k] - (t0 + k * interval) for k in range(n))
    return {
        "n": n, "rate_target": rate, "duration_target_s": params["duration"],
        "publish_span_s": t_sent - t0, "confirm_span_s": t_end - t0,
        "confirmed": len(lat), "unconfirmed": unconfirmed,
        "lat_ms": percentiles(lat), "lat_from_schedule_ms": percentiles(lat_sched),
        "call_lateness_ms": percentiles(lateness),
        "t0": t0_mono, "t_end": t0_mono + (t_end - t0), "cpu": cpu,
    }


def _default_actor(kind: str, default_topic: str):
    """The Actor as the README shows it: ``Actor(endpoint)`` on its defaults (a default is
    overridden only by --concurrency, --prefetch or --actor-credit when given) and a handler
    declared with ``@actor.subscribe(topic, group=...)`` that returns None, so the runtime acks
    it on return. The handler only records the message in the tally, as W2's consumer does
    (``handler="async"``: the same body in an ``async def``).

    W2A and W5: attached before it reports ready (before the producer starts). W6
    (``attach_after_go``): started once told to go, on a backlog; its drain time starts before
    ``start()`` connects. W5 (``latency``): the handler first reads CLOCK_MONOTONIC and
    subtracts the publish call's time, which the producer put in payload bytes 8-16."""

    def run(endpoint: str, params: dict, results, go) -> dict:
        from zmq_mq.actors import Actor

        n = params["n"]
        topic = params.get("topic", default_topic)
        group = params.get("group", "bench")
        after_go = params.get("attach_after_go", False)
        handler_kind = params.get("handler", "sync")
        tally = _Tally()
        record = tally.record
        seqs = tally.seqs
        lock = threading.Lock()  # a plain handler may run on several worker threads at once
        done = threading.Event()
        lat_ns: list[int] = []
        keep = lat_ns.append
        clock_ns = time.monotonic_ns

        if params.get("latency"):
            def handle(msg) -> None:
                t = clock_ns()  # first thing in the handler
                with lock:
                    keep(t - int.from_bytes(msg.payload[8:16], "big"))
                    record(msg)
                    if len(seqs) >= n:
                        done.set()
        else:
            def handle(msg) -> None:
                with lock:
                    record(msg)
                    if len(seqs) >= n:
                        done.set()

        options = {k: params[k] for k in ("concurrency", "prefetch") if params.get(k) is not None}
        actor = Actor(endpoint, **options)
        subscription = {"group": group}
        if params.get("credit") is not None:
            subscription["credit"] = params["credit"]
        if handler_kind == "async":
            sync_handle = handle

            @actor.subscribe(topic, **subscription)
            async def handle_async(msg) -> None:
                sync_handle(msg)
        else:
            actor.subscribe(topic, **subscription)(handle)
        config = {"concurrency": getattr(actor, "concurrency", None),
                  "prefetch": getattr(actor, "prefetch", None), "handler": handler_kind,
                  "credit": params.get("credit"),
                  "given": sorted(options) + (["credit"] if "credit" in subscription else [])}
        try:
            if not after_go:
                actor.start()  # attached: the producer may start
            _wait_go(kind, results, go, params)
            mark = CpuMark()
            t_start = now()
            if after_go:
                actor.start()
            deadline = now() + params["timeout"]
            idle = params["idle_timeout"]
            while not done.wait(0.1) and now() < deadline:
                if now() - (tally.t_last or t_start) > idle:
                    break  # nothing for idle_timeout seconds: count what we have
            cpu = mark.since(len(seqs))
            timed_out = not done.is_set() and now() >= deadline
            t_close0 = now()
            actor.stop()  # handlers finish, acks committed, detached
            close_s = now() - t_close0
        finally:
            if actor.running:
                actor.stop(timeout=5.0)
        out = {**tally.result(n, close_s), "t_start": t_start, "cpu": cpu, "group": group,
               "timed_out": timed_out, "actor": config,
               "peak_rss_mb": process_status(os.getpid()).get("peak_rss_mb")}
        if params.get("latency"):
            out["latency_ms"] = percentiles(sorted(x / 1e9 for x in lat_ns))
        return out

    return run


def _run_w5_producer(endpoint: str, params: dict, results, go) -> dict:
    """W5's producer: message i due at t0 + i/rate (sleeping, never spinning, as W3's); each
    payload carries its number (bytes 0-8) and CLOCK_MONOTONIC in ns read right before its
    ``publish_async`` call (bytes 8-16)."""
    from zmq_mq.actors import Producer

    rate = params["rate"]
    n = int(rate * params["duration"])
    heads = [i.to_bytes(8, "big") for i in range(n)]
    pad = bytes(PAYLOAD_SIZE - 16)
    t_call = [0] * n
    futures: list = [None] * n
    clock_ns = time.monotonic_ns
    step = 1e9 / rate
    topic = params.get("topic", "bench.w5")
    with Producer(endpoint, timeout=params["timeout"]) as p:
        _wait_go("w5p", results, go, params)
        mark = CpuMark()
        publish_async = p.publish_async
        t0 = clock_ns()
        i = 0
        while i < n:
            t = clock_ns()
            due = t0 + i * step
            if t < due:
                time.sleep((due - t) / 1e9)
                continue
            while i < n and t0 + i * step <= t:  # everything due by now
                stamp = clock_ns()
                futures[i] = publish_async(topic, heads[i] + stamp.to_bytes(8, "big") + pad)
                t_call[i] = stamp
                i += 1
        t_sent = clock_ns()
        p.flush(params["timeout"])
        t_end = clock_ns()
        cpu = mark.since(n)
    unconfirmed = sum(1 for f in futures if f is None or not f.done() or f.exception(0) is not None)
    lateness = sorted((t_call[k] - (t0 + k * step)) / 1e9 for k in range(n))
    return {
        "n": n, "rate_target": rate, "duration_target_s": params["duration"],
        "publish_span_s": (t_sent - t0) / 1e9, "unconfirmed": unconfirmed,
        "call_lateness_ms": percentiles(lateness), "t0": t0 / 1e9, "t_end": t_end / 1e9,
        "cpu": cpu,
    }


# --- orchestration -------------------------------------------------------------------------


class Workers:
    """Spawned child processes with a shared result queue and start event; cleaned up always."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self.results = self.ctx.Queue()
        self.go = self.ctx.Event()
        self.procs: dict[str, mp.process.BaseProcess] = {}

    def start(self, kind: str, endpoint: str, params: dict) -> None:
        proc = self.ctx.Process(
            target=_worker, args=(kind, endpoint, params, self.results, self.go),
            name=f"bench-{kind}", daemon=True,
        )
        proc.start()
        self.procs[kind] = proc

    def wait_ready(self, timeout: float) -> None:
        waiting = set(self.procs)
        deadline = time.monotonic() + timeout
        while waiting:
            kind, status, value = self._get(deadline, "ready")
            if status == "error":
                raise RuntimeError(f"worker {kind} failed before start:\n{value}")
            waiting.discard(kind)

    def collect(self, timeout: float) -> dict:
        out: dict = {}
        deadline = time.monotonic() + timeout
        errors = []
        while len(out) + len(errors) < len(self.procs):
            kind, status, value = self._get(deadline, "results")
            if status == "error":
                errors.append(f"worker {kind} failed:\n{value}")
            elif status == "result":
                out[kind] = value
        if errors:
            raise RuntimeError("\n".join(errors))
        return out

    def _get(self, deadline: float, what: str):
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out waiting for worker {what}")
            try:
                return self.results.get(timeout=min(left, 1.0))
            except queue.Empty:
                dead = [k for k, p in self.procs.items() if p.exitcode not in (None, 0)]
                if dead:
                    # give a failing child's traceback a moment to arrive
                    try:
                        return self.results.get(timeout=2.0)
                    except queue.Empty:
                        raise RuntimeError(
                            f"worker(s) {dead} exited with "
                            f"{[self.procs[k].exitcode for k in dead]} without a report"
                        ) from None

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.join(10)
        for proc in self.procs.values():
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.results.close()
        self.results.cancel_join_thread()


def _end_to_end(p: dict, c: dict) -> dict:
    """W2's numbers (also W4's and each round of W2A): producer ``p`` and receiver ``c``."""
    end = c["t_last_recv"] if c["t_last_recv"] is not None else float("nan")
    span = end - p["t_first"]
    lost = p["n"] - c["distinct_seqs"]
    return {
        "ok": lost == 0 and p["distinct_seqs"] == p["n"] and p["unconfirmed"] == 0,
        "n": p["n"], "msg_per_s": p["n"] / span, "span_s": span,
        "publish_confirm_s": p["t_last_confirm"] - p["t_first"],
        "publish_msg_per_s": p["n"] / (p["t_last_confirm"] - p["t_first"]),
        "first_delivery_after_s": (c["t_first_recv"] - p["t_first"])
        if c["t_first_recv"] is not None else None,
        "producer_distinct_seqs": p["distinct_seqs"], "received": c["received"],
        "distinct_seqs": c["distinct_seqs"], "distinct_payload_ids": c["distinct_payload_ids"],
        "duplicates": c["duplicates"], "bad_payloads": c["bad_payloads"], "lost": lost,
        "consumer_close_s": c["close_s"],
        "_window": (p["t_first"], end),
    }


def _publish_summary(r: dict) -> dict:
    """W1's numbers (also W6's backlog publish)."""
    span = r["t_last_confirm"] - r["t_first"]
    lost = r["n"] - r["distinct_seqs"]
    return {
        "ok": lost == 0 and r["unconfirmed"] == 0, "n": r["n"], "msg_per_s": r["n"] / span,
        "span_s": span, "enqueue_s": r["t_sent"] - r["t_first"],
        "confirmed": r["confirmed"], "distinct_seqs": r["distinct_seqs"], "lost": lost,
        "seq_range": [r["seq_min"], r["seq_max"]],
        "_window": (r["t_first"], r["t_last_confirm"]),
    }


def drain_summary(c: dict, n: int) -> dict:
    """One W6 drain of an ``n``-message backlog by ``c`` (a Consumer or an Actor): msg/s =
    distinct messages / (start of the drain, before connecting -> last message received); a
    drain cut short by --timeout still gives its rate, but is not ok: what it did not reach is
    ``undrained``, not lost."""
    end = c["t_last_recv"] if c["t_last_recv"] is not None else float("nan")
    span = end - c["t_start"]
    got = c["distinct_seqs"]
    missing = n - got
    lost, undrained = (0, missing) if c["timed_out"] else (missing, 0)
    out = {
        "ok": missing == 0 and c["bad_payloads"] == 0, "n": n, "group": c["group"],
        "msg_per_s": got / span if span > 0 else None, "span_s": span,
        "first_delivery_after_s": (c["t_first_recv"] - c["t_start"])
        if c["t_first_recv"] is not None else None,
        "received": c["received"], "distinct_seqs": got,
        "distinct_payload_ids": c["distinct_payload_ids"], "duplicates": c["duplicates"],
        "bad_payloads": c["bad_payloads"], "lost": lost, "timed_out": c["timed_out"],
        "undrained": undrained,
        "close_s": c["close_s"], "drainer_peak_rss_mb": c.get("peak_rss_mb"),
        "_window": (c["t_start"], end),
    }
    if "actor" in c:
        out["actor"] = c["actor"]
    return out


def compare(legs: list[dict]) -> dict:
    """Consumer against Actor over the rounds of W2A or W6: per round and overall msg/s and the
    Actor/Consumer ratio. Overall = all messages of a variant / all its seconds."""
    by_round: dict[int, dict] = {}
    totals = {"consumer": [0, 0.0], "actor": [0, 0.0]}
    for leg in legs:
        rate = leg.get("msg_per_s")
        row = by_round.setdefault(leg["round"], {"round": leg["round"]})
        row[f"{leg['variant']}_msg_per_s"] = rate
        if rate and leg.get("span_s", 0) > 0:
            totals[leg["variant"]][0] += leg.get("distinct_seqs", 0)
            totals[leg["variant"]][1] += leg["span_s"]
    rounds = []
    for r in by_round.values():
        c, a = r.get("consumer_msg_per_s"), r.get("actor_msg_per_s")
        r["ratio"] = a / c if a and c else None
        rounds.append(r)
    overall = {k: (v[0] / v[1] if v[1] > 0 else None) for k, v in totals.items()}
    c, a = overall["consumer"], overall["actor"]
    return {"consumer_msg_per_s": c, "actor_msg_per_s": a,
            "ratio": a / c if a and c else None, "rounds_detail": rounds}


def summarise(name: str, out: dict) -> dict:
    """A workload's numbers from what its processes reported. ``cpu`` holds each process's CPU
    over its measured phase (the hub's is added by the suite over ``_window``, the measured span
    in CLOCK_MONOTONIC seconds, which the suite removes)."""
    if name == "W1":
        r = out["w1"]
        return {**_publish_summary(r), "cpu": {"producer": r["cpu"]}}
    if name in ("W2", "W4"):
        p, c = (out["w2p"], out["w2c"]) if name == "W2" else (out["w4p"], out["w4a"])
        return {
            **_end_to_end(p, c),
            **({"concurrency": c["concurrency"], "prefetch": c["prefetch"]} if name == "W4" else {}),
            "cpu": {"producer": p["cpu"], "consumer" if name == "W2" else "actor": c["cpu"]},
        }
    if name == "W5":
        p, a = out["w5p"], out["w5a"]
        lost = p["n"] - a["distinct_seqs"]
        lat = a.get("latency_ms", {})
        return {
            "ok": lost == 0 and p["unconfirmed"] == 0 and a["bad_payloads"] == 0, "n": p["n"],
            "lost": lost, "unconfirmed": p["unconfirmed"], "rate_target": p["rate_target"],
            "achieved_rate": p["n"] / p["publish_span_s"], "publish_span_s": p["publish_span_s"],
            "handled": a["received"], "distinct_seqs": a["distinct_seqs"],
            "duplicates": a["duplicates"],
            "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"), "p99.9_ms": lat.get("p99.9"),
            "max_ms": lat.get("max"), "latency_ms": lat,
            "call_lateness_ms": p["call_lateness_ms"], "actor": a["actor"],
            "cpu": {"producer": p["cpu"], "actor": a["cpu"]},
            "_window": (p["t0"], a["t_last_recv"] if a["t_last_recv"] is not None else p["t_end"]),
        }
    r = out["w3"]
    lost = r["unconfirmed"]
    return {
        "ok": lost == 0, "n": r["n"], "lost": lost, "rate_target": r["rate_target"],
        "achieved_rate": r["n"] / r["publish_span_s"],
        "confirmed_rate": r["confirmed"] / r["confirm_span_s"],
        "publish_span_s": r["publish_span_s"],
        "p50_ms": r["lat_ms"].get("p50"), "p99_ms": r["lat_ms"].get("p99"),
        "p99.9_ms": r["lat_ms"].get("p99.9"), "max_ms": r["lat_ms"].get("max"),
        "latency_ms": r["lat_ms"], "latency_from_schedule_ms": r["lat_from_schedule_ms"],
        "call_lateness_ms": r["call_lateness_ms"],
        "cpu": {"producer": r["cpu"]}, "_window": (r["t0"], r["t_end"]),
    }
