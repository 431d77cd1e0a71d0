"""The fault-injection harness (bench/faults.py) in its short form, and its checker.

Claim under test: with the hub killed -9 and restarted on its data, workers killed -9 and
restarted, and workers paused (SIGSTOP) past their ack deadline, every confirmed message is
processed by every group, nothing appears that no producer sent, and a message is processed twice
only if it was in flight at a fault. The checker's own tests feed it made-up histories with a
loss, a phantom and an unexplained duplicate, so that a green run means something.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import faults  # noqa: E402
from faults import Fault, FaultConfig, FaultRun, check  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_nothing_confirmed_is_lost_through_hub_kills_worker_kills_and_pauses(tmp_path):
    # Given producers, a work queue of two Actor processes and a strict credit-1 Consumer, and
    # When for 30 s the hub and the workers are killed -9 and restarted, and workers paused
    cfg = FaultConfig(seconds=30, producers=2, rate=100, work_actors=2, fault_gap=(1.5, 3.0),
                      schedule=("hub_kill", "worker_kill", "worker_pause"), seed=5,
                      drain_timeout=60, margin=2.0)
    report = FaultRun(tmp_path, cfg, say=print).run()
    print(report.details())
    (tmp_path / "report.json").write_text(json.dumps(report.to_json(), default=str))
    # Then every kind of fault happened, the run drained and the hub holds no backlog
    assert report.hub_kills >= 1 and report.worker_kills >= 1 and report.worker_pauses >= 1
    assert report.hub_kills + report.worker_kills + report.worker_pauses >= 5
    assert report.drained, report.details()
    assert report.final_lag == {"audit": 0, "work": 0}, report.details()
    # And nothing confirmed was lost, nothing unsent appeared, every record is at its seq
    assert report.confirmed > 3000
    assert not any(report.lost.values()), report.details()
    assert not report.phantoms and not report.wrong, report.details()
    # And every duplicate was in flight at a fault, and the strict reader kept seq order
    # except right after a fault (no per-subscription ordering yet: issue 4)
    assert not report.unexplained, report.details()
    assert report.order["audit"]["seq_inversions_not_after_fault"] == 0, report.details()
    assert report.ok


# --- the checker on made-up histories ------------------------------------------------------


def _write(path: Path, *records) -> None:
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def _history(tmp_path: Path, processed_work, processed_audit=None) -> None:
    _write(tmp_path / "producer-0.log",
           ["sent", "a", 1.0], ["sent", "b", 1.0], ["sent", "c", 1.0],
           ["confirmed", "a", "fx", 1, 1.1], ["confirmed", "b", "fx", 2, 1.1],
           ["confirmed", "c", "fx", 3, 1.1])
    audit = processed_audit or [("a", 1, 2.0), ("b", 2, 2.1), ("c", 3, 2.2)]
    _write(tmp_path / "audit-0.log",
           *[["processed", "audit", i, i, s, None, 1, t, "audit-0"] for i, s, t in audit])
    _write(tmp_path / "work-0.log",
           *[["processed", "work", i, i, s, None, 1, t, w] for i, s, t, w in processed_work])


def test_the_checker_passes_a_clean_history_and_counts_a_duplicate_at_a_fault(tmp_path):
    _history(tmp_path, [("a", 1, 2.0, "work-0"), ("b", 2, 2.0, "work-0"), ("c", 3, 2.1, "work-0"),
                        ("b", 2, 5.0, "work-1")])
    report = check(tmp_path, [Fault("worker_kill", "work-0", 2.5, 2.5)], margin=1.0)
    assert report.ok and report.duplicates == 1, report.details()
    assert "3 confirmed" in report.summary() and "0 lost" in report.summary()


def test_the_checker_finds_a_lost_message(tmp_path):
    _history(tmp_path, [("a", 1, 2.0, "work-0"), ("c", 3, 2.1, "work-0")])
    report = check(tmp_path, [])
    assert report.lost["work"] == ["b"] and not report.ok


def test_the_checker_finds_a_message_no_producer_sent_and_a_record_at_the_wrong_seq(tmp_path):
    _history(tmp_path, [("a", 1, 2.0, "work-0"), ("b", 2, 2.0, "work-0"), ("c", 3, 2.1, "work-0"),
                        ("zz", 4, 2.2, "work-0")],
             processed_audit=[("a", 1, 2.0), ("c", 2, 2.1), ("c", 3, 2.2)])
    report = check(tmp_path, [])
    assert [p[2] for p in report.phantoms] == ["zz"]
    assert report.wrong == [("audit", ("fx", 2), "b", ["c"])]
    assert not report.ok


def test_the_checker_refuses_a_duplicate_far_from_any_fault(tmp_path):
    _history(tmp_path, [("a", 1, 2.0, "work-0"), ("b", 2, 2.0, "work-0"), ("c", 3, 2.1, "work-0"),
                        ("a", 1, 9.0, "work-0")])
    # a fault of another worker does not explain it, nor one long after
    report = check(tmp_path, [Fault("worker_kill", "work-1", 2.0, 2.0),
                              Fault("worker_kill", "work-0", 8.0, 8.0)], margin=1.0)
    assert report.unexplained and not report.ok


def test_the_checker_refuses_out_of_order_strict_processing_without_a_fault(tmp_path):
    _history(tmp_path, [("a", 1, 2.0, "work-0"), ("b", 2, 2.0, "work-0"), ("c", 3, 2.1, "work-0")],
             processed_audit=[("a", 1, 2.0), ("c", 3, 2.1), ("b", 2, 2.2)])
    report = check(tmp_path, [])
    assert report.order["audit"]["seq_inversions_not_after_fault"] == 1 and not report.ok
    assert check(tmp_path, [Fault("worker_kill", "audit-0", 2.15, 2.15)]).ok


def test_a_history_line_cut_by_kill_9_is_ignored(tmp_path):
    path = tmp_path / "x.log"
    path.write_text('["sent","a",1.0]\n["sent","b"')
    assert faults.read_log(path) == [["sent", "a", 1.0]]
