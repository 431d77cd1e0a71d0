"""Submit N tasks to the work queue (topic "tasks").

    python examples/workqueue/submit.py 100 [--hub ENDPOINT]
"""

from __future__ import annotations

import argparse

from zmq_mq.actors import Producer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, nargs="?", default=100)
    parser.add_argument("--hub", default=None)
    args = parser.parse_args()
    with Producer(args.hub, name="submit") as producer:
        for i in range(args.count):
            producer.publish_async("tasks", f"task-{i}".encode())
        producer.flush()
    print(f"submitted {args.count} tasks", flush=True)


if __name__ == "__main__":
    main()
