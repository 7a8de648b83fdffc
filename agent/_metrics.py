"""Prometheus metrics of the daemon, on their own registry (no global state; tests make as many as they like).

The packet path never touches a Prometheus object: it increments plain integers (``CaptureStats``,
``DecodeStats``, ``AggregateStats``…), and a custom collector reads them at scrape time through the
daemon's ``sample()``. Only the rare events (a flush, a job run, an alert) use Prometheus
counters and histograms directly. Scrapes run in the HTTP server's thread: the sample copies
the counters' dicts (a C-level copy, atomic under the GIL) before iterating them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from collectors._live import CaptureStats

_FLUSH_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(slots=True)
class Sample:
    """The daemon's counters at one instant (plain data: built on the loop's side, read by the scrape)."""

    interfaces: Mapping[str, CaptureStats] = field(default_factory=dict)
    observations: Mapping[str, int] = field(default_factory=dict)
    """Per kind, attributed ones included."""
    malformed: Mapping[str, int] = field(default_factory=dict)
    """Per protocol."""
    decoder_errors: int = 0
    shed: Mapping[str, int] = field(default_factory=dict)
    """What the memory bounds dropped, per bound."""
    queues: Mapping[str, int] = field(default_factory=dict)
    """Depths: window keys, evidence, spooled batches, TCP streams, attribution entries."""
    spool_bytes: int = 0
    database_up: bool = False


class _LiveCollector(Collector):
    """Reads the daemon's counters at scrape time."""

    def __init__(self, sample: Callable[[], Sample]) -> None:
        self._sample = sample

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families of one sample."""
        sample = self._sample()
        per_interface: list[tuple[str, str, str, Callable[[CaptureStats], int]]] = [
            (
                "lanterne_capture_frames",
                "Frames read from the capture socket (after the kernel filter)",
                "c",
                lambda s: s.frames,
            ),
            (
                "lanterne_capture_bytes",
                "Bytes of frames read from the capture socket",
                "c",
                lambda s: s.bytes,
            ),
            (
                "lanterne_kernel_packets",
                "Packets the kernel filter passed to the socket",
                "c",
                lambda s: s.kernel_packets,
            ),
            (
                "lanterne_kernel_drops",
                "Packets the kernel dropped: socket buffer full",
                "c",
                lambda s: s.kernel_drops,
            ),
            ("lanterne_capture_truncated", "Frames longer than the read buffer", "c", lambda s: s.truncated),
            (
                "lanterne_capture_restarts",
                "Times a capture was reopened after a failure",
                "c",
                lambda s: s.restarts,
            ),
            ("lanterne_capture_up", "Whether the interface is being captured", "g", lambda s: int(s.running)),
            (
                "lanterne_capture_receive_buffer_bytes",
                "Socket receive buffer granted by the kernel",
                "g",
                lambda s: s.rcvbuf,
            ),
        ]
        interfaces = dict(sample.interfaces)
        for name, documentation, kind, read in per_interface:
            family: CounterMetricFamily | GaugeMetricFamily
            if kind == "c":
                family = CounterMetricFamily(name, documentation, labels=["interface"])
            else:
                family = GaugeMetricFamily(name, documentation, labels=["interface"])
            for iface, stats in sorted(interfaces.items()):
                family.add_metric([iface], read(stats))
            yield family
        yield _labelled(
            CounterMetricFamily,
            "lanterne_observations",
            "Observations decoded, per kind",
            "kind",
            sample.observations,
        )
        yield _labelled(
            CounterMetricFamily,
            "lanterne_malformed",
            "Malformed packets skipped, per protocol",
            "protocol",
            sample.malformed,
        )
        yield CounterMetricFamily(
            "lanterne_decoder_errors",
            "Unexpected decoder errors (bugs; the frame was skipped)",
            value=sample.decoder_errors,
        )
        yield _labelled(
            CounterMetricFamily,
            "lanterne_shed",
            "Items dropped by a memory or spool bound",
            "bound",
            sample.shed,
        )
        yield _labelled(
            GaugeMetricFamily, "lanterne_queue_depth", "Items waiting, per queue", "queue", sample.queues
        )
        yield GaugeMetricFamily("lanterne_spool_bytes", "Size of the outage spool", value=sample.spool_bytes)
        yield GaugeMetricFamily(
            "lanterne_database_up", "Whether the last database write succeeded", value=int(sample.database_up)
        )


def _labelled(
    family_type: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    documentation: str,
    label: str,
    values: Mapping[str, int],
) -> Metric:
    family = family_type(name, documentation, labels=[label])
    for key, value in sorted(dict(values).items()):
        family.add_metric([key], value)
    return family


class Metrics:
    """The registry, the event counters, and the HTTP endpoint."""

    def __init__(self, sample: Callable[[], Sample]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.flush_seconds = Histogram(
            "lanterne_flush_seconds",
            "Time to write one window (replayed spool batches included)",
            buckets=_FLUSH_BUCKETS,
            registry=self.registry,
        )
        self.flushes = Counter(
            "lanterne_flushes",
            "Windows flushed, by outcome (stored, spooled, shed, rejected)",
            ["outcome"],
            registry=self.registry,
        )
        self.jobs = Counter(
            "lanterne_job_runs",
            "Scheduled job runs, by job and outcome",
            ["job", "outcome"],
            registry=self.registry,
        )
        self.detections = Counter(
            "lanterne_detections",
            "Detections written (a product at an endpoint, re-assessed), by product",
            ["product"],
            registry=self.registry,
        )
        self.alerts = Counter(
            "lanterne_alerts", "Alerts raised or closed by reconciliation", ["event"], registry=self.registry
        )
        self.stored_observations = Counter(
            "lanterne_stored_observations", "Observations stored in the database", registry=self.registry
        )
        self.registry.register(_LiveCollector(sample))
        ProcessCollector(registry=self.registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve ``/metrics`` on ``host:port`` (a daemon thread); return the bound address."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        address = server.server_address
        return str(address[0]), int(address[1])

    def close(self) -> None:
        """Stop the HTTP endpoint and wait for its thread."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
