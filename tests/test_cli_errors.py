"""What a new user hits on the command line: a malformed address, a timeout that must hold, a
refused live feed, a message id, an out-of-range delay. Each is one line on stderr and the
documented exit code (2: the command line is wrong; 1: the hub or the network failed)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from conftest import run_cli, wait_for, zmq_mq_command
from test_security import Keys
from zmq_mq.actors import Admin, HubError, Listener

HUB_COMMANDS = [
    ["publish", "t", "x"],
    ["subscribe", "t", "--group", "g"],
    ["topics"],
    ["stats"],
    ["listen"],
    ["dlq", "list"],
    ["dlq", "purge", "dlq.g", "--all"],
    ["topic", "delete", "t"],
    ["run", "examples/nothing.py"],
    ["bench"],
]


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zmq-mq: error: "), result.stderr.decode()
    return lines[0]


@pytest.mark.parametrize("command", HUB_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_hub_address_without_tcp_is_one_line_and_exit_2_for_every_command(command):
    # Given `--hub localhost:5555` (no tcp://), When any command that talks to a hub runs,
    # Then it says what a hub address looks like, on one line, with the usage exit code
    result = run_cli(*command, "--hub", "localhost:5555", timeout=30)
    line = _one_error_line(result)
    assert result.returncode == 2
    assert "--hub: 'localhost:5555' is not an endpoint" in line and "tcp://localhost:5555" in line


def test_a_malformed_zmq_mq_hub_variable_is_named_on_one_line_with_exit_2():
    result = run_cli("topics", env_hub="127.0.0.1:5555", timeout=30)
    assert result.returncode == 2
    assert "$ZMQ_MQ_HUB: '127.0.0.1:5555' is not an endpoint" in _one_error_line(result)


@pytest.mark.parametrize("command", ["hub", "demo"])
@pytest.mark.parametrize("flag", ["--bind", "--pub"])
def test_the_hub_refuses_a_malformed_bind_or_pub_address_on_one_line_with_exit_2(tmp_path, command, flag):
    result = run_cli(command, "--data", str(tmp_path / "data"), flag, "localhost:5555", timeout=30)
    assert result.returncode == 2
    assert f"{flag}: 'localhost:5555' is not an endpoint" in _one_error_line(result)
    assert not (tmp_path / "data").exists()


def _nothing_listening(tmp_path) -> str:
    return f"ipc://{tmp_path}/nothing-listens-here"


@pytest.mark.parametrize("command", [["subscribe", "t", "--group", "g"], ["listen"]])
def test_the_timeout_of_subscribe_and_listen_bounds_connecting(tmp_path, command):
    # Given an address where nothing listens, When the command runs with --timeout 1,
    # Then it gives up after about a second (not the library's default 10 s) with exit 1
    started = time.monotonic()
    result = run_cli(*command, "--hub", _nothing_listening(tmp_path), "--timeout", "1", timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "no answer from the hub" in _one_error_line(result) and "within 1 s" in result.stderr.decode()
    assert elapsed < 5, f"took {elapsed:.1f} s"


@pytest.mark.slow
def test_publish_timeout_bounds_the_whole_wait_when_the_hub_is_killed_mid_stream(hub_process, processes):
    # Given `zmq-mq publish --timeout 3` reading stdin, whose first message the hub stored
    hub = hub_process()
    proc = processes(subprocess.Popen(
        [*zmq_mq_command(), "publish", "orders", "-", "--hub", hub.endpoint, "--timeout", "3"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ))
    proc.stdin.write(b"first\n")
    proc.stdin.flush()
    with Admin(hub.endpoint, timeout=10) as admin:
        wait_for(lambda: any(t["topic"] == "orders" and t["messages"] == 1 for t in admin.topics()),
                 30, message="the first message stored")
    # When the hub is killed and more messages follow
    hub.kill9()
    started = time.monotonic()
    proc.stdin.write(b"second\nthird\n")
    proc.stdin.close()
    proc.wait(60)
    elapsed = time.monotonic() - started
    # Then it fails within its 3 s (plus process exit), saying what was not confirmed
    err = proc.stderr.read().decode()
    assert proc.returncode == 1, err
    assert "2 messages not confirmed within" in err and len(err.splitlines()) == 1, err
    assert elapsed < 4.5, f"took {elapsed:.1f} s after the hub died, with --timeout 3"


def test_publish_timeout_does_not_count_time_spent_waiting_for_stdin(hub, processes):
    # Given `zmq-mq publish --timeout 1` fed by a slow writer (as `tail -f log | zmq-mq publish`)
    proc = processes(subprocess.Popen(
        [*zmq_mq_command(), "publish", "logs", "-", "--hub", hub.endpoint, "--timeout", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ))
    proc.stdin.write(b"first\n")
    proc.stdin.flush()
    # When the next line comes later than --timeout (the pause is the input's, not a wait)
    time.sleep(2)
    proc.stdin.write(b"second\n")
    proc.stdin.close()
    proc.wait(60)
    # Then both are confirmed: --timeout bounds waiting for the hub, not for the input
    err = proc.stderr.read().decode()
    assert proc.returncode == 0 and "confirmed 2 messages on logs" in err, err


@pytest.fixture
def curve_hub_process(tmp_path, hub_process):
    keys = Keys(tmp_path)
    return keys, hub_process(extra=["--curve", "--keys", str(keys.dir), "--acl", str(keys.acl)])


def _env(keys: Keys, name: str) -> dict:
    return {**os.environ, "ZMQ_MQ_CURVE_KEY": str(keys.dir / f"{name}.key_secret"),
            "ZMQ_MQ_SERVER_KEY": str(keys.dir / "hub.key")}


@pytest.mark.slow
def test_listen_refused_on_a_curve_live_feed_says_so_on_one_line_and_exits_1(curve_hub_process):
    # Given a --curve hub with an ACL, and bob, who may use the hub but not read every topic
    keys, hub = curve_hub_process
    # When bob runs `zmq-mq listen`
    result = subprocess.run([*zmq_mq_command(), "listen", "--hub", hub.endpoint, "--timeout", "5"],
                            capture_output=True, timeout=60, env=_env(keys, "bob"))
    # Then he hears the refusal (not silence and exit 0), after the "listening" line
    err = result.stderr.decode().splitlines()
    assert result.returncode == 1, result.stderr.decode()
    assert err[0].startswith("listening to") and len(err) == 2, err
    assert err[1].startswith("zmq-mq: error: forbidden: the hub's live feed") and "subscribe '>'" in err[1]


def test_a_listener_refused_by_a_curve_hub_raises_forbidden_instead_of_hearing_nothing(tmp_path):
    from zmq_mq.testing import HubThread

    keys = Keys(tmp_path)
    hub = HubThread(tmp_path / "data", curve=True, keys_dir=str(keys.dir), acl_file=str(keys.acl)).start()
    try:
        # bob: authorised, but his ACL does not grant '>'; mallory: not authorised; no keys at all
        for curve, words in ((keys.client("bob"), "subscribe '>'"),
                             (keys.client("mallory"), "authorised"),
                             (None, "a --curve hub needs client keys")):
            with Listener(hub.pub_endpoint, curve=curve) as listener:
                with pytest.raises(HubError, match="refused this listener") as refused:
                    listener.receive(10)
                assert refused.value.code == "forbidden" and words in refused.value.message
                with pytest.raises(HubError):  # and it stays refused
                    listener.receive(0)
        # while alice, granted everything, just waits for messages
        with Listener(hub.pub_endpoint, curve=keys.client("alice")) as listener:
            assert listener.receive(0.5) is None
    finally:
        hub.stop()


def test_publish_msg_id_stores_a_repeated_message_once(hub):
    first = run_cli("publish", "orders", "pay 5", "--msg-id", "order-7", "--hub", hub.endpoint)
    again = run_cli("publish", "orders", "pay 5", "--msg-id", "order-7", "--hub", hub.endpoint)
    piped = run_cli("publish", "orders", "--msg-id", "order-7", "--hub", hub.endpoint, input=b"pay 5\n")
    assert first.returncode == again.returncode == piped.returncode == 0, first.stderr
    assert first.stdout.strip() == again.stdout.strip() == piped.stdout.strip() == b"1"
    with Admin(hub.endpoint) as admin:
        assert [t["messages"] for t in admin.topics() if t["topic"] == "orders"] == [1]


def test_publish_refuses_one_msg_id_for_several_messages_with_exit_2_and_publishes_nothing(hub):
    result = run_cli("publish", "orders", "-", "--msg-id", "batch-1", "--hub", hub.endpoint,
                     input=b"a\nb\n")
    assert result.returncode == 2
    assert "--msg-id names one message, but stdin held 2 lines" in _one_error_line(result)
    with Admin(hub.endpoint) as admin:
        assert not [t for t in admin.topics() if t["topic"] == "orders"]


@pytest.mark.parametrize("option", [["--delay", "99999999"], ["--delay", "inf"],
                                    ["--deliver-at", "2999-01-01T00:00:00"],
                                    ["--msg-id", ""]])
def test_an_out_of_range_publish_option_is_a_usage_error_with_exit_2(hub, option):
    result = run_cli("publish", "orders", "x", *option, "--hub", hub.endpoint, timeout=30)
    assert result.returncode == 2
    assert option[0] in _one_error_line(result)
