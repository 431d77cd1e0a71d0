"""zmq-mq benchmark suite: what users get from a real hub process and real client processes.

    python bench/bench.py [--workloads W1,W2,W3] [--messages 200000]
                          [--json-out bench/results/latest.json] [--sync full] [--hub ENDPOINT]
    zmq-mq bench ...      (the same engine from the installed package; see cli/main.py)

Each workload starts its own hub (``zmq-mq hub``) as a subprocess on a fresh temporary data
directory (or, with ``--hub``, uses a running hub, on topics new to each run), runs producers and consumers as separate processes (multiprocessing, spawn), and stops
the hub with SIGTERM (SIGKILL if it does not exit) in a ``finally``. Payloads are 128 bytes.

- W1 durable publish: one producer, N messages pipelined with ``publish_async``, every one
  confirmed; msg/s = N / (first publish -> last confirm).
- W2 end to end: one producer and one consumer process at once (group "bench", credit 1000),
  every message acked; the consumer counts distinct sequences (none lost) and duplicates;
  msg/s = N / (first publish -> last message received by the consumer).
- W3 publish-confirm latency: one producer at a steady rate (default 5,000 msg/s for 10 s),
  message i due at t0 + i/rate; latency = publish_async call -> confirm callback.
- W4 end to end through an Actor (only when named: ``--workloads W4``): W2 with an ``Actor``
  process (``--concurrency`` worker threads, default 8; ``--prefetch`` messages held per thread,
  default 1) in place of the consumer; its handler only records the seq: the runtime's own cost.

Cross-process times use CLOCK_MONOTONIC, which is system-wide on Linux.
Exit status: 0 unless a workload errored or lost messages (floors only print PASS/FAIL).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

PAYLOAD_SIZE = 128
READY_RE = re.compile(r"zmq-mq hub ready: router (\S+) pub (\S+) data (.*) sync (\S+)")
HUB_START_TIMEOUT = 20.0
FLOORS = {
    "W1": ("msg_per_s", ">=", 100_000, "W1 >= 100,000 msg/s"),
    "W2": ("msg_per_s", ">=", 50_000, "W2 >= 50,000 msg/s"),
    "W3": ("p99_ms", "<=", 10.0, "W3 p99 <= 10 ms"),
}  # W4 has none: it sizes Actor deployments

WORKLOAD_NAMES = {
    "W1": "durable publish (pipelined, all confirmed)",
    "W2": "end to end (1 producer + 1 consumer, all acked)",
    "W3": "publish-confirm latency at a steady rate",
    "W4": "end to end through an Actor (1 producer + 1 Actor process, all acked)",
}


def now() -> float:
    """Seconds on CLOCK_MONOTONIC: comparable between processes of this machine."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def make_payload(i: int) -> bytes:
    """128 bytes carrying the message number, so a consumer can tell messages apart."""
    return i.to_bytes(8, "big") + b"\x00" * (PAYLOAD_SIZE - 8)


# --- the hub -------------------------------------------------------------------------------


def hub_command() -> list[str]:
    script = Path(sys.executable).parent / "zmq-mq"
    if script.exists():
        return [str(script)]
    found = shutil.which("zmq-mq")
    if found:
        return [found]
    return [sys.executable, "-c", "from zmq_mq.cli.main import main; main()"]


class HubProcess:
    """A ``zmq-mq hub`` subprocess on a fresh data directory, on free ports."""

    def __init__(self, sync: str) -> None:
        self.sync = sync
        self.tmp = tempfile.mkdtemp(prefix="zmq-mq-bench-")
        self.data = os.path.join(self.tmp, "data")
        self.proc: subprocess.Popen | None = None
        self.endpoint: str | None = None
        self.pub: str | None = None
        self.stderr_tail: list[str] = []
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self) -> "HubProcess":
        cmd = hub_command() + [
            "hub", "--data", self.data,
            "--bind", "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*",
            "--sync", self.sync, "--log-level", "warning",
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._ready.wait(HUB_START_TIMEOUT) or self.endpoint is None:
            raise RuntimeError(
                f"hub did not print its ready line within {HUB_START_TIMEOUT:g} s "
                f"(exit code {self.proc.poll()}): {''.join(self.stderr_tail[-20:])}"
            )
        return self

    def _read_stderr(self) -> None:
        """Parse the ready line, then keep draining stderr (so the pipe never fills)."""
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_tail.append(line)
            del self.stderr_tail[:-200]
            if not self._ready.is_set():
                m = READY_RE.search(line)
                if m:
                    self.endpoint, self.pub = m.group(1), m.group(2)
                    self._ready.set()
        self._ready.set()  # exited: unblock start()

    def status(self) -> dict:
        """Peak RSS (VmHWM), current RSS and CPU seconds used, from /proc."""
        out: dict = {}
        if self.proc is None or self.proc.poll() is not None:
            return out
        pid = self.proc.pid
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(("VmHWM:", "VmRSS:")):
                        key, value = line.split(":", 1)
                        out[{"VmHWM:": "peak_rss_mb", "VmRSS:": "rss_mb"}[key + ":"]] = (
                            int(value.split()[0]) / 1024
                        )
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks = os.sysconf("SC_CLK_TCK")
            out["cpu_user_s"] = int(fields[11]) / ticks
            out["cpu_sys_s"] = int(fields[12]) / ticks
        except (OSError, ValueError, IndexError):
            pass
        return out

    def stop(self) -> int | None:
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            code = self.proc.returncode
            if self._reader is not None:
                self._reader.join(5)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return code


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
        "lat_ms": _percentiles(lat), "lat_from_schedule_ms": _percentiles(lat_sched),
        "call_lateness_ms": _percentiles(lateness),
    }


def _percentiles(sorted_values: list[float]) -> dict:
    if not sorted_values:
        return {}
    n = len(sorted_values)

    def q(p: float) -> float:
        return sorted_values[min(n - 1, max(0, int(round(p * n + 0.5)) - 1))] * 1000

    return {
        "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "p99.9": q(0.999),
        "max": sorted_values[-1] * 1000, "mean": sum(sorted_values) / n * 1000,
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


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]), idle


def background_cpu(seconds: float = 1.0) -> dict:
    """Machine-wide CPU busy share while the bench is idle (other tenants of the machine)."""
    try:
        total0, idle0 = _cpu_times()
        time.sleep(seconds)
        total1, idle1 = _cpu_times()
        busy = 1.0 - (idle1 - idle0) / max(1, total1 - total0)
        with open("/proc/loadavg") as f:
            load1 = float(f.read().split()[0])
        return {"busy_pct": round(busy * 100, 1), "busy_cores": round(busy * (os.cpu_count() or 1), 2),
                "loadavg_1m": load1}
    except (OSError, ValueError, IndexError):
        return {}


class StallMeter:
    """How often this machine stops running a ready thread (hypervisor throttling, steal time).

    A thread in the otherwise idle bench parent sleeps 1 ms at a time and records every wake-up
    more than ``threshold_ms`` late. Such stalls hit the hub and the clients alike, so a latency
    tail that matches them is the machine's, not the queue's. Measured, never subtracted.
    """

    def __init__(self, threshold_ms: float = 4.0) -> None:
        self.threshold = threshold_ms / 1000
        self.stalls: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-meter", daemon=True)
        self.started = 0.0
        self.elapsed = 0.0

    def _run(self) -> None:
        tick = 0.001
        prev = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(tick)
            now = time.perf_counter()
            late = now - prev - tick
            if late > self.threshold:
                self.stalls.append(late)
            prev = now

    def __enter__(self) -> "StallMeter":
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)
        self.elapsed = time.perf_counter() - self.started

    def summary(self) -> dict:
        stalls = sorted(self.stalls)
        return {
            "threshold_ms": self.threshold * 1000, "seconds": round(self.elapsed, 2),
            "count": len(stalls), "per_s": round(len(stalls) / max(self.elapsed, 1e-9), 2),
            "stalled_ms": round(sum(stalls) * 1000, 1),
            "max_ms": round(stalls[-1] * 1000, 2) if stalls else 0.0,
            "p50_ms": round(stalls[len(stalls) // 2] * 1000, 2) if stalls else 0.0,
        }


class ExternalHub:
    """A hub somebody else runs (``--hub``): nothing to start or stop, no /proc numbers."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.stderr_tail: list[str] = []

    def start(self) -> "ExternalHub":
        return self

    def status(self) -> dict:
        return {}

    def stop(self) -> None:
        return None


def run_workload(name: str, args) -> dict:
    external = getattr(args, "hub", None)
    hub = ExternalHub(external) if external else HubProcess(args.sync)
    workers = Workers()
    result: dict = {"workload": name, "description": WORKLOAD_NAMES[name], "ok": False}
    result["background_cpu_before"] = background_cpu()
    started = time.monotonic()
    try:
        hub.start()
        result["hub_endpoint"] = hub.endpoint
        base = {"timeout": args.timeout}
        if external:  # a used hub: fresh topics, so that numbering and the W2 group start clean
            base["topic"] = f"bench.{name.lower()}.{os.getpid()}-{time.time_ns() // 1_000_000}"
        if name == "W1":
            workers.start("w1", hub.endpoint, dict(base, n=args.messages))
        elif name == "W2":
            # consumer first: subscribed (and reported ready) before the producer publishes
            workers.start("w2c", hub.endpoint, dict(base, n=args.messages, credit=args.credit,
                                                    idle_timeout=10.0))
            workers.start("w2p", hub.endpoint, dict(base, n=args.messages))
        elif name == "W4":
            # the actor first: attached (and reported ready) before the producer publishes
            workers.start("w4a", hub.endpoint, dict(base, n=args.messages,
                                                    concurrency=args.concurrency,
                                                    prefetch=getattr(args, "prefetch", 1),
                                                    idle_timeout=10.0))
            workers.start("w4p", hub.endpoint, dict(base, n=args.messages))
        elif name == "W3":
            workers.start("w3", hub.endpoint, dict(base, rate=args.rate, duration=args.duration))
        workers.wait_ready(60.0)
        with StallMeter() as stalls:
            workers.go.set()
            out = workers.collect(args.timeout + 30.0)
        result.update(summarise(name, out))
        result["machine_stalls"] = stalls.summary()
        result["hub"] = hub.status()
    except BaseException as exc:
        result["error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        result["hub_stderr_tail"] = "".join(hub.stderr_tail[-20:])
        result["hub"] = hub.status()
        if isinstance(exc, KeyboardInterrupt):
            raise
    finally:
        try:
            workers.stop()
        finally:
            result["hub_exit_code"] = hub.stop()
            result["wall_s"] = time.monotonic() - started
    return result


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


def floor_verdict(result: dict) -> tuple[str, str]:
    if result["workload"] not in FLOORS:
        if "error" in result:
            return "none", "n/a"
        return "none", "OK" if result.get("ok") else "INVALID"
    key, op, limit, label = FLOORS[result["workload"]]
    value = result.get(key)
    if value is None or "error" in result:
        return label, "n/a"
    if not result.get("ok"):
        return label, "INVALID"  # messages lost or unconfirmed: the rate means nothing
    ok = value >= limit if op == ">=" else value <= limit
    return label, "PASS" if ok else "FAIL"


# --- machine info and output ---------------------------------------------------------------


def machine_info() -> dict:
    info: dict = {
        "nproc": os.cpu_count(), "python": sys.version.split()[0],
        "implementation": platform.python_implementation(), "kernel": platform.release(),
    }
    try:
        info["nproc_available"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["mem_total_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                    break
    except OSError:
        pass
    try:
        import lmdb
        import zmq

        info["pyzmq"] = zmq.__version__
        info["libzmq"] = zmq.zmq_version()
        info["lmdb"] = lmdb.__version__
    except Exception:
        pass
    return info


def git_info() -> dict:
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return {"commit": head, "dirty": bool(dirty)}
    except Exception:
        return {}


def fmt(value, spec: str = ",.0f") -> str:
    if value is None:
        return "-"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(150, shutil.get_terminal_size((150, 40)).columns))
    m = report["machine"]
    console.print(
        f"[bold]zmq-mq bench[/bold]  {report['timestamp']}  sync={report['config']['sync']}  "
        f"{m.get('cpu_model', '?')}, {m.get('nproc')} cpu, {m.get('mem_total_gib')} GiB, "
        f"Python {m.get('python')}"
    )
    table = Table(show_lines=True)
    for col in ("workload", "result", "details", "hub peak RSS", "busy before",
                "machine stalls", "floor", "verdict"):
        table.add_column(col)
    for r in report["workloads"]:
        name = f"{r['workload']}\n{r['description']}"
        hub = r.get("hub", {})
        rss = fmt(hub.get("peak_rss_mb"), ",.1f") + " MiB"
        bg = r.get("background_cpu_before", {})
        busy = f"{fmt(bg.get('busy_cores'), '.2f')} cores"
        st = r.get("machine_stalls") or {}
        stalls = (f"{st['count']:,} ({fmt(st['per_s'], '.1f')}/s), max {fmt(st['max_ms'], '.1f')} ms"
                  if st else "n/a")
        label, verdict = floor_verdict(r)
        color = {"PASS": "green", "OK": "green", "FAIL": "red", "INVALID": "red"}.get(verdict, "yellow")
        verdict = f"[{color}]{verdict}[/{color}]"
        if "error" in r:
            table.add_row(name, "[red]ERROR[/red]", r["error"][:300], rss, busy, stalls, label, verdict)
            continue
        lost = f"lost {r['lost']}" if r.get("lost") else "none lost"
        if r["workload"] == "W1":
            main = f"{fmt(r['msg_per_s'])} msg/s"
            details = (f"N={r['n']:,} in {r['span_s']:.2f} s; distinct seqs {r['distinct_seqs']:,}; "
                       f"{lost}")
        elif r["workload"] in ("W2", "W4"):
            main = f"{fmt(r['msg_per_s'])} msg/s"
            who = (f"actor concurrency {r['concurrency']}, prefetch {r['prefetch']}; "
                   if r["workload"] == "W4" else "")
            details = (f"N={r['n']:,} in {r['span_s']:.2f} s; {who}publish side "
                       f"{fmt(r['publish_msg_per_s'])} msg/s; received {r['received']:,}, "
                       f"distinct {r['distinct_seqs']:,}, duplicates {r['duplicates']:,}; {lost}; "
                       f"consumer close (acks committed) {r['consumer_close_s'] * 1000:.1f} ms")
        else:
            main = (f"p50 {fmt(r['p50_ms'], '.2f')} / p99 {fmt(r['p99_ms'], '.2f')} / "
                    f"p99.9 {fmt(r['p99.9_ms'], '.2f')} / max {fmt(r['max_ms'], '.2f')} ms")
            sched = r["latency_from_schedule_ms"]
            details = (f"achieved {fmt(r['achieved_rate'])} msg/s (target "
                       f"{fmt(r['rate_target'])}), N={r['n']:,}; {lost}; from schedule: "
                       f"p99 {fmt(sched.get('p99'), '.2f')} ms, max {fmt(sched.get('max'), '.2f')} ms")
        if not r.get("ok"):
            main = f"[red]{main}[/red]"
        table.add_row(name, main, details, rss, busy, stalls, label, verdict)
    console.print(table)
    console.print("busy before: machine-wide CPU in use during the 1 s before the workload "
                  "started (other processes on this machine)")
    console.print("machine stalls: wake-ups of an idle 1 ms sleeper in the bench process more than "
                  "4 ms late while the workload ran (the machine itself not running ready threads; "
                  "they hit the hub and clients alike)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="W1,W2,W3",
                   help="comma-separated, from W1,W2,W3,W4 (W4, the Actor, only when named)")
    p.add_argument("--messages", type=int, default=200_000, help="N for W1, W2 and W4")
    p.add_argument("--json-out", default="bench/results/latest.json")
    p.add_argument("--sync", default="full", choices=("full", "none"))
    p.add_argument("--rate", type=float, default=5000.0, help="W3 target msg/s")
    p.add_argument("--duration", type=float, default=10.0, help="W3 seconds")
    p.add_argument("--credit", type=int, default=1000, help="W2 consumer credit")
    p.add_argument("--concurrency", type=int, default=8, help="W4 actor worker threads")
    p.add_argument("--prefetch", type=int, default=1,
                   help="W4 actor prefetch: messages held per worker thread (credit = both multiplied)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="per-workload bound on the measured phase (seconds)")
    p.add_argument("--hub", default=None,
                   help="use this running hub instead of starting one per workload")
    return p


def workload_names(spec: str) -> list[str]:
    """``"w1, W2"`` -> ``["W1", "W2"]``; raises ValueError naming unknown workloads."""
    names = [w.strip().upper() for w in spec.split(",") if w.strip()]
    unknown = [w for w in names if w not in WORKLOAD_NAMES]
    if unknown or not names:
        raise ValueError(f"unknown workloads {unknown or spec!r}; choose from {sorted(WORKLOAD_NAMES)}")
    return names


def run(args, names: list[str], on_start=None, on_done=None) -> dict:
    """Run the workloads; the report (what the JSON holds). ``on_start(name)`` and
    ``on_done(name, result)`` let a caller show progress."""
    report = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "config": {"workloads": names, "messages": args.messages, "sync": args.sync,
                   "payload_bytes": PAYLOAD_SIZE, "w2_credit": args.credit,
                   "w3_rate": args.rate, "w3_duration_s": args.duration,
                   "w4_concurrency": getattr(args, "concurrency", 8),
                   "w4_prefetch": getattr(args, "prefetch", 1),
                   "timeout_s": args.timeout, "hub": getattr(args, "hub", None)},
        "machine": machine_info(), "git": git_info(),
        "floors": {k: v[3] for k, v in FLOORS.items()},
        "workloads": [],
    }
    for name in names:
        if on_start is not None:
            on_start(name)
        r = run_workload(name, args)
        r["floor"], r["verdict"] = floor_verdict(r)
        report["workloads"].append(r)
        if on_done is not None:
            on_done(name, r)
    return report


def failed_workloads(report: dict) -> list[str]:
    """Workloads that errored or lost messages (what makes the exit status non-zero)."""
    return [r["workload"] for r in report["workloads"] if "error" in r or not r.get("ok")]


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        names = workload_names(args.workloads)
    except ValueError as exc:
        p.error(str(exc))

    def started(name: str) -> None:
        print(f"running {name}: {WORKLOAD_NAMES[name]} ...", file=sys.stderr, flush=True)

    def done(name: str, r: dict) -> None:
        if "error" in r:
            print(f"  {name} ERROR: {r['error']}", file=sys.stderr, flush=True)

    report = run(args, names, started, done)
    print_table(report)
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"JSON written to {out}")
    failed = failed_workloads(report)
    if failed:
        print(f"errored or lost messages: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
