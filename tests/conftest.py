"""Fixtures that own every hub, process and socket a test starts, and stop them afterwards."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from zmq_mq.testing import HubThread

READY_RE = re.compile(r"zmq-mq hub ready: router (\S+) pub (\S+)")


def zmq_mq_command() -> list[str]:
    """How to run the CLI: the installed console script, else the module."""
    exe = shutil.which("zmq-mq", path=os.path.dirname(sys.executable)) or shutil.which("zmq-mq")
    return [exe] if exe else [sys.executable, "-m", "zmq_mq.cli.main"]


@pytest.fixture
def hub(tmp_path):
    """A real hub on a thread, on free loopback ports and a temp data dir."""
    h = HubThread(tmp_path / "data").start()
    yield h
    h.stop()


class HubProcess:
    """``zmq-mq hub`` as a subprocess, so a test can kill -9 it and restart it on its data."""

    def __init__(self, data_dir: Path, extra: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None
        self.endpoint: str | None = None
        self.pub_endpoint: str | None = None

    def start(self, bind: str = "tcp://127.0.0.1:*", timeout: float = 20.0) -> "HubProcess":
        # stderr goes to a file beside the data: nothing to drain, and it is there to read when
        # a test fails
        self.log_path = self.data_dir.parent / f"hub-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [*zmq_mq_command(), "hub", "--data", str(self.data_dir), "--bind", bind,
             "--pub", "tcp://127.0.0.1:*", "--log-level", "info", *self.extra],
            stderr=self._log, stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            m = READY_RE.search(self.log_path.read_text())
            if m:
                self.endpoint, self.pub_endpoint = m.group(1), m.group(2)
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"hub process did not become ready: {self.log_path.read_text()}")

    def log(self) -> str:
        return self.log_path.read_text()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None:
            self._log.close()


@pytest.fixture
def hub_process(tmp_path):
    """Factory of hub subprocesses on one data dir; every one is stopped at the end."""
    started: list[HubProcess] = []

    def start(bind: str = "tcp://127.0.0.1:*", extra: list[str] | None = None) -> HubProcess:
        h = HubProcess(tmp_path / "data", extra).start(bind)
        started.append(h)
        return h

    yield start
    for h in started:
        h.stop()


@pytest.fixture
def processes():
    """Track subprocesses a test starts; any still running at the end are killed."""
    procs: list[subprocess.Popen] = []

    def track(p: subprocess.Popen) -> subprocess.Popen:
        procs.append(p)
        return p

    yield track
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def run_cli(*args: str, input: bytes | None = None, env_hub: str | None = None,
            timeout: float = 120.0) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if env_hub:
        env["ZMQ_MQ_HUB"] = env_hub
    return subprocess.run([*zmq_mq_command(), *args], input=input, capture_output=True,
                          timeout=timeout, env=env)


@pytest.fixture
def raw_client(hub):
    """A raw DEALER to the hub, for protocol-level tests; closed at the end."""
    ctx = zmq.Context.instance()
    socks: list[zmq.Socket] = []

    def make() -> zmq.Socket:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(hub.endpoint)
        socks.append(s)
        return s

    yield make
    for s in socks:
        s.close(linger=0)


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.02, message: str = "condition"):
    """Poll ``predicate`` until true; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")
