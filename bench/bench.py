"""zmq-mq benchmark suite (W1 durable publish, W2 end to end, W3 publish-confirm latency; when
named: W4 end to end through an Actor, W2A the README-default Actor against a Consumer, W5
publish-to-handler latency through that Actor, W6 a backlog drained by each).

    python bench/bench.py [--workloads W1,W2,W3] [--messages 200000]
                          [--json-out bench/results/latest.json] [--sync full] [--hub ENDPOINT]

The same command as ``zmq-mq bench`` (same options, same table and JSON; `--help` lists them),
except that the JSON report is also written to bench/results/latest.json unless ``--json-out``
says where. The engine is the installed package ``zmq_mq.bench``. See bench/README.md.
"""

from __future__ import annotations

import sys

import typer
from zmq_mq.cli.main import app

DEFAULT_JSON_OUT = "bench/results/latest.json"


def main(argv: list[str] | None = None) -> int:
    command = typer.main.get_command(app).commands["bench"]
    for param in command.params:
        if param.name == "json_out":
            param.default = DEFAULT_JSON_OUT  # this script has always written the report
    try:
        command.main(args=sys.argv[1:] if argv is None else argv, prog_name="python bench/bench.py")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
