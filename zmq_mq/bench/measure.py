"""Measurements of a bench run: the clock its processes share, percentiles, a process's memory
and CPU, the machine's background load and its stalls."""

from __future__ import annotations

import os
import threading
import time


def now() -> float:
    """Seconds on CLOCK_MONOTONIC: comparable between processes of this machine."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def percentiles(sorted_values: list[float]) -> dict:
    """p50, p90, p99, p99.9, max and mean of sorted seconds, in milliseconds."""
    if not sorted_values:
        return {}
    n = len(sorted_values)

    def q(p: float) -> float:
        return sorted_values[min(n - 1, max(0, int(round(p * n + 0.5)) - 1))] * 1000

    return {
        "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "p99.9": q(0.999),
        "max": sorted_values[-1] * 1000, "mean": sum(sorted_values) / n * 1000,
    }


def process_status(pid: int) -> dict:
    """Peak RSS (VmHWM), current RSS and CPU seconds used by process ``pid``, from /proc."""
    out: dict = {}
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
