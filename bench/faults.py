"""Fault-injection harness: real processes, real kills, and a checker that reads the history.

Shared by the short CI test (``tests/test_faults.py``), the long soak (``bench/soak.py``) and
its cluster form (``bench/cluster_soak.py``, which subclasses :class:`FaultRun`).
Every participant is a separate OS process and writes what it saw to its own append-only log
(one JSON array per line, written and flushed before it acts on it), so that ``kill -9`` cannot
hide anything from the checker:

* **producers** (``faults.py producer``) publish messages with unique ids (in the payload and in
  an ``id`` header), half of them with a key; before publishing they log ``sent`` (id, time) and
  once the hub confirms, ``confirmed`` (id, topic, seq, time). Against a cluster
  (``--partitions N``, bench/cluster_soak.py) every message has a key and its id as msg_id, and
  the topic logged is the partition the key maps to (``fx.3``): a message's *position* is
  (topic, seq), seqs being numbered per partition;
* **workers** (``faults.py worker``): a ``work`` group of ``Actor`` processes (a work queue) and
  an ``audit`` group of one ``Consumer`` with credit 1 (a strict FIFO reader) log every message
  processed (group, id, seq, key, delivery count, time) *before* acking it;
* the **harness** (:class:`FaultRun`) runs the hub (``zmq-mq hub`` subprocess on a port chosen at
  start, so clients reconnect to the same endpoint) and, until the time is up, ``kill -9``s and
  restarts it on the same ``--data``, ``kill -9``s and restarts workers, and pauses workers with
  SIGSTOP past their ack deadline and the hub's liveness limit; every fault goes to ``faults``
  with its start and end time. Then it lets the system drain and stops everything.

:func:`check` reads the logs and proves, or reports the violation of:

* **no loss**: every confirmed position (topic, seq) was processed by every group, and the
  record processed there carries the id the producer was told it got;
* **no phantoms**: every processed id is one a producer sent;
* **duplicates only at faults**. A message processed twice *under the same seq* by one group is
  explained only if a fault interval [start, end] satisfies ``start - margin <= t1 <= end``,
  where t1 is its first processing and ``margin`` bounds how long an ack takes to become durable
  when nothing fails (the ack was lost with a killed worker or hub, or the worker was paused
  holding it). A message stored twice *under two seqs* (a producer resent a batch whose confirm
  was lost) is explained only if a hub kill falls between its send and its confirm. Anything
  else is an unexplained duplicate: a bug;
* **order**: what holds today, reported, not claimed: per key, the order of first processing
  against seq order, for the strict ``audit`` reader (credit 1: expected to hold, and checked)
  and the ``work`` queue (several actors: no per-key ordering yet, issue 4: violations counted).

Times are ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every process on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOPIC = "fx"
WORK_GROUP = "work"
AUDIT_GROUP = "audit"
GROUPS = (WORK_GROUP, AUDIT_GROUP)
HERE = Path(__file__).resolve()


# --- logs ----------------------------------------------------------------------------------


class _Log:
    """An append-only history file: one JSON array per line, flushed on ``flush()``."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "a", buffering=1 << 16)

    def write(self, *fields: Any) -> None:
        self._f.write(json.dumps(fields, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_log(path: Path) -> list[list]:
    """Every complete line of a history file (a ``kill -9`` may leave half a last line)."""
    out = []
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                out.append(json.loads(line))
            except ValueError:
                break
    return out


# --- the roles (each runs in its own process) ------------------------------------------------


def run_producer(endpoint: str, out: Path, name: str, seconds: float, rate: float,
                 batch: int = 20, window: int = 3, partitions: int = 0) -> None:
    """Publish ``rate`` msg/s for ``seconds`` in batches, ``window`` batches unconfirmed at most.

    ``partitions`` > 0: ``endpoint`` is a cluster and TOPIC has that many partitions; every
    message then has a key (so its partition is known: the confirm names a seq of it) and its
    id as msg_id (so a resend to a new leader is stored once)."""
    from zmq_mq.actors import HubError, Producer
    from zmq_mq.router.protocol import partition_of

    log = _Log(out)
    pending: list[tuple[list[str], list]] = []
    n = 0
    t0 = time.monotonic()
    with Producer(endpoint, name=name, timeout=120) as producer:

        def settle(ids: list[str], futures: list, topics: list[str]) -> None:
            for mid, fut, topic in zip(ids, futures, topics):
                try:
                    seq = fut.result(300)
                except HubError as exc:  # refused: never stored; the checker knows it was sent
                    log.write("failed", mid, exc.code, time.monotonic())
                except Exception as exc:  # not confirmed in time: unknown, never counted as lost
                    log.write("failed", mid, type(exc).__name__, time.monotonic())
                else:
                    log.write("confirmed", mid, topic, seq, time.monotonic())
            log.flush()

        while time.monotonic() - t0 < seconds:
            ids = [f"{name}-{n + i}" for i in range(batch)]
            now = time.monotonic()
            for mid in ids:
                log.write("sent", mid, now)
            log.flush()  # on disk (page cache) before the hub can see it
            futures, topics = [], []
            for i, mid in enumerate(ids):
                if partitions:
                    key = f"k{(n + i) % (4 * partitions)}"
                    topics.append(f"{TOPIC}.{partition_of(key, partitions)}")
                else:
                    key = f"k{(n + i) % 8}" if (n + i) % 2 == 0 else None
                    topics.append(TOPIC)
                futures.append(producer.publish_async(
                    TOPIC, json.dumps({"id": mid}).encode(), key=key, headers={"id": mid},
                    msg_id=mid if partitions else None))
            n += batch
            pending.append((ids, futures, topics))
            if len(pending) >= window:
                settle(*pending.pop(0))
            due = t0 + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        for ids, futures, topics in pending:
            settle(ids, futures, topics)
    log.write("done", n, time.monotonic())
    log.close()


def _record(log: _Log, worker: str, group: str, msg) -> None:
    mid = msg.headers.get("id") if isinstance(msg.headers, dict) else None
    try:
        body_id = json.loads(msg.payload)["id"]
    except Exception:
        body_id = None
    log.write("processed", group, mid, body_id, msg.seq, msg.key, msg.deliveries, time.monotonic(),
              worker, msg.topic)
    log.flush()  # before the ack: a kill -9 after this line cannot hide the processing


def run_worker(endpoint: str, out: Path, worker: str, group: str, kind: str, ack_wait: float) -> None:
    """Process ``group`` on TOPIC until SIGTERM: an Actor (work queue) or a strict Consumer."""
    import faulthandler
    import logging

    from zmq_mq.actors import Actor, Consumer

    # Diagnostics for a run that does not drain: the harness sends SIGUSR1 for every thread's
    # stack, and the client library's own log lines (re-attaches, errors) go to stderr with times.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(level=logging.INFO, format="%(created).3f %(name)s %(levelname)s %(message)s")
    log = _Log(out)
    name = f"{group}-{os.getpid()}"
    if kind == "actor":
        actor = Actor(endpoint, name=name, concurrency=2, grace=5)
        actor.add_handler(TOPIC, lambda msg: _record(log, worker, group, msg), group=group, credit=20,
                          ack_wait=ack_wait)
        log.write("start", name, time.monotonic())
        log.flush()
        actor.run()  # SIGTERM stops it gracefully
    else:
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        with Consumer(endpoint, name=name, timeout=30) as consumer:
            consumer.subscribe(TOPIC, group, credit=1, ack_wait=ack_wait)
            log.write("start", name, time.monotonic())
            log.flush()
            while not stop:
                msg = consumer.receive(timeout=0.2)
                if msg is not None:
                    _record(log, worker, group, msg)
                    msg.ack()
    log.close()


# --- the harness -------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str  # hub_kill, hub_term (graceful stop), worker_kill, worker_pause
    target: str
    start: float
    end: float


@dataclass
class FaultConfig:
    seconds: float = 45.0  # faults are injected for this long
    producers: int = 2
    rate: float = 150.0  # per producer, msg/s
    work_actors: int = 2
    ack_wait: float = 2.0
    heartbeat_ms: int = 500
    fault_gap: tuple[float, float] = (2.0, 4.0)  # pause between faults, seconds (uniform)
    pause_s: float = 3.0  # SIGSTOP length: past ack_wait and the hub's liveness limit
    drain_timeout: float = 90.0
    margin: float = 2.0  # ack durability bound used by the checker (see module docstring)
    seed: int = 1
    # Fault kinds in a fixed cycle (the CI test: every kind happens); None: random by weights.
    schedule: tuple[str, ...] | None = None
    weights: dict[str, float] = field(
        default_factory=lambda: {"hub_kill": 1.0, "worker_kill": 1.0, "worker_pause": 1.0}
    )


class _Proc:
    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.incarnation = 0
        self.proc: subprocess.Popen | None = None

    def start(self, workdir: Path) -> None:
        self.incarnation += 1
        out = workdir / f"{self.name}.{self.incarnation}.stderr"
        with open(out, "w") as err:
            self.proc = subprocess.Popen(self.argv + ["--out", str(self.log_path)],
                                         stdout=subprocess.DEVNULL, stderr=err)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            from zmq_mq.testing import terminate

            terminate(self.proc, timeout)


class FaultRun:
    """One run: hub, producers and workers as processes, faults, drain, then :func:`check`."""

    def __init__(self, workdir: Path, config: FaultConfig | None = None, say=print) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data = self.workdir / "data"
        self.cfg = config or FaultConfig()
        self.say = say
        # here, not at the top: the producer and worker roles of this script need no hub code
        from zmq_mq.testing import HubProcess

        self.endpoint = ""
        # the hub: restarted on the same data and endpoint after every hub fault
        self.hub = HubProcess(self.data, ["--heartbeat-ms", str(self.cfg.heartbeat_ms)], pub="",
                              log_dir=self.workdir)
        self.faults: list[Fault] = []
        self.producers: list[_Proc] = []
        self.workers: list[_Proc] = []
        self.rng = random.Random(self.cfg.seed)
        self._hub_log = None

    # -- the hub --

    def _start_hub(self, timeout: float = 30.0) -> None:
        """Start ``zmq-mq hub`` on the run's endpoint (a free port the first time); a port still
        held by the hub just killed is retried (see HubProcess.start)."""
        self.hub.start(self.endpoint or "tcp://127.0.0.1:*", timeout)
        self.endpoint = self.hub.endpoint

    def producer_args(self) -> list[str]:
        """More flags of the producer role (the cluster form adds ``--partitions``)."""
        return []

    # -- lifecycle --

    def start(self) -> None:
        cfg = self.cfg
        self._start_hub()
        me = [sys.executable, str(HERE)]
        workers = [("audit-0", "consumer", AUDIT_GROUP)] + [
            (f"work-{i}", "actor", WORK_GROUP) for i in range(cfg.work_actors)
        ]
        for name, kind, group in workers:
            w = _Proc(name, [*me, "worker", "--endpoint", self.endpoint, "--group", group,
                             "--worker", name,
                             "--kind", kind, "--ack-wait", str(cfg.ack_wait)],
                      self.workdir / f"{name}.log")
            w.start(self.workdir)
            self.workers.append(w)
        # Workers attached first, so that both groups start at seq 1 (start="first" anyway).
        for i in range(cfg.producers):
            p = _Proc(f"producer-{i}", [*me, "producer", "--endpoint", self.endpoint, "--name",
                                        f"p{i}", "--seconds", str(cfg.seconds), "--rate", str(cfg.rate),
                                        *self.producer_args()],
                      self.workdir / f"producer-{i}.log")
            p.start(self.workdir)
            self.producers.append(p)

    def inject(self) -> None:
        """Faults until every producer has finished (they publish for ``seconds``)."""
        cfg = self.cfg
        kinds = list(cfg.weights)
        weights = [cfg.weights[k] for k in kinds]
        t_end = time.monotonic() + cfg.seconds
        while time.monotonic() < t_end:
            time.sleep(self.rng.uniform(*cfg.fault_gap))
            if time.monotonic() >= t_end:
                break
            if cfg.schedule:
                kind = cfg.schedule[len(self.faults) % len(cfg.schedule)]
            else:
                kind = self.rng.choices(kinds, weights)[0]
            if kind in ("hub_kill", "hub_term"):
                start = time.monotonic()
                if kind == "hub_kill":
                    self.hub.kill9()
                else:  # graceful: SIGTERM, the hub commits its last turn and exits
                    self.hub.stop(30)
                time.sleep(self.rng.uniform(0.0, 1.0))
                self._start_hub()
                # clients notice the new hub within a heartbeat or two and re-attach
                end = time.monotonic() + 3 * cfg.heartbeat_ms / 1000
                self.faults.append(Fault(kind, "hub", start, end))
                how = "kill -9" if kind == "hub_kill" else "SIGTERM"
                self.say(f"fault: hub {how}, restarted (restart #{self.hub.starts - 1})")
            elif kind == "worker_kill":
                w = self.rng.choice(self.workers)
                start = time.monotonic()
                w.kill9()
                self.faults.append(Fault(kind, w.name, start, time.monotonic()))
                time.sleep(self.rng.uniform(0.0, 1.0))
                w.start(self.workdir)
                self.say(f"fault: {w.name} kill -9, restarted")
            else:
                w = self.rng.choice(self.workers)
                start = time.monotonic()
                os.kill(w.proc.pid, signal.SIGSTOP)
                time.sleep(cfg.pause_s)
                os.kill(w.proc.pid, signal.SIGCONT)
                # after SIGCONT it acks, sees it was detached, and re-attaches
                end = time.monotonic() + 3 * cfg.heartbeat_ms / 1000
                self.faults.append(Fault(kind, w.name, start, end))
                self.say(f"fault: {w.name} SIGSTOP {cfg.pause_s:g} s, SIGCONT")

    def drain(self) -> bool:
        """Wait for producers to finish and every confirmed message to be processed by every
        group; False if that did not happen within ``drain_timeout`` (a hang or a loss)."""
        deadline = time.monotonic() + self.cfg.drain_timeout
        for p in self.producers:
            left = max(1.0, deadline - time.monotonic())
            try:
                p.proc.wait(left)
            except subprocess.TimeoutExpired:
                return False
        while time.monotonic() < deadline:
            h = load_history(self.workdir)
            if all(not missing_of(h, g) for g in GROUPS):
                return True
            for w in self.workers:  # a worker that died by itself is a finding: restart, note it
                if not w.alive():
                    self.say(f"note: {w.name} exited with {w.proc.returncode}; restarting")
                    w.start(self.workdir)
            time.sleep(0.2)
        return False

    def diagnose(self) -> None:
        """The run did not drain: say what the hub holds and what every worker is doing."""
        from zmq_mq.actors import Admin

        try:
            with Admin(self.endpoint, timeout=10) as admin:
                stats = admin.stats()
            for s in stats.get("subscriptions", []):
                self.say(f"diagnose: hub subscription {s}")
            for t in stats.get("topics", []):
                self.say(f"diagnose: hub topic {t}")
        except Exception as exc:  # the hub itself may be the problem
            self.say(f"diagnose: hub STATS failed: {exc!r}")
        for w in self.workers:
            if w.alive():
                os.kill(w.proc.pid, signal.SIGUSR1)
        time.sleep(1.0)
        for path in sorted(self.workdir.glob("*.stderr")) + sorted(self.workdir.glob("hub.*.log")):
            lines = path.read_text(errors="replace").splitlines()
            self.say(f"diagnose: --- {path.name} (last 60 of {len(lines)} lines)")
            for line in lines[-60:]:
                self.say(f"  {line[:300]}")

    def stop(self) -> None:
        for p in self.producers + self.workers:
            p.terminate()
        self.hub.stop(20)
        with open(self.workdir / "faults.json", "w") as f:
            json.dump([f.__dict__ for f in self.faults], f)

    def lag(self) -> dict[str, int]:
        """The hub's pending + in flight per group (0 once every ack is committed)."""
        from zmq_mq.actors.connection import request
        from zmq_mq.router.protocol import Command

        out = {}
        for t in request(self.endpoint, Command.TOPICS, timeout=10):
            if t["topic"] == TOPIC:
                for s in t["subscriptions"]:
                    out[s["group"]] = s["lag"]
        return out

    def run(self) -> "Report":
        """start, inject faults, drain, wait for the hub's lag to reach 0, stop, check."""
        t0 = time.monotonic()
        drained = False
        lag: dict[str, int] = {}
        try:
            self.start()
            self.inject()
            drained = self.drain()
            if not drained:
                self.diagnose()
            if drained:  # every ack committed: the hub has nothing left to hand out
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    lag = self.lag()
                    if all(lag.get(g, 1) == 0 for g in GROUPS):
                        break
                    time.sleep(0.2)
        finally:
            self.stop()
        cfg = self.cfg
        report = check(self.workdir, self.faults, margin=cfg.margin,
                       redelivery_s=cfg.ack_wait + 3 * cfg.heartbeat_ms / 1000 + cfg.margin)
        report.drained = drained
        report.final_lag = lag
        report.seconds = time.monotonic() - t0
        report.hub_kills = sum(1 for f in self.faults if f.target == "hub")
        report.worker_kills = sum(1 for f in self.faults if f.kind == "worker_kill")
        report.worker_pauses = sum(1 for f in self.faults if f.kind == "worker_pause")
        return report


# --- the checker -------------------------------------------------------------------------------


# A message's position: (topic, seq). The single hub has one topic (TOPIC); a cluster topic is
# stored as partitions (``fx.0`` ..), each numbering its own seqs.
Position = tuple[str, int]


def is_server_fault(f: "Fault") -> bool:
    """A fault of what stores messages (the hub, a cluster hub ``hub:NAME``, ZooKeeper), as
    against one of a worker: it may lose any worker's unreplicated acks and any confirm."""
    return f.target == "hub" or f.target.startswith("hub:") or f.target == "zookeeper"


@dataclass
class History:
    sent: dict[str, float]  # id -> time sent
    confirmed: dict[str, tuple[Position, float]]  # id -> (position, time confirmed)
    failed: dict[str, str]  # id -> error code
    # (group, position) -> [(time, id header, id payload, key, deliveries, worker)], in
    # processing order
    processed: dict[tuple[str, Position], list[tuple[float, Any, Any, Any, int]]]


def load_history(workdir: Path) -> History:
    sent: dict[str, float] = {}
    confirmed: dict[str, tuple[Position, float]] = {}
    failed: dict[str, str] = {}
    processed: dict[tuple[str, Position], list] = defaultdict(list)
    for path in sorted(Path(workdir).glob("*.log")):
        if path.name.startswith("hub."):
            continue
        for rec in read_log(path):
            kind = rec[0]
            if kind == "sent":
                sent[rec[1]] = rec[2]
            elif kind == "confirmed":
                confirmed[rec[1]] = ((rec[2], rec[3]), rec[4])
            elif kind == "failed":
                failed[rec[1]] = rec[2]
            elif kind == "processed":
                _, group, hid, pid, seq, key, deliveries, t, worker, *topic = rec
                pos = (topic[0] if topic else TOPIC, seq)
                processed[(group, pos)].append((t, hid, pid, key, deliveries, worker))
    for lst in processed.values():
        lst.sort()
    return History(sent, confirmed, failed, dict(processed))


def missing_of(h: History, group: str) -> list[str]:
    """Confirmed ids not (yet) processed by ``group`` at their confirmed position."""
    return [mid for mid, (pos, _) in h.confirmed.items() if (group, pos) not in h.processed]


@dataclass
class Report:
    confirmed: int = 0
    sent: int = 0
    failed: int = 0
    processed: dict[str, int] = field(default_factory=dict)  # group -> processings
    distinct: dict[str, int] = field(default_factory=dict)  # group -> distinct ids
    lost: dict[str, list] = field(default_factory=dict)  # group -> confirmed ids never processed
    wrong: list = field(default_factory=list)  # (group, position, id expected, ids seen)
    phantoms: list = field(default_factory=list)
    redeliveries: dict[str, int] = field(default_factory=dict)  # group -> same seq again
    restored_twice: int = 0  # ids stored at two positions (a resend after a lost confirm)
    unexplained: list = field(default_factory=list)
    unconfirmed_processed: int = 0  # sent, never confirmed (hub died), yet stored and processed
    margin_used: float = 0.0  # the most any explained duplicate needed of the margin, seconds
    order: dict[str, dict] = field(default_factory=dict)
    fault_cover: float = 0.0  # share of processings a duplicate would be excused for (lower: stricter)
    drained: bool = True  # FaultRun sets it; a bare check() takes the history as complete
    final_lag: dict = field(default_factory=dict)
    seconds: float = 0.0
    hub_kills: int = 0
    worker_kills: int = 0
    worker_pauses: int = 0

    @property
    def duplicates(self) -> int:
        return sum(self.redeliveries.values()) + self.restored_twice

    @property
    def ok(self) -> bool:
        return (self.drained and not any(self.lost.values()) and not self.wrong
                and not self.phantoms and not self.unexplained
                and self.order.get(AUDIT_GROUP, {}).get("seq_inversions_not_after_fault", 0) == 0)

    def summary(self) -> str:
        lost = sum(len(v) for v in self.lost.values())
        processed = sum(self.processed.values())
        expl = "all in flight at a fault" if not self.unexplained else f"{len(self.unexplained)} UNEXPLAINED"
        return (f"{self.confirmed} confirmed, {processed} processed "
                f"({', '.join(f'{g}: {n}' for g, n in sorted(self.processed.items()))}), "
                f"{lost} lost, {self.duplicates} duplicates ({expl}); "
                f"faults: {self.hub_kills} hub kills/stops, {self.worker_kills} worker kills, "
                f"{self.worker_pauses} worker pauses")

    def details(self) -> str:
        lines = [self.summary()]
        lines.append(f"  sent {self.sent}, refused {self.failed}, processed but never confirmed "
                     f"{self.unconfirmed_processed}, stored twice by a resend {self.restored_twice}, "
                     f"redelivered after processing {self.redeliveries}")
        lines.append(f"  drained {self.drained}, final hub lag {self.final_lag}, run {self.seconds:.1f} s, "
                     f"{self.fault_cover:.0%} of processings fall in a fault window "
                     "(a duplicate of any other is a bug), "
                     f"margin needed {self.margin_used:.2f} s")
        for g, o in sorted(self.order.items()):
            lines.append(f"  order {g}: {o}")
        if any(self.lost.values()):
            lines.append(f"  LOST: { {g: v[:10] for g, v in self.lost.items() if v} }")
        if self.wrong:
            lines.append(f"  WRONG CONTENT: {self.wrong[:10]}")
        if self.phantoms:
            lines.append(f"  PHANTOMS: {self.phantoms[:10]}")
        if self.unexplained:
            lines.append(f"  UNEXPLAINED DUPLICATES: {self.unexplained[:10]}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        d = {k: v for k, v in self.__dict__.items()}
        d["duplicates"] = self.duplicates
        d["ok"] = self.ok
        d["summary"] = self.summary()
        return d


def _in_fault(t: float, workers: set[str], faults: list[Fault], margin: float) -> bool:
    """True if a fault of the hub or of one of ``workers`` (those that processed the message)
    has a window ``[start - margin, end]`` holding ``t``, the message's first processing: the
    worker that processed it died or stalled before its ack was durable, or a worker held it
    (delivered, not yet processed) while paused, so it went to another and then was processed
    again on resume."""
    return any(f.start - margin <= t <= f.end for f in faults
               if is_server_fault(f) or f.target in workers)


def check(workdir: Path, faults: list[Fault], margin: float = 2.0, redelivery_s: float = 5.0) -> Report:
    """Read every history file in ``workdir`` and check the claims of the module docstring."""
    h = load_history(workdir)
    r = Report(confirmed=len(h.confirmed), sent=len(h.sent), failed=len(h.failed))
    seq_owner = {pos: mid for mid, (pos, _) in h.confirmed.items()}
    hub_kills = [f for f in faults if is_server_fault(f)]
    for group in GROUPS:
        r.lost[group] = missing_of(h, group)
        r.processed[group] = 0
        r.redeliveries[group] = 0
    ids_by_group: dict[str, dict[str, list[Position]]] = {g: defaultdict(list) for g in GROUPS}
    for (group, seq), runs in h.processed.items():  # seq: the position (topic, seq)
        r.processed[group] = r.processed.get(group, 0) + len(runs)
        for _, hid, pid, *_ in runs:
            if hid != pid or hid not in h.sent:
                r.phantoms.append((group, seq, hid, pid))
        mid = runs[0][1]
        ids_by_group.setdefault(group, defaultdict(list))[mid].append(seq)
        expected = seq_owner.get(seq)
        if expected is not None and any(x[1] != expected for x in runs):
            r.wrong.append((group, seq, expected, sorted({x[1] for x in runs})))
        if len(runs) > 1:
            r.redeliveries[group] += len(runs) - 1
            workers = {x[5] for x in runs}
            if not _in_fault(runs[0][0], workers, faults, margin):
                r.unexplained.append(("redelivered", group, seq, mid, [round(x[0], 3) for x in runs]))
            else:  # how much of the margin this one needed: a tight margin is a strict check
                t1 = runs[0][0]
                used = min(max(0.0, f.start - t1) for f in faults
                           if (is_server_fault(f) or f.target in workers)
                           and f.start - margin <= t1 <= f.end)
                r.margin_used = max(r.margin_used, used)
    for group, by_id in ids_by_group.items():
        r.distinct[group] = len(by_id)
    # Stored twice: the same id at two positions; count it once per id.
    stored: dict[str, set[Position]] = defaultdict(set)
    for (group, seq), runs in h.processed.items():
        stored[runs[0][1]].add(seq)
    for mid, seqs in stored.items():
        if len(seqs) > 1:
            r.restored_twice += len(seqs) - 1
            t_sent = h.sent.get(mid)
            t_conf = h.confirmed.get(mid, (None, float("inf")))[1]
            if t_sent is None or not any(f.start <= t_conf and f.end >= t_sent for f in hub_kills):
                r.unexplained.append(("stored twice", mid, sorted(seqs)))
    r.unconfirmed_processed = sum(1 for mid in stored if mid not in h.confirmed)
    # Order of first processing against seq order (per topic, i.e. partition, and per key). An
    # inversion is "after a fault" when the late message was first processed within
    # ``redelivery_s`` of a fault of the hub or of a worker of that group: it was held by a
    # worker that died or stalled, and came back only after ack_wait or the liveness timeout
    # while others flowed.
    for group in GROUPS:
        firsts = sorted((runs[0][0], pos, runs[0][3]) for (g, pos), runs in h.processed.items()
                        if g == group)
        group_faults = [f for f in faults if is_server_fault(f) or f.target.startswith(group + "-")]
        order = {"seq_inversions": 0, "seq_inversions_not_after_fault": 0,
                 "key_inversions": 0, "key_inversions_not_after_fault": 0,
                 "keyed_messages": sum(1 for f in firsts if f[2] is not None)}
        last: dict[str, int] = {}  # topic -> highest seq first processed so far
        key_last: dict[str, int] = {}
        for t, (topic, seq), key in firsts:
            at_fault = any(f.start <= t <= f.end + redelivery_s for f in group_faults)
            if seq < last.get(topic, 0):
                order["seq_inversions"] += 1
                order["seq_inversions_not_after_fault"] += not at_fault
            last[topic] = max(last.get(topic, 0), seq)
            if key is not None:
                if seq < key_last.get(key, 0):
                    order["key_inversions"] += 1
                    order["key_inversions_not_after_fault"] += not at_fault
                key_last[key] = max(key_last.get(key, 0), seq)
        r.order[group] = order
    # How strict 'explained' is: the share of all first processings that a duplicate would have
    # been excused for (inside a window of their own worker or of the hub). Low is strict.
    firsts_all = [runs[0] for runs in h.processed.values()]
    if firsts_all:
        excused = sum(1 for x in firsts_all if _in_fault(x[0], {x[5]}, faults, margin))
        r.fault_cover = excused / len(firsts_all)
    return r


# --- command line (the roles run as ``python bench/faults.py producer|worker ...``) -----------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="role", required=True)
    p = sub.add_parser("producer")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--rate", type=float, default=150)
    p.add_argument("--partitions", type=int, default=0,
                   help="a cluster topic of N partitions: every message keyed, with a msg_id")
    w = sub.add_parser("worker")
    w.add_argument("--endpoint", required=True)
    w.add_argument("--out", required=True, type=Path)
    w.add_argument("--group", required=True)
    w.add_argument("--worker", required=True)
    w.add_argument("--kind", choices=("actor", "consumer"), required=True)
    w.add_argument("--ack-wait", type=float, default=2.0)
    args = ap.parse_args(argv)
    if args.role == "producer":
        run_producer(args.endpoint, args.out, args.name, args.seconds, args.rate,
                     partitions=args.partitions)
    else:
        run_worker(args.endpoint, args.out, args.worker, args.group, args.kind, args.ack_wait)


if __name__ == "__main__":
    main()
