"""Operations: Prometheus on its own registry, and JSON logs that never carry a hostile string raw."""

from __future__ import annotations

import io
import json
import logging
import threading
import urllib.request

import pytest

from agent._logging import JsonFormatter, TextFormatter, configure, safe_text
from agent._metrics import Metrics, Sample
from collectors._live import CaptureStats

HOSTILE = "evil\r\nlevel=error msg=forged\x1b[31m\u202eexe.gpj\x00"


def _sample() -> Sample:
    return Sample(
        interfaces={"eth1": CaptureStats(frames=10, kernel_packets=12, kernel_drops=2, running=True)},
        observations={"dns.query": 7, "tls.sni": 3},
        malformed={"dns": 1},
        shed={"window_observations": 5},
        queues={"window_keys": 4, "spool_batches": 0},
        spool_bytes=0,
        database_up=True,
    )


def test_the_endpoint_serves_the_counters_and_stops_cleanly() -> None:
    threads_before = set(threading.enumerate())
    metrics = Metrics(_sample)
    host, port = metrics.serve("127.0.0.1", 0)
    try:
        metrics.flush_seconds.observe(0.2)
        metrics.flushes.labels("stored").inc()
        metrics.detections.labels("openai-chatgpt").inc(2)
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        metrics.close()
    for line in (
        'lanterne_capture_frames_total{interface="eth1"} 10.0',
        'lanterne_kernel_drops_total{interface="eth1"} 2.0',
        'lanterne_capture_up{interface="eth1"} 1.0',
        'lanterne_observations_total{kind="dns.query"} 7.0',
        'lanterne_shed_total{bound="window_observations"} 5.0',
        'lanterne_queue_depth{queue="window_keys"} 4.0',
        'lanterne_flushes_total{outcome="stored"} 1.0',
        'lanterne_detections_total{product="openai-chatgpt"} 2.0',
        "lanterne_flush_seconds_count 1.0",
        "lanterne_database_up 1.0",
    ):
        assert line in text, line
    assert "process_resident_memory_bytes" in text
    assert set(threading.enumerate()) <= threads_before  # the server thread is gone


def test_two_registries_do_not_collide() -> None:
    first, second = Metrics(_sample), Metrics(_sample)
    first.flushes.labels("stored").inc()
    assert second.registry.get_sample_value("lanterne_flushes_total", {"outcome": "stored"}) is None


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("collectors._live", logging.WARNING, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_hostile_strings_are_escaped_in_json() -> None:
    line = JsonFormatter().format(_record("host %s seen", HOSTILE, iface=HOSTILE))
    assert "\n" not in line
    assert "\r" not in line
    entry = json.loads(line)
    for text in (entry["msg"], entry["iface"]):
        assert text.isprintable()
        assert "\x1b" not in text
        assert "\u202e" not in text
        assert "\x00" not in text
    assert entry["msg"].startswith("host evil\\x0d\\x0alevel=error")
    assert "\\u202e" in entry["msg"]
    assert entry["level"] == "warning"
    assert entry["logger"] == "collectors._live"


def test_hostile_strings_are_escaped_in_text_and_tracebacks() -> None:
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed on %s", (HOSTILE,), None)
        import sys

        record.exc_info = sys.exc_info()
    text = TextFormatter().format(record)
    assert "\x1b" not in text
    assert "\u202e" not in text
    assert "\r" not in text
    assert "failed on evil\\x0d\\x0a" in text
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError" in entry["exception"]
    assert "\x1b" not in entry["exception"]


def test_long_strings_are_cut() -> None:
    assert len(safe_text("a" * 10_000)) < 2100


def test_configure_replaces_its_own_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    try:
        configure("info", "json", stream)
        handler = configure("info", "json", stream)
        assert sum(1 for h in root.handlers if getattr(h, "_lanterne", False)) == 1
        logging.getLogger("agent.test").info("hello %s", "world")
        assert json.loads(stream.getvalue().splitlines()[-1])["msg"] == "hello world"
        assert logging.getLogger("apscheduler").level >= logging.WARNING
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
