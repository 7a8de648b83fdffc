"""A scan decoding in a forked process stores what the one-process scan stores, and fails as cleanly."""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import agent._decoding
from agent._decoding import DecoderDied, DecodeWorker, parallel_available
from agent._pipeline import Scanner
from collectors import CaptureFormatError, Endpoint, Kind, Observation
from fingerprints import Index, load_index
from store import open_store
from tests.agent.test_scan import T0, capture, scan, snapshot
from tests.corpus import corpus_pcaps
from tests.store.dburl import BACKENDS, temporary_database

pytestmark = pytest.mark.skipif(
    not parallel_available(), reason="decoding in a second process needs fork() and two CPUs"
)

DEMO = Path(__file__).resolve().parents[2] / "agent" / "demo" / "hospital.pcap"
#: Corpus captures with something for each part of the pipeline: DHCP identities, DNS over TCP,
#: mDNS, IPv6 fragments, QUIC across Initials, TLS, LLMNR over TCP, HL7, SNMP, SSDP, HTTP, pcapng.
CORPUS_NAMES = (
    "wireshark-dhcp.pcap",
    "dhcp__dhcp.pcap",
    "dns_tcp.pcap",
    "dns__mdns.pcap",
    "ipv6-fragmented-dns.pcap",
    "quic__quic-multiple-initial-fragmented-crypto.pcap",
    "ja4-tls__input.pcap",
    "llmnr__llmnr-tcp-reassembly__input.pcap",
    "hl7.pcap",
    "snmp__snmpwalk-short.pcap",
    "sip-ssdp-pm__ssdp.pcap",
    "http__methods.pcap",
    "quic_frags_ch_in_multiple_packets.pcapng",
    "dhcp-fuzz.pcapng",
)


@pytest.fixture(scope="module")
def index() -> Index:
    return load_index()


def _scan_into(
    url: str, index: Index, paths: list[Path], *, parallel: bool, flush_at: int, decoders: int | None = None
) -> list[Any]:
    with open_store(url) as store:
        scanner = Scanner(
            store, index, site="s", agent="a", flush_at=flush_at, parallel=parallel, decoders=decoders
        )
        reports = [scanner.scan(path) for path in paths]
    return [
        (report.sha256, report.skipped, report.windows, report.shed, report.decode.to_dict())
        for report in reports
    ]


def _corpus_sample() -> list[Path]:
    return [path for path in corpus_pcaps() if path.name in CORPUS_NAMES]


@pytest.mark.parametrize("decoders", [1, 2, 3])
@pytest.mark.parametrize("case", ["demo", "windows", "corpus"])
def test_parallel_scan_stores_what_the_one_process_scan_stores(
    case: str, decoders: int, index: Index, tmp_path: Path
) -> None:
    flush_at = 100_000
    if case == "demo":
        paths = [DEMO]
    elif case == "windows":
        names = [f"host{i}.example.org" for i in range(80)] + ["chatgpt.com", "claude.ai"]
        paths = [capture(tmp_path / "w.pcap", packets=4000, clients=50, names=names, seed=7)]
        flush_at = 97  # dozens of windows, each written as it comes
    else:
        paths = _corpus_sample()
        if not paths:
            pytest.skip("the shared corpus is absent: no third-party captures to compare on")
    one = f"sqlite:///{tmp_path / 'one.db'}"
    two = f"sqlite:///{tmp_path / 'two.db'}"
    serial = _scan_into(one, index, paths, parallel=False, flush_at=flush_at)
    parallel = _scan_into(two, index, paths, parallel=True, flush_at=flush_at, decoders=decoders)
    assert parallel == serial
    if case == "windows":
        assert serial[0][2] > 10, "the case is meant to cross many windows"
    expected = snapshot(one)
    assert expected["observations"] > 0
    assert snapshot(two) == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_prefetched_files_through_the_cli_give_the_one_process_result(backend: str, tmp_path: Path) -> None:
    """Three files: the first child forks before the store opens, the next ones beside its connections."""
    names = [f"n{i}.example.org" for i in range(30)] + ["chatgpt.com"]
    paths = [
        str(
            capture(
                tmp_path / f"f{seed}.pcap", packets=1500, clients=20, names=names, seed=seed, start=T0 + seed
            )
        )
        for seed in (11, 12, 13)
    ]
    common = ["--site", "s", "--agent", "a", "--no-progress"]
    with (
        temporary_database(backend, tmp_path / "one") as one,
        temporary_database(backend, tmp_path / "two") as two,
    ):
        serial = scan(*paths, "--db", one, "--no-parallel", *common)
        parallel = scan(*paths, "--db", two, "--parallel", *common)
        assert serial.exit_code == parallel.exit_code == 0, parallel.output
        assert snapshot(two) == snapshot(one)
        again = scan(*paths, "--db", two, "--parallel", *common)
        assert again.exit_code == 0
        assert len(re.findall(r"already\s+ingested \(sha256", again.output)) == 3
        assert snapshot(two) == snapshot(one)


def test_a_file_the_child_cannot_read_fails_alone(tmp_path: Path) -> None:
    good = capture(tmp_path / "good.pcap", packets=200, clients=5, names=["chatgpt.com"], seed=2)
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"this is not a capture at all" * 10)
    missing = tmp_path / "missing.pcap"
    result = scan(str(bad), str(missing), str(good), "--db", str(tmp_path / "x.db"), "--parallel")
    assert result.exit_code == 2
    assert "bad.pcap" in result.output
    assert "missing.pcap" in result.output
    after = snapshot(f"sqlite:///{tmp_path / 'x.db'}")
    assert len(after["files"]) == 1
    assert after["observations"] == 200


def test_the_childs_exception_reaches_the_scan_as_itself(index: Index, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\x00" * 64)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    messages = []
    for parallel in (False, True):
        with open_store(url) as store:
            with pytest.raises(CaptureFormatError) as caught:
                Scanner(store, index, site="s", agent="a", parallel=parallel).scan(bad)
            messages.append(str(caught.value))
    assert messages[0] == messages[1]


def test_a_child_that_dies_rolls_its_file_back(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f"h{i}.example.org" for i in range(50)]
    path = capture(tmp_path / "d.pcap", packets=30_000, clients=30, names=names, seed=9)
    real = agent._decoding.decode_share

    def dying(*args: Any, **kwargs: Any) -> Iterator[list[tuple[int, Observation]]]:
        seen = 0
        for tagged in real(*args, **kwargs):
            seen += len(tagged)
            if seen >= 12_000:  # several windows sent already: the parent has written them
                os.kill(os.getpid(), signal.SIGKILL)
            yield tagged

    monkeypatch.setattr(agent._decoding, "decode_share", dying)  # the forked children inherit it
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with open_store(url) as store, pytest.raises(DecoderDied, match=r"exit code -9"):
        Scanner(store, index, site="s", agent="a", flush_at=200, parallel=True, decoders=2).scan(path)
    empty = snapshot(url)
    assert (empty["endpoints"], empty["observation_rows"], empty["files"]) == (0, 0, [])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in status)
    except FileNotFoundError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_the_child_dies_with_its_parent(tmp_path: Path) -> None:
    fifo = tmp_path / "endless.pcap"
    os.mkfifo(fifo)  # the children block reading it: only their parent's death can end them
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from agent._decoding import DecodeWorker\n"
        f"worker = DecodeWorker(Path({str(fifo)!r}), agent='a', decoders=2).start()\n"
        "print(*(process.pid for process in worker.processes), flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        children = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(children) == 1, "a pipe is read by one child"
        assert all(_alive(child) for child in children)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(child) for child in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(child) for child in children), "a decoding process outlived its scan"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_a_worker_closed_early_leaves_no_process(index: Index, tmp_path: Path) -> None:
    path = capture(tmp_path / "c.pcap", packets=500, clients=5, names=["chatgpt.com"], seed=4)
    with DecodeWorker(path, agent="a", decoders=3).start() as worker:
        pids = [process.pid for process in worker.processes]
    assert len(pids) == 3
    assert not any(_alive(pid) for pid in pids)
    assert worker.result is None
    assert worker.processes == []


def test_no_process_to_be_had_means_decoding_in_this_one(
    index: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = capture(tmp_path / "f.pcap", packets=300, clients=5, names=["chatgpt.com"], seed=5)

    def refused(self: DecodeWorker) -> DecodeWorker:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(DecodeWorker, "start", refused)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with open_store(url) as store:
        report = Scanner(store, index, site="s", agent="a", parallel=True).scan(path)
    assert (report.decode.packets, snapshot(url)["observations"]) == (300, 300)
    result = scan(str(path), "--db", str(tmp_path / "cli.db"), "--parallel")
    assert result.exit_code == 0, result.output
    assert snapshot(f"sqlite:///{tmp_path / 'cli.db'}")["observations"] == 300


def test_the_child_decodes_on_while_a_window_is_being_written(index: Index, tmp_path: Path) -> None:
    """Windows after the first: the child has sent every batch while the first one was 'written'."""
    names = [f"w{i}.example.org" for i in range(60)]
    path = capture(tmp_path / "slow.pcap", packets=2000, clients=20, names=names, seed=21)
    with DecodeWorker(path, agent="a", flush_at=100, decoders=2).start() as worker:
        windows = worker.windows(index)
        first = next(windows)
        for process in worker.processes:
            process.join(timeout=60)  # the writer is busy with ``first``: nothing reads the pipes now
            assert process.exitcode == 0, "a child waited for the writer instead of decoding on"
        rest = list(windows)
    assert len(rest) >= 5
    assert worker.result is not None
    assert worker.result.aggregate.windows == 1 + len(rest)
    assert sum(window.observed for window in (first, *rest)) == worker.result.stats.observations == 2000


@pytest.mark.skipif(sys.platform != "linux", reason="F_SETPIPE_SZ is Linux's")
def test_a_childs_pipe_holds_many_messages(index: Index, tmp_path: Path) -> None:
    """The pipe a child writes to holds ``PIPE_BYTES``: it decodes on while nobody reads it."""
    import fcntl  # Linux only, as the test

    if int(Path("/proc/sys/fs/pipe-max-size").read_text()) < agent._decoding.PIPE_BYTES:
        pytest.skip("this system caps pipes below PIPE_BYTES (fs.pipe-max-size): they keep 64 KiB")
    path = capture(tmp_path / "pipe.pcap", packets=50, clients=3, names=["a.example.org"], seed=5)
    with DecodeWorker(path, agent="a", decoders=2).start() as worker:
        sizes = [fcntl.fcntl(child.connection.fileno(), fcntl.F_GETPIPE_SZ) for child in worker._children]
        assert len(list(worker.windows(index))) == 1
    assert sizes == [agent._decoding.PIPE_BYTES] * 2


def test_observations_cross_the_pipe_unchanged() -> None:
    """``pack``/``unpack`` give back equal Observations, attrs, endpoints and kinds included."""
    observations = [
        Observation(
            T0 + 0.25,
            "tls.sni",
            "chatgpt.com",
            Endpoint("10.0.0.7", "02:00:00:00:00:07", 51000),
            Endpoint("192.0.2.10", None, 443),
            {"alpn": ("h2", "http/1.1"), "ja4": "t13d1516h2_8daaf6152771_e5627efa2ab1"},
            "pcap",
            "a",
        ),
        Observation(T0, "dhcp.hostname", "ward-3-pc", Endpoint(None, "00:1b:21:aa:bb:cc"), agent="a"),
        Observation(T0, "dns.query", "example.org", Endpoint("fe80::1"), Endpoint("ff02::fb", None, 5353)),
    ]
    tagged = list(enumerate(observations, start=41))
    back = agent._decoding.unpack(pickle.loads(pickle.dumps(agent._decoding.pack(tagged))))
    assert back == tagged
    assert [frame for frame, _ in back] == [41, 42, 43]
    back_observations = [item for _, item in back]
    assert [type(item) for item in back_observations] == [Observation] * 3
    assert all(type(item.src) is Endpoint and type(item.dst) is Endpoint for item in back_observations)
    assert [item.kind for item in back_observations] == [Kind.TLS_SNI, Kind.DHCP_HOSTNAME, Kind.DNS_QUERY]


def test_the_first_child_forks_before_the_catalogue_and_the_store_load(tmp_path: Path) -> None:
    """What ``lanterne scan`` does before the fork is on the critical path: only the CLI is."""
    path = capture(tmp_path / "early.pcap", packets=200, clients=5, names=["chatgpt.com"], seed=6)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    script = (
        "import sys\n"
        "from agent._decoding import DecodeWorker\n"
        "from agent.cli import main\n"
        "from fingerprints import default_index\n"
        "real = DecodeWorker.start\n"
        "def start(self):\n"
        "    print('sqlalchemy' in sys.modules, default_index.cache_info().currsize, flush=True)\n"
        "    return real(self)\n"
        "DecodeWorker.start = start\n"
        f"sys.argv = ['lanterne', 'scan', '--parallel', '--db', {url!r}, {str(path)!r}]\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "0"]
    assert snapshot(url)["observations"] == 200


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX's")
def test_a_pipe_is_read_once_by_one_child_that_hashes_it(index: Index, tmp_path: Path) -> None:
    """Only a regular file is read twice (decoders, hash): a pipe gives its bytes once."""
    path = capture(tmp_path / "p.pcap", packets=2000, clients=40, names=["chatgpt.com", "x.org"], seed=8)
    fifo = tmp_path / "p.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(path.read_bytes(),), daemon=True)
    writer.start()
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with open_store(url) as store:
        report = Scanner(store, index, site="s", agent="a", parallel=True, decoders=3).scan(fifo)
    writer.join(timeout=30)
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (report.decode.packets, snapshot(url)["observations"]) == (2000, 2000)


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own nice value is a Linux feature")
def test_the_hash_after_the_decoding_runs_at_the_lowest_priority_in_its_thread_only() -> None:
    """``lowest_priority`` lowers the calling thread (the child's, once it has sent its end), not others."""
    seen: dict[str, int] = {}

    def lowered() -> None:
        agent._decoding.lowest_priority()
        seen["thread"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=lowered)
    thread.start()
    thread.join(timeout=10)
    assert seen["thread"] == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_windows_are_cut_at_the_same_observations_however_they_arrive(index: Index) -> None:
    """``full_windows`` aggregates lists of any length at once, and checks the size every batch only."""
    rng = random.Random(11)
    clients = [Endpoint(f"10.1.0.{n}", f"f4:8e:38:00:00:{n:02x}", 40000) for n in range(1, 30)]
    server = Endpoint("10.0.0.53", "00:00:0c:9f:f0:01", 53)
    observations = [
        Observation(1.7e9 + i, Kind.DNS_QUERY, f"n{rng.randrange(400)}.example", rng.choice(clients), server)
        for i in range(3000)
    ]

    def windows(chunks: Iterator[list[Observation]]) -> list[list[tuple[Any, ...]]]:
        aggregator = agent._decoding.Aggregator(index, max_keys=2000)
        cut = list(agent._decoding.full_windows(chunks, aggregator, 150, 64))
        cut.append(aggregator.drain())
        return [[(key, tuple(record[:3])) for key, record in window.observations.items()] for window in cut]

    def arbitrary() -> Iterator[list[Observation]]:
        start = 0
        while start < len(observations):
            size = rng.choice([0, 1, 5, 63, 64, 65, 200, 700])
            yield observations[start : start + size]
            start += size

    expected = windows(agent._decoding.batches(iter(observations), 64))
    assert len(expected) > 5
    for _ in range(5):
        assert windows(arbitrary()) == expected


def test_a_file_is_hashed_where_it_lies_as_when_read(tmp_path: Path) -> None:
    """``sha256_of`` maps regular files (several blocks here, the last one short) and reads the rest."""
    data = os.urandom(2 * agent._decoding.READ_SIZE + 12345)
    path = tmp_path / "blob"
    path.write_bytes(data)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert agent._decoding.sha256_of(path) == hashlib.sha256(data).hexdigest()
    assert agent._decoding.sha256_of(empty) == hashlib.sha256(b"").hexdigest()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=fifo.write_bytes, args=(data,))
    feeder.start()
    try:
        assert agent._decoding.sha256_of(fifo) == hashlib.sha256(data).hexdigest()
    finally:
        feeder.join(timeout=30)
