"""zmq-mq benchmark suite: what users get from a real hub process and real client processes.

    zmq-mq bench [--workloads W1,W2,W3] [--messages 200000] [--sync full] [--hub ENDPOINT] ...
    zmq-mq bench --workloads W2A,W5,W6 [--rounds 2] [--handler sync|async] [--concurrency 8] ...
    python bench/bench.py ...   (the same command, writing bench/results/latest.json by default)

The one command line is ``zmq-mq bench`` (cli/ops.py); from Python, ``run(args, names)`` returns
the report (what the JSON holds), with ``args`` carrying the command's options as attributes.

Each workload starts its own hub (``zmq-mq hub``, through :class:`zmq_mq.testing.HubProcess`) as a
subprocess on a fresh temporary data directory (or, with ``--hub``, uses a running hub, on topics
new to each run), runs producers and consumers as separate processes (multiprocessing, spawn),
and stops the hub with SIGTERM (SIGKILL if it does not exit) in a ``finally``. Payloads are 128
bytes.

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
- W2A Consumer against Actor (only when named): ``--rounds`` rounds (default 2) of W2 through
  W2's consumer, then W2 through the README-default ``Actor(endpoint)`` (a no-op handler that
  records the seq; ``--concurrency``, ``--prefetch``, ``--actor-credit`` override a default only
  when given; ``--handler async`` makes it an ``async def``), each leg on a fresh hub; msg/s of
  each and the Actor/Consumer ratio per round and overall.
- W5 publish-to-handler latency (only when named): one producer at a steady rate (default
  10,000 msg/s for 10 s) into that default Actor; latency = CLOCK_MONOTONIC at the handler's
  start - the time of the ``publish_async`` call, carried in the payload.
- W6 backlog drain (only when named): N messages (default 1,000,000) published and confirmed
  first, then drained ``--rounds`` times each by a Consumer and by a default Actor, alternating,
  each drain a new group on the same topic of one hub; drain msg/s, the ratio, and the hub's
  RssAnon (start, max, end) during each drain.

Every workload reports the CPU (user + system seconds and their share of the measured span) of
the hub (sampled from /proc by the bench parent) and of each client process (its own).

Cross-process times use CLOCK_MONOTONIC, which is system-wide on Linux.
Exit status: 0 unless a workload errored or lost messages (floors only print PASS/FAIL).

Modules: ``hubs`` (the hub a workload measures), ``workloads`` (the child processes and their
summaries), ``measure`` (clock, percentiles, CPU, stalls), ``report`` (floors, machine info,
the table), ``suite`` (running the workloads into a report).
"""

from .hubs import BenchHub, ExternalHub
from .measure import (
    CpuMark,
    ProcSampler,
    StallMeter,
    background_cpu,
    cpu_seconds,
    now,
    percentiles,
    process_status,
    rss_anon_mb,
)
from .report import FLOORS, failed_workloads, floor_verdict, git_info, machine_info, print_table
from .suite import run, run_workload
from .workloads import (
    PAYLOAD_SIZE,
    WORKLOAD_NAMES,
    make_payload,
    summarise,
    workload_names,
)

__all__ = [
    "FLOORS", "PAYLOAD_SIZE", "WORKLOAD_NAMES", "BenchHub", "CpuMark",
    "ExternalHub", "ProcSampler", "StallMeter", "background_cpu", "cpu_seconds",
    "failed_workloads", "floor_verdict", "git_info", "machine_info", "make_payload", "now",
    "percentiles", "print_table", "process_status", "rss_anon_mb", "run", "run_workload",
    "summarise", "workload_names",
]
