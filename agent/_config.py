"""The daemon's configuration: one TOML file, validated once at start, every error naming its key.

``load_config(path)`` reads ``lanterne.toml`` (``deploy/lanterne.toml.example`` documents every
key) and returns a frozen ``Config``; anything wrong raises ``ConfigError`` whose message starts
with the dotted key (``capture.interfaces[1]: no such interface``) and, for a misspelt key, the
closest known one. Unknown keys are errors: a typo must not silently fall back to a default.

Secrets never have to be in the file. Every secret-bearing key ``X`` may instead be given as
``X_env = "VARIABLE"``, read from the environment at start (an unset variable is an error naming
the key). Two well-known variables override the file outright: ``LANTERNE_DB`` (the database URL)
and ``LANTERNE_PSEUDONYM_KEY`` (the pseudonymisation key), so that containers and systemd
credentials need no file edits.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from agent._alert_channels import ChannelConfigError, channels_from_config
from collectors._bpf import DEFAULT_CONTINUATION_PORTS, DEFAULT_RESPONSE_PORTS
from collectors.probe._gate import (
    DEFAULT_BURST,
    DEFAULT_CONCURRENCY,
    DEFAULT_RATE,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    MAX_RATE,
    MAX_RETRIES,
    MAX_TIMEOUT,
    ProbePolicy,
)
from store import DEFAULT_RETENTION_DAYS

DB_ENV: Final = "LANTERNE_DB"
PSEUDONYM_KEY_ENV: Final = "LANTERNE_PSEUDONYM_KEY"
DEFAULT_METRICS_ADDRESS: Final = "127.0.0.1:9850"
DEFAULT_STATE_DIR: Final = Path("/var/lib/lanterne")
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_IFNAME: Final = re.compile(r"[^\s/:]{1,15}")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LOG_LEVELS: Final = ("debug", "info", "warning", "error")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """The configuration is wrong; the message starts with the key at fault."""


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """Live capture."""

    interfaces: tuple[str, ...] = ()
    """Interfaces to capture on (the SPAN/TAP ports); several at once are fine."""
    promiscuous: bool = True
    """A mirror port delivers other hosts' frames: the NIC must accept them."""
    buffer_mib: int = 32
    """Kernel receive buffer per interface (bursts wait there while Python is busy)."""
    batch: int = 512
    """Frames read per wakeup of the event loop, at most."""
    ignore_outgoing: bool = False
    """Skip frames this host sends (a sensor's own DNS lookups, on an interface that has an address)."""
    continuation_ports: tuple[int, ...] = DEFAULT_CONTINUATION_PORTS
    """Client-to-server TCP ports whose PSH segments may continue a ClientHello (``collectors._bpf``)."""
    response_ports: tuple[int, ...] = DEFAULT_RESPONSE_PORTS
    """Server-to-client TCP ports whose PSH segments may continue an HTTP response head."""


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """How often the daemon's jobs run."""

    flush_seconds: float = 10.0
    """Aggregates are written this often (and when a window fills up, and at shutdown)."""
    reconcile_seconds: float = 300.0
    """The site is reconciled (and alerts raised or closed) this often."""
    purge_hours: float = 24.0
    """Evidence older than the retention is deleted this often."""
    digest_minutes: float = 60.0
    """Pending alerts are delivered to the alert sinks this often."""


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Memory bounds: past them, new keys are shed and counted, never stored."""

    max_keys: int = 50_000
    """Distinct (endpoint, kind, value) keys per flush window (a window that fills is flushed early)."""
    max_evidence: int = 20_000
    """Distinct (endpoint, rule) evidence keys per window."""
    max_peers: int = 50_000
    """Distinct server (IP, MAC) pairs per window."""
    dns_cache_entries: int = 32_768
    """IP-to-name entries kept for flow attribution (least recently used dropped)."""
    max_rss_mib: int = 512
    """Resident memory above this triggers an early flush and drops the caches (counted)."""


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    """Where aggregates wait while the database is unreachable."""

    path: Path = DEFAULT_STATE_DIR / "spool.jsonl"
    max_mib: int = 256
    """Spool size cap; a window that does not fit is shed (and counted)."""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus endpoint."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9850


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """Logs on stderr (journald or docker collect them)."""

    level: str = "info"
    format: str = "json"
    """``json`` (one object a line) or ``text``."""


@dataclass(frozen=True, slots=True)
class ServiceMap:
    """VLAN and subnet to the hospital service (unit, ward) that uses them: reports aggregate by these."""

    vlans: Mapping[int, str] = field(default_factory=dict)
    subnets: tuple[tuple[Network, str], ...] = ()
    """Most specific first."""

    def service_of(self, vlan: int | None, ip: str | None) -> str | None:
        """The service of an endpoint: by VLAN first, else by the most specific subnet."""
        if vlan is not None and vlan in self.vlans:
            return self.vlans[vlan]
        if ip and self.subnets:
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                return None
            for network, service in self.subnets:
                if address.version == network.version and address in network:
                    return service
        return None

    def __bool__(self) -> bool:
        return bool(self.vlans or self.subnets)


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """Active discovery (DESIGN §6): off unless enabled with a scope; every probe goes through the gate."""

    enabled: bool = False
    interval_minutes: float = 1440.0
    """A sweep runs this often."""
    policy: ProbePolicy | None = None
    """The gate's policy (scope, deny list, passive-only subnets, rate, timeouts): set when enabled."""
    snmp_communities: tuple[str, ...] = field(default=(), repr=False)
    """Secret: give ``snmp_communities_env`` (comma-separated in the variable)."""
    sweep: Any = field(default=None, repr=False)
    """What each sweep does, as ``lanterne probe`` reads it (``agent._probing.ProbeConfig``, validated
    when enabled): ``targets`` (default: the whole ``allow`` scope), ``interfaces``, the protocols
    and their ports, SNMP ``snmp_credentials`` (v2c and v3, secrets by environment variable),
    opt-in DICOM C-ECHO with its AE titles, ``max_hosts``..."""


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the daemon needs, validated."""

    agent: str
    site: str
    database_url: str = field(repr=False)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    retention_days: int = DEFAULT_RETENTION_DAYS
    lookback_days: int = 30
    services: ServiceMap = field(default_factory=ServiceMap)
    pseudonym_key: bytes | None = field(default=None, repr=False)
    """Set when pseudonymous mode is on (DESIGN §10)."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    alert_channels: tuple[Mapping[str, Any], ...] = field(default=(), repr=False)
    """``[[alerts.channels]]`` as written (validated by ``agent._alert_channels``, which builds them)."""
    source: Path | None = None
    """The file it was read from."""

    @property
    def pseudonymous(self) -> bool:
        """Whether client identifiers are stored as keyed hashes."""
        return self.pseudonym_key is not None


# -- reading -------------------------------------------------------------------------------------


class _Table:
    """One TOML table being read: every key taken is remembered, the rest are errors."""

    def __init__(self, data: Mapping[str, Any], path: str, env: Mapping[str, str]) -> None:
        self.data = data
        self.path = path
        self.env = env
        self.taken: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(f"{self.key(name)}: {message}")

    def get(self, name: str) -> Any:
        self.taken.add(name)
        return self.data.get(name)

    def has(self, name: str) -> bool:
        return name in self.data

    def table(self, name: str) -> _Table:
        value = self.get(name)
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise self.error(name, "must be a table")
        return _Table(value, self.key(name), self.env)

    def string(self, name: str, default: str, *, pattern: re.Pattern[str] | None = None) -> str:
        value = self.get(name)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, "must be a non-empty string")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.error(name, f"{value!r} is not allowed here (expected {pattern.pattern})")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(name, default).lower()
        if value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(name, "must be true or false")
        return value

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        value = self.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, "must be an integer")
        if not low <= value <= high:
            raise self.error(name, f"must be between {low} and {high}, not {value}")
        return value

    def number(self, name: str, default: float, *, low: float, high: float) -> float:
        value = self.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, "must be a number")
        if not low <= value <= high:
            raise self.error(name, f"must be between {low:g} and {high:g}, not {value:g}")
        return float(value)

    def ports(self, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
        value = self.get(name)
        if value is None:
            return default
        if not isinstance(value, list):
            raise self.error(name, "must be a list of port numbers")
        ports: list[int] = []
        for index, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, int) or not 0 < item < 65536:
                raise ConfigError(f"{self.key(name)}[{index}]: not a port number: {item!r}")
            ports.append(item)
        return tuple(ports)

    def networks(self, name: str) -> tuple[Network, ...]:
        value = self.get(name)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(name, "must be a list of networks (CIDR)")
        return tuple(_network(item, f"{self.key(name)}[{index}]") for index, item in enumerate(value))

    def secret(self, name: str) -> str | None:
        """``name`` from the file, or from the environment variable that ``name_env`` names."""
        direct = self.get(name)
        variable = self.get(f"{name}_env")
        if direct is not None and variable is not None:
            raise self.error(name, f"give {name} or {name}_env, not both")
        if variable is not None:
            if not isinstance(variable, str) or not _ENV_NAME.fullmatch(variable):
                raise self.error(f"{name}_env", "must name an environment variable")
            value = self.env.get(variable)
            if not value:
                raise self.error(f"{name}_env", f"the environment variable {variable} is not set")
            return value
        if direct is None:
            return None
        if not isinstance(direct, str) or not direct:
            raise self.error(name, "must be a non-empty string")
        return direct

    def finish(self) -> None:
        """Refuse the keys nobody asked for (with the closest known key as a hint)."""
        for name in self.data:
            if name in self.taken:
                continue
            known = sorted(self.taken)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {self.key(close[0])!r}?)" if close else ""
            raise ConfigError(f"{self.key(name)}: unknown key{hint}")


def _network(value: object, key: str) -> Network:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a network in CIDR notation")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def _host_port(value: str, key: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{key}: expected host:port (like {DEFAULT_METRICS_ADDRESS}), not {value!r}")
    return host, int(port_text)


def _capture(table: _Table) -> CaptureConfig:
    raw = table.get("interfaces")
    interfaces: list[str] = []
    if raw is not None:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list):
            raise table.error("interfaces", "must be a list of interface names")
        for index, name in enumerate(raw):
            if not isinstance(name, str) or not _IFNAME.fullmatch(name):
                raise ConfigError(f"{table.key('interfaces')}[{index}]: not an interface name: {name!r}")
            if name in interfaces:
                raise ConfigError(f"{table.key('interfaces')}[{index}]: {name} is listed twice")
            interfaces.append(name)
    result = CaptureConfig(
        interfaces=tuple(interfaces),
        promiscuous=table.boolean("promiscuous", True),
        buffer_mib=table.integer("buffer_mib", 32, low=1, high=2048),
        batch=table.integer("batch", 512, low=1, high=65536),
        ignore_outgoing=table.boolean("ignore_outgoing", False),
        continuation_ports=table.ports("continuation_ports", DEFAULT_CONTINUATION_PORTS),
        response_ports=table.ports("response_ports", DEFAULT_RESPONSE_PORTS),
    )
    table.finish()
    return result


def _schedule(table: _Table) -> ScheduleConfig:
    result = ScheduleConfig(
        flush_seconds=table.number("flush_seconds", 10.0, low=0.1, high=3600.0),
        reconcile_seconds=table.number("reconcile_seconds", 300.0, low=1.0, high=7 * 86400.0),
        purge_hours=table.number("purge_hours", 24.0, low=0.01, high=24 * 31.0),
        digest_minutes=table.number("digest_minutes", 60.0, low=0.1, high=7 * 1440.0),
    )
    table.finish()
    return result


def _services(table: _Table) -> ServiceMap:
    vlans: dict[int, str] = {}
    raw_vlans = table.table("vlans")
    for text, service in raw_vlans.data.items():
        key = raw_vlans.key(text)
        raw_vlans.taken.add(text)
        if not text.isdigit() or not 0 < int(text) < 4095:
            raise ConfigError(f"{key}: a VLAN id is a number from 1 to 4094")
        if not isinstance(service, str) or not service.strip():
            raise ConfigError(f"{key}: the service must be a non-empty string")
        vlans[int(text)] = service.strip()[:128]
    subnets: list[tuple[Network, str]] = []
    raw_subnets = table.table("subnets")
    for text, service in raw_subnets.data.items():
        key = raw_subnets.key(f'"{text}"')
        raw_subnets.taken.add(text)
        network = _network(text, key)
        if not isinstance(service, str) or not service.strip():
            raise ConfigError(f"{key}: the service must be a non-empty string")
        subnets.append((network, service.strip()[:128]))
    subnets.sort(key=lambda item: -item[0].prefixlen)
    table.finish()
    return ServiceMap(vlans, tuple(subnets))


def _privacy(table: _Table) -> bytes | None:
    enabled = table.boolean("pseudonymous", False)
    from_file = table.secret("key")
    key = table.env.get(PSEUDONYM_KEY_ENV) or from_file
    table.finish()
    if not enabled:
        return None
    if key is None:
        raise table.error("key", f"pseudonymous mode needs a key: set key_env, or ${PSEUDONYM_KEY_ENV}")
    if len(key.encode()) < 16:
        raise table.error("key", "the pseudonymisation key needs at least 16 bytes")
    return key.encode()


def _limits(table: _Table) -> LimitsConfig:
    result = LimitsConfig(
        max_keys=table.integer("max_keys", 50_000, low=100, high=10_000_000),
        max_evidence=table.integer("max_evidence", 20_000, low=100, high=10_000_000),
        max_peers=table.integer("max_peers", 50_000, low=100, high=10_000_000),
        dns_cache_entries=table.integer("dns_cache_entries", 32_768, low=0, high=10_000_000),
        max_rss_mib=table.integer("max_rss_mib", 512, low=64, high=1 << 20),
    )
    table.finish()
    return result


def _spool(table: _Table, base: Path) -> SpoolConfig:
    raw = table.string("path", str(DEFAULT_STATE_DIR / "spool.jsonl"))
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = base / path
    result = SpoolConfig(path=path, max_mib=table.integer("max_mib", 256, low=1, high=1 << 20))
    table.finish()
    return result


def _metrics(table: _Table) -> MetricsConfig:
    enabled = table.boolean("enabled", True)
    address = table.string("address", DEFAULT_METRICS_ADDRESS)
    host, port = _host_port(address, table.key("address"))
    table.finish()
    return MetricsConfig(enabled, host, port)


def _logging(table: _Table) -> LoggingConfig:
    result = LoggingConfig(
        level=table.choice("level", "info", _LOG_LEVELS),
        format=table.choice("format", "json", ("json", "text")),
    )
    table.finish()
    return result


#: ``[probe]`` keys of the sweep itself, read by ``agent._probing.ProbeConfig.from_mapping``.
SWEEP_KEYS: Final = (
    "targets", "interfaces", "arp", "arp_timeout", "mdns", "mdns_listen", "snmp", "snmp_port",
    "snmp_credentials", "http", "http_ports", "tls_ports", "llm_ports", "dicom", "dicom_ports",
    "calling_ae", "called_ae", "liveness_ports", "max_hosts", "medical_categories",
)  # fmt: skip


def _probe(table: _Table) -> ProbeConfig:
    enabled = table.boolean("enabled", False)
    sweep_keys = {key: table.get(key) for key in SWEEP_KEYS if table.has(key)}
    interval = table.number("interval_minutes", 1440.0, low=1.0, high=31 * 1440.0)
    communities = table.secret("snmp_communities")
    raw_interfaces = table.get("passive_interfaces") or []
    if not isinstance(raw_interfaces, list) or not all(
        isinstance(name, str) and _IFNAME.fullmatch(name) for name in raw_interfaces
    ):
        raise table.error("passive_interfaces", "must be a list of interface names")
    values: dict[str, Any] = {
        "allow": table.networks("allow"),
        "deny": table.networks("deny"),
        "passive_only": table.networks("passive_only"),
        "passive_interfaces": frozenset(raw_interfaces),
        "probe_medical": table.boolean("probe_medical", False),
        "rate": table.number("rate", DEFAULT_RATE, low=0.001, high=MAX_RATE),
        "burst": table.integer("burst", DEFAULT_BURST, low=1, high=100_000),
        "concurrency": table.integer("concurrency", DEFAULT_CONCURRENCY, low=1, high=100_000),
        "timeout": table.number("timeout", DEFAULT_TIMEOUT, low=0.01, high=MAX_TIMEOUT),
        "retries": table.integer("retries", DEFAULT_RETRIES, low=0, high=MAX_RETRIES),
        "dry_run": table.boolean("dry_run", False),
    }
    try:
        policy = ProbePolicy(**values)
    except ValueError as exc:
        raise ConfigError(f"{table.path}: {exc}") from exc
    table.finish()
    if enabled and not policy.allow:
        raise table.error("allow", "active probing needs an explicit scope: list the networks it may probe")
    sweep = None
    if enabled:
        from agent._probing import ProbeConfig as SweepConfig  # noqa: PLC0415 - only when probing
        from agent._probing import ProbeConfigError  # noqa: PLC0415

        try:
            sweep = replace(SweepConfig.from_mapping(sweep_keys, environ=table.env), policy=policy)
        except ProbeConfigError as exc:
            message = str(exc).removeprefix("[probe]: ")  # the sweep's own wording, minus its table name
            raise ConfigError(f"{table.path}: {message}") from None
    return ProbeConfig(
        enabled=enabled,
        interval_minutes=interval,
        policy=policy if enabled else None,
        snmp_communities=tuple(c.strip() for c in (communities or "").split(",") if c.strip()),
        sweep=sweep,
    )


def _alert_channels(table: _Table) -> tuple[Mapping[str, Any], ...]:
    raw = table.get("channels")
    table.finish()
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise table.error("channels", "must be an array of tables ([[alerts.channels]])")
    names: set[str] = set()
    for index, item in enumerate(raw):
        key = f"{table.key('channels')}[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{key}: must be a table")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"{key}.name: every channel needs a short name")
        if name in names:
            raise ConfigError(f"{key}.name: two channels are named {name!r}")
        names.add(name)
        try:
            # The channel module owns the keys and their meaning: building one validates it.
            channels_from_config([item], table.env)
        except ChannelConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from exc
    return tuple(dict(item) for item in raw)


def parse_config(
    data: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    base: Path | None = None,
    source: Path | None = None,
) -> Config:
    """Validate a parsed TOML document (``env`` defaults to the process environment)."""
    environment = os.environ if env is None else env
    root = _Table(data, "", environment)
    agent = root.string("agent", socket.gethostname().split(".")[0] or "lanterne", pattern=_NAME)
    site = root.string("site", "default", pattern=_NAME)
    database = root.table("database")
    from_file = database.secret("url")
    url = environment.get(DB_ENV) or from_file
    database.finish()
    if url is None:
        raise database.error("url", f"no database: set database.url (or url_env), or ${DB_ENV}")
    retention = root.table("retention")
    retention_days = retention.integer("days", DEFAULT_RETENTION_DAYS, low=1, high=36_500)
    retention.finish()
    reconcile = root.table("reconcile")
    lookback_days = reconcile.integer("lookback_days", 30, low=1, high=3650)
    reconcile.finish()
    config = Config(
        agent=agent,
        site=site,
        database_url=url,
        capture=_capture(root.table("capture")),
        schedule=_schedule(root.table("schedule")),
        retention_days=retention_days,
        lookback_days=lookback_days,
        services=_services(root.table("services")),
        pseudonym_key=_privacy(root.table("privacy")),
        limits=_limits(root.table("limits")),
        spool=_spool(root.table("spool"), base or Path.cwd()),
        metrics=_metrics(root.table("metrics")),
        logging=_logging(root.table("logging")),
        probe=_probe(root.table("probe")),
        alert_channels=_alert_channels(root.table("alerts")),
        source=source,
    )
    root.finish()
    return config


def load_config(path: Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a configuration file; raise ConfigError (never a TOML or OS error)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    return parse_config(data, env=env, base=path.resolve().parent, source=path)
