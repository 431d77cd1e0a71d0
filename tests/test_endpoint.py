"""Endpoints: one check (router/endpoint.py) for the hub, the client library and the CLI, so a
typo such as ``localhost:5555`` gets a sentence, not ``ZMQError: Invalid argument``."""

from __future__ import annotations

import pytest

from zmq_mq.actors import Actor, Admin, Consumer, Listener, Producer
from zmq_mq.router.endpoint import check_endpoint, endpoint_problem

GOOD_CONNECT = ["tcp://127.0.0.1:5555", "tcp://localhost:1", "tcp://[::1]:5555",
                "tcp://hub.example.com:65535", "ipc:///tmp/zmq-mq.sock", "ipc://@abstract",
                "inproc://hub"]
GOOD_BIND_ONLY = ["tcp://127.0.0.1:*", "tcp://*:*", "tcp://0.0.0.0:0"]
BAD = ["localhost:5555", "127.0.0.1:5555", "", "tcp://", "tcp://localhost", "tcp://:5555",
       "tcp://localhost:http", "tcp://localhost:70000", "udp://127.0.0.1:5555", "ipc://",
       "http://localhost:5555"]


@pytest.mark.parametrize("endpoint", GOOD_CONNECT)
def test_the_endpoints_zeromq_connects_to_are_accepted(endpoint):
    assert endpoint_problem(endpoint) is None
    assert endpoint_problem(endpoint, bind=True) is None


@pytest.mark.parametrize("endpoint", GOOD_BIND_ONLY)
def test_a_wildcard_or_zero_port_is_accepted_for_bind_only(endpoint):
    assert endpoint_problem(endpoint, bind=True) is None
    assert "port" in endpoint_problem(endpoint)


@pytest.mark.parametrize("endpoint", BAD)
def test_a_malformed_endpoint_is_refused_with_what_an_endpoint_looks_like(endpoint):
    problem = endpoint_problem(endpoint)
    assert problem and "tcp://" in problem
    assert endpoint_problem(endpoint, bind=True)


def test_a_host_and_port_without_a_transport_gets_the_tcp_spelling_suggested():
    assert "did you mean tcp://localhost:5555?" in endpoint_problem("localhost:5555")
    with pytest.raises(ValueError, match=r"^hub endpoint: 'localhost:5555' is not an endpoint"):
        check_endpoint("localhost:5555")


CONSTRUCTORS = {
    "Producer": lambda ep: Producer(ep),
    "Consumer": lambda ep: Consumer(ep),
    "Actor": lambda ep: Actor(ep),
    "Admin": lambda ep: Admin(ep),
    "Listener": lambda ep: Listener(ep),
}


@pytest.mark.parametrize("kind", CONSTRUCTORS)
def test_every_client_refuses_a_malformed_endpoint_when_constructed_with_a_value_error(kind):
    # Given an endpoint without its transport, When a client is made with it,
    # Then a ValueError says what an endpoint looks like (before any socket is opened)
    with pytest.raises(ValueError, match=r"'localhost:5555' is not an endpoint: give tcp://HOST:PORT"):
        client = CONSTRUCTORS[kind]("localhost:5555")
        client.close()


def test_a_malformed_zmq_mq_hub_variable_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv("ZMQ_MQ_HUB", "localhost:5555")
    with pytest.raises(ValueError, match=r"^\$ZMQ_MQ_HUB: 'localhost:5555' is not an endpoint"):
        Producer()
    with pytest.raises(ValueError, match=r"^\$ZMQ_MQ_HUB"):
        Actor()
