"""End-to-end ``lanterne scan`` speed into SQLite and PostgreSQL, beside tshark, and raw upsert rates.

Runs, in one process, on the 500,000-packet mixed capture of ``../shared/bench`` (generated into
``bench/data/mixed.pcap`` when absent):

- ``tshark -n -T fields -e dns.qry.name -e tls.handshake.extensions_server_name -e http.host``
  (the peer every figure is compared with, measured in the same run);
- ``lanterne scan`` in a subprocess into a fresh SQLite file, then into a fresh PostgreSQL schema
  (wall and CPU time of the child and its decoding process from ``wait4``, and the peak RSS of
  both together, sampled);
  the SQLite scan again with ``--no-parallel`` (decoding in the scanning process), with
  ``--decoders 2`` (two decoding processes, each half of the address pairs), and on the same
  capture written as pcapng (``editcap -F pcapng``: Wireshark's format), for comparison;
  tshark and the SQLite scans run interleaved, round after round;
- the same scan in-process without the start-up (catalogue load, imports), to show the pipeline;
- raw aggregated upserts (``store.upsert_observations``, 1,000-row batches) into SQLite and
  PostgreSQL.

The machine is shared: CPU time (user + system of the child) is printed beside wall time, and
the ratios use both.

    python bench/bench_scan.py [--capture bench/data/mixed.pcap] [--pg postgresql://postgres@127.0.0.1/test]

Targets: scan >= 250,000 packets/s into SQLite (>= 8x tshark), upserts >= 50,000 rows/s
SQLite and >= 15,000 rows/s PostgreSQL, peak RSS of the scan < 300 MB.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

import collectors
import fingerprints
from agent._pipeline import Scanner
from store import IdentityKind, open_store, upsert_endpoints, upsert_observations

REPO = Path(__file__).resolve().parents[1]
SHARED_BENCH = REPO.parent / "shared" / "bench"
DEFAULT_CAPTURE = REPO / "bench" / "data" / "mixed.pcap"
DEFAULT_PG = os.environ.get("LANTERNE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
PACKETS = 500_000

TARGET_SCAN_PPS = 250_000
TARGET_TSHARK_RATIO = 8.0
TARGET_SQLITE_ROWS = 50_000
TARGET_PG_ROWS = 15_000
TARGET_RSS_MB = 300


@dataclass
class Run:
    """One measured run: wall and CPU seconds, peak RSS (MB), and how many items it handled."""

    name: str
    wall: float
    cpu: float
    items: int
    rss_mb: float | None = None
    note: str = ""

    @property
    def wall_rate(self) -> float:
        return self.items / self.wall

    @property
    def cpu_rate(self) -> float:
        return self.items / self.cpu


def best(runs: Sequence[Run]) -> Run:
    """The best of repeated runs: least wall time and least CPU time (each may come from another run).

    The machine is shared: a run slowed by someone else's tests says nothing about the code.
    """
    rss = [run.rss_mb for run in runs if run.rss_mb is not None]
    return Run(
        runs[0].name,
        min(run.wall for run in runs),
        min(run.cpu for run in runs),
        runs[0].items,
        max(rss) if rss else None,
        f"best of {len(runs)}",
    )


def _tree_rss_kib(pid: int) -> int:
    """Resident KiB of ``pid`` and its children (a scan's decoding process), from /proc (0 if gone)."""
    total = 0
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as listing:
            pids = [pid, *map(int, listing.read().split())]
    except OSError:
        return 0
    for each in pids:
        try:
            with open(f"/proc/{each}/status", encoding="ascii") as status:
                total += next((int(line.split()[1]) for line in status if line.startswith("VmRSS:")), 0)
        except OSError:
            continue
    return total


class _TreeMemory(threading.Thread):
    """Samples the summed RSS of a child and its own children every 10 ms; keeps the peak.

    ``ru_maxrss`` gives the largest single process: a scan that decodes in a second process
    uses both at once. The sum counts the pages they share twice, so it errs on the high side.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kib = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            self.peak_kib = max(self.peak_kib, _tree_rss_kib(self.pid))


def child(
    argv: Sequence[str], *, stdout: int | None = subprocess.DEVNULL
) -> tuple[float, float, float, int, bytes]:
    """Run a child; return its wall time, CPU time (user + system), peak RSS in MB, exit code, stdout.

    The peak RSS is the larger of the kernel's (one process) and the sampled sum over the child
    and its children (``_TreeMemory``).
    """
    started = time.perf_counter()
    process = subprocess.Popen(
        argv, stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE
    )
    memory = _TreeMemory(process.pid)
    memory.start()
    output = b""
    if stdout is None:
        assert process.stdout is not None
        output = process.stdout.read()
    assert process.stderr is not None
    errors = process.stderr.read()
    # This child's rusage, its own reaped children (the decoding process) included; not every child's.
    memory.done.set()
    memory.join()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0, 1):
        sys.stderr.write(errors.decode(errors="replace"))
        raise SystemExit(f"{argv[0]} failed with {process.returncode}")
    peak_mb = max(usage.ru_maxrss, memory.peak_kib) / 1024
    return wall, usage.ru_utime + usage.ru_stime, peak_mb, process.returncode, output


def lanterne() -> list[str]:
    script = Path(sys.executable).with_name("lanterne")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from agent.cli import main; main()"]


def ensure_capture(path: Path, packets: int) -> None:
    if path.exists():
        return
    generator = SHARED_BENCH / "gen_mixed_pcap.py"
    if not generator.exists():
        raise SystemExit(f"{path} is missing and so is {generator}")
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"generating {path} ({packets} packets, a few minutes)...", file=sys.stderr)
    subprocess.run([sys.executable, str(generator), str(packets), str(path)], check=True)


def ensure_pcapng(capture: Path) -> Path | None:
    """The capture written as pcapng (what Wireshark and dumpcap write) beside it; None without editcap."""
    pcapng = capture.with_suffix(".pcapng")
    editcap = shutil.which("editcap")
    stale = not pcapng.exists() or pcapng.stat().st_mtime < capture.stat().st_mtime
    if stale and editcap is not None:
        partial = pcapng.with_suffix(".pcapng.part")  # a run cut short leaves no half file behind
        subprocess.run([editcap, "-F", "pcapng", str(capture), str(partial)], check=True)
        partial.replace(pcapng)
    return pcapng if pcapng.exists() else None


@contextmanager
def pg_schema(url: str) -> Iterator[str | None]:
    """A fresh schema in the PostgreSQL at ``url`` (None when unreachable), dropped afterwards."""
    parsed = make_url(url)
    conninfo = (
        f"host={parsed.host or '127.0.0.1'} port={parsed.port or 5432} "
        f"user={parsed.username or 'postgres'} dbname={parsed.database or 'test'}"
    )
    if parsed.password:
        conninfo += f" password={parsed.password}"
    schema = f"lt_bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as connection:
            connection.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.Error as exc:
        print(f"PostgreSQL skipped: {exc}", file=sys.stderr)
        yield None
        return
    try:
        yield (
            parsed.set(drivername="postgresql+psycopg")
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


def bench_tshark(capture: Path) -> Run:
    tshark = shutil.which("tshark")
    assert tshark is not None
    argv = [tshark, "-n", "-r", str(capture), "-T", "fields"]
    for name in ("dns.qry.name", "tls.handshake.extensions_server_name", "http.host"):
        argv += ["-e", name]
    wall, cpu, rss, _, _ = child(argv)
    return Run("tshark -T fields (dns, sni, host)", wall, cpu, PACKETS, rss)


def bench_scan(capture: Path, db: str, name: str, *extra: str) -> tuple[Run, dict[str, object]]:
    argv = [
        *lanterne(),
        "scan",
        str(capture),
        "--db",
        db,
        "--site",
        "bench",
        "--agent",
        "bench",
        "--json",
        "--no-progress",
        *extra,
    ]
    wall, cpu, rss, _, output = child(argv, stdout=None)
    summary = json.loads(output)
    return Run(name, wall, cpu, int(summary["packets"]), rss), summary


def bench_in_process(capture: Path, directory: Path) -> list[Run]:
    """The pipeline without start-up: decode alone, then decode + match + aggregate + store."""
    index = fingerprints.default_index()
    runs = []
    wall, cpu = time.perf_counter(), time.process_time()
    stats = collectors.DecodeStats()
    for _ in collectors.decode_file(capture, stats=stats):
        pass
    runs.append(
        Run("decode only (in process)", time.perf_counter() - wall, time.process_time() - cpu, stats.packets)
    )
    directory.mkdir(parents=True, exist_ok=True)
    store = open_store(directory / "inprocess.db")
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        report = Scanner(store, index, site="bench", agent="bench").scan(capture)
        runs.append(
            Run(
                "scan pipeline (in process) -> SQLite",
                time.perf_counter() - wall,
                time.process_time() - cpu,
                report.decode.packets,
            )
        )
    finally:
        store.dispose()
    return runs


def bench_upserts(db: str, name: str, rows: int = 50_000) -> Run:
    """Aggregated observation rows upserted in 1,000-row batches (new keys, then the same keys again)."""
    store = open_store(db)
    try:
        now = time.time()
        with store.write() as session:
            ids = upsert_endpoints(
                session,
                [
                    {
                        "site": "bench",
                        "identity_kind": IdentityKind.MAC,
                        "identity": f"02:00:00:00:{i >> 8:02x}:{i & 0xFF:02x}",
                        "mac": None,
                        "randomized_mac": True,
                        "ip": None,
                        "hostname": None,
                        "vendor": None,
                        "service": None,
                        "vlan": None,
                        "first_seen": now,
                        "last_seen": now,
                    }
                    for i in range(500)
                ],
            )
        endpoints = list(ids.values())
        batch = [
            {
                "agent": "bench",
                "endpoint_id": endpoints[i % len(endpoints)],
                "kind": "dns.query",
                "value": f"host{i}.example.org",
                "first_seen": now + i * 1e-3,
                "last_seen": now + i * 1e-3,
                "count": 1,
                "attrs": {"qtype": "A"},
                "peer": "10.0.0.53",
            }
            for i in range(rows)
        ]
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(2):  # inserts, then conflicts on every key
            with store.write() as session:
                upsert_observations(session, batch)
        return Run(name, time.perf_counter() - wall, time.process_time() - cpu, 2 * rows)
    finally:
        store.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capture", type=Path, default=DEFAULT_CAPTURE)
    parser.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL URL (a schema is created and dropped)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each scan and upsert (best kept)")
    parser.add_argument("--tshark-repeat", type=int, default=1, help="runs of tshark (best kept)")
    args = parser.parse_args(argv)
    ensure_capture(args.capture, PACKETS)
    # What an installed wheel has (pip compiles it): an editable install under
    # PYTHONDONTWRITEBYTECODE would compile every module again at each start of the scan.
    for package in ("agent", "collectors", "fingerprints", "store"):
        compileall.compile_dir(REPO / package, quiet=1)
    truth_path = args.capture.with_name(args.capture.name + ".truth.json")
    truth = json.loads(truth_path.read_text()) if truth_path.exists() else {}

    runs: list[Run] = []
    checks: list[tuple[str, bool, str]] = []
    with tempfile.TemporaryDirectory(prefix="lanterne-bench-") as tmp:
        directory = Path(tmp)
        # Interleaved, one round after another: the machine's speed drifts (it is shared), and
        # every variant then sees the same drift as the peer.
        tsharks: list[Run] = []
        scans: list[Run] = []
        serial: list[Run] = []
        two: list[Run] = []
        as_pcapng: list[Run] = []
        pcapng = ensure_pcapng(args.capture)
        for i in range(max(args.repeat, args.tshark_repeat)):
            if i < args.tshark_repeat and shutil.which("tshark"):
                tsharks.append(bench_tshark(args.capture))
            if i >= args.repeat:
                continue
            run, summary = bench_scan(
                args.capture, f"sqlite:///{directory / f'scan{i}.db'}", "lanterne scan -> SQLite"
            )
            scans.append(run)
            serial.append(
                bench_scan(
                    args.capture,
                    f"sqlite:///{directory / f'serial{i}.db'}",
                    "  (one process: --no-parallel)",
                    "--no-parallel",
                )[0]
            )
            two.append(
                bench_scan(
                    args.capture,
                    f"sqlite:///{directory / f'two{i}.db'}",
                    "  (two decoding processes: --decoders 2)",
                    "--decoders",
                    "2",
                )[0]
            )
            if pcapng is not None:
                as_pcapng.append(
                    bench_scan(pcapng, f"sqlite:///{directory / f'ng{i}.db'}", "  (the capture as pcapng)")[0]
                )
        tshark = best(tsharks) if tsharks else None
        if tshark is not None:
            runs.append(tshark)
        sqlite_scan = best(scans)
        runs += [sqlite_scan, best(serial), best(two), *([best(as_pcapng)] if as_pcapng else [])]
        pg_scan = None
        pg_scans = []
        for _ in range(args.repeat):
            with pg_schema(args.pg) as pg_url:
                if pg_url is not None:
                    pg_scans.append(bench_scan(args.capture, pg_url, "lanterne scan -> PostgreSQL")[0])
        if pg_scans:
            pg_scan = best(pg_scans)
            runs.append(pg_scan)
        in_process = [bench_in_process(args.capture, directory / f"in{i}") for i in range(args.repeat)]
        runs += [best([group[k] for group in in_process]) for k in range(len(in_process[0]))]
        sqlite_upsert = best(
            [
                bench_upserts(f"sqlite:///{directory / f'upsert{i}.db'}", "upsert observations -> SQLite")
                for i in range(args.repeat)
            ]
        )
        runs.append(sqlite_upsert)
        pg_upsert = None
        pg_upserts = []
        for _ in range(args.repeat):
            with pg_schema(args.pg) as pg_url:
                if pg_url is not None:
                    pg_upserts.append(bench_upserts(pg_url, "upsert observations -> PostgreSQL"))
        if pg_upserts:
            pg_upsert = best(pg_upserts)
            runs.append(pg_upsert)

    load = os.getloadavg()[0]
    print(f"\nbest of {args.repeat} (tshark {args.tshark_repeat}); {os.cpu_count()} CPUs, load {load:.2f}")
    print(f"{'run':<40} {'wall s':>8} {'cpu s':>8} {'wall/s':>12} {'cpu/s':>12} {'RSS MB':>8}")
    for run in runs:
        unit = "rows" if "upsert" in run.name else "pkts"
        rss = f"{run.rss_mb:8.0f}" if run.rss_mb is not None else f"{'':>8}"
        rates = f"{run.wall_rate:>8,.0f} {unit} {run.cpu_rate:>8,.0f} {unit}"
        print(f"{run.name:<40} {run.wall:8.2f} {run.cpu:8.2f} {rates} {rss}")
    if tshark is not None:
        wall_ratio = sqlite_scan.wall_rate / tshark.wall_rate
        cpu_ratio = sqlite_scan.cpu_rate / tshark.cpu_rate
        print(f"\nscan/tshark: {wall_ratio:.1f}x wall, {cpu_ratio:.1f}x CPU (best of each)")
        # The best run of each says what the code can do; the medians say how much the drift of
        # a shared machine moved it. Every run is printed: the note quotes both.
        median_ratio = statistics.median(run.wall for run in tsharks) / statistics.median(
            run.wall for run in scans
        )
        print(
            f"scan/tshark: {median_ratio:.1f}x wall (medians); every run, wall s: "
            f"tshark {', '.join(f'{run.wall:.2f}' for run in tsharks)}; "
            f"scan -> SQLite {', '.join(f'{run.wall:.2f}' for run in scans)}"
        )
        checks.append(
            (
                f"scan >= {TARGET_TSHARK_RATIO:.0f}x tshark (wall)",
                wall_ratio >= TARGET_TSHARK_RATIO,
                f"{wall_ratio:.1f}x",
            )
        )
        checks.append(
            (
                f"scan >= {TARGET_TSHARK_RATIO:.0f}x tshark (CPU)",
                cpu_ratio >= TARGET_TSHARK_RATIO,
                f"{cpu_ratio:.1f}x",
            )
        )
    checks.append(
        (
            f"scan >= {TARGET_SCAN_PPS:,} pkt/s (wall)",
            sqlite_scan.wall_rate >= TARGET_SCAN_PPS,
            f"{sqlite_scan.wall_rate:,.0f}",
        )
    )
    checks.append(
        (
            f"scan >= {TARGET_SCAN_PPS:,} pkt/s (CPU)",
            sqlite_scan.cpu_rate >= TARGET_SCAN_PPS,
            f"{sqlite_scan.cpu_rate:,.0f}",
        )
    )
    peak = max(run.rss_mb for run in (sqlite_scan, pg_scan) if run is not None and run.rss_mb is not None)
    checks.append((f"scan peak RSS < {TARGET_RSS_MB} MB", peak < TARGET_RSS_MB, f"{peak:.0f} MB"))
    checks.append(
        (
            f"upserts >= {TARGET_SQLITE_ROWS:,} rows/s SQLite (wall)",
            sqlite_upsert.wall_rate >= TARGET_SQLITE_ROWS,
            f"{sqlite_upsert.wall_rate:,.0f}",
        )
    )
    if pg_upsert is not None:
        checks.append(
            (
                f"upserts >= {TARGET_PG_ROWS:,} rows/s PostgreSQL (wall)",
                pg_upsert.wall_rate >= TARGET_PG_ROWS,
                f"{pg_upsert.wall_rate:,.0f}",
            )
        )
    print(
        f"\nscan stored {summary['stored_observations']} of {summary['observations']} observations; "
        f"{summary['endpoints']} endpoints; detections {summary['detections']}; truth {truth or 'n/a'}"
    )
    print()
    for label, ok, value in checks:
        print(f"{'PASS' if ok else 'MISS'}  {label:<45} {value}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": [
                        run.__dict__ | {"wall_rate": run.wall_rate, "cpu_rate": run.cpu_rate} for run in runs
                    ],
                    "checks": [{"check": label, "ok": ok, "value": value} for label, ok, value in checks],
                    "children_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
