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


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by process ``pid`` (all its threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def rss_anon_mb(pid: int) -> float | None:
    """Anonymous resident memory (``RssAnon``: heap and stacks, not the mapped LMDB file) of
    process ``pid`` in MiB, from /proc."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_share(cpu_s: float, wall_s: float, n: int | None = None) -> dict:
    """CPU seconds over a wall-clock span: ``cpu_pct`` = cpu_s / wall_s (100 = one core busy),
    and with ``n`` messages, ``us_per_msg`` (CPU microseconds per message)."""
    out = {"cpu_s": round(cpu_s, 3), "wall_s": round(wall_s, 3),
           "cpu_pct": round(100.0 * cpu_s / wall_s, 1) if wall_s > 0 else None}
    if n:
        out["us_per_msg"] = round(cpu_s / n * 1e6, 2)
    return out


class CpuMark:
    """This process's CPU (all threads) and the clock at a start point; :meth:`since` gives the
    share used from there (what a child process reports about itself)."""

    __slots__ = ("t0", "cpu0")

    def __init__(self) -> None:
        self.t0 = now()
        self.cpu0 = time.process_time()

    def since(self, n: int | None = None, end: float | None = None) -> dict:
        cpu = time.process_time() - self.cpu0
        return cpu_share(cpu, (end if end is not None else now()) - self.t0, n)


class ProcSampler:
    """Samples another process (the hub) every ``interval`` seconds on a thread of the idle bench
    parent: (time, CPU seconds, RssAnon MiB). :meth:`cpu` gives its CPU over a span of the run,
    :meth:`rss_anon` its anonymous memory during one."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float, float | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hub-sampler", daemon=True)

    def sample(self) -> None:
        cpu = cpu_seconds(self.pid)
        if cpu is not None:
            self.samples.append((now(), cpu, rss_anon_mb(self.pid)))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "ProcSampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sample()

    def _bracket(self, t0: float, t1: float) -> list:
        """The samples from the last one at or before ``t0`` to the first one at or after ``t1``."""
        s = self.samples
        i = max([k for k, x in enumerate(s) if x[0] <= t0], default=0)
        j = min([k for k, x in enumerate(s) if x[0] >= t1], default=len(s) - 1)
        return s[i:j + 1]

    def cpu(self, t0: float, t1: float, n: int | None = None) -> dict:
        """The process's CPU between the samples that bracket ``[t0, t1]``."""
        s = self._bracket(t0, t1)
        if len(s) < 2:
            return {}
        return cpu_share(s[-1][1] - s[0][1], s[-1][0] - s[0][0], n)

    def rss_anon(self, t0: float, t1: float) -> dict:
        """RssAnon (MiB) at the start, highest and at the end of ``[t0, t1]``, and how many
        samples that is."""
        s = [x[2] for x in self._bracket(t0, t1) if x[2] is not None]
        if not s:
            return {}
        return {"start_mb": round(s[0], 1), "max_mb": round(max(s), 1), "end_mb": round(s[-1], 1),
                "growth_mb": round(s[-1] - s[0], 1), "samples": len(s)}


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
        return self._summary(self.stalls, self.elapsed, self.threshold)

    @classmethod
    def combined(cls, meters: list["StallMeter"]) -> dict:
        """One summary of several meters (the legs of one workload)."""
        if not meters:
            return {}
        return cls._summary([x for m in meters for x in m.stalls], sum(m.elapsed for m in meters),
                            meters[0].threshold)

    @staticmethod
    def _summary(stalls: list[float], elapsed: float, threshold: float) -> dict:
        stalls = sorted(stalls)
        return {
            "threshold_ms": threshold * 1000, "seconds": round(elapsed, 2),
            "count": len(stalls), "per_s": round(len(stalls) / max(elapsed, 1e-9), 2),
            "stalled_ms": round(sum(stalls) * 1000, 1),
            "max_ms": round(stalls[-1] * 1000, 2) if stalls else 0.0,
            "p50_ms": round(stalls[len(stalls) // 2] * 1000, 2) if stalls else 0.0,
        }
