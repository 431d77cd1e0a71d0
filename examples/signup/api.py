"""The sign-up API: records a new user and publishes a ``user.signup`` event, then returns at once.

No web framework needed to show the idea: ``signup(email)`` is what a POST /signup handler would
call. The email service (email_actor.py) consumes the events at its own pace.

    python examples/signup/api.py alice@example.com bob@example.com bounce@example.com
"""

from __future__ import annotations

import argparse
import json
import time

from zmq_mq.actors import Producer


def signup(producer: Producer, email: str) -> int:
    """Handle one sign-up: publish the event (durable when this returns) and answer."""
    event = {"email": email, "at": time.time()}
    # msg_id: a client retrying the same sign-up (or our own retry after a timeout) is stored
    # once, and the welcome email is not sent twice.
    return producer.publish("user.signup", json.dumps(event).encode(), key=email,
                            msg_id=f"signup:{email}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("emails", nargs="*", default=["alice@example.com", "bob@example.com",
                                                      "bounce@example.com"])
    parser.add_argument("--hub", default=None, help="hub endpoint (default $ZMQ_MQ_HUB or :5555)")
    args = parser.parse_args()
    with Producer(args.hub, name="signup-api") as producer:
        for email in args.emails:
            seq = signup(producer, email)
            print(f"signed up {email}: event user.signup #{seq}", flush=True)


if __name__ == "__main__":
    main()
