"""The examples/ run as a user runs them: `zmq-mq run` actors and plain scripts, against a hub."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from zmq_mq.actors import Consumer

from conftest import step_hub_clock_while_idle, sub_state, wait_for, zmq_mq_command

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _start_actor(processes, script: Path, endpoint: str, cwd: Path, out: Path,
                 env: dict | None = None) -> subprocess.Popen:
    with open(out, "w") as stdout, open(out.with_suffix(".log"), "w") as stderr:
        return processes(subprocess.Popen(
            [*zmq_mq_command(), "run", str(script), "--hub", endpoint, "--log-level", "info"],
            stdout=stdout, stderr=stderr, cwd=cwd, env={**os.environ, **(env or {})},
        ))


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


@pytest.mark.slow
def test_the_signup_example_sends_emails_and_dead_letters_the_bouncing_one(
        fake_clock_hub, processes, tmp_path):
    # Given the email actor running under `zmq-mq run`, on a hub whose clock the test moves
    # through its retry backoff (heartbeats every 10 s: no one is taken for dead meanwhile)
    hub, clock = fake_clock_hub(heartbeat_ms=10_000)
    out = tmp_path / "emails.out"
    actor = _start_actor(processes, EXAMPLES / "signup" / "email_actor.py", hub.endpoint, tmp_path, out)
    wait_for(lambda: sub_state(hub.endpoint, "user.signup", "emails").get("actors") == 1,
             message=f"email actor attached: {out.with_suffix('.log').read_text()}")

    # When the API signs up three users, then alice again (a retried request)
    def api(*emails: str) -> str:
        done = subprocess.run([sys.executable, str(EXAMPLES / "signup" / "api.py"), "--hub", hub.endpoint,
                               *emails], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = api("alice@example.com", "bob@example.com", "bounce@example.com")
    again = api("alice@example.com")
    assert re.findall(r"#(\d+)", first) == ["1", "2", "3"]
    assert re.findall(r"#(\d+)", again) == ["1"]  # stored once, same event

    # Then the good addresses get their email, the bouncing one is retried and dead-lettered
    wait_for(lambda: "email sent to bob@example.com" in out.read_text()
             and "email sent to alice@example.com" in out.read_text(), message="emails sent")
    step_hub_clock_while_idle(hub.endpoint, clock, ("emails",),
                              lambda rows: rows[0]["dead_lettered"] == 1)
    with Consumer(hub.endpoint) as c:
        c.subscribe("dlq.emails", "inspect")
        dead = c.receive(timeout=30)
        assert dead is not None
        dead.ack()
    assert json.loads(dead.payload)["email"] == "bounce@example.com"
    assert dead.headers["x-deliveries"] == 3 and "nack" in dead.headers["x-reason"]
    assert dead.headers["x-origin-topic"] == "user.signup"
    # and `zmq-mq dlq list` shows it with its origin and reason
    listed = json.loads(_cli("dlq", "list", "--group", "emails", "--json", "--hub", hub.endpoint))
    assert [(d["origin_topic"], d["deliveries"]) for d in listed] == [("user.signup", 3)]

    # And SIGTERM stops the actor cleanly
    assert _stop(actor) == 0
    text = out.read_text()
    assert text.count("email sent to alice@example.com") == 1
    assert [int(n) for n in re.findall(r"attempt (\d) of 3", text)] == [1, 2, 3]

    # When the mail server is fixed, the service restarted and the dead letter redriven
    fixed_out = tmp_path / "emails-fixed.out"
    fixed = _start_actor(processes, EXAMPLES / "signup" / "email_actor.py", hub.endpoint, tmp_path,
                         fixed_out, env={"SIGNUP_BOUNCE": "0"})
    _cli("dlq", "redrive", "--group", "emails", "--all", "--hub", hub.endpoint)
    # Then the email is sent once, and the dead-letter topic is empty
    wait_for(lambda: "email sent to bounce@example.com" in fixed_out.read_text(),
             message="the redriven email sent")
    assert json.loads(_cli("dlq", "list", "--group", "emails", "--json", "--hub", hub.endpoint)) == []
    assert _stop(fixed) == 0
    assert fixed_out.read_text().count("email sent to") == 1  # nothing else sent twice


def _cli(*args: str) -> str:
    done = subprocess.run([*zmq_mq_command(), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_the_workqueue_example_spreads_tasks_over_several_workers(hub, processes, tmp_path):
    # Given three workers under `zmq-mq run`
    outs = [tmp_path / f"worker{i}.out" for i in range(3)]
    workers = [_start_actor(processes, EXAMPLES / "workqueue" / "worker.py", hub.endpoint, tmp_path, o)
               for o in outs]
    wait_for(lambda: sub_state(hub.endpoint, "tasks", "workers").get("actors") == 3,
             message="three workers attached")

    # When 60 tasks are submitted
    done = subprocess.run([sys.executable, str(EXAMPLES / "workqueue" / "submit.py"), "60", "--hub",
                           hub.endpoint], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    # Then each task is done exactly once, and every worker took a share
    def lines() -> list[list[str]]:
        return [o.read_text().splitlines() for o in outs]

    wait_for(lambda: sum(map(len, lines())) >= 60, message="60 tasks done")
    assert all(_stop(w) == 0 for w in workers)
    per_worker = lines()
    tasks = sorted(re.search(r"did (task-\d+)", line).group(1) for ls in per_worker for line in ls)
    assert tasks == sorted(f"task-{i}" for i in range(60))
    assert all(len(ls) > 0 for ls in per_worker)
