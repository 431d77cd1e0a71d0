"""Running the suite: each workload against its hub, and the report of a run."""

from __future__ import annotations

import os
import sys
import time
import traceback
from datetime import datetime, timezone

from .hubs import BenchHub, ExternalHub
from .measure import StallMeter, background_cpu
from .report import FLOORS, floor_verdict, git_info, machine_info
from .workloads import PAYLOAD_SIZE, WORKLOAD_NAMES, Workers, summarise


def run_workload(name: str, args) -> dict:
    external = getattr(args, "hub", None)
    hub = ExternalHub(external) if external else BenchHub(args.sync)
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
        result["hub_stderr_tail"] = hub.log_tail(20)
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
