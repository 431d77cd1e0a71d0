"""The hub as operators run it: Prometheus metrics, a TOML config file, JSON logs."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
from conftest import run_cli, wait_for
from prometheus_client.parser import text_string_to_metric_families
from zmq_mq.actors import Admin, Consumer, Producer
from zmq_mq.router.config import ConfigError, load_toml
from zmq_mq.router.metrics import MetricsServer

METRICS_RE = re.compile(r"metrics (http://\S+/metrics)")


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _traffic(endpoint: str) -> None:
    """10 published on orders; group billing acks 6, nacks 1 (redelivered, then acked), rejects 2."""
    with Producer(endpoint) as p:
        for i in range(10):
            p.publish("orders", b"o%d" % i)
    with Consumer(endpoint) as c:
        c.subscribe("orders", "billing", credit=100)
        msgs = [c.receive(10) for _ in range(10)]
        for m in msgs[:6]:
            m.ack()
        msgs[6].nack()
        again = c.receive(10)
        assert again.seq == msgs[6].seq
        again.ack()
        for m in msgs[7:9]:
            m.reject("bad")
        c.flush()  # msgs[9] stays unsettled: released when the consumer closes


def test_metrics_endpoint_answers_with_counters_gauges_and_the_latency_histogram(hub):
    server = MetricsServer(hub.hub, 0).start()
    try:
        _traffic(hub.endpoint)
        sub = (("group", "billing"), ("topic", "orders"))
        m = wait_for(lambda: (s := scrape(server.url)).get(("zmq_mq_subscription_acked_total", sub)) == 7
                     and s.get(("zmq_mq_subscription_actors", sub)) == 0 and s, message="settled metrics")
        assert m[("zmq_mq_up", ())] == 1
        assert m[("zmq_mq_topic_published_total", (("topic", "orders"),))] == 10
        assert m[("zmq_mq_topic_messages", (("topic", "dlq.billing"),))] == 2
        assert m[("zmq_mq_subscription_delivered_total", sub)] == 11
        assert m[("zmq_mq_subscription_redelivered_total", sub)] == 1
        assert m[("zmq_mq_subscription_dead_lettered_total", sub)] == 2
        assert m[("zmq_mq_subscription_lag", sub)] == 1
        assert m[("zmq_mq_subscription_in_flight", sub)] == 0
        assert m[("zmq_mq_published_total", ())] == 12  # 10 + 2 dead letters
        assert m[("zmq_mq_dead_lettered_total", ())] == 2
        count = m[("zmq_mq_publish_latency_seconds_count", ())]
        assert count >= 1 and m[("zmq_mq_publish_latency_seconds_bucket", (("le", "+Inf"),))] == count
        assert m[("zmq_mq_publish_latency_seconds_sum", ())] > 0
    finally:
        server.stop()


def test_a_stopped_hub_reports_down_instead_of_hanging(tmp_path):
    from zmq_mq.testing import HubThread

    h = HubThread(tmp_path / "d").start()
    hub_obj = h.hub
    h.stop()
    server = MetricsServer(hub_obj, 0).start()
    try:
        assert scrape(server.url)[("zmq_mq_up", ())] == 0
    finally:
        server.stop()


def test_hub_process_with_a_config_file_flags_override_it_and_logs_are_json(tmp_path, hub_process):
    # Given a config file that sets the heartbeat, JSON logs and a metrics port, and a flag that
    # overrides one of its keys
    cfg = tmp_path / "hub.toml"
    cfg.write_text('heartbeat-ms = 700\nlog-format = "json"\nmetrics-port = 0\nmax_message_bytes = 100\n')
    h = hub_process(extra=["--config", str(cfg), "--max-message-bytes", "2000"])
    # Then the file's settings and the flag's win show
    with Admin(h.endpoint) as admin:
        assert admin.welcome["heartbeat_ms"] == 700
        assert admin.welcome["limits"]["max_message_bytes"] == 2000
    url = METRICS_RE.search(h.log()).group(1)
    assert scrape(url)[("zmq_mq_up", ())] == 1
    h.stop()
    records = [json.loads(line) for line in h.log().splitlines() if line.startswith("{")]
    assert any("serving on" in r["message"] and r["level"] == "info" and r["logger"] == "zmq_mq.hub"
               for r in records), h.log()


def test_a_bad_config_file_is_refused_with_the_key_named(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("heartbeat-ms = 'soon'\n")
    result = run_cli("hub", "--config", str(cfg), "--data", str(tmp_path / "d"))
    assert result.returncode == 2 and b"heartbeat-ms must be int" in result.stderr
    cfg.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        load_toml(str(cfg), {"data": (str,)})
    with pytest.raises(ConfigError, match="cannot read"):
        load_toml(str(tmp_path / "missing.toml"), {})


def test_hub_header_limit_is_a_flag_and_a_violation_is_refused_and_not_stored(hub_process):
    from zmq_mq.actors import Producer
    from zmq_mq.actors.errors import InvalidMessage

    h = hub_process(extra=["--max-headers-bytes", "200"])
    with Admin(h.endpoint) as admin:
        assert admin.welcome["limits"]["max_headers_bytes"] == 200
    with Producer(h.endpoint) as p:
        with pytest.raises(InvalidMessage, match="over the hub's limit of 200"):
            p.publish("hdr", b"x", headers={"big": "y" * 300})
        assert p.publish("hdr", b"x", headers={"small": "y"}) == 1
    bad = run_cli("hub", "--max-headers-bytes", "0", "--data", str(h.data_dir.parent / "other"))
    assert bad.returncode == 2 and b"--max-headers-bytes must be at least 1" in bad.stderr
