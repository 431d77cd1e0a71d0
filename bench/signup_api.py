"""The seed's story, measured: POST /signup with a durable publish inside, and the async clients
next to the sync ones.

    python bench/signup_api.py [--rate 1000] [--seconds 10] [--connections 32]
                               [--w1-messages 50000] [--w2-messages 20000] [--rounds 3]
                               [--json-out bench/results/signup_api.json]

What it runs, on one hub process (``zmq-mq hub``, ``--sync full``) on a temporary directory:

- **W1, sync vs async**: N publishes pipelined, all confirmed (``Producer.publish_async`` +
  ``flush`` against ``AsyncProducer.publish_async`` + ``await flush``), each in a fresh
  process, alternating, ``--rounds`` times: the same minute of the machine for both.
- **W2 consumer side, sync vs async**: N messages published first, then received and acked to
  the last one (``Consumer.receive`` against ``async for`` on ``AsyncConsumer``), alternating.
- **HTTP**: the example app (examples/signup_api/app.py) under uvicorn, ``durable`` (the
  publish inside) and ``no-publish`` (``SIGNUP_DURABLE=0``: the same app answering without
  publishing, the cost of durability is the difference), each at a steady ``--rate`` for
  ``--seconds`` and at full speed (``--connections`` clients back to back).

The load generator is this process: asyncio with hand-written HTTP/1.1 on keep-alive
connections, a few microseconds of CPU per request, so it takes little of the two cores from
the server and the hub (an httpx client costs about as much CPU per request as the server, and
wrk neither holds a fixed rate nor ships here). At a steady rate it is open-loop: request i is
due at ``i / rate`` and its latency counts from then, so a stall of the server shows in the
tail instead of slowing the schedule down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "examples" / "signup_api"
PAYLOAD = b"\x00" * 128


# --- W1 and W2, each in a fresh process --------------------------------------------------------


def _w1(kind: str, endpoint: str, n: int, topic: str) -> dict:
    from zmq_mq.actors import AsyncProducer, Producer

    if kind == "sync":
        with Producer(endpoint, timeout=60) as p:
            t0 = time.perf_counter()
            futures = [p.publish_async(topic, PAYLOAD) for _ in range(n)]
            queued = time.perf_counter() - t0
            p.flush(60)
            span = time.perf_counter() - t0
        seqs = {f.result(0) for f in futures}
    else:
        async def run():
            async with AsyncProducer(endpoint, timeout=60) as p:
                t0 = time.perf_counter()
                futures = [p.publish_async(topic, PAYLOAD) for _ in range(n)]
                queued = time.perf_counter() - t0
                await p.flush(60)
                return time.perf_counter() - t0, queued, {f.result(0) for f in futures}
        span, queued, seqs = asyncio.run(run())
    return {"n": n, "span_s": span, "msg_per_s": n / span, "queued_s": queued,
            "distinct_seqs": len(seqs)}


def _w2(kind: str, endpoint: str, n: int, topic: str) -> dict:
    from zmq_mq.actors import AsyncConsumer, Consumer, Producer

    with Producer(endpoint, timeout=60) as p:
        for _ in range(n):
            p.publish_async(topic, PAYLOAD)
        p.flush(60)
    seqs: set[int] = set()
    if kind == "sync":
        with Consumer(endpoint, timeout=60) as c:
            c.subscribe(topic, "bench", credit=1000)
            t0 = time.perf_counter()
            while len(seqs) < n:
                msg = c.receive(timeout=30)
                if msg is None:
                    break
                seqs.add(msg.seq)
                msg.ack()
            span = time.perf_counter() - t0
    else:
        async def run() -> float:
            async with AsyncConsumer(endpoint, timeout=60) as c:
                await c.subscribe(topic, "bench", credit=1000)
                t0 = time.perf_counter()
                while len(seqs) < n:
                    msg = await c.receive(timeout=30)
                    if msg is None:
                        break
                    seqs.add(msg.seq)
                    await msg.ack()
                return time.perf_counter() - t0
        span = asyncio.run(run())
    return {"n": n, "span_s": span, "msg_per_s": n / span, "distinct_seqs": len(seqs)}


def _child(workload: str, kind: str, endpoint: str, n: int, topic: str) -> dict:
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT / 'bench')!r}); "
            f"import signup_api as b; "
            f"print(json.dumps(b._{workload}({kind!r}, {endpoint!r}, {n}, {topic!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{workload} {kind} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def pairs(workload: str, endpoint: str, n: int, rounds: int) -> dict:
    """sync and async alternating, ``rounds`` times each; the ratio of their medians."""
    runs: dict[str, list] = {"sync": [], "async": []}
    for r in range(rounds):
        order = ("sync", "async") if r % 2 == 0 else ("async", "sync")
        for kind in order:
            topic = f"bench.{workload}.{kind}.{r}.{os.getpid()}"
            runs[kind].append(_child(workload, kind, endpoint, n, topic))
    med = {k: sorted(x["msg_per_s"] for x in v)[len(v) // 2] for k, v in runs.items()}
    ok = all(x["distinct_seqs"] == n for v in runs.values() for x in v)
    return {"n": n, "rounds": rounds, "runs": runs, "sync_msg_per_s": med["sync"],
            "async_msg_per_s": med["async"], "ratio": med["async"] / med["sync"], "ok": ok}


# --- HTTP --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn running the example app on a free port; stopped with SIGTERM."""

    def __init__(self, hub: str, durable: bool, log: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "ZMQ_MQ_HUB": hub, "SIGNUP_DURABLE": "1" if durable else "0"}
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(APP_DIR), "app:app",
                 "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log",
                 "--log-level", "warning"], stdout=out, stderr=out, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited: {log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"uvicorn did not listen within 30 s: {log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Client:
    """One keep-alive HTTP/1.1 connection sending POST /signup."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, email: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        body = b'{"email": "%s"}' % email.encode()
        self.writer.write(b"POST /signup HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json"
                          b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _percentiles(lat: list[float]) -> dict:
    if not lat:
        return {}
    lat = sorted(lat)
    n = len(lat)

    def q(p: float) -> float:
        return round(lat[min(n - 1, max(0, int(round(p * n + 0.5)) - 1))] * 1000, 3)

    return {"p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "p99.9_ms": q(0.999),
            "max_ms": round(lat[-1] * 1000, 3)}


async def steady(port: int, rate: float, seconds: float, tag: str, pool: int = 64) -> dict:
    """Open loop: request i due at i / rate; latency from the due time to the answer."""
    n = int(rate * seconds)
    queue: asyncio.Queue = asyncio.Queue()
    lat: list[float] = []
    statuses: dict[int, int] = {}
    clients = [Client(port) for _ in range(pool)]

    async def worker(c: Client) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            i, due = item
            try:
                status = await c.post(f"{tag}-{i}@example.com")
            except (OSError, asyncio.IncompleteReadError):
                status = 0
                c.close()
                c.writer = None
            lat.append(time.perf_counter() - due)
            statuses[status] = statuses.get(status, 0) + 1

    workers = [asyncio.ensure_future(worker(c)) for c in clients]
    t0 = time.perf_counter() + 0.05
    i = 0
    while i < n:
        now = time.perf_counter()
        while i < n and t0 + i / rate <= now:
            queue.put_nowait((i, t0 + i / rate))
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    span = time.perf_counter() - t0
    for c in clients:
        c.close()
    return {"mode": "steady", "rate_target": rate, "n": n, "span_s": round(span, 3),
            "req_per_s": round(n / span, 1), "statuses": statuses, **_percentiles(lat)}


async def full_speed(port: int, connections: int, seconds: float, tag: str) -> dict:
    """Closed loop: ``connections`` clients, each sending its next request on the answer."""
    lat: list[float] = []
    statuses: dict[int, int] = {}
    stop_at = time.perf_counter() + seconds

    async def one(k: int) -> None:
        c = Client(port)
        i = 0
        try:
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                status = await c.post(f"{tag}-{k}-{i}@example.com")
                lat.append(time.perf_counter() - t)
                statuses[status] = statuses.get(status, 0) + 1
                i += 1
        finally:
            c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(connections)))
    span = time.perf_counter() - t0
    return {"mode": "full", "connections": connections, "n": len(lat), "span_s": round(span, 3),
            "req_per_s": round(len(lat) / span, 1), "statuses": statuses, **_percentiles(lat)}


def http_runs(hub: str, args, logs: Path) -> list[dict]:
    out = []
    for durable in (True, False):
        server = Server(hub, durable, logs / f"uvicorn-{'durable' if durable else 'plain'}.log")
        try:
            name = "durable" if durable else "no-publish"
            tag = f"{name}-{os.getpid()}-{time.time_ns()}"
            asyncio.run(steady(server.port, args.rate, min(1.0, args.seconds), tag + "-warm"))
            for run in (steady(server.port, args.rate, args.seconds, tag + "-s"),
                        full_speed(server.port, args.connections, args.seconds, tag + "-f")):
                r = asyncio.run(run)
                r["app"] = name
                out.append(r)
        finally:
            server.stop()
    return out


# --- the report --------------------------------------------------------------------------------


def table(report: dict) -> str:
    lines = []
    for w in ("w1", "w2"):
        r = report[w]
        lines.append(f"{w.upper():<4} sync {r['sync_msg_per_s']:>10,.0f} msg/s   async "
                     f"{r['async_msg_per_s']:>10,.0f} msg/s   async/sync {r['ratio']:.2f}   "
                     f"(median of {r['rounds']}, n={r['n']:,})")
    lines.append("")
    lines.append(f"{'POST /signup':<12} {'mode':<14} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
                 f"{'max ms':>8}  statuses")
    for r in report["http"]:
        mode = f"{r['rate_target']:g}/s" if r["mode"] == "steady" else f"full x{r['connections']}"
        lines.append(f"{r['app']:<12} {mode:<14} {r['req_per_s']:>9,.0f} "
                     f"{r.get('p50_ms', 0):>8.2f} {r.get('p99_ms', 0):>8.2f} "
                     f"{r.get('max_ms', 0):>8.2f}  {r['statuses']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="steady requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each HTTP run")
    parser.add_argument("--connections", type=int, default=32, help="clients at full speed")
    parser.add_argument("--w1-messages", type=int, default=50_000)
    parser.add_argument("--w2-messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="sync/async pairs of W1 and W2")
    parser.add_argument("--sync", default="full", help="the hub's --sync mode")
    parser.add_argument("--json-out", default="bench/results/signup_api.json")
    args = parser.parse_args(argv)
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(f"error: {exc.name} is not installed: pip install -e '.[examples]'", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from zmq_mq.bench.measure import background_cpu
    from zmq_mq.testing import HubProcess

    with tempfile.TemporaryDirectory(prefix="zmq-mq-signup-bench-") as tmp:
        hub = HubProcess(Path(tmp) / "data", ["--sync", args.sync], log_level="warning")
        hub.start()
        try:
            report = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
                      "config": vars(args), "background_cpu_before": background_cpu()}
            report["w1"] = pairs("w1", hub.endpoint, args.w1_messages, args.rounds)
            report["w2"] = pairs("w2", hub.endpoint, args.w2_messages, args.rounds)
            report["http"] = http_runs(hub.endpoint, args, Path(tmp))
        finally:
            hub.stop()
    steady_durable = [r for r in report["http"] if r["app"] == "durable" and r["mode"] == "steady"]
    report["ok"] = (report["w1"]["ok"] and report["w2"]["ok"]
                    and all(set(r["statuses"]) == {202} for r in report["http"]))
    report["p99_ms_at_rate_durable"] = steady_durable[0].get("p99_ms") if steady_durable else None
    print(table(report))
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"report: {out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
