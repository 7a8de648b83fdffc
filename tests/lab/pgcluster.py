"""A throw-away PostgreSQL cluster for fault tests: its own directory, a Unix socket only, stopped at will.

Fault tests stop and start the database under a live daemon. They never touch the shared cluster
that other tests (and other engineers) use: ``initdb`` makes a private one in a temporary
directory, listening on no TCP address, on a Unix socket any lab namespace can reach (sockets live
in the filesystem, not in a network namespace). ``close()`` stops it and removes everything, and
is safe to call whatever state the cluster is in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

_RUN_AS = ("runuser", "-u", "postgres", "--")


def _bindir() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return candidates[-1].parent if candidates else None


def unavailable() -> str | None:
    """Why a private cluster cannot be made here, or None."""
    if os.geteuid() != 0:
        return "a private PostgreSQL cluster needs root (to run initdb as the postgres user)"
    if _bindir() is None or shutil.which("runuser") is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no postgres user to run the private cluster"
    return None


class PrivateCluster:
    """One private cluster: ``start()``, ``stop()``, ``url`` of its ``lanterne`` database."""

    def __init__(self, port: int = 5499) -> None:
        bindir = _bindir()
        assert bindir is not None
        self.bindir = bindir
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix=f"l5pg-{os.getpid()}-"))
        os.chmod(self.root, 0o755)
        shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"

    @property
    def url(self) -> str:
        """The daemon's database URL (through the Unix socket)."""
        return f"postgresql://postgres@/lanterne?host={self.root}&port={self.port}"

    def _as_postgres(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*_RUN_AS, *command], capture_output=True, text=True, check=True, timeout=timeout
        )

    def init(self) -> None:
        """initdb, start, and create the ``lanterne`` database."""
        self._as_postgres(
            str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-N"
        )
        self.start()
        self._as_postgres(
            str(self.bindir / "createdb"), "-h", str(self.root), "-p", str(self.port), "lanterne"
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-k {self.root} -c listen_addresses='' -p {self.port}"
        self._as_postgres(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.log),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: connections are cut, like a restart in production)."""
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def query(self, sql: str) -> list[list[str]]:
        """Rows of ``sql`` as text (psql, unaligned)."""
        result = self._as_postgres(
            str(self.bindir / "psql"),
            "-h",
            str(self.root),
            "-p",
            str(self.port),
            "-d",
            "lanterne",
            "-At",
            "-F",
            "\t",
            "-c",
            sql,
        )
        return [line.split("\t") for line in result.stdout.splitlines() if line]

    def close(self) -> None:
        """Stop (if running) and remove everything."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def cleanup_stale() -> None:
    """Stop and remove the private clusters of runs that died (SIGKILL, a crash) before their teardown."""
    for root in Path(tempfile.gettempdir()).glob("l5pg-*-*"):
        owner = root.name.split("-")[1]
        if not owner.isdigit() or Path(f"/proc/{owner}").exists():
            continue  # not ours, or its run is still alive
        bindir = _bindir()
        if bindir is not None and (root / "data" / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(
                    [
                        *_RUN_AS,
                        str(bindir / "pg_ctl"),
                        "-D",
                        str(root / "data"),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ],
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def private_cluster(port: int = 5499) -> Iterator[PrivateCluster]:
    """A started private cluster, always removed afterwards."""
    cleanup_stale()
    cluster = PrivateCluster(port)
    try:
        cluster.init()
        yield cluster
    finally:
        cluster.close()
