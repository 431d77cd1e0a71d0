"""The bench report: floors and verdicts, machine and git info, the rich table."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

FLOORS = {
    "W1": ("msg_per_s", ">=", 100_000, "W1 >= 100,000 msg/s"),
    "W2": ("msg_per_s", ">=", 50_000, "W2 >= 50,000 msg/s"),
    "W3": ("p99_ms", "<=", 10.0, "W3 p99 <= 10 ms"),
    # issue 12's acceptance: the README-default Actor at half the Consumer's rate or more, in
    # the same run; its publish-to-handler p99 at 10,000 msg/s within 5 ms on a quiet machine
    "W2A": ("ratio", ">=", 0.5, "W2A Actor/Consumer >= 0.5"),
    "W5": ("p99_ms", "<=", 5.0, "W5 p99 <= 5 ms"),
    "W6": ("ratio", ">=", 0.5, "W6 Actor/Consumer drain >= 0.5"),
}  # W4 has none: it sizes Actor deployments


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


def failed_workloads(report: dict) -> list[str]:
    """Workloads that errored or lost messages (what makes the exit status non-zero)."""
    return [r["workload"] for r in report["workloads"] if "error" in r or not r.get("ok")]


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
    repo = Path(__file__).resolve().parents[2]  # the checkout holding zmq_mq/
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


def cpu_text(cpu: dict | None) -> str:
    """``CPU: hub 85% (4.1 us/msg), consumer 60% (...), producer ...`` (100% = one core)."""
    if not cpu:
        return "CPU: n/a"
    parts = []
    for role in ("hub", "consumer", "actor", "producer"):
        c = cpu.get(role)
        if c:
            per = f", {fmt(c.get('us_per_msg'), '.1f')} us/msg" if c.get("us_per_msg") else ""
            parts.append(f"{role} {fmt(c.get('cpu_pct'), '.0f')}% "
                         f"({fmt(c.get('cpu_s'), '.2f')} s{per})")
    return "CPU: " + ", ".join(parts)


def actor_text(actor: dict | None) -> str:
    if not actor:
        return "actor ?"
    given = set(actor.get("given") or [])
    opts = [f"{k} {actor.get(k) if actor.get(k) is not None else 'default'}"
            + ("" if k in given else " (default)") for k in ("concurrency", "prefetch")]
    if "credit" in given:
        opts.append(f"credit {actor.get('credit')}")
    return f"Actor {actor.get('handler', 'sync')} handler, " + ", ".join(opts)


def _versus(r: dict) -> str:
    """The main cell of W2A and W6 (the rounds go in their own table, :func:`legs_table`)."""
    return (f"Consumer {fmt(r.get('consumer_msg_per_s'))} msg/s\n"
            f"Actor {fmt(r.get('actor_msg_per_s'))} msg/s\n"
            f"Actor/Consumer {fmt(r.get('ratio'), '.3f')}")


def _cpu_cell(c: dict | None) -> str:
    if not c:
        return "-"
    return f"{fmt(c.get('cpu_pct'), '.0f')}%, {fmt(c.get('us_per_msg'), '.1f')} us/msg"


def legs_table(r: dict):
    """W2A's and W6's rounds: one row per leg (Consumer, then Actor, per round)."""
    from rich.table import Table

    table = Table(title=f"{r['workload']} rounds (CPU: share of the leg's span, 100% = one core; "
                        "CPU microseconds per message)")
    for col in ("round", "variant", "msg/s", "ratio", "distinct / dup / lost", "hub CPU",
                "client CPU", "hub RssAnon MiB start -> max -> end"):
        table.add_column(col)
    ratios = {x["round"]: x.get("ratio") for x in r.get("rounds_detail", [])}
    for leg in r.get("legs", []):
        cpu = leg.get("cpu", {})
        rss = leg.get("hub_rss_anon_mb") or {}
        counts = f"{leg['distinct_seqs']:,} / {leg['duplicates']:,} / {leg['lost']:,}"
        if leg.get("timed_out"):
            counts += f" (timed out, {leg.get('undrained', 0):,} undrained)"
        table.add_row(
            str(leg["round"]), leg["variant"], fmt(leg.get("msg_per_s")),
            fmt(ratios.get(leg["round"]), ".3f") if leg["variant"] == "actor" else "",
            counts if leg.get("ok") else f"[red]{counts}[/red]", _cpu_cell(cpu.get("hub")),
            _cpu_cell(cpu.get(leg["variant"])),
            (f"{fmt(rss.get('start_mb'), '.1f')} -> {fmt(rss.get('max_mb'), '.1f')} -> "
             f"{fmt(rss.get('end_mb'), '.1f')}") if rss else "-",
        )
    return table


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
    legs: list[dict] = []  # W2A and W6: their rounds follow the table
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
        if r["workload"] == "W2A":
            main = _versus(r)
            details = (f"N={r['n']:,} per leg, {r['rounds']} rounds of a Consumer (credit "
                       f"{report['config']['w2_credit']}) then an {actor_text(r.get('actor'))}, "
                       f"each leg on a fresh hub; {lost}, duplicates {r['duplicates']:,}; "
                       f"rounds below")
            legs.append(r)
        elif r["workload"] == "W6":
            main = _versus(r)
            pub = r.get("publish", {})
            details = (f"backlog N={r['n']:,} published at {fmt(pub.get('msg_per_s'))} msg/s, then "
                       f"drained {r['rounds']}x by a Consumer (credit "
                       f"{report['config']['w2_credit']}) "
                       f"and by an {actor_text(r.get('actor'))}, alternating, a new group each; "
                       f"{lost}, duplicates {r['duplicates']:,}; rounds below")
            legs.append(r)
        elif r["workload"] == "W5":
            main = (f"p50 {fmt(r['p50_ms'], '.2f')} / p99 {fmt(r['p99_ms'], '.2f')} / "
                    f"p99.9 {fmt(r['p99.9_ms'], '.2f')} / max {fmt(r['max_ms'], '.2f')} ms")
            late = r.get("call_lateness_ms", {})
            details = (f"publish call -> handler start; achieved {fmt(r['achieved_rate'])} msg/s "
                       f"(target {fmt(r['rate_target'])}), N={r['n']:,}, handled {r['handled']:,}; "
                       f"{lost}; {actor_text(r.get('actor'))}; publish calls late by p99 "
                       f"{fmt(late.get('p99'), '.2f')} ms\n{cpu_text(r.get('cpu'))}")
        elif r["workload"] == "W1":
            main = f"{fmt(r['msg_per_s'])} msg/s"
            details = (f"N={r['n']:,} in {r['span_s']:.2f} s; distinct seqs {r['distinct_seqs']:,}; "
                       f"{lost}\n{cpu_text(r.get('cpu'))}")
        elif r["workload"] in ("W2", "W4"):
            main = f"{fmt(r['msg_per_s'])} msg/s"
            who = (f"actor concurrency {r['concurrency']}, prefetch {r['prefetch']}; "
                   if r["workload"] == "W4" else "")
            details = (f"N={r['n']:,} in {r['span_s']:.2f} s; {who}publish side "
                       f"{fmt(r['publish_msg_per_s'])} msg/s; received {r['received']:,}, "
                       f"distinct {r['distinct_seqs']:,}, duplicates {r['duplicates']:,}; {lost}; "
                       f"consumer close (acks committed) {r['consumer_close_s'] * 1000:.1f} ms\n"
                       f"{cpu_text(r.get('cpu'))}")
        else:
            main = (f"p50 {fmt(r['p50_ms'], '.2f')} / p99 {fmt(r['p99_ms'], '.2f')} / "
                    f"p99.9 {fmt(r['p99.9_ms'], '.2f')} / max {fmt(r['max_ms'], '.2f')} ms")
            sched = r["latency_from_schedule_ms"]
            details = (f"achieved {fmt(r['achieved_rate'])} msg/s (target "
                       f"{fmt(r['rate_target'])}), N={r['n']:,}; {lost}; from schedule: "
                       f"p99 {fmt(sched.get('p99'), '.2f')} ms, "
                       f"max {fmt(sched.get('max'), '.2f')} ms\n"
                       f"{cpu_text(r.get('cpu'))}")
        if not r.get("ok"):
            main = f"[red]{main}[/red]"
        table.add_row(name, main, details, rss, busy, stalls, label, verdict)
    console.print(table)
    for r in legs:
        console.print(legs_table(r))
    console.print("busy before: machine-wide CPU in use during the 1 s before the workload "
                  "started (other processes on this machine)")
    console.print("machine stalls: wake-ups of an idle 1 ms sleeper in the bench process more than "
                  "4 ms late while the workload ran (the machine itself not running ready threads; "
                  "they hit the hub and clients alike)")
    console.print("CPU: user + system seconds of each process over the measured span, as a share "
                  "of that span (100% = one core busy); us/msg = CPU microseconds per message")
