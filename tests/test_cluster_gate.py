"""The cluster hub's confirm gate, turn by turn (Hub.step, no sockets, no ZooKeeper): a
leader's CONFIRM leaves only once its in-sync followers fetched past the batch, and never
once the hub was deposed or fenced, even when the news arrives between a publish's acceptance
and its commit. The partition states are given as the ClusterMember would deliver them; the
member itself is replaced by its one attribute the loop reads (``fenced``)."""

from __future__ import annotations

import types

import pytest
from zmq_mq.router import protocol
from zmq_mq.router.cluster.coordinator import FENCED
from zmq_mq.router.cluster.layout import PartitionState
from zmq_mq.router.cluster_hub import ClusterHub
from zmq_mq.router.config import HubConfig
from zmq_mq.router.protocol import Command

LEADS = PartitionState("t", 0, "a", 1, ("a", "b"), ("a", "b"))
MOVED = PartitionState("t", 0, "b", 2, ("a", "b"), ("b",))


@pytest.fixture
def leader(tmp_path):
    hub = ClusterHub(HubConfig(data_dir=str(tmp_path / "a"), sync=False),
                     cluster="zk://127.0.0.1:1/x", node="a")
    hub.member = types.SimpleNamespace(fenced=False, view=dict, close=lambda: None)
    hub._apply_state("t.0", LEADS)
    yield hub
    hub.member = None
    hub.close()


def frames(command: bytes, body, identity: bytes = b"producer") -> list[bytes]:
    return [identity, *protocol.encode(command, body)]


def publish(batch: str) -> list[bytes]:
    return frames(Command.PUBLISH, [batch, [["t.0", b"x", None, None]]])


def fetch(from_seq: int, epoch: int = 1) -> list[bytes]:
    return frames(Command.REPLICATE, {"partition": "t.0", "epoch": epoch, "node": "b",
                                      "from_seq": from_seq, "max": 100, "last_epoch": epoch},
                  b"follower-b")


def replies(sent, command: bytes, identity: bytes = b"producer") -> list:
    return [body for who, c, body in sent if who == identity and c == command]


def test_a_leader_confirms_only_once_its_in_sync_follower_fetched_past_the_batch(leader):
    sent = leader.step([publish("b1")])
    assert replies(sent, Command.CONFIRM) == []  # stored, not yet on the follower
    sent = leader.step([fetch(1)])  # the follower holds nothing yet
    assert replies(sent, Command.CONFIRM) == []
    assert replies(sent, Command.REPLICA, b"follower-b")[0]["records"][0][0] == 1
    sent = leader.step([fetch(2)])  # it holds seq 1 now
    assert replies(sent, Command.CONFIRM) == [["b1", [1]]]


def test_a_publish_accepted_before_a_deposition_arrives_is_never_confirmed(leader):
    leader.handle(publish("b1"))  # accepted while leading
    leader.inbox.put(("state", "t.0", MOVED))  # the news comes before the commit
    sent = leader.step([fetch(2, epoch=1)])
    assert replies(sent, Command.CONFIRM) == []
    errors = replies(sent, Command.ERROR)
    assert [(e["code"], e["ref"]) for e in errors] == [("not_leader", "b1")]


def test_a_fenced_leader_answers_not_leader_for_what_it_held(leader):
    sent = leader.step([publish("b1")])
    assert replies(sent, Command.CONFIRM) == []
    leader.member.fenced = True
    leader.inbox.put(("state", "t.0", FENCED))
    sent = leader.step([fetch(2)])
    assert replies(sent, Command.CONFIRM) == []
    assert [e["code"] for e in replies(sent, Command.ERROR)] == ["not_leader"]
    # and a new publish is refused, nothing stored
    sent = leader.step([publish("b2")])
    assert [e["code"] for e in replies(sent, Command.ERROR)] == ["not_leader"]
    assert leader.store.topics["t.0"].last_seq == 1


def test_a_follower_with_a_diverged_tail_is_told_where_to_truncate(leader):
    leader.step([publish("b1")])
    # a former leader of epoch 0 that holds seqs 1..3 the current leader never had
    sent = leader.step([frames(Command.REPLICATE, {"partition": "t.0", "epoch": 1, "node": "b",
                                                   "from_seq": 4, "max": 10, "last_epoch": 0},
                               b"follower-b")])
    (answer,) = replies(sent, Command.REPLICA, b"follower-b")
    assert answer["truncate"] == 0 and answer["records"] == []


def test_a_partition_whose_state_is_not_known_yet_is_not_stored_as_a_local_topic(leader):
    from zmq_mq.router.cluster.layout import TopicSpec

    leader.topic_specs = {"t": TopicSpec("t", 2, 2, 2, (("a", "b"), ("b", "a")))}
    sent = leader.step([frames(Command.PUBLISH, ["b1", [["t.1", b"x", None, None]]])])
    assert [(e["code"], e["ref"]) for e in replies(sent, Command.ERROR)] == [("not_leader", "b1")]
    assert "t.1" not in leader.store.topics
    sent = leader.step([frames(Command.PUBLISH, ["b2", [["t", b"x", None, None]]])])
    assert [e["code"] for e in replies(sent, Command.ERROR)] == ["invalid"]


def test_a_partition_without_a_leader_says_unavailable_and_stores_nothing(leader):
    leader.inbox.put(("state", "t.0", PartitionState("t", 0, None, 2, ("a", "b"), ("b",))))
    leader.step([])  # the news is applied at the start of a turn
    sent = leader.step([publish("b1")])
    errors = replies(sent, Command.ERROR)
    assert [(e["code"], e["ref"], e["leader"]) for e in errors] == [("unavailable", "b1", None)]
    assert "t.0" not in leader.store.topics
