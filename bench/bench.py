"""zmq-mq benchmark suite (W1 durable publish, W2 end to end, W3 publish-confirm latency).

    python bench/bench.py [--workloads W1,W2,W3] [--messages 200000]
                          [--json-out bench/results/latest.json] [--sync full] [--hub ENDPOINT]

The engine lives in the installed package (``zmq_mq/bench.py``) so that ``zmq-mq bench`` runs
the same workloads; this script keeps the historical command and output. See bench/README.md.
"""

import sys

from zmq_mq.bench import main

if __name__ == "__main__":
    sys.exit(main())
