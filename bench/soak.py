"""Soak: the fault-injection harness (bench/faults.py) for minutes, with the same checker.

    python bench/soak.py --minutes 10 [--json-out bench/results/soak.json] [--seed 1]

Producers, workers and the hub are processes; the hub is killed -9 and restarted, workers are
killed -9 and restarted or paused with SIGSTOP past their ack deadline, until the time is up. Then
the run drains and the checker reads the history. Exit status 0 only when nothing was lost, no
phantom appeared, every duplicate was in flight at a fault and the strict reader kept seq order.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faults import FaultConfig, FaultRun  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description="zmq-mq fault-injection soak")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--producers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=150.0, help="msg/s per producer")
    ap.add_argument("--actors", type=int, default=2, help="Actor processes in the work group")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--margin", type=float, default=2.0, help="ack durability bound, s")
    ap.add_argument("--gap", type=float, nargs=2, default=(2.0, 4.0), metavar=("MIN", "MAX"),
                    help="seconds between faults (uniform); wider gaps make 'explained' stricter")
    ap.add_argument("--faults", default="hub_kill,worker_kill,worker_pause",
                    help="kinds of fault to draw from, comma-separated")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the history here")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    cfg = FaultConfig(seconds=args.minutes * 60, producers=args.producers, rate=args.rate,
                      work_actors=args.actors, seed=args.seed, margin=args.margin,
                      fault_gap=tuple(args.gap),
                      weights={k: 1.0 for k in args.faults.split(",")},
                      drain_timeout=120.0)
    with tempfile.TemporaryDirectory(prefix="zmq-mq-soak-") as tmp:
        workdir = args.workdir or Path(tmp)
        print(f"soak: {args.minutes:g} min, seed {args.seed}, history in {workdir}", flush=True)
        t0 = time.monotonic()
        report = FaultRun(workdir, cfg, say=lambda s: print(
            f"[{time.monotonic() - t0:7.1f} s] {s}", flush=True)).run()
    print(report.details())
    print("PASS" if report.ok else "FAIL")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        out = report.to_json()
        out["config"] = {k: v for k, v in cfg.__dict__.items()}
        args.json_out.write_text(json.dumps(out, indent=2, default=str))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
