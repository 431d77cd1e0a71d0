"""`zmq-mq bench` and bench/bench.py run the same workloads from the installed package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_w4_runs_an_actor_process_and_counts_every_message(hub):
    result = run_cli("bench", "--workloads", "W4", "--messages", "2000", "--concurrency", "4",
                     "--prefetch", "3", "--hub", hub.endpoint, "--json", "--timeout", "60")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    report = json.loads(result.stdout)
    (w4,) = report["workloads"]
    assert (w4["workload"], w4["ok"], w4["distinct_seqs"], w4["lost"]) == ("W4", True, 2000, 0)
    assert w4["distinct_payload_ids"] == 2000 and (w4["concurrency"], w4["prefetch"]) == (4, 3)
    assert report["config"]["w4_concurrency"] == 4 and report["config"]["w4_prefetch"] == 3


@pytest.mark.slow
def test_bench_against_a_running_hub_reports_every_message_in_json(hub, tmp_path):
    out = tmp_path / "report.json"
    result = run_cli("bench", "--workloads", "w1,W2", "--messages", "3000", "--hub", hub.endpoint,
                     "--json", "--json-out", str(out), "--timeout", "60")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    report = json.loads(result.stdout)
    assert json.loads(out.read_text())["workloads"] == report["workloads"]
    w1, w2 = report["workloads"]
    assert (w1["workload"], w1["ok"], w1["confirmed"], w1["lost"]) == ("W1", True, 3000, 0)
    assert (w2["workload"], w2["ok"], w2["distinct_seqs"], w2["lost"]) == ("W2", True, 3000, 0)
    assert w1["msg_per_s"] > 0 and report["config"]["hub"] == hub.endpoint
    # a second run on the same hub starts on fresh topics: numbering and the group start clean
    again = run_cli("bench", "--workloads", "W1", "--messages", "1000", "--hub", hub.endpoint, "--json")
    assert json.loads(again.stdout)["workloads"][0]["seq_range"] == [1, 1000]


def test_bench_refuses_unknown_workloads_with_a_usage_error():
    result = run_cli("bench", "--workloads", "W9")
    assert result.returncode == 2 and b"unknown workloads" in result.stderr


@pytest.mark.slow
def test_the_bench_script_still_starts_its_own_hub_and_writes_its_table_and_json(tmp_path):
    out = tmp_path / "latest.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--workloads", "W1",
                             "--messages", "2000", "--json-out", str(out)],
                            capture_output=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert b"durable publish" in result.stdout and f"JSON written to {out}".encode() in result.stdout
    (w1,) = json.loads(out.read_text())["workloads"]
    assert w1["ok"] and w1["seq_range"] == [1, 2000] and w1["hub_exit_code"] == 0
