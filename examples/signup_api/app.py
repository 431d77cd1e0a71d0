"""The sign-up API as an asyncio web app: ``POST /signup`` publishes ``user.signup`` durably and
answers 202 with the event's sequence; the email service consumes it at its own pace.

    pip install -e '.[examples]'
    zmq-mq hub &
    zmq-mq run examples/signup/email_actor.py &
    uvicorn --app-dir examples/signup_api app:app --port 8000
    curl -s -XPOST localhost:8000/signup -d '{"email": "alice@example.com"}'
    # -> 202 {"status": "accepted", "seq": 1, "msg_id": "signup:alice@example.com"}

The handler awaits ``AsyncProducer.publish``: the event loop serves other requests while the
hub commits, and a 202 means the event is on disk. If the hub does not confirm within
``SIGNUP_PUBLISH_TIMEOUT`` seconds (default 2: down, restarting, overloaded, or not started
yet when the app starts), the answer is 503 with a JSON error and ``Retry-After``, never a
hang; once the hub is back, requests succeed again by themselves (the producer reconnects). A client retrying a 503 is safe: the event's
``msg_id`` is ``signup:<email>``, stored once however often it is published.

Environment: ``ZMQ_MQ_HUB`` (hub endpoint, default tcp://127.0.0.1:5555),
``SIGNUP_PUBLISH_TIMEOUT`` (seconds), ``SIGNUP_DURABLE=0`` (answer without publishing: the
baseline bench/signup_api.py measures the cost of durability against).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from zmq_mq.actors import AsyncProducer, HubUnavailable, InvalidMessage

TOPIC = "user.signup"
DEFAULT_PUBLISH_TIMEOUT = 2.0  # seconds a request may wait for the hub before it answers 503
RETRY_AFTER_S = 1

log = logging.getLogger("signup_api")


class Publisher:
    """The app's AsyncProducer, connected at startup or, if the hub was not up yet, by the
    first request that needs it (one attempt at a time, shared by the requests that wait)."""

    def __init__(self, hub: str | None, timeout: float) -> None:
        self.hub = hub
        self.timeout = timeout
        self.producer: AsyncProducer | None = None
        self._connecting: asyncio.Future | None = None

    async def get(self) -> AsyncProducer:
        """The connected producer; HubUnavailable if the hub does not answer in ``timeout``."""
        if self.producer is not None:
            return self.producer
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        attempt = self._connecting
        try:
            return await asyncio.shield(attempt)
        finally:
            if attempt.done() and self._connecting is attempt:
                self._connecting = None  # failed or done: the next request tries again

    async def _connect(self) -> AsyncProducer:
        # a producer whose connect failed is closed (as a sync Producer): a new one each try
        producer = AsyncProducer(self.hub, name="signup-api", timeout=self.timeout)
        await producer.connect()
        self.producer = producer
        return producer

    async def close(self) -> None:
        if self.producer is not None:
            await self.producer.close()  # after every accepted event is confirmed


def create_app(hub: str | None = None, *, publish_timeout: float | None = None,
               durable: bool | None = None) -> Starlette:
    """The app; arguments left None come from the environment (see the module docstring)."""
    if publish_timeout is None:
        publish_timeout = float(os.environ.get("SIGNUP_PUBLISH_TIMEOUT", DEFAULT_PUBLISH_TIMEOUT))
    if durable is None:
        durable = os.environ.get("SIGNUP_DURABLE", "1") != "0"
    publisher = Publisher(hub, publish_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if durable:
            try:
                await publisher.get()
            except HubUnavailable as exc:  # start anyway: 503 until the hub is there
                log.warning("the hub is not reachable yet (%s); answering 503 until it is", exc)
        try:
            yield
        finally:
            await publisher.close()

    async def signup(request: Request) -> JSONResponse:
        try:
            body = await request.json()
            email = body["email"]
        except (ValueError, KeyError, TypeError):
            return _error(400, "bad_request", 'send JSON like {"email": "alice@example.com"}')
        if not isinstance(email, str) or "@" not in email or len(email) > 254:
            return _error(400, "bad_email", "email must be an address like alice@example.com")
        msg_id = f"signup:{email}"
        if not durable:
            return JSONResponse({"status": "accepted", "seq": None, "msg_id": msg_id}, 202)
        event = json.dumps({"email": email, "at": time.time()}).encode()
        deadline = time.monotonic() + publish_timeout
        try:
            producer = await publisher.get()
            # durable when it returns; the loop serves other requests meanwhile
            seq = await producer.publish(TOPIC, event, key=email, msg_id=msg_id,
                                         timeout=max(0.0, deadline - time.monotonic()))
        except HubUnavailable:
            return _error(503, "hub_unavailable",
                          f"the message hub did not confirm the sign-up within "
                          f"{publish_timeout:g} s; try again (a retried sign-up is stored once)",
                          {"Retry-After": str(RETRY_AFTER_S)})
        except InvalidMessage as exc:
            return _error(400, "invalid_message", str(exc))
        return JSONResponse({"status": "accepted", "seq": seq, "msg_id": msg_id}, 202)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "durable": durable,
                             "hub_connected": publisher.producer is not None})

    return Starlette(routes=[Route("/signup", signup, methods=["POST"]),
                             Route("/health", health)], lifespan=lifespan)


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status, headers=headers)


app = create_app()
