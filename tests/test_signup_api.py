"""The seed's story run for real: the asyncio sign-up API (examples/signup_api/app.py) under
uvicorn, the hub as a process, the email actor under `zmq-mq run`, an HTTP client (httpx)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from zmq_mq.actors import Consumer

from conftest import sub_state, wait_for
from test_examples import _start_actor, _stop

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PUBLISH_TIMEOUT = 1.0  # the API's SIGNUP_PUBLISH_TIMEOUT in these tests
# how much later than its publish timeout a request may answer on this loaded 2-core machine
ANSWER_SLACK = 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def signup_api(processes, tmp_path):
    """Start the example app under uvicorn on a free port against ``hub``; its base URL.
    Stopped with SIGTERM (uvicorn's graceful shutdown) at the end."""
    started: list[subprocess.Popen] = []

    def start(hub: str) -> str:
        port = _free_port()
        log = tmp_path / f"uvicorn-{port}.log"
        env = {**os.environ, "ZMQ_MQ_HUB": hub, "SIGNUP_PUBLISH_TIMEOUT": str(PUBLISH_TIMEOUT)}
        with open(log, "w") as out:
            proc = processes(subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLES / "signup_api"),
                 "app:app", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
                stdout=out, stderr=subprocess.STDOUT, env=env))
        started.append(proc)
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert proc.poll() is None, f"uvicorn exited: {log.read_text()}"
            try:
                return httpx.get(f"{url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=30, message=f"the API up: {log}")
        return url

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _signup_events(endpoint: str, group: str, until: set[str]) -> dict[str, int]:
    """email -> seq of every user.signup event, read from the start by a new group."""
    seen: dict[str, int] = {}
    with Consumer(endpoint) as c:
        c.subscribe("user.signup", group)
        deadline = time.monotonic() + 30
        while not until <= seen.keys() and time.monotonic() < deadline:
            msg = c.receive(timeout=2)
            if msg is None:
                continue
            seen[msg.key] = msg.seq
            msg.ack()
    return seen


@pytest.mark.slow
def test_every_signup_the_api_accepted_reaches_the_email_actor(hub_process, signup_api, processes,
                                                               tmp_path):
    # Given the hub, the email actor under `zmq-mq run` and the API under uvicorn
    hub = hub_process()
    out = tmp_path / "emails.out"
    actor = _start_actor(processes, EXAMPLES / "signup" / "email_actor.py", hub.endpoint,
                         tmp_path, out)
    wait_for(lambda: sub_state(hub.endpoint, "user.signup", "emails").get("actors") == 1,
             message="email actor attached")
    url = signup_api(hub.endpoint)
    emails = [f"user{i}@example.com" for i in range(60)] + ["bounce@example.com"]

    # When 61 people sign up at once, one of them twice, and a client sends garbage
    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            answers = await asyncio.gather(*(client.post("/signup", json={"email": e})
                                             for e in emails))
            again = await client.post("/signup", json={"email": emails[0]})
            bad = await client.post("/signup", content=b"not json")
            return [*answers, again, bad]

    *answers, again, bad = asyncio.run(post_all())

    # Then each is accepted with the sequence of its durable event; the repeat is the same event
    assert [a.status_code for a in answers] == [202] * len(emails)
    seqs = {e: a.json()["seq"] for e, a in zip(emails, answers)}
    assert sorted(seqs.values()) == list(range(1, len(emails) + 1))
    assert again.status_code == 202 and again.json()["seq"] == seqs[emails[0]]
    assert bad.status_code == 400 and bad.json()["error"] == "bad_request"

    # And every accepted sign-up reached the email actor: sent, or retried and dead-lettered
    def sent() -> set[str]:
        return set(re.findall(r"email sent to (\S+):", out.read_text()))

    wait_for(lambda: sent() >= set(emails[:-1]), timeout=60, message="every welcome email sent")
    with Consumer(hub.endpoint) as c:
        c.subscribe("dlq.emails", "inspect")
        dead = c.receive(timeout=30)
        assert dead is not None and dead.key == "bounce@example.com"
        assert dead.headers["x-deliveries"] == 3
        dead.ack()
    assert _stop(actor) == 0
    assert out.read_text().count(f"email sent to {emails[0]}:") == 1  # the repeat: one email


@pytest.mark.slow
def test_with_the_hub_killed_under_load_the_api_answers_503_in_time_and_loses_no_accepted_signup(
        hub_process, signup_api):
    # Given the API under a steady load of sign-ups
    hub = hub_process()
    url = signup_api(hub.endpoint)
    results: list[tuple[float, float, str, int, dict]] = []  # start, end, email, status, body
    phase: dict[str, float] = {}

    async def load(done: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            async def worker(w: int) -> None:
                i = 0
                while not done.is_set():
                    email = f"w{w}-{i}@example.com"
                    i += 1
                    t0 = time.monotonic()
                    r = await client.post("/signup", json={"email": email})
                    results.append((t0, time.monotonic(), email, r.status_code, r.json()))
                    await asyncio.sleep(0.01)

            await asyncio.gather(*(worker(w) for w in range(8)))

    def accepted_since(t: float) -> int:
        return sum(1 for r in results if r[0] >= t and r[3] == 202)

    async def main() -> None:
        done = asyncio.Event()
        task = asyncio.ensure_future(load(done))
        try:
            await asyncio.sleep(1.0)
            # When the hub is killed -9 and stays down for 3.5 s, then restarts on its data
            await asyncio.to_thread(hub.kill9)
            phase["killed"] = time.monotonic()
            await asyncio.sleep(3.5)
            phase["restarting"] = time.monotonic()
            await asyncio.to_thread(hub.restart)
            phase["restarted"] = time.monotonic()
            # Then sign-ups are accepted again by themselves
            deadline = time.monotonic() + 30
            while accepted_since(phase["restarted"]) < 50:
                assert time.monotonic() < deadline, "the API did not recover after the restart"
                await asyncio.sleep(0.1)
        finally:
            done.set()
            await task

    asyncio.run(main())

    # Every request was answered within the publish timeout (never a hang), 202 or a clear 503
    for t0, t1, email, status, body in results:
        assert t1 - t0 <= PUBLISH_TIMEOUT + ANSWER_SLACK, (email, status, t1 - t0)
        assert status in (202, 503), (email, status, body)
        if status == 503:
            assert body["error"] == "hub_unavailable" and "try again" in body["message"]
    # while it was down, every request answered 503
    down = [r for r in results if r[0] >= phase["killed"] and r[1] <= phase["restarting"]]
    assert down and {r[3] for r in down} == {503}
    assert any(r[3] == 202 and r[1] < phase["killed"] for r in results)

    # And no sign-up answered 202 is lost: each is in the topic with the sequence it was given
    accepted = {r[2]: r[4]["seq"] for r in results if r[3] == 202}
    stored = _signup_events(hub.endpoint, "audit", set(accepted))
    assert {e: stored.get(e) for e in accepted} == accepted


@pytest.mark.slow
def test_the_api_answers_other_requests_while_a_signup_waits_for_the_hub_to_commit(hub_process,
                                                                                   signup_api):
    # Given the API, and a hub that cannot commit for now (SIGSTOP)
    hub = hub_process()
    url = signup_api(hub.endpoint)

    async def main() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            warm = await client.post("/signup", json={"email": "warm@example.com"})
            assert warm.status_code == 202
            os.kill(hub.pid, signal.SIGSTOP)
            try:
                # When a sign-up is waiting for its commit
                signup = asyncio.ensure_future(
                    client.post("/signup", json={"email": "a@example.com"}))
                await asyncio.sleep(0.2)
                # Then the same event loop answers other requests meanwhile
                for _ in range(5):
                    t0 = time.monotonic()
                    assert (await client.get("/health")).status_code == 200
                    assert time.monotonic() - t0 < PUBLISH_TIMEOUT / 2
                assert not signup.done()
            finally:
                os.kill(hub.pid, signal.SIGCONT)
            # and the sign-up is answered: 202 if the hub came back in time, else a clear 503
            answer = await signup
            assert answer.status_code in (202, 503), answer.text

    asyncio.run(main())


@pytest.mark.slow
def test_the_api_started_before_the_hub_answers_503_in_time_then_202_once_the_hub_is_up(
        hub_process, signup_api):
    # Given the API started while nothing listens at its hub endpoint yet
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    url = signup_api(endpoint)

    with httpx.Client(base_url=url, timeout=30) as client:
        # When a sign-up comes in, it is answered 503 within the publish timeout
        t0 = time.monotonic()
        first = client.post("/signup", json={"email": "early@example.com"})
        assert time.monotonic() - t0 <= PUBLISH_TIMEOUT + ANSWER_SLACK
        assert first.status_code == 503 and first.json()["error"] == "hub_unavailable"
        assert first.headers["retry-after"] == "1"
        # Then once the hub is up there, sign-ups are accepted without restarting the API
        hub = hub_process(bind=endpoint)

        def accepted() -> httpx.Response | None:
            r = client.post("/signup", json={"email": "early@example.com"})
            return r if r.status_code == 202 else None

        answer = wait_for(accepted, timeout=30, interval=0.2, message="a 202 after the hub started")
        assert client.get("/health").json()["hub_connected"] is True
    assert _signup_events(hub.endpoint, "audit", {"early@example.com"}) == {
        "early@example.com": answer.json()["seq"]}
