"""Every script under bench/ runs to the end with its smallest options, so none can rot again
(bench/fairness.py once failed with an ImportError after names moved)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import _require_zookeeper

BENCH = Path(__file__).resolve().parent.parent / "bench"

# script -> its smallest run (faults.py is a module of soak.py and test_faults.py; it runs here as
# the producer and worker processes of soak.py)
SCRIPTS = {
    "bench.py": ["--workloads", "W1,W2,W3,W4,W2A,W5,W6", "--messages", "500", "--rate", "500",
                 "--duration", "0.5", "--concurrency", "2", "--rounds", "1", "--timeout", "60",
                 "--json-out", "report.json"],
    "fairness.py": ["--seconds", "0.5", "--interval-ms", "20", "--json-out", "report.json"],
    "soak.py": ["--minutes", "0.05", "--producers", "1", "--actors", "1", "--rate", "50",
                "--gap", "0.5", "1", "--json-out", "report.json"],
    "workqueue.py": ["--messages", "300", "--slow-ms", "20", "--json-out", "report.json"],
    "seed_model.py": ["--messages", "300", "--work-ms", "20", "--concurrency", "50",
                      "--json-out", "report.json"],
    "w5split.py": ["--rate", "500", "--duration", "0.5", "--rounds", "1",
                   "--json-out", "report.json"],
    "faults.py": None,
    "cluster_failover.py": ["--kills", "1", "--partitions", "3", "--json-out", "report.json"],
    "cluster_replication.py": ["--messages", "300", "--rounds", "1", "--json-out", "report.json"],
    # 20 s of load, a hub fault every ~4 s and the ZooKeeper restart at 10 s
    "cluster_soak.py": ["--duration", "20", "--fault-every", "4", "--seed", "3",
                        "--json", "report.json"],
    "signup_api.py": ["--w1-messages", "500", "--w2-messages", "300", "--rounds", "1",
                      "--rate", "100", "--seconds", "0.3", "--connections", "2",
                      "--json-out", "report.json"],
}


TIMEOUTS = {"cluster_soak.py": 240}  # s; the others: 100


def test_every_script_under_bench_has_a_smallest_run_here():
    assert sorted(p.name for p in BENCH.glob("*.py")) == sorted(SCRIPTS)


@pytest.mark.slow
@pytest.mark.parametrize("script", [
    pytest.param(s, marks=pytest.mark.timeout(TIMEOUTS[s] + 60)) if s in TIMEOUTS else s
    for s, args in SCRIPTS.items() if args is not None])
def test_the_bench_script_runs_to_the_end_with_its_smallest_options(script, tmp_path):
    if script.startswith("cluster_"):
        _require_zookeeper()  # they start a ZooKeeper of their own
    done = subprocess.run([sys.executable, str(BENCH / script), *SCRIPTS[script]],
                          capture_output=True, text=True, timeout=TIMEOUTS.get(script, 100),
                          cwd=tmp_path)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    report = json.loads((tmp_path / "report.json").read_text())
    if script == "bench.py":
        assert [(w["workload"], w["ok"]) for w in report["workloads"]] == [
            ("W1", True), ("W2", True), ("W3", True), ("W4", True), ("W2A", True),
            ("W5", True), ("W6", True)]
    elif script == "signup_api.py":
        assert report["ok"] and report["w1"]["ratio"] > 0 and report["w2"]["ratio"] > 0
        assert {(r["app"], r["mode"]) for r in report["http"]} == {
            ("durable", "steady"), ("durable", "full"), ("no-publish", "steady"),
            ("no-publish", "full")}
    elif script == "fairness.py":
        assert report["quiet"]["round_trips"] > 0 and report["flood"]["errors"] == 0
    elif script == "seed_model.py":
        assert report["ok"] and report["lost"] == 0 and report["duplicates"] == 0, report
        assert report["ideal_msg_per_s"] == 2500 and report["msg_per_s"] > 0
    elif script == "cluster_failover.py":
        assert len(report["kills"]) == 1 and report["failover_max_s"] > 0, report
        assert report["session_timeout_s"] == 2.0
    elif script == "cluster_replication.py":
        assert set(report["legs"]) == {"single", "cluster-r1", "cluster-r2", "direct-r1", "direct-r2"}
        assert all(v > 0 for leg in report["legs"].values() for v in leg["median"].values())
    elif script == "cluster_soak.py":
        # nothing confirmed lost through leader/follower kills and pauses and a ZooKeeper
        # restart, every duplicate at a fault, and the cluster whole again after each fault
        assert report["lost"] == 0 and report["ok"], {k: report[k] for k in (
            "lost", "lost_ids", "wrong", "unexplained", "drained", "unrecovered")}
        assert report["faults_by_kind"].get("zk_restart") == 1, report["faults_by_kind"]
        assert report["faults"] >= 3 and report["confirmed"] > 1000
    elif script == "workqueue.py":
        assert report["lost"] == 0 and report["duplicates"] == 0, report
        assert report["slow_handled"] + report["fast_handled"] == 300
    elif script == "w5split.py":
        assert report["ok"], report
        assert [r["kind"] for r in report["runs"]] == ["actor", "consumer"]
        actor = report["runs"][0]
        # every message is seen at the actor's hand-off, and no later than at the handler
        assert actor["handoff_ms"]["n"] == actor["handler_ms"]["n"] == 250
        assert actor["handoff_ms"]["p50"] <= actor["handler_ms"]["p50"]
        assert all(r["hub"]["turns"] > 0 for r in report["runs"])
    else:
        assert report["ok"] and report["drained"], report["summary"]
