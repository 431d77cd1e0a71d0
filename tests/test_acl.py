"""The ACL core (router/acl.py), without sockets.

Invariant: a client key has exactly the rights its patterns grant, judged token by token
('*' one token, '>' one or more trailing tokens), and nothing else: an unknown key, or no key,
has none.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmq_mq.router import acl as acl_mod
from zmq_mq.router.acl import PUBLISH, SUBSCRIBE, Acl, AclError, matches, parse_pattern

ALICE = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"  # any 40 Z85 characters
BOB = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"
NAMES = {"alice": ALICE, "bob": BOB}


@pytest.mark.parametrize(
    "pattern, topic, expected",
    [
        ("orders", "orders", True),
        ("orders", "orders.eu", False),
        ("orders.*", "orders.eu", True),
        ("orders.*", "orders", False),
        ("orders.*", "orders.eu.west", False),
        ("orders.*", "payments.eu", False),
        ("orders.>", "orders.eu", True),
        ("orders.>", "orders.eu.west", True),
        ("orders.>", "orders", False),
        ("*.eu", "orders.eu", True),
        ("*.eu", "orders.us", False),
        ("*", "orders", True),
        ("*", "orders.eu", False),
        (">", "orders", True),
        (">", "dlq.billing", True),
        ("orders.*.west", "orders.eu.west", True),
        ("orders.*.west", "orders.eu.east", False),
    ],
)
def test_patterns_match_token_by_token(pattern, topic, expected):
    assert matches(parse_pattern(pattern), topic) is expected


@pytest.mark.parametrize("bad", ["", "orders.>.eu", "orders..eu", "orders eu", "or*ders", ">>", 5, None])
def test_bad_patterns_are_refused_with_a_reason(bad):
    with pytest.raises(AclError):
        parse_pattern(bad)


def _oracle(pattern: str, topic: str) -> bool:
    """An independent reading of the rules: the pattern as a regular expression."""
    parts = []
    for token in pattern.split("."):
        parts.append({"*": r"[^.]+", ">": r"[^.]+(\.[^.]+)*"}.get(token, re.escape(token)))
    return re.fullmatch(r"\.".join(parts), topic) is not None


tokens = st.sampled_from(["a", "b", "c-1"])  # few tokens, so that patterns often do match
topics = st.lists(tokens, min_size=1, max_size=4).map(".".join)
patterns = st.lists(st.one_of(tokens, st.just("*")), min_size=0, max_size=4).flatmap(
    lambda head: st.sampled_from([head + [">"], head] if head else [[">"]])
).map(".".join)


@settings(max_examples=500, deadline=None)
@given(patterns, topics)
def test_matching_agrees_with_a_regex_reading_of_the_rules(pattern, topic):
    assert matches(parse_pattern(pattern), topic) == _oracle(pattern, topic)


@settings(max_examples=200, deadline=None)
@given(topics, st.data())
def test_a_pattern_made_from_a_topic_matches_it(topic, data):
    # Given a topic, replace some tokens by '*' and maybe the tail by '>'
    toks = topic.split(".")
    pat = [t if not data.draw(st.booleans()) else "*" for t in toks]
    cut = data.draw(st.integers(0, len(pat) - 1))
    if data.draw(st.booleans()):
        pat = pat[:cut] + [">"]
    # Then the pattern matches that topic
    assert matches(parse_pattern(".".join(pat)), topic)


ACL_TEXT = f"""
[clients.alice]
publish = [">"]
subscribe = [">"]

[clients.bob]
publish = ["orders.*"]
subscribe = ["orders.>", "audit"]

[clients."{'x' * 40}"]
publish = "logs.>"
"""


def test_an_acl_grants_by_name_or_z85_key_and_denies_everyone_else():
    acl = Acl.from_toml(ACL_TEXT, NAMES)
    assert acl.permits(ALICE, PUBLISH, "payments")
    assert acl.permits(BOB, PUBLISH, "orders.eu")
    assert not acl.permits(BOB, PUBLISH, "payments")
    assert not acl.permits(BOB, SUBSCRIBE, "payments")
    assert acl.permits(BOB, SUBSCRIBE, "orders.eu.west")
    assert acl.permits(BOB, SUBSCRIBE, "audit")
    assert not acl.permits(BOB, PUBLISH, "audit")
    assert acl.permits("x" * 40, PUBLISH, "logs.web")
    assert not acl.permits("x" * 40, SUBSCRIBE, "logs.web")  # no subscribe list: no rights
    assert not acl.permits("y" * 40, PUBLISH, "orders.eu")  # not in the file
    assert not acl.permits(None, PUBLISH, "orders.eu")
    assert acl.reads_everything(ALICE) and not acl.reads_everything(BOB)
    assert acl.name_of(BOB) == "bob"


def test_decisions_are_cached_and_the_cache_stays_bounded(monkeypatch):
    monkeypatch.setattr(acl_mod, "MAX_CACHED_DECISIONS", 10)
    acl = Acl.from_toml(ACL_TEXT, NAMES)
    for i in range(25):
        assert acl.permits(BOB, PUBLISH, f"orders.n{i}")
        assert not acl.permits(BOB, PUBLISH, f"payments.n{i}")
    assert len(acl._cache) <= 10
    assert acl.permits(BOB, PUBLISH, "orders.n0")  # a forgotten decision is made again, the same


@pytest.mark.parametrize(
    "text, words",
    [
        ("[clients.carol]\npublish = ['a']", "not the name of an authorised key"),
        ("[clients.alice]\npublish = ['a.>.b']", "'>' may only be the last token"),
        ("[clients.alice]\nread = ['a']", "unknown field"),
        ("[clients.alice]\npublish = 5", "must be a list"),
        ("[client.alice]\npublish = ['a']", "unknown section"),
        ("[clients.alice\n", "not valid TOML"),
        (f"[clients.alice]\n[clients.\"{ALICE}\"]\n", "already has a section"),
    ],
)
def test_a_bad_acl_file_is_refused_with_the_place_and_reason(text, words):
    with pytest.raises(AclError, match=re.escape(words)):
        Acl.from_toml(text, NAMES, source="acl.toml")
