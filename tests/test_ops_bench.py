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
    # CPU next to msg/s: each client process's own (no hub numbers for a hub run by someone else)
    assert w1["cpu"]["producer"]["cpu_s"] >= 0 and w2["cpu"]["consumer"]["wall_s"] > 0
    assert "hub" not in w2["cpu"]
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
    assert w1["cpu"]["hub"]["wall_s"] > 0 and w1["cpu"]["producer"]["cpu_pct"] is not None


# --- issue 12: the Actor against the Consumer (W2A), its latency (W5), a backlog drain (W6) ---


def _bench_json(*args: str) -> dict:
    result = run_cli("bench", *args, "--json", "--timeout", "60", timeout=180)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return json.loads(result.stdout)


def _assert_cpu(cpu: dict, roles: tuple[str, ...]) -> None:
    for role in roles:
        assert cpu[role]["cpu_s"] >= 0 and cpu[role]["wall_s"] > 0, (role, cpu)
        assert cpu[role]["cpu_pct"] is not None and "us_per_msg" in cpu[role], (role, cpu)


@pytest.mark.slow
def test_bench_w2a_alternates_consumer_and_readme_default_actor_rounds_and_reports_the_ratio():
    report = _bench_json("--workloads", "W2A", "--messages", "400", "--rounds", "2")
    (w,) = report["workloads"]
    assert (w["workload"], w["ok"], w["lost"], w["duplicates"]) == ("W2A", True, 0, 0), w
    assert [(leg["round"], leg["variant"]) for leg in w["legs"]] == [
        (1, "consumer"), (1, "actor"), (2, "consumer"), (2, "actor")]
    for leg in w["legs"]:
        assert (leg["ok"], leg["distinct_seqs"], leg["lost"]) == (True, 400, 0), leg
        assert leg["msg_per_s"] > 0 and leg["hub_exit_code"] == 0
        # each leg on its own hub, which the bench samples: hub CPU beside the clients'
        _assert_cpu(leg["cpu"], ("hub", "producer", leg["variant"]))
    # the README's Actor: nothing but the endpoint given, a plain def handler
    assert w["actor"]["given"] == [] and w["actor"]["handler"] == "sync"
    assert [r["round"] for r in w["rounds_detail"]] == [1, 2]
    assert all(r["ratio"] > 0 for r in w["rounds_detail"])
    assert w["ratio"] == pytest.approx(w["actor_msg_per_s"] / w["consumer_msg_per_s"])
    assert w["floor"] == "W2A Actor/Consumer >= 0.5" and w["verdict"] in ("PASS", "FAIL")


@pytest.mark.slow
def test_bench_w2a_measures_the_actor_with_the_threads_handler_and_credit_asked_for(hub):
    report = _bench_json("--workloads", "W2A", "--messages", "300", "--rounds", "1",
                         "--concurrency", "8", "--handler", "async", "--actor-credit", "16",
                         "--hub", hub.endpoint)
    (w,) = report["workloads"]
    assert w["ok"] and [leg["variant"] for leg in w["legs"]] == ["consumer", "actor"]
    actor = w["legs"][1]["actor"]
    assert (actor["handler"], actor["concurrency"], actor["credit"]) == ("async", 8, 16)
    assert actor["given"] == ["concurrency", "credit"]
    assert report["config"]["actor"] == {"concurrency": 8, "prefetch": None, "credit": 16,
                                         "handler": "async"}


@pytest.mark.slow
def test_bench_w5_times_every_message_from_its_publish_call_to_the_default_actors_handler():
    report = _bench_json("--workloads", "W5", "--rate", "500", "--duration", "1")
    (w,) = report["workloads"]
    assert (w["workload"], w["ok"], w["n"], w["lost"], w["unconfirmed"]) == ("W5", True, 500, 0, 0)
    assert w["handled"] >= 500 and w["distinct_seqs"] == 500
    assert 0 < w["p50_ms"] <= w["p99_ms"] <= w["p99.9_ms"] <= w["max_ms"]
    assert w["achieved_rate"] > 0 and w["actor"]["given"] == []
    _assert_cpu(w["cpu"], ("hub", "producer", "actor"))
    assert w["floor"] == "W5 p99 <= 5 ms" and w["verdict"] in ("PASS", "FAIL")
    assert report["config"]["w5_rate"] == 500


@pytest.mark.slow
def test_bench_w6_drains_one_backlog_with_a_consumer_then_an_actor_and_samples_hub_memory():
    report = _bench_json("--workloads", "W6", "--messages", "2000", "--rounds", "1")
    (w,) = report["workloads"]
    assert (w["workload"], w["ok"], w["n"], w["lost"], w["duplicates"]) == ("W6", True, 2000, 0, 0)
    assert w["publish"]["ok"] and w["publish"]["seq_range"] == [1, 2000]
    assert [(leg["variant"], leg["group"]) for leg in w["legs"]] == [
        ("consumer", "bench-consumer-1"), ("actor", "bench-actor-1")]
    for leg in w["legs"]:
        # every drain read the whole backlog from its first message
        assert (leg["ok"], leg["distinct_seqs"], leg["timed_out"]) == (True, 2000, False), leg
        assert leg["msg_per_s"] > 0
        rss = leg["hub_rss_anon_mb"]
        assert 0 < rss["start_mb"] <= rss["max_mb"] and rss["end_mb"] <= rss["max_mb"]
        assert rss["samples"] >= 2
        _assert_cpu(leg["cpu"], ("hub", leg["variant"]))
    assert w["ratio"] == pytest.approx(w["actor_msg_per_s"] / w["consumer_msg_per_s"])
    assert w["floor"] == "W6 Actor/Consumer drain >= 0.5"


def test_bench_runs_only_the_ci_cheap_workloads_unless_others_are_named():
    import typer
    from zmq_mq.cli.main import app

    params = {p.name: p for p in typer.main.get_command(app).commands["bench"].params}
    assert params["workloads"].default == "W1,W2,W3"


@pytest.mark.parametrize("args, message", [
    (["--handler", "thread"], b"--handler must be 'sync' or 'async'"),
    (["--rounds", "0"], b"must be positive"),
    (["--actor-credit", "-1"], b"must be positive"),
])
def test_bench_refuses_bad_actor_options_with_a_one_line_usage_error(args, message):
    result = run_cli("bench", "--workloads", "W2A", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert b"Traceback" not in result.stderr


def test_compare_gives_each_rounds_and_the_overall_actor_to_consumer_ratio():
    from zmq_mq.bench.workloads import compare

    legs = [{"round": 1, "variant": "consumer", "msg_per_s": 100_000.0, "span_s": 0.02,
             "distinct_seqs": 2000},
            {"round": 1, "variant": "actor", "msg_per_s": 50_000.0, "span_s": 0.04,
             "distinct_seqs": 2000},
            {"round": 2, "variant": "consumer", "msg_per_s": 50_000.0, "span_s": 0.04,
             "distinct_seqs": 2000},
            {"round": 2, "variant": "actor", "msg_per_s": 50_000.0, "span_s": 0.04,
             "distinct_seqs": 2000}]
    out = compare(legs)
    assert [(r["round"], r["ratio"]) for r in out["rounds_detail"]] == [(1, 0.5), (2, 1.0)]
    # overall: all messages of a variant over all its seconds (4000 / 0.06 against 4000 / 0.08)
    assert out["consumer_msg_per_s"] == pytest.approx(4000 / 0.06)
    assert out["actor_msg_per_s"] == pytest.approx(50_000.0)
    assert out["ratio"] == pytest.approx(0.75)


def test_the_hub_sampler_reads_cpu_and_anonymous_memory_of_a_process_over_a_span():
    import os
    import time

    from zmq_mq.bench.measure import ProcSampler, now

    with ProcSampler(os.getpid(), interval=0.01) as sampler:
        t0 = now()
        end = time.process_time() + 0.05
        while time.process_time() < end:  # burn some CPU in this process
            pass
        t1 = now()
    cpu = sampler.cpu(t0, t1, n=1000)
    # (wall_s is rounded to the ms: a span of 57.1 ms reads 0.057)
    assert cpu["wall_s"] >= round(t1 - t0, 3) - 0.0005 and cpu["cpu_s"] > 0 and cpu["us_per_msg"] > 0
    rss = sampler.rss_anon(t0, t1)
    assert 0 < rss["start_mb"] <= rss["max_mb"] and rss["samples"] >= 2


def test_a_drain_cut_short_by_the_timeout_reports_its_rate_and_undrained_not_lost():
    from zmq_mq.bench.workloads import drain_summary

    seen = {"group": "bench-actor-1", "t_start": 10.0, "t_first_recv": 10.1, "t_last_recv": 12.0,
            "received": 500, "distinct_seqs": 500, "distinct_payload_ids": 500, "duplicates": 0,
            "bad_payloads": 0, "close_s": 0.01}
    cut = drain_summary({**seen, "timed_out": True}, 2000)
    assert (cut["ok"], cut["lost"], cut["undrained"], cut["msg_per_s"]) == (False, 0, 1500, 250.0)
    whole = drain_summary({**seen, "timed_out": False}, 2000)  # stopped short without a timeout
    assert (whole["ok"], whole["lost"], whole["undrained"]) == (False, 1500, 0)
