"""Cluster soak: the fault harness of bench/faults.py against a cluster, with the same checker.

    python bench/cluster_soak.py [--duration 600] [--fault-every 5] [--seed N] [--json out.json]

One ZooKeeper and ``--hubs`` ``zmq-mq hub --cluster`` processes on loopback (zmq_mq.testing.Cluster),
a topic ``fx`` of ``--partitions`` partitions x ``--replicas`` replicas (``--min-insync``), and
the processes of bench/faults.py given the cluster's ``zk://`` address: producers publishing
through the cluster ``Producer`` (every message keyed and with its id as msg_id, so a resend to a
new leader is stored once), a work queue of ``Actor`` processes and one credit-1 ``Consumer``,
each logging what it saw before it acts on it. Until ``--duration`` is up, every
``--fault-every`` seconds (0.5x..1.5x, from the previous fault's start, and once the cluster is
whole again: every partition led with all its replicas in sync), one fault at random:

* ``leader_kill`` / ``follower_kill``: ``kill -9`` the leader (or a follower) of a random
  partition; the hub is restarted on its data and port ``--down`` seconds later (a hub leads
  some partitions and follows others: the fault records every partition the victim led);
* ``leader_pause`` / ``follower_pause``: SIGSTOP it for the hubs' ZooKeeper session timeout
  plus ``--pause-extra`` seconds (so its session expires and its partitions fail over while it
  is frozen), then SIGCONT: it finds itself fenced and rejoins as a new incarnation;
* ``zk_restart``, once, at the middle of the run: ZooKeeper stopped and started again on the
  same port and data directory.

A fault lasts until the cluster is whole again (its window ``[start, end]`` for the checker);
a ZooKeeper restart two session timeouts more (its data reads whole at once, while the hubs,
fenced when they lost it, reconnect and lead again).
Then the run drains and bench/faults.py's checker reads the history: 0 confirmed messages lost
(every confirmed position, partition and seq, processed by both groups with the id the producer
was told), no phantoms, and every duplicate explained by a fault window holding its first
processing (``--margin`` before it: a delivered, processed message whose ack was not yet
replicated when its leader died or froze). Each duplicate is attributed to its fault in the JSON,
and, stricter, must be at a fault of its own partition's leader (the victim led that partition
when struck) or of ZooKeeper (which fences every leader): a hub's fault redelivers nothing of a
partition it only follows.

Also reported: the faults by kind with their times, ``moved`` (fault to ZooKeeper naming a new
leader of a partition the victim led) and ``failover`` (fault to the first confirm of a message
sent after it on each such partition; a fault whose partitions confirmed again only after the
next fault began is counted apart, not in the percentiles), throughput, and the share of all processings a duplicate
would have been excused for (how strict "explained" was). Exit status 1 unless the checker
passed (nothing lost, every duplicate explained, the run drained), every duplicate is at a fault
of its partition's leader, and the cluster recovered from every fault.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zmq_mq.testing import Cluster  # noqa: E402
from faults import (  # noqa: E402
    GROUPS,
    TOPIC,
    Fault,
    FaultConfig,
    FaultRun,
    History,
    Report,
    load_history,
)

HUB_KINDS = ("leader_kill", "follower_kill", "leader_pause", "follower_pause")


class ClusterFaultRun(FaultRun):
    """FaultRun against a zmq_mq.testing.Cluster: the same roles, drain and checker; cluster faults."""

    def __init__(self, workdir: Path, config: FaultConfig, *, hubs: int = 3, partitions: int = 6,
                 replicas: int = 3, min_insync: int | None = 2, session: float = 2.0,
                 sync: str = "full", fault_every: float = 5.0,
                 down: tuple[float, float] = (1.0, 3.0),
                 pause_extra: float = 1.5, zk_restart: bool = True, recover_timeout: float = 60.0,
                 say=print) -> None:
        super().__init__(workdir, config, say=say)
        self.cluster = Cluster(self.workdir / "cluster", [f"hub{n}" for n in range(hubs)],
                               session=session, sync=sync, chroot="/soak",
                               extra=["--heartbeat-ms", str(config.heartbeat_ms)])
        self.partitions = partitions
        self.replicas = replicas
        self.min_insync = min_insync
        self.session = session
        self.fault_every = fault_every
        self.down = down
        self.pause_extra = pause_extra
        self.zk_restart = zk_restart
        self.recover_timeout = recover_timeout
        self.info: list[dict] = []  # per fault: what, led partitions, moved times, recovered
        self.t0 = 0.0
        self.unrecovered: list[dict] = []

    # -- the cluster in place of the single hub --

    def _start_hub(self, timeout: float = 30.0) -> None:
        self.t0 = time.monotonic()
        self.cluster.start()
        self.cluster.client.create_topic(TOPIC, self.partitions, self.replicas,
                                           min_insync=self.min_insync, wait=timeout)
        self._wait_whole(timeout, "the topic placed and in sync")
        self.endpoint = self.cluster.url

    def producer_args(self) -> list[str]:
        return ["--partitions", str(self.partitions)]

    def _whole(self) -> bool:
        """Every hub registered and every partition led with all its replicas in sync (False
        too while ZooKeeper cannot be read)."""
        try:
            return (len(self.cluster.client.hubs()) == len(self.cluster.nodes)
                    and self.cluster.settled(TOPIC))
        except Exception:  # kazoo's connection and session errors: not whole now
            return False

    def _wait_whole(self, timeout: float, what: str) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._whole():
                return True
            time.sleep(0.05)
        self.say(f"NOT RECOVERED within {timeout:g} s: {what}")
        return False

    def _states(self) -> dict:
        deadline = time.monotonic() + self.recover_timeout
        while True:
            try:
                return self.cluster.client.partitions(TOPIC)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    # -- faults --

    def inject(self) -> None:
        cfg = self.cfg
        kinds = [k for k in cfg.weights if k in HUB_KINDS]
        weights = [cfg.weights[k] for k in kinds]
        start = time.monotonic()
        t_end = start + cfg.seconds
        zk_at = start + cfg.seconds / 2 if self.zk_restart else float("inf")
        zk_done = False
        next_at = start + self.fault_every * self.rng.uniform(0.5, 1.5)
        while True:
            time.sleep(max(0.0, min(next_at, t_end) - time.monotonic()))
            if time.monotonic() >= t_end:
                break
            if not self._whole():  # one fault at a time: the previous one is over first
                if not self._wait_whole(self.recover_timeout, "before the next fault"):
                    self.unrecovered.append({"at_s": round(time.monotonic() - self.t0, 3),
                                             "what": "not whole before a fault"})
                if time.monotonic() >= t_end:
                    break
            if not zk_done and time.monotonic() >= zk_at:
                kind, zk_done = "zk_restart", True
            elif kinds:
                kind = self.rng.choices(kinds, weights)[0]
            else:
                next_at = t_end
                continue
            f = self._zk_restart() if kind == "zk_restart" else self._hub_fault(kind)
            self.faults.append(f)
            next_at = f.start + self.fault_every * self.rng.uniform(0.5, 1.5)

    def _hub_fault(self, kind: str) -> Fault:
        states = self._states()
        part = self.rng.choice(sorted(states))
        state = states[part]
        if kind.startswith("leader"):
            victim = state.leader
        else:
            victim = self.rng.choice([r for r in state.replicas if r != state.leader])
        led = {p: s.epoch for p, s in states.items() if s.leader == victim}
        hub = self.cluster.hubs[victim]
        info = {"kind": kind, "target": victim, "partition": part, "led": sorted(led)}
        start = time.monotonic()
        done = threading.Event()
        problem: list[str] = []
        if kind.endswith("kill"):
            hub.kill9()
            down = self.rng.uniform(*self.down)
            info["down_s"] = round(down, 3)

            def restart() -> None:
                time.sleep(down)
                try:
                    hub.restart()
                except Exception as exc:  # reported; the run goes on without it
                    problem.append(f"restart failed: {exc}")
                done.set()

            threading.Thread(target=restart, daemon=True).start()
        else:
            os.kill(hub.pid, signal.SIGSTOP)
            paused = self.session + self.pause_extra
            info["paused_s"] = round(paused, 3)

            def resume() -> None:
                time.sleep(paused)
                os.kill(hub.pid, signal.SIGCONT)
                done.set()

            threading.Thread(target=resume, daemon=True).start()
        end = self._recover(start, done, led, victim, info)
        info["problem"] = problem
        led_list = ",".join(p.rsplit(".", 1)[1] for p in sorted(led)) or "-"
        self.say(f"fault: {kind} {victim} (led {led_list})"
                 f"{' down %.1f s' % info['down_s'] if 'down_s' in info else ''}"
                 f"{' paused %.1f s' % info['paused_s'] if 'paused_s' in info else ''}"
                 f", whole again after {end - start:.1f} s"
                 f"{' NOT RECOVERED' if not info['recovered'] else ''}"
                 f"{' ' + problem[0] if problem else ''}")
        return Fault(kind, f"hub:{victim}", start, end)

    def _zk_restart(self) -> Fault:
        start = time.monotonic()
        self.cluster.zookeeper_server.stop()
        down = self.rng.uniform(*self.down)
        time.sleep(down)
        done = threading.Event()
        self.cluster.zookeeper_server.start()
        done.set()
        info = {"kind": "zk_restart", "target": "zookeeper", "down_s": round(down, 3), "led": []}
        end = self._recover(start, done, {}, None, info)
        # ZooKeeper's data reads whole as soon as it serves; the hubs (fenced while it was
        # away) reconnect and lead again within their session timeout: the fault lasts so long
        time.sleep(2 * self.session)
        end = time.monotonic()
        info["end_s"] = round(end - self.t0, 3)
        self.say(f"fault: ZooKeeper stopped, started {down:.1f} s later; whole again after "
                 f"{end - start:.1f} s{' NOT RECOVERED' if not info['recovered'] else ''}")
        return Fault("zk_restart", "zookeeper", start, end)

    def _recover(self, start: float, done: threading.Event, led: dict[str, int],
                 victim: str | None, info: dict) -> float:
        """Watch the victim's partitions move (ZooKeeper naming a new leader at a newer epoch)
        and, once the hub is back, the cluster become whole; the fault's end."""
        moved: dict[str, float] = {}
        deadline = None
        while True:
            now = time.monotonic()
            if len(moved) < len(led):
                try:
                    states = self.cluster.client.partitions(TOPIC)
                except Exception:
                    states = {}
                for p, epoch in led.items():
                    s = states.get(p)
                    if p not in moved and s is not None and s.leader not in (None, victim) \
                            and s.epoch > epoch:
                        moved[p] = round(now - start, 4)
            if done.is_set():
                if deadline is None:
                    deadline = now + self.recover_timeout
                if self._whole():
                    info["recovered"] = True
                    break
                if now > deadline:
                    info["recovered"] = False
                    self.unrecovered.append({"at_s": round(start - self.t0, 3), **info})
                    break
            time.sleep(0.05)
        end = time.monotonic()
        info.update(start_s=round(start - self.t0, 3), end_s=round(end - self.t0, 3),
                    whole_after_s=round(end - start, 3), moved_s=moved)
        self.info.append(info)
        return end

    # -- what FaultRun asks of the hub --

    def lag(self) -> dict[str, int]:
        """Pending + in flight per group, summed over the partitions (asked of each leader)."""
        from zmq_mq.actors.connection import request
        from zmq_mq.router.protocol import Command

        client = self.cluster.client
        hubs = client.hubs()
        out = {g: 0 for g in GROUPS}
        by_leader: dict[str, set[str]] = {}
        for p, s in client.partitions(TOPIC).items():
            by_leader.setdefault(hubs[s.leader].endpoint, set()).add(p)
        for endpoint, parts in by_leader.items():
            for t in request(endpoint, Command.TOPICS, timeout=10):
                if t["topic"] in parts:
                    for s in t["subscriptions"]:
                        out[s["group"]] = out.get(s["group"], 0) + s["lag"]
        return out

    def diagnose(self) -> None:
        try:
            self.say(f"diagnose: cluster {json.dumps(self.cluster.client.status())[:3000]}")
        except Exception as exc:
            self.say(f"diagnose: cluster status failed: {exc!r}")
        try:
            self.say(f"diagnose: lag {self.lag()}")
        except Exception as exc:
            self.say(f"diagnose: lag failed: {exc!r}")
        for w in self.workers:
            if w.alive():
                os.kill(w.proc.pid, signal.SIGUSR1)
        time.sleep(1.0)
        logs = sorted(self.workdir.glob("*.stderr"))
        for node, hub in self.cluster.hubs.items():
            if hub.log_path is not None:
                logs.append(hub.log_path)
        for path in logs:
            lines = path.read_text(errors="replace").splitlines()
            self.say(f"diagnose: --- {path} (last 40 of {len(lines)} lines)")
            for line in lines[-40:]:
                self.say(f"  {line[:300]}")

    def stop(self) -> None:
        for p in self.producers + self.workers:
            p.terminate()
        for hub in self.cluster.hubs.values():
            if hub.running():
                try:
                    os.kill(hub.pid, signal.SIGCONT)
                except OSError:
                    pass
        self.cluster.stop()
        with open(self.workdir / "faults.json", "w") as f:
            json.dump(self.info, f)


# --- what the report adds to the checker's -------------------------------------------------------


def attribute_duplicates(h: History, info: list[dict], t0: float, margin: float) -> list[dict]:
    """Every duplicate processing (the same position processed again by a group), with the
    fault that explains it: its window ``[start - margin, end]`` holds the first processing (it
    was delivered and processed, and its ack not yet replicated, when the fault struck, or its
    worker held it while the leader froze), preferring a fault of the partition's leader then
    (``on_leader``: the victim led the partition, or ZooKeeper restarted: its leader was fenced)
    and, among those, the one that started nearest to the first processing."""
    out = []
    for (group, (topic, seq)), runs in sorted(h.processed.items()):
        if len(runs) < 2:
            continue
        t1 = runs[0][0]
        found = [f for f in info if t0 + f["start_s"] - margin <= t1 <= t0 + f["end_s"]]
        found.sort(key=lambda f: (not _on_leader(f, topic), abs(t0 + f["start_s"] - t1)))
        cause = found[0] if found else None
        out.append({
            "group": group, "partition": topic, "seq": seq, "id": runs[0][1],
            "times": len(runs), "first_processed_s": round(t1 - t0, 3),
            "again_s": [round(x[0] - t0, 3) for x in runs[1:]],
            "fault": None if cause is None else {"kind": cause["kind"], "target": cause["target"],
                                                 "start_s": cause["start_s"]},
            "on_leader": cause is not None and _on_leader(cause, topic),
            "before_fault_s": (None if cause is None
                               else round(max(0.0, t0 + cause["start_s"] - t1), 3)),
            "why": _why(cause, topic, t1 - t0),
        })
    return out


def _why(f: dict | None, partition: str, t1: float) -> str:
    if f is None:
        return "UNEXPLAINED: no fault around its first processing"
    if f["kind"] == "zk_restart":
        return ("in flight when ZooKeeper restarted: every leader was fenced and led again from "
                "its stored cursor, so a delivery whose ack was not yet committed came again")
    when = "before" if t1 < f["start_s"] else "after"
    role = "its partition's leader" if partition in f.get("led", ()) else "a hub of the cluster"
    what = "killed" if f["kind"].endswith("kill") else "frozen"
    return (f"delivered and processed {abs(f['start_s'] - t1):.3f} s {when} {role} "
            f"({f['target']}) was {what}: the ack had not reached the replica that led next, "
            "which delivered it again from the replicated cursor")


def _on_leader(f: dict, partition: str) -> bool:
    return f["kind"] == "zk_restart" or partition in f.get("led", ())


def failover_times(h: History, info: list[dict], t0: float) -> list[dict]:
    """Per fault of a leader: for each partition it led, the fault to the first confirm of a
    message sent after it (confirmed by the new leader, or by the same hub once it is back).
    ``overlapped``: that confirm came only after the next fault began (which may have struck the
    partition's other replica: the time is then not this fault's alone)."""
    first: dict[str, list[tuple[float, float]]] = {}
    for mid, ((topic, _), t_conf) in h.confirmed.items():
        first.setdefault(topic, []).append((h.sent.get(mid, t_conf), t_conf))
    for lst in first.values():
        lst.sort()
    out = []
    starts = sorted(f["start_s"] for f in info)
    for f in info:
        if not f.get("led"):
            continue
        start = t0 + f["start_s"]
        later = [s for s in starts if s > f["start_s"]]
        next_start = t0 + later[0] if later else float("inf")
        per = {}
        for p in f["led"]:
            after = [c for s, c in first.get(p, []) if s > start]
            if after:
                per[p] = round(min(after) - start, 4)
        worst = max(per.values()) if per else None
        out.append({"kind": f["kind"], "target": f["target"], "start_s": f["start_s"],
                    "failover_s": per, "moved_s": f.get("moved_s", {}),
                    "max_failover_s": worst,
                    "overlapped": worst is not None and start + worst > next_start})
    return out


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def build_report(run: ClusterFaultRun, report: Report, args) -> dict:
    h = load_history(run.workdir)
    dups = attribute_duplicates(h, run.info, run.t0, run.cfg.margin)
    fo = failover_times(h, run.info, run.t0)
    by_kind: dict[str, int] = {}
    for f in run.info:
        by_kind[f["kind"]] = by_kind.get(f["kind"], 0) + 1
    dup_by_kind: dict[str, int] = {}
    for d in dups:
        k = d["fault"]["kind"] if d["fault"] else "UNEXPLAINED"
        dup_by_kind[k] = dup_by_kind.get(k, 0) + d["times"] - 1
    conf_times = [t for _, t in h.confirmed.values()]
    sent_times = list(h.sent.values())
    span = (max(conf_times) - min(sent_times)) if conf_times and sent_times else 0.0
    failovers = [x["max_failover_s"] for x in fo
                 if x["max_failover_s"] is not None and not x["overlapped"]]
    moved = [v for x in fo for v in x["moved_s"].values()]
    lost = {g: len(v) for g, v in report.lost.items()}
    not_at_leader = sum(d["times"] - 1 for d in dups if not d["on_leader"])
    # how strict that is: the share of all first processings that fall in the window of a fault
    # of their partition's leader (or of ZooKeeper), i.e. that a duplicate would be excused for
    firsts = [(topic, runs[0][0]) for (_, (topic, _)), runs in h.processed.items()]
    windows = [(run.t0 + f["start_s"] - run.cfg.margin, run.t0 + f["end_s"], f) for f in run.info]
    covered = sum(1 for topic, t in firsts
                  if any(a <= t <= b and _on_leader(f, topic) for a, b, f in windows))
    out = {
        "ok": report.ok and not run.unrecovered and not_at_leader == 0,
        "confirmed": report.confirmed,
        "sent": report.sent,
        "unconfirmed": report.failed,  # publishes that ended without a confirm (not counted lost)
        "received": dict(report.distinct),  # distinct ids processed, per group
        "processed": dict(report.processed),  # processings, duplicates included
        "lost": sum(lost.values()),
        "lost_by_group": lost,
        "lost_ids": {g: v[:20] for g, v in report.lost.items() if v},
        "wrong": report.wrong[:20],
        "phantoms": report.phantoms[:20],
        "duplicates": report.duplicates,
        "duplicates_redelivered": dict(report.redeliveries),
        "duplicates_stored_twice": report.restored_twice,
        "duplicates_by_fault_kind": dup_by_kind,
        "duplicates_unexplained": len(report.unexplained),
        # explained by a fault of another hub than the partition's leader (stricter: 0 expected)
        "duplicates_not_at_their_leaders_fault": not_at_leader,
        "unexplained": report.unexplained[:20],
        "processed_never_confirmed": report.unconfirmed_processed,
        "margin_s": run.cfg.margin,
        "margin_used_s": report.margin_used,
        "fault_cover": report.fault_cover,
        "leader_fault_cover": covered / len(firsts) if firsts else 0.0,
        "order": report.order,
        "drained": report.drained,
        "final_lag": report.final_lag,
        "recovered_from_every_fault": not run.unrecovered,
        "unrecovered": run.unrecovered,
        "faults": len(run.info),
        "faults_by_kind": by_kind,
        "fault_list": run.info,
        "failover": fo,
        "failover_faults": len(failovers),  # faults of a leader over before the next began
        "failover_overlapped": sum(1 for x in fo if x["overlapped"]),
        "failover_p50_s": statistics.median(failovers) if failovers else None,
        "failover_p90_s": pct(failovers, 0.9),
        "failover_max_s": max(failovers) if failovers else None,
        "moved_p50_s": statistics.median(moved) if moved else None,
        "moved_max_s": max(moved) if moved else None,
        "throughput": {
            "publish_span_s": round(span, 3),
            "confirmed_per_s": round(report.confirmed / span, 1) if span else None,
            "processed_per_s": {g: round(n / span, 1) if span else None
                                for g, n in report.processed.items()},
        },
        "run_s": round(report.seconds, 1),
        "config": {
            "duration_s": args.duration, "fault_every_s": args.fault_every, "seed": args.seed,
            "hubs": args.hubs, "partitions": args.partitions, "replicas": args.replicas,
            "min_insync": args.min_insync, "session_s": args.session, "sync": args.sync,
            "producers": args.producers, "rate_per_producer": args.rate, "actors": args.actors,
            "down_s": list(args.down), "pause_extra_s": args.pause_extra,
            "zk_restart": not args.no_zk_restart, "kinds": args.faults,
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "duplicate_list": dups,
    }
    return out


def print_table(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"cluster soak: {'PASS' if out['ok'] else 'FAIL'}", show_header=False)
    t.add_column("what")
    t.add_column("value")
    rows = [
        ("confirmed / sent",
         f"{out['confirmed']} / {out['sent']} (unconfirmed {out['unconfirmed']})"),
        ("received (distinct)", ", ".join(f"{g} {n}" for g, n in sorted(out["received"].items()))),
        ("LOST", str(out["lost"])),
        ("duplicates", f"{out['duplicates']} ({out['duplicates_unexplained']} unexplained, "
                       f"{out['duplicates_not_at_their_leaders_fault']} not at a fault of their "
                       "partition's leader)"),
        ("duplicates by fault", ", ".join(
            f"{k} {n}" for k, n in sorted(out["duplicates_by_fault_kind"].items())) or "-"),
        ("stored twice", str(out["duplicates_stored_twice"])),
        ("processed, never confirmed", str(out["processed_never_confirmed"])),
        ("faults", ", ".join(f"{k} {n}" for k, n in sorted(out["faults_by_kind"].items()))),
        ("recovered from every fault", str(out["recovered_from_every_fault"])),
        ("failover p50 / p90 / max s", " / ".join("-" if v is None else f"{v:.2f}" for v in (
            out["failover_p50_s"], out["failover_p90_s"], out["failover_max_s"]))
         + f" ({out['failover_faults']} faults of a leader; {out['failover_overlapped']} more "
           "ran into the next fault)"),
        ("moved p50 / max s", " / ".join("-" if v is None else f"{v:.2f}" for v in (
            out["moved_p50_s"], out["moved_max_s"]))),
        ("throughput", f"{out['throughput']['confirmed_per_s']} confirmed/s; processed/s "
                       + ", ".join(f"{g} {n}" for g, n in
                                   sorted(out['throughput']['processed_per_s'].items()))),
        ("drained / final lag", f"{out['drained']} / {out['final_lag']}"),
        ("fault cover (any / leader's)",
         f"{out['fault_cover']:.0%} / {out['leader_fault_cover']:.0%} "
                                         "of processings would excuse a duplicate"),
        ("margin used", f"{out['margin_used_s']:.2f} s of {out['margin_s']:g}"),
        ("run", f"{out['run_s']} s"),
    ]
    for row in rows:
        t.add_row(*row)
    Console().print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load and faults")
    ap.add_argument("--fault-every", type=float, default=5.0,
                    help="mean seconds between fault starts (0.5x..1.5x; one at a time)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the report here")
    ap.add_argument("--hubs", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--min-insync", type=int, default=2)
    ap.add_argument("--session", type=float, default=2.0, help="hubs' ZooKeeper session, s")
    ap.add_argument("--sync", default="full", choices=["full", "none"])
    ap.add_argument("--producers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=100.0, help="msg/s per producer")
    ap.add_argument("--actors", type=int, default=2, help="Actor processes in the work group")
    ap.add_argument("--down", type=float, nargs=2, default=(1.0, 3.0), metavar=("MIN", "MAX"),
                    help="seconds a killed hub (or ZooKeeper) stays down")
    ap.add_argument("--pause-extra", type=float, default=1.5,
                    help="a pause lasts the session timeout plus this, s")
    ap.add_argument("--faults", default=",".join(HUB_KINDS), help="hub fault kinds to draw from")
    ap.add_argument("--no-zk-restart", action="store_true")
    ap.add_argument("--margin", type=float, default=2.0, help="ack replication bound, s")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the history here")
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = int(time.time())
    kinds = [k for k in args.faults.split(",") if k]
    bad = [k for k in kinds if k not in HUB_KINDS]
    if bad or args.duration <= 0 or args.fault_every <= 0:
        print(f"cluster_soak: bad --faults {bad} (choose from {', '.join(HUB_KINDS)})" if bad
              else "cluster_soak: --duration and --fault-every must be > 0", file=sys.stderr)
        return 2
    cfg = FaultConfig(seconds=args.duration, producers=args.producers, rate=args.rate,
                      work_actors=args.actors, seed=args.seed, margin=args.margin,
                      weights={k: 1.0 for k in kinds}, drain_timeout=180.0)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="zmq-mq-cluster-soak-"))
    print(f"cluster soak: {args.duration:g} s, a fault every ~{args.fault_every:g} s, seed "
          f"{args.seed}, {args.partitions} partitions x {args.replicas} replicas (min_insync "
          f"{args.min_insync}) on {args.hubs} hubs; history in {workdir}", flush=True)
    t0 = time.monotonic()
    run = ClusterFaultRun(
        workdir, cfg, hubs=args.hubs, partitions=args.partitions, replicas=args.replicas,
        min_insync=args.min_insync, session=args.session, sync=args.sync,
        fault_every=args.fault_every, down=tuple(args.down), pause_extra=args.pause_extra,
        zk_restart=not args.no_zk_restart,
        say=lambda s: print(f"[{time.monotonic() - t0:7.1f} s] {s}", flush=True))
    report = run.run()
    out = build_report(run, report, args)
    print(report.details())
    print_table(out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str))
    if out["ok"] and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)  # kept for reading after a failure
    elif not out["ok"]:
        print(f"history kept in {workdir}")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
