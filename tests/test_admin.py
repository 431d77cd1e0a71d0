"""Admin reads stored messages as objects, and the README's Python API imports what it documents."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from zmq_mq.actors import Admin, Producer, StoredMessage

README = Path(__file__).resolve().parent.parent / "README.md"


def test_admin_fetch_and_scan_return_stored_messages_with_topic_seq_key_headers_and_payload(hub):
    # Given two stored messages, one with a key, headers, a msg_id and a priority
    with Producer(hub.endpoint) as p:
        p.publish("orders", b"first", key="user-1", headers={"trace": "t1"}, msg_id="o-1", priority=7)
        p.publish("orders", b"second")
    with Admin(hub.endpoint) as admin:
        # When they are fetched and scanned
        fetched = admin.fetch("orders", 1, 10)
        scanned = list(admin.scan("orders"))
    # Then each is a StoredMessage with what was published and what the hub added
    assert fetched == scanned and all(isinstance(m, StoredMessage) for m in fetched)
    first, second = fetched
    assert (first.topic, first.seq, first.key, first.payload) == ("orders", 1, "user-1", b"first")
    assert first.headers == {"trace": "t1", "x-msg-id": "o-1", "x-priority": 7}
    assert (first.msg_id, first.priority, first.text()) == ("o-1", 7, "first")
    assert first.timestamp > 1_600_000_000_000  # ms since the epoch
    assert (second.seq, second.key, second.headers, second.priority, second.msg_id) == (
        2, None, {}, 0, "orders:2")
    # And they are values: frozen, no per-instance dict
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.seq = 3  # type: ignore[misc]
    assert not hasattr(first, "__dict__")


def test_the_readme_import_line_imports_every_class_the_python_api_section_documents():
    text = README.read_text()
    section = text.split("## The Python API", 1)[1].split("\n## ", 1)[0]
    [line] = re.findall(r"`(from zmq_mq\.actors import [^`]+)`", section)
    namespace: dict = {}
    exec(line, namespace)  # every name on it exists
    documented = re.findall(r"^- `([A-Z]\w+)\(", section, re.M)
    assert "Admin" in documented
    assert [name for name in documented if name not in namespace] == []
