"""A hub in a cluster (``zmq-mq hub --cluster zk://... --node NAME``): the single hub's loop,
plus leadership, replication and confirm gating per partition.

:class:`ClusterHub` is a :class:`~zmq_mq.router.hub.Hub` subclass, so the single hub (no
``--cluster``) runs none of this: not one more test per message. It adds:

- a :class:`~zmq_mq.router.cluster.coordinator.ClusterMember` beside the loop: its threads
  (kazoo's) put every partition state into ``inbox`` and ``wake()`` the loop, which applies
  them at the start of its next turn (``_drain``): the loop alone decides what it leads;
- the wrapped client handlers: PUBLISH / SUBSCRIBE / settlements of a cluster partition this
  hub does not lead are refused with ``not_leader`` (a leader hint), ``unavailable`` (no
  leader) or ``not_enough_replicas`` (in-sync set below ``min_insync``); METADATA answers from
  the hub's ZooKeeper view; REPLICATE serves followers;
- replication (router/replication.py): as follower, a fetch loop per partition through the
  :class:`~zmq_mq.router.replication.Fetcher` thread, each REPLICA committed with the leader's
  sequences (``Store.replicate``); as leader, the followers' positions, the in-sync set kept
  (``member.update_isr``), and CONFIRMs held in the
  :class:`~zmq_mq.router.replication.ConfirmGate` until every in-sync replica holds them.

docs/CLUSTER.md is the design; docs/PROTOCOL.md "Cluster" the wire.
"""

from __future__ import annotations

import logging
import queue
from typing import Any

from . import protocol
from .admin import HANDLERS as ADMIN_HANDLERS
from .attachments import Peer
from .cluster.address import parse_cluster_address
from .cluster.errors import FencedError, StaleEpochError
from .cluster.layout import (
    ClusterPaths,
    HubInfo,
    PartitionState,
    TopicSpec,
    check_node_name,
    decode_hub,
    decode_topic,
    in_replica_order,
)
from .cluster.placement import default_min_insync
from .config import HubConfig
from .handlers import HANDLERS as CLIENT_HANDLERS
from .hub import Hub
from .protocol import Command, ErrorCode
from .replication import (
    ConfirmGate,
    Fetcher,
    Following,
    IsrWriter,
    Leadership,
    Verdict,
    end_of_epoch,
)
from .requests import Refusal, parse_admin
from .retention import parse_limits
from .subscription import Subscription

__all__ = ["ClusterHub"]

log = logging.getLogger("zmq_mq.cluster_hub")

# A follower that has not been at the leader's end for this long leaves the in-sync set.
DEFAULT_REPLICA_LAG_MS = 3000
# A leader answers a fetch with nothing new after this long (so followers show they live).
LONG_POLL_MS = 250
# A follower asks again when a fetch got no answer for this long (leader gone or slow).
FETCH_TIMEOUT_MS = 1000
# Records per REPLICA at most.
MAX_REPLICA_RECORDS = 2000
RETRY_MS = 200
# A leader sends every subscription snapshot again this often (changes go at once).
FULL_SUBS_MS = 5000
# Dead-letter topics (protocol.dlq_topic): a cluster partition's dead letters are streamed to
# its followers, which keep them in their own topic of that name.
DLQ_PREFIX = protocol.dlq_topic("")
# Records of a dead-letter topic read at most when a PURGE of all of it is streamed.
MAX_SCAN = 100_000


class NotLeader(Refusal):
    """A refusal with the leader hint of the contract (``leader``, ``leader_endpoint``,
    ``epoch`` in the ERROR map)."""

    def __init__(self, code: ErrorCode, message: str, ref: Any, extra: dict) -> None:
        super().__init__(code, message, ref)
        self.extra = extra


class ClusterHub(Hub):
    """A hub that is a member of a cluster. ``cluster``: ``zk://HOST:PORT[,...]/CHROOT``;
    ``node``: its name in the cluster; ``advertise``: the ROUTER endpoint peers reach it on
    (default: the bound endpoint)."""

    def __init__(self, config: HubConfig | None = None, *, cluster: str, node: str,
                 advertise: str | None = None, session_timeout: float | None = None,
                 replica_lag_ms: int = DEFAULT_REPLICA_LAG_MS, **kwargs: Any) -> None:
        self.cluster_address = parse_cluster_address(cluster)  # ValueError: one line
        bad = check_node_name(node)
        if bad:
            raise ValueError(bad)
        super().__init__(config, **kwargs)
        self.node = node
        self._advertise = advertise
        self._session_timeout = session_timeout
        self.replica_lag_ms = replica_lag_ms
        self.paths = ClusterPaths(self.cluster_address.chroot)
        # news from the member's threads and the fetcher, applied by the loop
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.states: dict[str, PartitionState | None] = {}  # the loop's view; None: fenced
        self.hubs_view: dict[str, HubInfo] = {}
        self.topic_specs: dict[str, TopicSpec] = {}
        self.leading: dict[str, Leadership] = {}
        self.following: dict[str, Following] = {}
        self.gate = ConfirmGate()
        self._deposed_sids: set[tuple[bytes, int]] = set()
        # TOPIC changes of led partitions this turn: (identity, ref, partition), their REPLY gated
        self._config_changes: list[tuple[bytes, Any, str]] = []
        self.member = None
        self.fetcher: Fetcher | None = None
        self.isr_writer: IsrWriter | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def bind(self) -> None:
        super().bind()
        if self.member is not None:
            return
        from kazoo.recipe.watchers import ChildrenWatch

        from .cluster.coordinator import DEFAULT_SESSION_TIMEOUT, ClusterMember

        self.fetcher = Fetcher(self._ctx, self.inbox, self.wake, self.node).start()
        self.member = ClusterMember(
            self.cluster_address, self.node, self._advertise or self.endpoint,
            self.pub_endpoint, on_change=self._on_change,
            session_timeout=self._session_timeout or DEFAULT_SESSION_TIMEOUT)
        self.member.start()
        self.isr_writer = IsrWriter(self.member, self.inbox, self.wake)
        ChildrenWatch(self.member.zk, self.paths.hubs, self._on_hubs)
        ChildrenWatch(self.member.zk, self.paths.topics, self._on_topics)

    def close(self) -> None:
        if self.isr_writer is not None:
            self.isr_writer.stop()
            self.isr_writer = None
        if self.member is not None:
            try:
                self.member.close()
            except Exception:  # leaving is best effort: the session expires anyway
                log.exception("leaving the cluster failed")
            self.member = None
        if self.fetcher is not None:
            self.fetcher.stop()
            self.fetcher = None
        super().close()

    # --- news from the member's threads (never blocking the loop) ---------------------------

    def _on_change(self, partition: str, state: Any) -> None:
        self.inbox.put(("state", partition, state))
        self.wake()

    def _on_hubs(self, children: list[str]) -> bool | None:
        if self.member is None:
            return False
        hubs = {}
        for node in children:
            try:
                data, _ = self.member.zk.get(self.paths.hub(node))
                hubs[node] = decode_hub(data)
            except Exception:  # gone while listed, or not ours: skip it
                continue
        self.hubs_view = hubs
        self.inbox.put(("hubs",))
        self.wake()
        return None

    def _on_topics(self, children: list[str]) -> bool | None:
        if self.member is None:
            return False
        specs = dict(self.topic_specs)
        for name in children:
            if name not in specs:
                try:
                    data, _ = self.member.zk.get(self.paths.topic(name))
                    specs[name] = decode_topic(data)
                except Exception:
                    continue
        self.topic_specs = {n: s for n, s in specs.items() if n in children}
        self.inbox.put(("topics",))
        self.wake()
        return None

    # --- the loop's turn --------------------------------------------------------------------

    def _read_commands(self) -> None:
        self._drain()  # decide on the latest news: a deposed hub takes no more publishes
        super()._read_commands()

    def _turn(self) -> None:
        self._drain()
        super()._turn()
        self._after_turn()

    def _drain(self) -> None:
        inbox = self.inbox
        while True:
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                return
            kind = item[0]
            try:
                if kind == "state":
                    self._apply_state(item[1], item[2])
                elif kind == "replica":
                    self._on_replica(item[1], item[2])
                elif kind == "isr":
                    self._isr_written(item[1], item[2], item[3])
                elif kind == "topics":  # a leadership taken before its topic's spec was read
                    for name, lead in self.leading.items():
                        state = self.states.get(name)
                        if state is not None:
                            lead.min_insync = self._min_insync(state)
            except Exception:
                log.exception("cluster hub %s: handling %s failed", self.node, kind)

    def _apply_state(self, name: str, state: Any) -> None:
        if not isinstance(state, PartitionState):  # FENCED, or None (partition gone)
            if state is None:
                self.states.pop(name, None)
            else:
                self.states[name] = None
            if name in self.leading:
                self._depose(name, "fenced: lost its ZooKeeper connection")
            self.following.pop(name, None)
            return
        self.states[name] = state
        me = self.node
        if state.leader == me:
            lead = self.leading.get(name)
            if lead is None or lead.epoch != state.epoch:
                if lead is not None:
                    self._depose(name, "a new epoch")
                self._become_leader(name, state)
            else:
                lead.isr = state.isr
                self._sync_delivery(name)
            return
        if name in self.leading:
            self._depose(name, f"{state.leader} leads it at epoch {state.epoch}")
        if me in state.replicas and state.leader is not None:
            f = self.following.get(name)
            if f is None or f.epoch != state.epoch or f.leader != state.leader:
                history = self.store.epochs(name)
                f = self.following[name] = Following(state.leader, state.epoch,
                                                     history[-1][0] if history else -1)
                position = self.store.stream_position(name)
                if position is not None and position[0] == state.epoch:  # a restart
                    f.events_next = position[1]
                self._drop_local_subs(name)
                # a follower's log follows the leader's retention and purges (first_seq,
                # holes in REPLICA), never its own limits: its copy stays the leader's
                self.trimmer.forget(name)
        else:
            self.following.pop(name, None)

    def _min_insync(self, state: PartitionState) -> int:
        spec = self.topic_specs.get(state.topic)
        return spec.min_insync if spec else default_min_insync(len(state.replicas))

    def _become_leader(self, name: str, state: PartitionState) -> None:
        log.info("cluster hub %s leads %s at epoch %d (isr %s)", self.node, name, state.epoch,
                 list(state.isr))
        self.following.pop(name, None)
        now = self.clock.monotonic_ms()
        lead = self.leading[name] = Leadership(state.epoch, state.isr, state.replicas,
                                               self._min_insync(state), now)
        # the subscription state replicated from the previous leader becomes live
        info = self.store.topics.get(name)
        last = info.last_seq if info else 0
        history = self.store.epochs(name)
        if not history or history[-1][0] != state.epoch:
            history.append([state.epoch, last + 1])
            self.store.set_epochs(name, history)
        lead.history = history
        for (topic, group), blob in self.store.load_subs().items():
            if topic != name or (topic, group) in self.subs:
                continue
            sub = self.subs[(topic, group)] = Subscription.restore(
                topic, group, protocol.unpack(blob), last_seq=last,
                lookup=self.groups.lookup(topic))
            sub.published(last, priority=True)
            self.schedule.defer_scheduled(sub)
        if info is not None:
            self.valid_topics.add(name)
        self._sync_delivery(name)
        config = self.store.configs.get(name)
        if config:  # the limits replicated from the previous leader
            try:
                self.trimmer.set(name, parse_limits(config))
            except ValueError as exc:
                log.error("cluster hub %s: %s limits not applied: %s", self.node, name, exc)

    def _sync_delivery(self, name: str) -> None:
        """Let the subscriptions of a partition this hub leads hand out records up to the last
        seq every in-sync follower holds (Kafka's high watermark), never past it: a record only
        this hub holds is not confirmed and is dropped if another replica comes to lead, so a
        consumer must not see it (it would then process a message that is not at that seq)."""
        lead = self.leading.get(name)
        if lead is None:
            return
        info = self.store.topics.get(name)
        last = info.last_seq if info else 0
        held = lead.committed(self.node)
        end = last if held is None else min(last, held)
        for sub in self.groups.of(name):
            if sub.last_seq > end:
                sub.cap(end)
            elif sub.last_seq < end:
                sub.published(end)

    def _depose(self, name: str, why: str) -> None:
        lead = self.leading.pop(name, None)
        log.info("cluster hub %s no longer leads %s: %s", self.node, name, why)
        if lead is not None:
            for identity, _, _, _, _ in lead.parked:
                self._send(identity, Command.ERROR, protocol.error_body(
                    ErrorCode.NOT_LEADER, f"{self.node} no longer leads {name}",
                    Command.REPLICATE, name))
        self._release()  # what waited for this partition fails now: not_leader
        self._drop_local_subs(name)

    def _drop_local_subs(self, name: str) -> None:
        """A partition this hub does not lead: its subscriptions live on the leader (the
        replicated state is in the store); attached actors hear not_leader."""
        keys = [k for k in self.subs if k[0] == name]
        if not keys:
            return
        now = self.clock.monotonic_ms()
        for identity, peer in list(self.attachments.peers.items()):
            for sid, att in list(peer.attachments.items()):
                if name in att.subs:
                    self.attachments.detach(identity, peer, sid, now)
                    self._deposed_sids.add((identity, sid))
                    self._send(identity, Command.ERROR, {
                        **protocol.error_body(ErrorCode.NOT_LEADER,
                                              f"{self.node} no longer leads {name}: subscribe "
                                              "on its leader", Command.SUBSCRIBE, sid),
                        **self._hint(name)})
        for key in keys:
            self.subs.pop(key, None)

    # --- leader side ------------------------------------------------------------------------

    def _hint(self, name: str) -> dict:
        state = self.states.get(name)
        leader = state.leader if state is not None else None
        info = self.hubs_view.get(leader) if leader else None
        return {"leader": leader, "leader_endpoint": info.endpoint if info else None,
                "epoch": state.epoch if state is not None else None}

    def _refusal(self, name: str, ref: Any, publish: bool = True) -> NotLeader | None:
        """Why this hub may not take a publish (or subscribe, ``publish`` False) of partition
        ``name`` now (None: it may)."""
        lead = self.leading.get(name)
        if lead is not None and not self.member.fenced:
            if publish and len(lead.isr) < lead.min_insync:
                return NotLeader(ErrorCode.NOT_ENOUGH_REPLICAS,
                                 f"{name} has {len(lead.isr)} in-sync replicas, fewer than its "
                                 f"min_insync {lead.min_insync}: nothing stored", ref,
                                 self._hint(name))
            return None
        state = self.states.get(name)
        if state is not None and state.leader is None:
            return NotLeader(ErrorCode.UNAVAILABLE, f"{name} has no leader now (no in-sync "
                             "replica is live): nothing stored", ref, self._hint(name))
        hint = self._hint(name)
        return NotLeader(ErrorCode.NOT_LEADER, f"{self.node} does not lead {name} (leader: "
                         f"{hint['leader']}): nothing stored", ref, hint)

    def _check_topic(self, topic: Any, ref: Any, publish: bool = True) -> None:
        if topic in self.states:
            why = self._refusal(topic, ref, publish)
            if why is not None:
                raise why
        elif topic in self.topic_specs:
            raise Refusal(ErrorCode.INVALID, f"{topic} is a cluster topic: use its partitions "
                          f"{topic}.0 .. (each on its leader; METADATA names them)", ref)
        elif isinstance(topic, str) and topic.rpartition(".")[0] in self.topic_specs:
            # a partition whose state this hub has not read yet (just created): not here
            raise NotLeader(ErrorCode.NOT_LEADER, f"{self.node} does not know {topic}'s leader "
                            "yet: nothing stored; ask METADATA again", ref,
                            {"leader": None, "leader_endpoint": None, "epoch": None})

    def _commit(self) -> dict[str, tuple[int, list[bytes]]]:
        leading = self.leading
        states = self.states
        if not states:
            return super()._commit()
        turn = self.turn
        # Every cluster partition this turn wrote, led or not: a publish accepted while this
        # hub led may meet a deposition (applied at the start of the turn) before its commit;
        # its confirm must then fail, never go out ungated.
        touched = [t for t in turn.appends if t in states]
        if turn.dedup_hits:
            # a repeat confirms a seq stored earlier, of a partition not named here: wait for
            # every partition led (none led: fail)
            touched = list(leading) or [""]
        mark = len(self._outbox)
        mark_received = len(self._confirmed_at)
        if leading:
            self._trim_dead_letter_topics()
        removed = self._dead_letters_removed() if leading else []
        purges = {t: _runs(seqs) for t, seqs in turn.deletes.items() if t in leading}
        admin_refs = [(identity, ref) for identity, command, ref, _ in turn.admin
                      if command in (Command.PURGE, Command.REDRIVE)] if leading else []
        configured, self._config_changes = self._config_changes, []
        admin_refs += [(identity, ref) for identity, ref, _ in configured]
        deleted_before = self.store.last_deleted
        stored = super()._commit()
        news = set(stored)
        # what this turn's commit deleted (the store makes a new map per commit; a turn with
        # nothing to commit leaves the last one's)
        deleted = {} if self.store.last_deleted is deleted_before else self.store.last_deleted
        topics = self.store.topics
        if leading:
            news.update(self._stream_events(stored, removed, deleted))
            news.update(t for t, n in deleted.items() if n)
            for t, runs in purges.items():  # a PURGE (or REDRIVE) of the partition itself
                if deleted.get(t) and t in leading:
                    leading[t].add_event(["delete", runs])
        for topic in stored:  # the base made the new records deliverable: only what is held
            if topic in leading:
                self._sync_delivery(topic)
        if touched:
            need = {t: (leading[t].epoch if t in leading else -1,
                        topics[t].last_seq if t in topics else 0, 0) for t in touched}
            outbox = self._outbox
            held = [e for e in outbox[mark:] if e[1] == Command.CONFIRM]
            if held and need:
                self._outbox = outbox[:mark] + [e for e in outbox[mark:]
                                                if e[1] != Command.CONFIRM]
                # their latency is taken when the gate lets them out (what the client sees)
                received = self._confirmed_at[mark_received:]
                del self._confirmed_at[mark_received:]
                self.gate.hold(need, held, received)
        news.update(t for _, _, t in configured)
        changed = [t for t in news if t in leading]
        if admin_refs and changed:
            # a PURGE / REDRIVE is answered once the in-sync followers applied what it did
            need = {t: (leading[t].epoch, topics[t].last_seq if t in topics else 0,
                        leading[t].next_event - 1) for t in changed}
            outbox = self._outbox
            held = [e for e in outbox[mark:] if e[1] == Command.REPLY
                    and _answers(e, admin_refs)]
            if held:
                self._outbox = outbox[:mark] + [e for e in outbox[mark:]
                                                if not any(e is h for h in held)]
                self.gate.hold(need, held)
        for topic in news:
            lead = leading.get(topic)
            if lead is not None and lead.parked:
                parked, lead.parked = lead.parked, []
                for identity, node, from_seq, limit, _ in parked:
                    self._answer_fetch(identity, topic, lead, from_seq, limit, node)
        return stored

    def _trim_dead_letter_topics(self) -> None:
        """Stage the retention deletes of this hub's dead-letter topics now (the base commit
        would, after the removals are read): the dead letters they take of partitions this hub
        leads leave their followers' copies too."""
        trimmer = self.trimmer
        limits = trimmer.limits
        dlq = {t: lim for t, lim in limits.items() if t.startswith(DLQ_PREFIX)}
        if not dlq:
            return
        trimmer.limits = dlq
        try:
            trimmer.trim(self.turn.appends, self.turn.deletes, self._ack_floors,
                         self.clock.wall_ms())
        finally:
            trimmer.limits = limits

    def _dead_letters_removed(self) -> list[tuple[str, str, list]]:
        """Dead letters of partitions this hub leads that this turn deletes from a dead-letter
        topic (REDRIVE, PURGE): ``(origin partition, dlq topic, event)``, read before the
        commit removes them, streamed once it did."""
        out = []
        for topic, seqs in self.turn.deletes.items():
            if not topic.startswith(DLQ_PREFIX):
                continue
            if isinstance(seqs, range):
                records = self.store.read_range(topic, seqs.start, min(len(seqs), MAX_SCAN))
            else:
                wanted = sorted(seqs)
                records = list(zip(wanted, self.store.read(topic, wanted)))
            for _, record in records:
                origin = _dead_letter_origin(record) if record is not None else None
                if origin is not None and origin[0] in self.leading:
                    out.append((origin[0], topic, ["undead", topic, origin[0], origin[1]]))
        return out

    def _stream_events(self, stored: dict, removed: list, deleted: dict) -> set[str]:
        """Put this commit's dead letters (and removals) of partitions this hub leads in their
        partitions' state streams; the partitions that got some."""
        out = set()
        for topic, (_, records) in stored.items():
            if not topic.startswith(DLQ_PREFIX):
                continue
            for record in records:
                origin = _dead_letter_origin(record)
                lead = self.leading.get(origin[0]) if origin is not None else None
                if lead is not None:
                    lead.add_event(["dead", topic, record])
                    out.add(origin[0])
        for origin, topic, event in removed:
            lead = self.leading.get(origin)
            if lead is not None and deleted.get(topic):
                lead.add_event(event)
                out.add(origin)
        return out

    def _check_gate(self, need: dict[str, tuple[int, int, int]]) -> str:
        if self.member is None or self.member.fenced:
            return Verdict.FAIL
        me = self.node
        for name, (epoch, seq, event) in need.items():
            lead = self.leading.get(name)
            if lead is None or lead.epoch != epoch:
                return Verdict.FAIL
            if len(lead.isr) < lead.min_insync and not event:
                # publishes wait for min_insync; a state change (PURGE, TOPIC), taken below it,
                # waits for the in-sync replicas there are
                return Verdict.WAIT
            for f in lead.isr:
                if f != me and lead.pos.get(f, 0) < seq:
                    return Verdict.WAIT
                if event and f != me and lead.events_acked.get(f, 1) <= event:
                    return Verdict.WAIT  # the follower has not applied that state entry
        return Verdict.OK

    def _release(self) -> None:
        gate = self.gate
        send, failed = gate.release(self._check_gate)
        for identity, command, body in send:
            self._send(identity, command, body)
        if gate.released:  # publish latency: receipt to the CONFIRM the client gets
            sent = self.clock.monotonic_ns()
            observe = self.publish_latency.observe
            for received in gate.released:
                observe((sent - received) / 1e9)
            gate.released = []
        for identity, command, body in failed:
            self.counters["errors"] += 1
            if command == Command.CONFIRM:
                error = protocol.error_body(
                    ErrorCode.NOT_LEADER, f"{self.node} lost the leadership before this batch "
                    "was replicated: not confirmed; publish it to the new leader",
                    Command.PUBLISH, body[0])
            else:  # a PURGE / REDRIVE answer: the leader it is sent to again decides
                result = body[1] if isinstance(body[1], dict) else {}
                error = protocol.error_body(
                    ErrorCode.NOT_LEADER, f"{self.node} lost the leadership before this was "
                    "replicated: ask the new leader", Command.PURGE if "purged" in result
                    else Command.REDRIVE, body[0])
            self._send(identity, Command.ERROR, {
                **error, "leader": None, "leader_endpoint": None, "epoch": None})

    def _answer_fetch(self, identity: bytes, name: str, lead: Leadership, from_seq: int,
                      limit: int, node: str) -> None:
        info = self.store.topics.get(name)
        records = self.store.read_range(name, from_seq, limit) if info else []
        last = info.last_seq if info else 0
        # complete up to here: the leader's last seq, unless the limit cut the records short
        upto = records[-1][0] if len(records) >= limit else last
        current = {g: protocol.pack(s.snapshot()) for (t, g), s in self.subs.items() if t == name}
        now = self.clock.monotonic_ms()
        sent = lead.sent_subs.get(node, {})
        if now - lead.full_subs_at.get(node, -FULL_SUBS_MS) >= FULL_SUBS_MS:
            subs = current
            lead.full_subs_at[node] = now
        else:
            subs = {g: v for g, v in current.items() if sent.get(g) != v}  # what changed
        lead.sent_subs[node] = current
        body = {
            "partition": name, "epoch": lead.epoch, "records": [[s, r] for s, r in records],
            "last_seq": upto, "subs": subs, "epochs": lead.history,
            "config": self.store.configs.get(name),
            "first_seq": info.first_seq if info else 1}
        held = self.schedule.by_topic.get(name)
        if held and records:  # delayed records: their due times come with them
            sched = [[seq, held[seq]] for seq, _ in records if seq in held]
            if sched:
                body["sched"] = sched
        reported = lead.reported.get(node)
        if reported is not None:
            if lead.needs_snapshot(reported[2]):
                # new to this leadership, or away past the kept entries: the partition's dead
                # letters as they are now, then the entries from `next` on
                body["snapshot"] = {"next": lead.next_event, "dead": self._dead_letters_of(name)}
            else:
                events = lead.events_from(node, reported[2], self.node)
                if events:
                    body["events"] = events
            if self._needs_holes(lead, node, info, from_seq, now):
                body["holes"] = self.store.gaps(name, from_seq - 1)
                lead.holes_sent_at[node] = now
        self._send(identity, Command.REPLICA, body)

    def _needs_holes(self, lead: Leadership, node: str, info: Any, from_seq: int,
                     now: int) -> bool:
        """A caught-up follower whose copy starts where this leader's log does but holds more
        records (a sparse PURGE here): it gets the runs of missing seqs (at most every 1 s)."""
        reported = lead.reported.get(node)
        if info is None or reported is None or from_seq - 1 < info.last_seq:
            return False
        first, count, _ = reported
        if first != info.first_seq or count == info.count:
            return False
        return now - lead.holes_sent_at.get(node, -FETCH_TIMEOUT_MS) >= FETCH_TIMEOUT_MS

    def _state_news(self, lead: Leadership, node: str, info: Any, from_seq: int) -> bool:
        """Whether a caught-up follower's fetch has something to apply now besides records:
        state-stream entries, a log start moved by retention or PURGE, holes. (A snapshot
        alone waits for the long poll's end: the first fetch of every follower asks for one.)"""
        first, count, events_next = lead.reported[node]
        if lead.events and lead.events[-1][0] >= events_next:
            return True
        if info is not None and count and first < info.first_seq:
            return True
        return self._needs_holes(lead, node, info, from_seq, self.clock.monotonic_ms())

    def _after_turn(self) -> None:
        now = self.clock.monotonic_ms()
        fetcher = self.fetcher
        # follower side: one fetch in flight per partition
        for name, f in self.following.items():
            if f.inflight_at is not None:
                if now - f.inflight_at < FETCH_TIMEOUT_MS:
                    continue
                f.full_subs = True  # no answer: the one the leader sent may be lost
            if now < f.retry_at:
                continue
            info = self.hubs_view.get(f.leader)
            if info is None or fetcher is None:
                continue
            local = self.store.topics.get(name)
            fetcher.fetch(info.endpoint, {
                "partition": name, "epoch": f.epoch, "node": self.node,
                "last_epoch": f.last_epoch, "full_subs": f.full_subs,
                "from_seq": (local.last_seq if local else 0) + 1, "max": MAX_REPLICA_RECORDS,
                "first_seq": local.first_seq if local else 1,
                "count": local.count if local else 0, "events_from": f.events_next})
            f.inflight_at = now
        # leader side: parked fetches that waited long enough, the in-sync set, the gate
        for name, lead in list(self.leading.items()):
            if lead.parked:
                keep = []
                for item in lead.parked:
                    if item[4] <= now:
                        self._answer_fetch(item[0], name, lead, item[2], item[3], item[1])
                    else:
                        keep.append(item)
                lead.parked = keep
            self._maintain_isr(name, lead, now)
        if self.gate.held:
            self._release()

    def _maintain_isr(self, name: str, lead: Leadership, now: int) -> None:
        if (lead.isr_pending or now < lead.next_isr_try or self.member is None
                or self.member.fenced):
            return
        info = self.store.topics.get(name)
        last = info.last_seq if info else 0
        lag = self.replica_lag_ms
        me = self.node
        isr = set(lead.isr)
        for f in lead.replicas:
            if f == me:
                continue
            live = now - lead.seen.get(f, lead.since) <= lag
            if lead.pos.get(f, -1) >= last and live:
                lead.caught_up[f] = now
            in_sync = live and now - lead.caught_up.get(f, lead.since) <= lag
            if f in isr and not in_sync:
                isr.discard(f)
            elif f not in isr and in_sync and lead.pos.get(f, -1) >= last:
                isr.add(f)
        if isr == set(lead.isr) or self.isr_writer is None:
            return
        lead.isr_pending = True
        self.isr_writer.submit(name, lead.epoch, in_replica_order(lead.replicas, isr))

    def _isr_written(self, name: str, epoch: int, result: Any) -> None:
        lead = self.leading.get(name)
        if lead is None or lead.epoch != epoch:
            return  # no longer leading at that epoch: the deposition was handled
        lead.isr_pending = False
        if isinstance(result, PartitionState):
            log.info("cluster hub %s: %s in-sync replicas %s -> %s", self.node, name,
                     list(lead.isr), list(result.isr))
            lead.isr = result.isr
            self._sync_delivery(name)
        elif isinstance(result, (StaleEpochError, FencedError)):
            self._depose(name, str(result))
        else:  # ZooKeeper busy, a follower that left meanwhile...: again a little later
            log.info("cluster hub %s: in-sync set of %s not changed: %s", self.node, name, result)
            lead.next_isr_try = self.clock.monotonic_ms() + RETRY_MS * 5

    # --- follower side ----------------------------------------------------------------------

    def _on_replica(self, command: bytes, body: Any) -> None:
        if command == Command.ERROR:
            err = protocol.parse_error(body)
            name = err.get("ref")
            f = self.following.get(name) if isinstance(name, str) else None
            if f is not None:
                f.inflight_at = None
                f.retry_at = self.clock.monotonic_ms() + RETRY_MS
                f.full_subs = True
                log.info("cluster hub %s: fetch of %s refused: %s", self.node, name,
                         err["message"])
            return
        if command != Command.REPLICA or not isinstance(body, dict):
            return
        name = body.get("partition")
        f = self.following.get(name)
        if f is None or body.get("epoch") != f.epoch:
            return  # a stale leader's answer, or a partition no longer followed: dropped
        f.inflight_at = None
        history = body.get("epochs")
        truncate = body.get("truncate")
        if type(truncate) is int:  # this copy diverged from the leader's log after `truncate`
            self._truncate(name, truncate)
            if isinstance(history, list):
                self.store.set_epochs(name, history)
                f.last_epoch = history[-1][0] if history else -1
            return
        try:  # the state beside the records, before the cursors that imply it
            snapshot = body.get("snapshot")
            if isinstance(snapshot, dict):
                self._apply_snapshot(name, f, snapshot)
            self._apply_events(name, f, body.get("events"))
            self._apply_deletes(name, body.get("first_seq"), body.get("holes"))
        except Exception as exc:
            log.error("cluster hub %s: replicating the state of %s failed: %s", self.node, name,
                      exc)
            f.retry_at = self.clock.monotonic_ms() + RETRY_MS
            f.full_subs = True  # this answer was not applied
            return
        local = self.store.topics.get(name)
        last = local.last_seq if local else 0
        records = [(int(s), r) for s, r in body.get("records", ()) if int(s) > last]
        sched = [(int(s), int(due)) for s, due in body.get("sched") or () if int(s) > last]
        dedup = [(msg_id, seq) for seq, rec in records if (msg_id := _msg_id(rec)) is not None]
        subs = {(name, g): v for g, v in (body.get("subs") or {}).items()}
        config = body.get("config")
        if (config is None or isinstance(config, dict)) and config != self.store.configs.get(name):
            try:  # the topic's limits: live here once this hub leads it
                self.store.set_topic_config(name, config)
            except Exception as exc:
                log.error("cluster hub %s: %s limits not stored: %s", self.node, name, exc)
        leader_last = int(body.get("last_seq", 0))
        epochs = history if isinstance(history, list) and history else None
        if epochs is not None and epochs[-1][0] != f.last_epoch:
            pass  # the leader's history is stored with the records below
        elif not records and not subs and leader_last <= last:
            f.full_subs = False  # nothing new: applied as it is
            return
        try:
            self.store.replicate(name, records, leader_last, subs, dedup,
                                 now_ms=self.clock.wall_ms(), epochs=epochs,
                                 schedule=sched or None)
            if epochs is not None:
                f.last_epoch = epochs[-1][0]
            if sched:  # held back here too: due on this hub's clock, and once it leads
                self.schedule.hold_back([(name, s, due) for s, due in sched], self.groups.of)
            f.full_subs = False
        except Exception as exc:
            log.error("cluster hub %s: replicating %s failed: %s", self.node, name, exc)
            f.retry_at = self.clock.monotonic_ms() + RETRY_MS
            f.full_subs = True

    def _apply_events(self, name: str, f: Following, events: Any) -> None:
        """The leader's state-stream entries from ``f.events_next`` on, in order: a dead
        letter of the partition is appended to this hub's dead-letter topic of that name
        (its own seq there), a removed one (redriven, purged) is removed here too."""
        if not isinstance(events, list):
            return
        dead: dict[str, list[bytes]] = {}
        undead: list[tuple[str, str, int]] = []
        deletes: list = []
        config: Any = False  # False: no change in these entries
        nxt = f.events_next
        for entry in events:
            n, event = entry if isinstance(entry, list) and len(entry) == 2 else (None, None)
            if type(n) is not int or n < nxt:
                continue
            if n > nxt:
                log.warning("cluster hub %s: %s state entries %d..%d are gone from the "
                            "leader (away too long): not applied", self.node, name, nxt, n - 1)
            nxt = n + 1  # an entry this hub cannot read is passed over, never asked again
            kind = event[0] if isinstance(event, list) and event else None
            if kind == "dead" and len(event) == 3:
                dead.setdefault(event[1], []).append(event[2])
            elif kind == "undead" and len(event) == 4:
                undead.append((event[1], event[2], event[3]))
            elif kind == "delete" and len(event) == 2:
                deletes.extend(event[1] if isinstance(event[1], list) else ())
            elif kind == "config" and len(event) == 2:
                config = event[1]
        if nxt == f.events_next:
            return
        if dead:
            self._store_dead_letters(dead)
        for topic, origin, seq in undead:
            self._remove_dead_letter(topic, origin, seq)
        if deletes:  # a PURGE of the partition
            self._apply_deletes(name, None, deletes)
        if config is not False and (config is None or isinstance(config, dict)):
            self.store.set_topic_config(name, config)  # its limits: live once it leads
        f.events_next = nxt
        self.store.set_stream_position(name, f.epoch, nxt)  # not applied twice after a restart

    def _apply_snapshot(self, name: str, f: Following, snapshot: dict) -> None:
        """The leader's dead letters of partition ``name`` as they are at its state entry
        ``next`` - 1: this hub's dead-letter topics get the ones they lack and lose the ones the
        leader no longer holds (redriven, purged, trimmed); then the entries from ``next`` on."""
        nxt, dead = snapshot.get("next"), snapshot.get("dead")
        if type(nxt) is not int or nxt < 1 or not isinstance(dead, dict):
            return
        want: dict[str, dict[int, bytes]] = {}
        for topic, records in dead.items():
            if not (isinstance(topic, str) and topic.startswith(DLQ_PREFIX)
                    and isinstance(records, list)):
                continue
            for record in records:
                origin = _dead_letter_origin(record) if isinstance(record, bytes) else None
                if origin is not None and origin[0] == name:
                    want.setdefault(topic, {}).setdefault(origin[1], record)
        add: dict[str, list[bytes]] = {}
        removed = 0
        for topic in sorted(set(want) | {t for t in self.store.topics if t.startswith(DLQ_PREFIX)}):
            wanted = want.get(topic, {})
            held: set[int] = set()
            gone = []
            for seq, origin in self._dead_letter_origins(topic):
                if origin[0] != name:
                    continue
                if origin[1] in wanted and origin[1] not in held:
                    held.add(origin[1])
                else:
                    gone.append(seq)
            if gone:
                removed += self.store.delete(topic, gone)
            missing = [record for seq, record in wanted.items() if seq not in held]
            if missing:
                add[topic] = missing
        if add:
            self._store_dead_letters(add)
        if add or removed:
            log.info("cluster hub %s: %s dead letters caught up from the leader's snapshot: %d "
                     "added, %d removed", self.node, name, sum(map(len, add.values())), removed)
        f.events_next = nxt
        self.store.set_stream_position(name, f.epoch, nxt)

    def _dead_letter_origins(self, topic: str) -> list[tuple[int, tuple[str, int]]]:
        """``(seq, (origin partition, origin seq))`` of the dead letters in ``topic`` here
        (the first MAX_SCAN records)."""
        info = self.store.topics.get(topic)
        if info is None or not info.count:
            return []
        out = []
        for seq, record in self.store.read_range(topic, info.first_seq, MAX_SCAN):
            origin = _dead_letter_origin(record)
            if origin is not None:
                out.append((seq, origin))
        return out

    def _dead_letters_of(self, name: str) -> dict[str, list[bytes]]:
        """The dead letters of partition ``name`` this hub holds, by dead-letter topic."""
        out: dict[str, list[bytes]] = {}
        for topic, info in list(self.store.topics.items()):
            if not topic.startswith(DLQ_PREFIX) or not info.count:
                continue
            for _, record in self.store.read_range(topic, info.first_seq, MAX_SCAN):
                origin = _dead_letter_origin(record)
                if origin is not None and origin[0] == name:
                    out.setdefault(topic, []).append(record)
        return out

    def _store_dead_letters(self, dead: dict[str, list[bytes]]) -> None:
        firsts = self.store.commit(dead, now_ms=self.clock.wall_ms())
        for topic, records in dead.items():
            self.valid_topics.add(topic)
            last = firsts[topic] + len(records) - 1
            for sub in self.groups.of(topic):  # a consumer of the dead-letter topic here
                sub.published(last)
        if self.attachments.patterns:
            self.groups.new_topics(list(dead))

    def _remove_dead_letter(self, topic: str, origin: str, seq: int) -> None:
        info = self.store.topics.get(topic)
        if info is None or not info.count:
            return
        gone = [s for s, record in self.store.read_range(topic, info.first_seq, MAX_SCAN)
                if _dead_letter_origin(record) == (origin, seq)]
        if gone:
            self.store.delete(topic, gone)

    def _apply_deletes(self, name: str, first: Any, holes: Any) -> None:
        """The leader's retention and PURGEs: nothing below its ``first_seq``, none of the
        ``holes`` (runs ``[lo, hi]`` it no longer holds)."""
        local = self.store.topics.get(name)
        if local is None or not local.count:
            return
        if type(first) is int and local.first_seq < first:
            self.store.delete(name, range(local.first_seq, min(first, local.last_seq + 1)))
        for run in holes if isinstance(holes, list) else ():
            if (isinstance(run, list) and len(run) == 2 and type(run[0]) is int
                    and type(run[1]) is int and run[0] <= run[1]):
                self.store.delete(name, range(run[0], min(run[1], local.last_seq) + 1))

    def _truncate(self, name: str, after: int) -> None:
        """Drop this copy's records above ``after``: a former leader's tail that was never
        confirmed (the leader's log differs from there)."""
        info = self.store.topics.get(name)
        if info is None or info.last_seq <= after:
            return
        ids = [msg_id for _, rec in self.store.read_range(name, after + 1, info.last_seq - after)
               if (msg_id := _msg_id(rec)) is not None]
        n = self.store.truncate(name, after, ids)
        log.warning("cluster hub %s: %s diverged from its leader after seq %d: %d unconfirmed "
                    "records dropped", self.node, name, after, n)


def _runs(seqs: Any) -> list[list[int]]:
    """Sequences (a range or a set) as runs ``[lo, hi]``."""
    if isinstance(seqs, range):
        return [[seqs.start, seqs.stop - 1]] if len(seqs) else []
    out: list[list[int]] = []
    for seq in sorted(seqs):
        if out and out[-1][1] == seq - 1:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return out


def _answers(entry: tuple, refs: list[tuple[bytes, Any]]) -> bool:
    """Whether an outbox entry is the REPLY to one of ``refs`` ((identity, ref))."""
    body = entry[2]
    if not isinstance(body, list) or not body:
        return False
    return any(entry[0] == identity and body[0] == ref for identity, ref in refs)


def _dead_letter_origin(record: bytes) -> tuple[str, int] | None:
    """The (origin topic, origin seq) a dead letter's headers name, if it is one."""
    try:
        headers = protocol.unpack_record(record)[2]
    except protocol.DecodeError:
        return None
    if not isinstance(headers, dict):
        return None
    topic, seq = headers.get(protocol.ORIGIN_TOPIC_HEADER), headers.get(protocol.ORIGIN_SEQ_HEADER)
    if isinstance(topic, str) and type(seq) is int and protocol.SUBSCRIPTION_HEADER in headers:
        return topic, seq
    return None


def _msg_id(record: bytes) -> str | None:
    """The producer msg_id a stored record carries (its dedup entry), if any."""
    try:
        headers = protocol.unpack_record(record)[2]
    except protocol.DecodeError:
        return None
    msg_id = headers.get(protocol.MSG_ID_HEADER) if isinstance(headers, dict) else None
    return msg_id if isinstance(msg_id, str) else None

def _publish(hub: ClusterHub, identity: bytes, peer: Peer | None, body: Any) -> None:
    if type(body) is list and len(body) == 2 and type(body[1]) is list:
        checked = set()
        for msg in body[1]:
            topic = msg[0] if type(msg) is list and msg else None
            if type(topic) is str and topic not in checked:
                checked.add(topic)
                _guard(hub, identity, Command.PUBLISH, topic, body[0])
    CLIENT_HANDLERS[Command.PUBLISH](hub, identity, peer, body)


def _subscribe(hub: ClusterHub, identity: bytes, peer: Peer | None, body: Any) -> None:
    if isinstance(body, dict):
        _guard(hub, identity, Command.SUBSCRIBE, body.get("topic"), body.get("sid"), False)
    CLIENT_HANDLERS[Command.SUBSCRIBE](hub, identity, peer, body)
    if isinstance(body, dict) and body.get("topic") in hub.leading:
        hub._sync_delivery(body["topic"])  # a new subscription starts at the log's end


def _guard(hub: ClusterHub, identity: bytes, command: bytes, topic: Any, ref: Any,
           publish: bool = True) -> None:
    try:
        hub._check_topic(topic, ref, publish)
    except NotLeader as exc:
        hub._error(identity, exc.code, exc.message, command, ref, **exc.extra)
        raise _Answered() from None


class _Answered(Refusal):
    """Already answered (with its extras): nothing more to send."""

    def __init__(self) -> None:
        super().__init__(ErrorCode.NOT_LEADER, "", None)


def _settlement(command: bytes):
    inner = CLIENT_HANDLERS[command]

    def handler(hub: ClusterHub, identity: bytes, peer: Peer | None, body: Any) -> None:
        try:
            inner(hub, identity, peer, body)
        except Refusal as exc:
            if exc.code != ErrorCode.UNKNOWN_SUBSCRIPTION:
                raise
            sid = exc.ref
            if (identity, sid) not in hub._deposed_sids:
                raise
            hub._error(identity, ErrorCode.NOT_LEADER, "this hub no longer leads that "
                       "subscription's partition: subscribe on its leader", command, sid)

    return handler


def _metadata(hub: ClusterHub, identity: bytes, peer: Peer | None, body: Any) -> None:
    wanted = body.get("topics") if isinstance(body, dict) else None
    specs = hub.topic_specs
    if isinstance(wanted, list):
        specs = {n: s for n, s in specs.items() if n in wanted}
    partitions = {}
    for name, state in sorted(hub.member.view().items()):
        if not isinstance(state, PartitionState):
            continue
        if isinstance(wanted, list) and state.topic not in wanted:
            continue
        partitions[name] = {"leader": state.leader, "epoch": state.epoch,
                            "isr": list(state.isr), "replicas": list(state.replicas)}
    hub.turn.replies.append((identity, Command.METADATA, {
        "cluster": True, "node": hub.node,
        "hubs": {n: {"endpoint": h.endpoint, "pub": h.pub} for n, h in hub.hubs_view.items()},
        "topics": {n: {"partitions": s.partitions, "replicas": s.replicas,
                       "min_insync": s.min_insync} for n, s in specs.items()},
        "partitions": partitions,
        # what this hub leads: its log end and each follower's durable position (`cluster
        # status` shows the difference as replication lag)
        "replication": {
            name: {"epoch": lead.epoch, "last_seq": _last_seq(hub, name),
                   "followers": {f: lead.pos.get(f) for f in lead.replicas if f != hub.node}}
            for name, lead in sorted(hub.leading.items())},
    }))


def _last_seq(hub: ClusterHub, name: str) -> int:
    info = hub.store.topics.get(name)
    return info.last_seq if info else 0


def _replicate(hub: ClusterHub, identity: bytes, peer: Peer | None, body: Any) -> None:
    if not isinstance(body, dict):
        raise Refusal(ErrorCode.BAD_BODY, "REPLICATE body must be a map")
    name, epoch, node = body.get("partition"), body.get("epoch"), body.get("node")
    from_seq, limit = body.get("from_seq"), body.get("max", MAX_REPLICA_RECORDS)
    if not (isinstance(name, str) and type(epoch) is int and isinstance(node, str)
            and type(from_seq) is int and from_seq >= 1 and type(limit) is int and limit >= 1):
        raise Refusal(ErrorCode.BAD_BODY, "REPLICATE needs partition, epoch, node, from_seq, max",
                      name if isinstance(name, str) else None)
    lead = hub.leading.get(name)
    if lead is not None and epoch > lead.epoch:
        hub._depose(name, f"a follower knows epoch {epoch}")
        lead = None
    if lead is None or hub.member.fenced or epoch != lead.epoch:
        raise NotLeader(ErrorCode.NOT_LEADER, f"{hub.node} does not lead {name} at epoch "
                        f"{epoch}", name, hub._hint(name))
    if node not in lead.replicas or node == hub.node:
        raise Refusal(ErrorCode.INVALID, f"{node} is not a follower of {name}", name)
    info = hub.store.topics.get(name)
    last = info.last_seq if info else 0
    last_epoch = body.get("last_epoch", -1)
    end = end_of_epoch(lead.history, last_epoch if type(last_epoch) is int else -1, last)
    if from_seq - 1 > end:
        # the follower holds records this leader's log does not have there (a former leader's
        # unconfirmed tail): it drops them, then fetches again from `end + 1`
        hub._send(identity, Command.REPLICA, {
            "partition": name, "epoch": lead.epoch, "records": [], "last_seq": last,
            "subs": {}, "epochs": lead.history, "truncate": end})
        return
    now = hub.clock.monotonic_ms()
    if body.get("full_subs") is True:  # it did not apply an answer: send every state again
        lead.full_subs_at.pop(node, None)
    moved = lead.pos.get(node) != from_seq - 1
    lead.pos[node] = from_seq - 1
    lead.seen[node] = now
    if moved:
        hub._sync_delivery(name)  # what every in-sync replica holds may have grown
    if from_seq - 1 >= last:
        lead.caught_up[node] = now
    first, count, events_from = (body.get("first_seq"), body.get("count"),
                                 body.get("events_from"))
    if type(first) is int and type(count) is int and type(events_from) is int:
        lead.reported[node] = (first, count, events_from)
        lead.events_acked[node] = events_from  # it applied the entries before
    else:  # a follower that does not speak the state stream: records and snapshots only
        lead.reported.pop(node, None)
    if from_seq <= last or (node in lead.reported
                            and hub._state_news(lead, node, info, from_seq)):
        hub._answer_fetch(identity, name, lead, from_seq, min(limit, MAX_REPLICA_RECORDS), node)
    else:
        lead.parked = [p for p in lead.parked if p[1] != node]
        lead.parked.append((identity, node, from_seq, min(limit, MAX_REPLICA_RECORDS),
                            now + LONG_POLL_MS))


def _admin(command: bytes):
    """PURGE, REDRIVE and TOPIC (but ``get``) change a partition's state: only its leader
    takes them (else ``not_leader`` with the leader hint, as a PUBLISH gets), so that what they
    do reaches the followers through the leader's log and state stream. A REDRIVE is refused
    whole if a dead letter it names came from a partition this hub does not lead."""
    inner = ADMIN_HANDLERS[command]
    name = command.decode()

    def handler(hub: ClusterHub, identity: bytes, peer: Peer | None, body: Any) -> None:
        try:
            req = parse_admin(body, name)
        except Refusal:
            req = None  # malformed: the handler says why
        if (req is not None and command == Command.TOPIC and req.arg == "delete"
                and _cluster_partition(hub, req.topic)):
            raise Refusal(ErrorCode.INVALID, f"{req.topic} is a cluster partition: its log is "
                          "on every replica, a delete here would empty one copy; PURGE it "
                          "(all) to empty every copy", req.ref)
        dlq = req is not None and command == Command.PURGE and req.topic.startswith(DLQ_PREFIX)
        if req is not None and not (command == Command.TOPIC and req.arg == "get"):
            try:
                _guard(hub, identity, command, req.topic, req.ref, False)
                if command == Command.REDRIVE or (dlq and req.arg != "all"):
                    _guard_origins(hub, identity, req, command)
            except _Answered:
                return
        inner(hub, identity, peer, body)
        if dlq and req.arg == "all" and hub.states:
            _keep_followed_dead_letters(hub, identity, req)
        if (command == Command.TOPIC and req is not None and req.arg in ("create", "config")
                and req.topic in hub.leading):
            # the new limits travel as a state entry; the REPLY waits for the followers
            hub.leading[req.topic].add_event(["config", hub.store.configs.get(req.topic)])
            hub._config_changes.append((identity, req.ref, req.topic))

    return handler


def _cluster_partition(hub: ClusterHub, topic: str) -> bool:
    return (topic in hub.states or topic in hub.topic_specs
            or topic.rpartition(".")[0] in hub.topic_specs)


def _keep_followed_dead_letters(hub: ClusterHub, identity: bytes, req: Any) -> None:
    """A PURGE of all of a dead-letter topic takes the dead letters of partitions this hub
    leads (removed from their followers too) and of no cluster partition; those of a partition
    another hub leads stay: their leader's PURGE removes them from every copy."""
    turn = hub.turn
    staged = turn.deletes.get(req.topic)
    if not isinstance(staged, range) or not len(staged):
        return
    keep = {seq for seq, record in hub.store.read_range(req.topic, staged.start,
                                                        min(len(staged), MAX_SCAN))
            if (origin := _dead_letter_origin(record)) is not None
            and origin[0] in hub.states and origin[0] not in hub.leading}
    if not keep:
        return
    turn.deletes[req.topic] = set(staged) - keep
    for who, command, ref, result in turn.admin:
        if who == identity and command == Command.PURGE and ref == req.ref:
            result["purged"] = max(0, result["purged"] - len(keep))


def _guard_origins(hub: ClusterHub, identity: bytes, req: Any,
                   command: bytes = Command.REDRIVE) -> None:
    """A REDRIVE (or PURGE) of dead letters is refused whole if one came from a partition
    this hub does not lead: its leader removes it, from every copy."""
    seqs = req.arg
    if not isinstance(seqs, list):
        return
    if command == Command.REDRIVE:  # the hub redrives this many at most
        seqs = seqs[: hub.config.max_batch_messages]
    wanted = [s for s in seqs if type(s) is int and s >= 0]
    checked = set()
    for record in hub.store.read(req.topic, wanted):
        origin = _dead_letter_origin(record) if record is not None else None
        if origin is None or origin[0] in checked:
            continue
        checked.add(origin[0])
        try:
            hub._check_topic(origin[0], req.ref)
        except NotLeader as exc:
            verb = "redriven" if command == Command.REDRIVE else "purged"
            hub._error(identity, exc.code, f"{exc.message}; a dead letter of {origin[0]} is "
                       f"{verb} by its leader (its own {req.topic} seqs: list them there)",
                       command, req.ref, **exc.extra)
            raise _Answered() from None


def _with_extra(handler):
    def wrapped(hub: ClusterHub, identity: bytes, peer: Peer | None, body: Any) -> None:
        try:
            handler(hub, identity, peer, body)
        except _Answered:
            return
        except NotLeader as exc:
            hub._error(identity, exc.code, exc.message, Command.REPLICATE, exc.ref, **exc.extra)

    return wrapped


ClusterHub._handlers = {
    **Hub._handlers,
    Command.PUBLISH: _with_extra(_publish),
    Command.SUBSCRIBE: _with_extra(_subscribe),
    **{c: _settlement(c) for c in (Command.CREDIT, Command.ACK, Command.NACK, Command.RELEASE,
                                   Command.REJECT, Command.PROGRESS)},
    Command.METADATA: _metadata,
    Command.REPLICATE: _with_extra(_replicate),
    **{c: _admin(c) for c in (Command.PURGE, Command.REDRIVE, Command.TOPIC)},
}
