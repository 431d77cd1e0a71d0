"""Running the suite: each workload against its hub(s), and the report of a run.

W1-W5 run as one leg on one hub: their processes start, report ready, are told to go together,
and report. W2A runs ``rounds`` pairs of legs, a Consumer leg then an Actor leg, each on a fresh
hub. W6 publishes its backlog on one hub, then drains it ``rounds`` times each with a Consumer
and with an Actor, alternating, each drain a new subscription group on the same topic (so every
drain reads the same backlog from its first message). While a leg runs, the bench parent samples
the hub's CPU and anonymous memory (:class:`ProcSampler`) and the machine's stalls."""

from __future__ import annotations

import itertools
import os
import sys
import time
import traceback
from datetime import datetime, timezone

from .hubs import BenchHub, ExternalHub
from .measure import ProcSampler, StallMeter, background_cpu, rss_anon_mb
from .report import FLOORS, floor_verdict, git_info, machine_info
from .workloads import (
    PAYLOAD_SIZE,
    WORKLOAD_NAMES,
    Workers,
    compare,
    drain_summary,
    summarise,
)

DEFAULT_MESSAGES = 200_000  # W1, W2, W2A, W4
DEFAULT_BACKLOG = 1_000_000  # W6
DEFAULT_RATE = {"W3": 5000.0, "W5": 10_000.0}
DEFAULT_W4_CONCURRENCY = 8
DEFAULT_ROUNDS = 2
IDLE_TIMEOUT = 10.0  # a receiver that gets nothing for this long stops and counts what it has
_topics = itertools.count(1)


def messages_for(name: str, args) -> int:
    given = getattr(args, "messages", None)
    if given is not None:
        return given
    return DEFAULT_BACKLOG if name == "W6" else DEFAULT_MESSAGES


def rate_for(name: str, args) -> float:
    given = getattr(args, "rate", None)
    return given if given is not None else DEFAULT_RATE[name]


def rounds_for(args) -> int:
    return getattr(args, "rounds", None) or DEFAULT_ROUNDS


def actor_params(args) -> dict:
    """What the README-default Actor of W2A, W5 and W6 is given: only the options the command
    line set (None: the Actor's own default), and the handler kind."""
    return {"concurrency": getattr(args, "concurrency", None),
            "prefetch": getattr(args, "prefetch", None),
            "credit": getattr(args, "actor_credit", None),
            "handler": getattr(args, "handler", None) or "sync"}


class _NoSampler:
    """A hub somebody else runs (``--hub``): no /proc numbers."""

    def __enter__(self) -> "_NoSampler":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def cpu(self, t0: float, t1: float, n: int | None = None) -> dict:
        return {}

    def rss_anon(self, t0: float, t1: float) -> dict:
        return {}


class _Run:
    """One workload's hubs (each stopped in the end whatever happens) and machine stalls."""

    def __init__(self, args) -> None:
        self.args = args
        self.external = getattr(args, "hub", None)
        self.hubs: list = []
        self.stall_meters: list[StallMeter] = []

    def new_hub(self):
        hub = ExternalHub(self.external) if self.external else BenchHub(self.args.sync)
        self.hubs.append(hub)
        return hub.start()

    def base(self, name: str) -> dict:
        base = {"timeout": self.args.timeout}
        if self.external:  # a used hub: fresh topics, so that numbering and groups start clean
            base["topic"] = (f"bench.{name.lower()}.{os.getpid()}-{time.time_ns() // 1_000_000}"
                             f"-{next(_topics)}")
        return base

    def leg(self, hub, specs: list[tuple[str, dict]]):
        """Start the processes (in order), wait until all are ready, tell them to go, collect
        their reports; returns them and the hub sampler of the leg."""
        workers = Workers()
        try:
            for kind, params in specs:
                workers.start(kind, hub.endpoint, params)
            workers.wait_ready(60.0)
            pid = getattr(hub, "pid", None)
            sampler = ProcSampler(pid) if pid else _NoSampler()
            stalls = StallMeter()
            self.stall_meters.append(stalls)
            with sampler, stalls:
                workers.go.set()
                out = workers.collect(self.args.timeout + 30.0)
            return out, sampler
        finally:
            workers.stop()


def _with_hub_cpu(summary: dict, sampler) -> dict:
    """The hub's CPU over the summary's measured span, next to the processes' own."""
    t0, t1 = summary.pop("_window")
    # per message handled in the span (a drain cut short by --timeout handled fewer than n)
    hub_cpu = sampler.cpu(t0, t1, summary.get("distinct_seqs") or summary.get("n"))
    if hub_cpu:
        summary.setdefault("cpu", {})["hub"] = hub_cpu
    return summary


def _single(name: str, run: _Run, result: dict) -> None:
    args = run.args
    hub = run.new_hub()
    result["hub_endpoint"] = hub.endpoint
    base = run.base(name)
    n = messages_for(name, args)
    if name == "W1":
        specs = [("w1", dict(base, n=n))]
    elif name == "W2":
        # consumer first: subscribed (and reported ready) before the producer publishes
        specs = [("w2c", dict(base, n=n, credit=args.credit, idle_timeout=IDLE_TIMEOUT)),
                 ("w2p", dict(base, n=n))]
    elif name == "W4":
        # the actor first: attached (and reported ready) before the producer publishes
        concurrency = getattr(args, "concurrency", None) or DEFAULT_W4_CONCURRENCY
        specs = [("w4a", dict(base, n=n, concurrency=concurrency,
                              prefetch=getattr(args, "prefetch", None) or 1,
                              idle_timeout=IDLE_TIMEOUT)),
                 ("w4p", dict(base, n=n))]
    elif name == "W5":
        rate = rate_for(name, args)
        specs = [("w5a", dict(base, **actor_params(args), n=int(rate * args.duration), latency=True,
                              idle_timeout=IDLE_TIMEOUT)),
                 ("w5p", dict(base, rate=rate, duration=args.duration))]
    else:  # W3
        specs = [("w3", dict(base, rate=rate_for(name, args), duration=args.duration))]
    out, sampler = run.leg(hub, specs)
    result.update(_with_hub_cpu(summarise(name, out), sampler))
    result["hub"] = hub.status()


def _w2a(run: _Run, result: dict) -> None:
    """Rounds of (Consumer leg, Actor leg), each on a fresh hub: W2's producer and consumer,
    then the same producer and the README-default Actor."""
    args = run.args
    n = messages_for("W2A", args)
    actor = actor_params(args)
    legs: list[dict] = []
    result.update({"n": n, "rounds": rounds_for(args), "legs": legs})
    for rnd in range(1, rounds_for(args) + 1):
        for variant in ("consumer", "actor"):
            hub = run.new_hub()
            base = run.base("W2A")
            if variant == "consumer":
                receiver = ("w2ac", dict(base, n=n, credit=args.credit, idle_timeout=IDLE_TIMEOUT))
            else:
                receiver = ("w2aa", dict(base, **actor, n=n, idle_timeout=IDLE_TIMEOUT))
            out, sampler = run.leg(hub, [receiver, ("w2ap", dict(base, n=n))])
            p, c = out["w2ap"], out[receiver[0]]
            leg = {"round": rnd, "variant": variant, **summarise("W2", {"w2p": p, "w2c": c})}
            leg["cpu"] = {"producer": p["cpu"], variant: c["cpu"]}
            if variant == "actor":
                leg["actor"] = c["actor"]
                result["actor"] = c["actor"]
            _with_hub_cpu(leg, sampler)
            leg["hub"] = hub.status()
            leg["hub_exit_code"] = hub.stop()
            legs.append(leg)
    peaks = [leg["hub"]["peak_rss_mb"] for leg in legs if leg["hub"].get("peak_rss_mb")]
    result["hub"] = {"peak_rss_mb": max(peaks)} if peaks else {}
    _conclude(result, legs)


def _w6(run: _Run, result: dict) -> None:
    """Publish the backlog (durable, every confirm checked), then drain it: per round a
    Consumer, then the README-default Actor, each a new group on the same topic of one hub,
    in a new process that connects once told to go."""
    args = run.args
    n = messages_for("W6", args)
    hub = run.new_hub()
    result["hub_endpoint"] = hub.endpoint
    base = run.base("W6")
    pid = getattr(hub, "pid", None)
    out, sampler = run.leg(hub, [("w6p", dict(base, n=n))])
    publish = _with_hub_cpu(summarise("W1", {"w1": out["w6p"]}), sampler)
    legs: list[dict] = []
    result.update({"n": n, "rounds": rounds_for(args), "publish": publish, "legs": legs})
    if not publish["ok"]:
        raise RuntimeError(f"the backlog was not stored: {publish['lost']} of {n} lost")
    actor = actor_params(args)
    for rnd in range(1, rounds_for(args) + 1):
        for variant in ("consumer", "actor"):
            group = f"bench-{variant}-{rnd}"
            rss_before = rss_anon_mb(pid) if pid else None
            if variant == "consumer":
                spec = ("w6c", dict(base, n=n, group=group, credit=args.credit,
                                    attach_after_go=True, idle_timeout=IDLE_TIMEOUT))
            else:
                spec = ("w6a", dict(base, **actor, n=n, group=group, attach_after_go=True,
                                    idle_timeout=IDLE_TIMEOUT))
            out, sampler = run.leg(hub, [spec])
            c = out[spec[0]]
            leg = {"round": rnd, "variant": variant, **drain_summary(c, n)}
            leg["cpu"] = {variant: c["cpu"]}
            t0, t1 = leg["_window"]
            rss = sampler.rss_anon(t0, t1)
            if rss:
                leg["hub_rss_anon_mb"] = {"before": round(rss_before, 1)
                                          if rss_before is not None else None, **rss}
            _with_hub_cpu(leg, sampler)
            if variant == "actor":
                result["actor"] = c["actor"]
            legs.append(leg)
    result["hub"] = hub.status()
    _conclude(result, legs)


def _conclude(result: dict, legs: list[dict]) -> None:
    """The Consumer-against-Actor numbers of W2A and W6, and whether every leg was whole."""
    result.update(compare(legs))
    result["lost"] = sum(leg["lost"] for leg in legs)
    result["duplicates"] = sum(leg["duplicates"] for leg in legs)
    result["ok"] = bool(legs) and all(leg["ok"] for leg in legs) and result.get(
        "publish", {"ok": True})["ok"]


def run_workload(name: str, args) -> dict:
    run = _Run(args)
    result: dict = {"workload": name, "description": WORKLOAD_NAMES[name], "ok": False}
    result["background_cpu_before"] = background_cpu()
    started = time.monotonic()
    try:
        if name == "W2A":
            _w2a(run, result)
        elif name == "W6":
            _w6(run, result)
        else:
            _single(name, run, result)
        result["machine_stalls"] = StallMeter.combined(run.stall_meters)
    except BaseException as exc:
        result["error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        if run.hubs:
            result["hub_stderr_tail"] = run.hubs[-1].log_tail(20)
            result["hub"] = run.hubs[-1].status()
        if isinstance(exc, KeyboardInterrupt):
            raise
    finally:
        codes = [hub.stop() for hub in run.hubs]  # stopping a stopped hub gives its code again
        result["hub_exit_code"] = codes[0] if len(codes) == 1 else (codes or None)
        result["wall_s"] = time.monotonic() - started
    return result


def run(args, names: list[str], on_start=None, on_done=None) -> dict:
    """Run the workloads; the report (what the JSON holds). ``on_start(name)`` and
    ``on_done(name, result)`` let a caller show progress."""
    report = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "config": {"workloads": names, "messages": messages_for("W1", args),
                   "sync": args.sync, "payload_bytes": PAYLOAD_SIZE, "w2_credit": args.credit,
                   "w3_rate": rate_for("W3", args), "w3_duration_s": args.duration,
                   "w4_concurrency": getattr(args, "concurrency", None) or DEFAULT_W4_CONCURRENCY,
                   "w4_prefetch": getattr(args, "prefetch", None) or 1,
                   "timeout_s": args.timeout, "hub": getattr(args, "hub", None)},
        "machine": machine_info(), "git": git_info(),
        "floors": {k: v[3] for k, v in FLOORS.items()},
        "workloads": [],
    }
    if any(name in ("W2A", "W5", "W6") for name in names):
        report["config"].update({
            "w2a_messages": messages_for("W2A", args), "w6_backlog": messages_for("W6", args),
            "rounds": rounds_for(args), "w5_rate": rate_for("W5", args),
            "w5_duration_s": args.duration, "actor": actor_params(args),
        })
    for name in names:
        if on_start is not None:
            on_start(name)
        r = run_workload(name, args)
        r["floor"], r["verdict"] = floor_verdict(r)
        report["workloads"].append(r)
        if on_done is not None:
            on_done(name, r)
    return report
