"""The workloads: what each child process does (W1, W2 and W4 producers, W2's consumer, W4's
Actor, W3's steady-rate producer), the processes that run them, and each workload's summary."""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import time
import traceback

from .measure import now, percentiles

PAYLOAD_SIZE = 128
WORKLOAD_NAMES = {
    "W1": "durable publish (pipelined, all confirmed)",
    "W2": "end to end (1 producer + 1 consumer, all acked)",
    "W3": "publish-confirm latency at a steady rate",
    "W4": "end to end through an Actor (1 producer + 1 Actor process, all acked)",
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
              "w2c": _run_w2_consumer, "w3": _run_w3_producer,
              "w4p": _producer("w4p", "bench.w4"), "w4a": _run_w4_actor}[kind]
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
            return _publish_all(p, params.get("topic", default_topic), params["n"], params["timeout"])

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


def _run_w2_consumer(endpoint: str, params: dict, results, go) -> dict:
    from zmq_mq.actors import Consumer

    n = params["n"]
    c = Consumer(endpoint, timeout=params["timeout"])
    c.connect()
    closed = False
    try:
        c.subscribe(params.get("topic", "bench.w2"), "bench", credit=params["credit"])
        _wait_go("w2c", results, go, params)
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
        t_close0 = now()
        c.close()
        closed = True
        return tally.result(n, now() - t_close0)
    finally:
        if not closed:
            c.close(timeout=2.0)


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
        deadline = now() + params["timeout"]
        idle = params["idle_timeout"]
        started = now()
        while not done.wait(0.2) and now() < deadline:
            last = tally.t_last or started
            if now() - last > idle:
                break  # nothing for idle_timeout seconds: count what we have
        t_close0 = now()
        actor.stop()  # handlers finish, acks committed, detached
        close_s = now() - t_close0
    finally:
        if actor.running:
            actor.stop(timeout=5.0)
    return {**tally.result(n, close_s),
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
        publish_async = p.publish_async
        interval = 1.0 / rate
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


def summarise(name: str, out: dict) -> dict:
    if name == "W1":
        r = out["w1"]
        span = r["t_last_confirm"] - r["t_first"]
        lost = r["n"] - r["distinct_seqs"]
        return {
            "ok": lost == 0 and r["unconfirmed"] == 0, "n": r["n"], "msg_per_s": r["n"] / span,
            "span_s": span, "enqueue_s": r["t_sent"] - r["t_first"],
            "confirmed": r["confirmed"], "distinct_seqs": r["distinct_seqs"], "lost": lost,
            "seq_range": [r["seq_min"], r["seq_max"]],
        }
    if name in ("W2", "W4"):
        p, c = (out["w2p"], out["w2c"]) if name == "W2" else (out["w4p"], out["w4a"])
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
            **({"concurrency": c["concurrency"], "prefetch": c["prefetch"]} if name == "W4" else {}),
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
    }
