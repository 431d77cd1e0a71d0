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
