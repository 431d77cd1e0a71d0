"""The email service: sends a welcome email for every ``user.signup`` event.

    zmq-mq run examples/signup/email_actor.py

One address bounces (unless ``SIGNUP_BOUNCE=0``, "the mail server was fixed"): its handler
raises, the message is retried with exponential backoff (0.5 s, 1 s, ...) and after 3 attempts
lands in the dead-letter topic ``dlq.emails``; ``zmq-mq dlq list --group emails`` shows it with
the reason, and once fixed ``zmq-mq dlq redrive --group emails --all`` sends it back. Sending is
idempotent per sign-up: a redelivered event that was already sent is acked without a second email.
"""

from __future__ import annotations

import json
import logging
import os

from zmq_mq.actors import Actor, Backoff

log = logging.getLogger("signup.emails")

actor = Actor(name="emails", concurrency=4)


class BounceError(Exception):
    """The mail server refused the address."""


def send_email(to: str, subject: str) -> None:
    """Stands in for SMTP: 'sends' by printing, and bounces for one address."""
    if to.startswith("bounce@") and os.environ.get("SIGNUP_BOUNCE", "1") != "0":
        raise BounceError(f"550 mailbox unavailable: {to}")
    # one write per line (end=""): handlers print from several threads
    print(f"email sent to {to}: {subject}\n", end="", flush=True)


@actor.subscribe("user.signup", group="emails", max_deliver=3, idempotent=True,
                 retry=Backoff(initial=0.5, factor=2.0, max=30.0, jitter=0.2))
def welcome(msg):
    event = json.loads(msg.payload)
    try:
        send_email(event["email"], "Welcome aboard!")
    except BounceError as exc:
        print(f"email to {event['email']} failed (attempt {msg.deliveries} of 3): {exc}\n", end="", flush=True)
        raise  # nacked with backoff; dead-lettered to dlq.emails after the 3rd attempt


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    actor.run()
