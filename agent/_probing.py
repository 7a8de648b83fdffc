"""Active sweeps: probe the configured networks under the safety gate, then match, store, reconcile.

``async_sweep(config, store)`` is what ``lanterne probe`` runs once and what the daemon schedules
(run it with ``max_instances=1, coalesce=True``: sweeps must never overlap). In order:

1. Known medical devices are read from the store (detections of a medical category or of a product
   with a medical purpose, endpoints whose MAC vendor is a medical maker): the gate will not probe
   them unless ``probe_medical`` is set.
2. Every target address is checked by the gate (scope, deny list, passive-only, medical); a host it
   refuses gets one ``denied`` row in the probe log and nothing else.
3. ARP sweep of the targets on directly attached subnets: who is alive, with which MAC. A MAC of a
   medical maker makes the host off-limits at once. Targets elsewhere get a TCP liveness check.
4. mDNS browsing starts on the allowed interfaces and listens while the rest runs (at least
   ``mdns_listen`` seconds).
5. Each live host, one probe at a time, gentlest first: SNMP, HTTP(S), then DICOM C-ECHO when
   enabled. A host found to be a medical device by one probe is not probed any further.
6. The Observations go through the same path as passive ones (aggregate, match, store, reconcile:
   ``ingest_observations``), and every probe attempt is written to the probe log.

The pipeline has no entry point for a batch of Observations (``agent._pipeline`` scans files), so
``ingest_observations`` is the small adapter: ``Aggregator`` → ``StoreWriter`` → ``reconcile``.
Database work runs in a worker thread: the event loop never waits on the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import httpx
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from agent._aggregate import FlushResult, StoreWriter
from agent._identity import IdentityResolver, Pseudonymiser
from agent._reconcile import DEFAULT_LOOKBACK, ReconcileConfig, ReconcileResult, reconcile
from agent._window import Aggregator
from collectors import Endpoint, Kind, Observation
from collectors._quiet import QuietLogger
from collectors.probe import (
    DEFAULT_ARP_TIMEOUT,
    DEFAULT_CALLED_AE,
    DEFAULT_CALLING_AE,
    DEFAULT_DICOM_PORTS,
    DEFAULT_HTTP_PORTS,
    DEFAULT_LIVENESS_PORTS,
    DEFAULT_LLM_PORTS,
    DEFAULT_TLS_PORTS,
    ArpSocket,
    ArpSweeper,
    DicomProber,
    HttpProber,
    Interface,
    MdnsBrowser,
    MedicalRegistry,
    ProbeDenied,
    ProbePolicy,
    ProbeRecord,
    PysnmpClient,
    SafetyGate,
    Secret,
    SnmpClient,
    SnmpCredential,
    TokenBucket,
    arp_observation,
    async_probe_snmp,
    async_tcp_alive,
    local_interfaces,
    parse_networks,
)
from fingerprints import Index, default_index
from store import Detection, EndpointAlias, ProbeLogEntry, Store
from store import Endpoint as EndpointRow

_LOGGER = logging.getLogger(__name__)
_QUIET = QuietLogger(_LOGGER)

#: Addresses one sweep may target (a /16): a typo in a CIDR must not start a sweep of the Internet.
MAX_HOSTS: Final = 65_536
#: Detection categories that make an endpoint a medical device the gate leaves alone.
MEDICAL_CATEGORIES: Final = frozenset({"medical_device", "imaging_modality"})
#: Seconds mDNS listens at least (answers to the first queries arrive within a second or two).
DEFAULT_MDNS_LISTEN: Final = 5.0
#: Probe log rows written per transaction.
_LOG_BATCH: Final = 1000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Progress = Callable[[int, int], None]
"""Called with (hosts done, hosts to probe)."""


class ProbeConfigError(ValueError):
    """The ``[probe]`` configuration (or the flags) cannot be used; the message says which key."""


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """What a sweep probes and how (configuration ``[probe]``; ``lanterne probe`` builds it from flags)."""

    targets: tuple[Network, ...]
    """Networks to sweep (each address is still checked against the policy's scope)."""
    policy: ProbePolicy
    """The safety knobs: scope, deny list, passive-only, medical devices, rate, timeouts, dry run."""
    interfaces: tuple[str, ...] | None = None
    """Interfaces for ARP and mDNS (None: every IPv4 interface that is up, loopback excepted)."""
    arp: bool = True
    """ARP sweep of the directly attached subnets (needs CAP_NET_RAW; else TCP liveness is used)."""
    arp_timeout: float = DEFAULT_ARP_TIMEOUT
    mdns: bool = True
    mdns_listen: float = DEFAULT_MDNS_LISTEN
    snmp: bool = True
    snmp_port: int = 161
    snmp_credentials: tuple[SnmpCredential, ...] = ()
    """Tried in order on each host (no credential: no SNMP)."""
    http: bool = True
    http_ports: tuple[int, ...] = DEFAULT_HTTP_PORTS
    tls_ports: frozenset[int] = DEFAULT_TLS_PORTS
    llm_ports: frozenset[int] = DEFAULT_LLM_PORTS
    dicom: bool = False
    """DICOM C-ECHO: opt-in (DICOM nodes are often modalities)."""
    dicom_ports: tuple[int, ...] = DEFAULT_DICOM_PORTS
    calling_ae: str = DEFAULT_CALLING_AE
    called_ae: str = DEFAULT_CALLED_AE
    liveness_ports: tuple[int, ...] = DEFAULT_LIVENESS_PORTS
    """TCP ports asked to tell whether a routed (not ARP-able) target is there."""
    max_hosts: int = MAX_HOSTS
    medical_categories: frozenset[str] = MEDICAL_CATEGORIES

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, environ: Mapping[str, str] | None = None
    ) -> ProbeConfig:
        """Build from a ``[probe]`` table (TOML); secrets are read from ``environ`` by variable name."""
        env = os.environ if environ is None else environ
        known = {
            "targets", "allow", "deny", "passive_only", "passive_interfaces", "probe_medical", "rate",
            "burst", "concurrency", "timeout", "retries", "dry_run", "interfaces", "arp", "arp_timeout",
            "mdns", "mdns_listen", "snmp", "snmp_port", "snmp_credentials", "http", "http_ports",
            "tls_ports", "llm_ports", "dicom", "dicom_ports", "calling_ae", "called_ae", "liveness_ports",
            "max_hosts", "medical_categories",
        }  # fmt: skip
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProbeConfigError(f"[probe]: unknown keys {', '.join(unknown)}")
        try:
            policy_keys = ("probe_medical", "rate", "burst", "concurrency", "timeout", "retries", "dry_run")
            policy = ProbePolicy(
                allow=parse_networks(_strings(data.get("allow", ()), "allow"), what="allow"),
                deny=parse_networks(_strings(data.get("deny", ()), "deny"), what="deny"),
                passive_only=parse_networks(_strings(data.get("passive_only", ()), "passive_only")),
                passive_interfaces=frozenset(
                    _strings(data.get("passive_interfaces", ()), "passive_interfaces")
                ),
                **{key: data[key] for key in policy_keys if key in data},
            )
            options: dict[str, Any] = {
                key: data[key]
                for key in ("arp", "arp_timeout", "mdns", "mdns_listen", "snmp", "snmp_port", "http", "dicom")
                if key in data
            }
            for key in ("http_ports", "dicom_ports", "liveness_ports"):
                if key in data:
                    options[key] = tuple(_ports(data[key], key))
            for key in ("tls_ports", "llm_ports"):
                if key in data:
                    options[key] = frozenset(_ports(data[key], key))
            if "interfaces" in data:
                options["interfaces"] = tuple(_strings(data["interfaces"], "interfaces"))
            for key in ("calling_ae", "called_ae"):
                if key in data:
                    options[key] = str(data[key])
            if "max_hosts" in data:
                options["max_hosts"] = int(data["max_hosts"])
            if "medical_categories" in data:
                options["medical_categories"] = frozenset(
                    _strings(data["medical_categories"], "medical_categories")
                )
            credentials = tuple(
                credential_from_mapping(entry, env, position)
                for position, entry in enumerate(data.get("snmp_credentials", ()), start=1)
            )
            targets = parse_networks(_strings(data.get("targets", ()), "targets"), what="target")
            return cls(targets=targets, policy=policy, snmp_credentials=credentials, **options)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ProbeConfigError):
                raise
            raise ProbeConfigError(f"[probe]: {exc}") from exc


def _strings(value: object, key: str) -> list[str]:
    if isinstance(value, str):
        return [part for part in value.replace(",", " ").split() if part]
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ProbeConfigError(f"[probe]: {key} is a list of strings")


def _ports(value: object, key: str) -> list[int]:
    items = _strings(value, key) if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ProbeConfigError(f"[probe]: {key} is a list of ports")
    ports: list[int] = []
    for item in items:
        try:
            port = int(item)
        except (TypeError, ValueError):
            raise ProbeConfigError(f"[probe]: {key} is a list of ports") from None
        if not 0 < port < 65536:
            raise ProbeConfigError(f"[probe]: {key}: {port} is not a port")
        ports.append(port)
    return ports


def _secret(entry: Mapping[str, Any], key: str, env: Mapping[str, str], position: int) -> Secret | None:
    """A secret given inline (``key``) or by environment variable name (``key_env``)."""
    if f"{key}_env" in entry:
        name = str(entry[f"{key}_env"])
        value = env.get(name)
        if not value:
            raise ProbeConfigError(f"SNMP credential {position}: ${name} ({key}) is not set")
        return Secret(value)
    if key in entry:
        return Secret(str(entry[key]))
    return None


def credential_from_mapping(
    entry: Mapping[str, Any], env: Mapping[str, str], position: int = 1
) -> SnmpCredential:
    """One SNMP credential from the configuration; errors name the key or variable, never a value."""
    version = str(entry.get("version", "2c")).lower().removeprefix("v")
    allowed = {"version", "community", "community_env", "user", "user_env", "auth_protocol", "auth_key"}
    allowed |= {"auth_key_env", "priv_protocol", "priv_key", "priv_key_env"}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ProbeConfigError(f"SNMP credential {position}: unknown keys {', '.join(unknown)}")
    try:
        if version == "2c":
            community = _secret(entry, "community", env, position)
            if community is None:
                raise ProbeConfigError(f"SNMP credential {position}: give community_env (or community)")
            return SnmpCredential("2c", community=community)
        if version != "3":
            raise ProbeConfigError(f"SNMP credential {position}: version is 2c or 3")
        return SnmpCredential(
            "3",
            user=_secret(entry, "user", env, position),
            auth_protocol=str(entry["auth_protocol"]).lower() if "auth_protocol" in entry else None,
            auth_key=_secret(entry, "auth_key", env, position),
            priv_protocol=str(entry["priv_protocol"]).lower() if "priv_protocol" in entry else None,
            priv_key=_secret(entry, "priv_key", env, position),
        )
    except ProbeConfigError:
        raise
    except ValueError as exc:  # SnmpCredential's checks say what is wrong without quoting a value
        raise ProbeConfigError(f"SNMP credential {position}: {exc}") from None


# -- the result ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class SweepReport:
    """What one sweep did: whom it asked, what came back, what was stored."""

    started: datetime
    finished: datetime | None = None
    targets: int = 0
    """Addresses the sweep was asked about."""
    denied_hosts: int = 0
    """Addresses the gate refused as a whole (one ``denied`` row each)."""
    alive: dict[str, str | None] = field(default_factory=dict)
    """Hosts that answered (ARP or TCP liveness), with their MAC when ARP gave it."""
    medical_skipped: dict[str, str] = field(default_factory=dict)
    """Hosts left alone (or no longer probed) as medical devices, with the reason."""
    outcomes: Counter[str] = field(default_factory=Counter)
    """Probe log rows by outcome."""
    probe_log_rows: int = 0
    packets: int = 0
    """Packets charged to the rate limit (estimated before, corrected after each probe)."""
    observations: list[Observation] = field(default_factory=list)
    stored: FlushResult | None = None
    reconciliation: ReconcileResult | None = None
    notes: list[str] = field(default_factory=list)
    """Things the operator should know (no CAP_NET_RAW for ARP, no mDNS, ...)."""

    @property
    def seconds(self) -> float:
        """Wall-clock duration."""
        end = self.finished or datetime.now(UTC)
        return (end - self.started).total_seconds()

    def by_kind(self) -> dict[str, int]:
        """Observations per kind."""
        return dict(sorted(Counter(str(obs.kind) for obs in self.observations).items()))


@dataclass(slots=True)
class ProbeClients:
    """The transports a sweep uses; None means the real one (tests inject fakes)."""

    http_transport: Callable[[], httpx.AsyncBaseTransport] | None = None
    snmp: SnmpClient | None = None
    arp_socket: Callable[[str], ArpSocket] | None = None
    zeroconf: Callable[..., Any] | None = None
    dicom_ae: Callable[[str], Any] | None = None
    interfaces: Callable[[tuple[str, ...] | None], list[Interface]] | None = None


# -- helpers ------------------------------------------------------------------------------------------


def expand_targets(networks: Iterable[Network], max_hosts: int = MAX_HOSTS) -> list[str]:
    """The addresses of ``networks`` (hosts only, no network or broadcast address), in order, once each."""
    seen: dict[str, None] = {}
    for network in networks:
        if network.num_addresses > max_hosts or len(seen) + network.num_addresses > max_hosts + 2 * 1024:
            raise ProbeConfigError(f"{network} has too many addresses for one sweep (at most {max_hosts})")
        for address in network.hosts() if network.num_addresses > 2 else network:
            seen.setdefault(str(address), None)
    if len(seen) > max_hosts:
        raise ProbeConfigError(
            f"the targets hold {len(seen)} addresses, more than one sweep may ask ({max_hosts})"
        )
    return list(seen)


def source_address(target: str) -> str | None:
    """The local address the kernel would send from to reach ``target`` (a UDP connect sends nothing)."""
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((target, 9))
            return str(sock.getsockname()[0])
        except OSError:
            return None


def medical_reason(
    index: Index, observations: Iterable[Observation], host: str, categories: frozenset[str]
) -> str | None:
    """Why these observations make ``host`` a medical device (a rule of a medical category), or None."""
    for obs in observations:
        for evidence in index.match(obs):
            endpoint = obs.src if evidence.side == "src" else obs.dst
            if endpoint.ip != host:
                continue
            rule = evidence.rule
            product = index.catalog.by_id.get(rule.product_id) if rule.product_id else None
            medical_purpose = product is not None and str(product.medical_purpose) == "true"
            category = str(rule.category) if rule.category is not None else None
            if category in categories or medical_purpose:
                who = rule.vendor or rule.product_id or "unknown vendor"
                return f"{who}, {category or 'medical purpose'}, from {obs.kind}"
    return None


def stored_medical(session: Session, site: str, index: Index, categories: frozenset[str]) -> dict[str, str]:
    """Addresses (as stored: pseudonyms in pseudonymous mode) of the site's known medical devices."""
    reasons: dict[int, str] = {}
    query = select(Detection.endpoint_id, Detection.product_id, Detection.vendor, Detection.category)
    for endpoint_id, product_id, vendor, category in session.execute(query.where(Detection.site == site)):
        product = index.catalog.by_id.get(product_id)
        medical_purpose = product is not None and str(product.medical_purpose) == "true"
        if category in categories or medical_purpose:
            reasons.setdefault(
                endpoint_id, f"{vendor or product_id}, {category or 'medical purpose'}, detected"
            )
    endpoints = select(EndpointRow.id, EndpointRow.ip, EndpointRow.mac, EndpointRow.merged_into)
    rows = session.execute(endpoints.where(EndpointRow.site == site)).all()
    for endpoint_id, ip, mac, _merged in rows:
        if endpoint_id in reasons or not mac or len(mac) != 17:
            continue
        # Only the MAC matters here: the OUI rules of medical makers.
        probe = Observation(0.0, Kind.ARP_HOST, ip or "0.0.0.0", Endpoint(mac=mac), source="probe.arp")  # noqa: S104
        reason = None
        for evidence in index.match(probe):
            category = str(evidence.rule.category) if evidence.rule.category is not None else None
            if category in categories:
                reason = f"{evidence.rule.vendor or 'medical maker'} MAC, {category}"
                break
        if reason is not None:
            reasons[endpoint_id] = reason
    # A merged endpoint's addresses lead to the survivor.
    survivors = {endpoint_id: merged for endpoint_id, _ip, _mac, merged in rows if merged is not None}
    addresses: dict[str, str] = {}
    for endpoint_id, ip, _mac, merged in rows:
        reason = reasons.get(endpoint_id) or (reasons.get(merged) if merged is not None else None)
        if ip and reason:
            addresses.setdefault(ip, reason)
    if reasons:
        wanted = set(reasons) | {key for key, value in survivors.items() if value in reasons}
        alias_query = select(EndpointAlias.alias, EndpointAlias.endpoint_id).where(EndpointAlias.site == site)
        for alias, endpoint_id in session.execute(alias_query):
            kind, _, value = alias.partition(":")
            if kind in {"ip", "lease"} and endpoint_id in wanted and value:
                target = survivors.get(endpoint_id, endpoint_id)
                addresses.setdefault(value, reasons.get(target) or reasons.get(endpoint_id, "medical device"))
    return addresses


def ingest_observations(
    store: Store,
    index: Index,
    observations: Sequence[Observation],
    *,
    site: str,
    agent: str,
    pseudonymiser: Callable[[str], str] | None = None,
    now: datetime | None = None,
) -> tuple[FlushResult, ReconcileResult]:
    """Aggregate, match, store and reconcile a batch of Observations (the passive path's steps)."""
    aggregator = Aggregator(index, max_keys=max(len(observations), 1) + 1)
    aggregator.add_all(observations)
    writer = StoreWriter(
        index, site=site, agent=agent, resolver=IdentityResolver(site, pseudonymiser=pseudonymiser)
    )
    moment = now or datetime.now(UTC)
    with store.write() as session:
        flushed = writer.write(session, aggregator.drain(), now=moment)
    with store.write() as session:
        reconciled = reconcile(
            session, site, moment, config=ReconcileConfig(lookback=DEFAULT_LOOKBACK), catalog=index.catalog
        )
    return flushed, reconciled


def write_probe_log(store: Store, agent: str, records: Sequence[ProbeRecord]) -> int:
    """Append probe attempts to the store's probe log; return how many rows were written."""
    rows = [
        {
            "ts": datetime.fromtimestamp(record.ts, UTC),
            "agent": agent[:64],
            "target": record.target[:64],
            "protocol": record.protocol[:32],
            "port": record.port,
            "outcome": str(record.outcome),
            "detail": record.detail,
        }
        for record in records
    ]
    for start in range(0, len(rows), _LOG_BATCH):
        with store.write() as session:
            session.execute(insert(ProbeLogEntry), rows[start : start + _LOG_BATCH])
    return len(rows)


def _with_macs(observations: Iterable[Observation], macs: Mapping[str, str | None]) -> list[Observation]:
    """Fill in the MAC the ARP sweep gave for an endpoint that only had its IP."""
    out: list[Observation] = []
    for obs in observations:
        src, dst = obs.src, obs.dst
        if src.ip is not None and src.mac is None and macs.get(src.ip):
            src = Endpoint(ip=src.ip, mac=macs[src.ip], port=src.port)
        if dst.ip is not None and dst.mac is None and macs.get(dst.ip):
            dst = Endpoint(ip=dst.ip, mac=macs[dst.ip], port=dst.port)
        if src is obs.src and dst is obs.dst:
            out.append(obs)
        else:
            out.append(Observation(obs.ts, obs.kind, obs.value, src, dst, obs.attrs, obs.source, obs.agent))
    return out


def identifications(index: Index, observations: Iterable[Observation]) -> dict[str, list[str]]:
    """What the matcher makes of each probed host: product ids, else ``vendor product`` of Recog, sorted."""
    evidence: dict[str, list[Any]] = {}
    for obs in observations:
        for item in index.match(obs):
            endpoint = obs.src if item.side == "src" else obs.dst
            if endpoint.ip is not None:
                evidence.setdefault(endpoint.ip, []).append(item)
    found: dict[str, list[str]] = {}
    for host, items in evidence.items():
        labels: set[str] = set()
        for detection in index.assess_all(items):
            if detection.identified:
                labels.add(detection.product_id)
                continue
            fields = dict(detection.fields)
            product = fields.get("service.product") or fields.get("hw.product") or fields.get("os.product")
            parts = [detection.vendor] if detection.vendor else []
            if product and product not in parts:  # Recog's nginx is vendor and product: say it once
                parts.append(product)
            name = " ".join(parts)
            labels.add(f"unknown:{name}" if name else f"unknown:{detection.category or 'device'}")
        found[host] = sorted(labels)
    return dict(sorted(found.items(), key=lambda item: _sort_key(item[0])))


def _sort_key(ip: str) -> tuple[int, int]:
    address = ipaddress.ip_address(ip)
    return address.version, int(address)


class _DaemonProbeSection(Protocol):
    """The ``[probe]`` section of the daemon's configuration, as far as a sweep needs it."""

    @property
    def policy(self) -> ProbePolicy | None: ...

    @property
    def snmp_communities(self) -> tuple[str, ...]: ...

    @property
    def sweep(self) -> ProbeConfig | None: ...


class _DaemonConfig(Protocol):
    """The daemon's configuration, as far as a sweep needs it."""

    @property
    def probe(self) -> _DaemonProbeSection: ...

    @property
    def pseudonym_key(self) -> bytes | None: ...


def sweep_config(config: ProbeConfig | _DaemonConfig) -> ProbeConfig:
    """A sweep's configuration from either its own form or the daemon's (which sweeps its whole scope)."""
    if isinstance(config, ProbeConfig):
        return config
    section = config.probe
    if section.policy is None:
        raise ProbeConfigError("[probe]: active probing is not enabled")
    communities = tuple(SnmpCredential("2c", community=Secret(value)) for value in section.snmp_communities)
    sweep = section.sweep
    if sweep is None:
        return ProbeConfig(targets=section.policy.allow, policy=section.policy, snmp_credentials=communities)
    return replace(
        sweep,
        targets=sweep.targets or section.policy.allow,
        policy=section.policy,
        snmp_credentials=sweep.snmp_credentials + communities,
    )


# -- the sweep ------------------------------------------------------------------------------------------


class _Sweep:
    """One sweep's state: the gate, the probers, what came back."""

    def __init__(
        self,
        config: ProbeConfig,
        index: Index,
        clients: ProbeClients,
        medical: MedicalRegistry,
        report: SweepReport,
        *,
        agent: str,
        on_record: Callable[[ProbeRecord], None] | None,
        progress: Progress | None,
        bucket: TokenBucket | None = None,
    ) -> None:
        self.config = config
        self.index = index
        self.clients = clients
        self.report = report
        self.agent = agent
        self.records: list[ProbeRecord] = []
        self._on_record = on_record
        self.progress = progress
        self.gate = SafetyGate(config.policy, record=self._record, medical=medical, bucket=bucket)
        self.snmp: SnmpClient = clients.snmp or PysnmpClient()
        self.http = HttpProber(
            self.gate,
            ports=config.http_ports,
            tls_ports=config.tls_ports,
            llm_ports=config.llm_ports,
            transport_factory=clients.http_transport,
            agent=agent,
        )
        self.dicom = (
            DicomProber(
                self.gate,
                calling_ae=config.calling_ae,
                called_ae=config.called_ae,
                ports=config.dicom_ports,
                ae_factory=clients.dicom_ae,
                agent=agent,
            )
            if config.dicom
            else None
        )
        self._sources: dict[str, str | None] = {}

    def _record(self, record: ProbeRecord) -> None:
        self.records.append(record)
        self.report.outcomes[str(record.outcome)] += 1
        if self._on_record is not None:
            self._on_record(record)

    def emit(self, observation: Observation) -> None:
        """Keep an Observation of the sweep."""
        self.report.observations.append(observation)

    def _source(self, host: str) -> str | None:
        if host not in self._sources:
            self._sources[host] = source_address(host)
        return self._sources[host]

    def _check_medical(self, host: str, observations: Sequence[Observation]) -> None:
        """A probe's answer showed a medical device: the gate stops probing it (unless allowed)."""
        reason = medical_reason(self.index, observations, host, self.config.medical_categories)
        if reason is not None:
            self.gate.medical.mark(host, reason)
            if not self.config.policy.probe_medical:
                self.report.medical_skipped.setdefault(host, reason)

    async def arp(self, interfaces: Sequence[Interface], admitted: Sequence[str]) -> set[str]:
        """ARP-sweep the admitted targets on attached subnets; return the targets ARP covered."""
        covered: set[str] = set()
        for interface in interfaces:
            targets = [ip for ip in admitted if ip != interface.address and _in(ip, interface.network)]
            targets = [ip for ip in targets if ip not in covered]
            if not targets:
                continue
            if self.config.policy.dry_run:
                await ArpSweeper(self.gate, interface, timeout=self.config.arp_timeout).async_dry_run(targets)
                covered.update(targets)
                continue
            factory = self.clients.arp_socket
            sweeper = (
                ArpSweeper(self.gate, interface, socket_factory=factory, timeout=self.config.arp_timeout)
                if factory is not None
                else ArpSweeper(self.gate, interface, timeout=self.config.arp_timeout)
            )
            try:
                found = await sweeper.async_sweep(targets)
            except PermissionError:
                self.report.notes.append(
                    f"ARP sweep on {interface.name} needs CAP_NET_RAW: TCP liveness used instead "
                    "(run as root, or: setcap cap_net_raw+ep on the Python interpreter)"
                )
                continue
            except OSError as exc:
                self.report.notes.append(
                    f"ARP sweep on {interface.name} failed ({exc.strerror}): TCP liveness used"
                )
                continue
            covered.update(targets)
            for ip, mac in found.items():
                self.report.alive[ip] = mac
                observation = arp_observation(ip, mac, interface.name, agent=self.agent)
                self.emit(observation)
                self._check_medical(ip, [observation])
        return covered

    async def host(self, host: str, *, needs_liveness: bool) -> None:
        """Every probe of one host, gentlest first; stops when the gate refuses the host."""
        config = self.config
        try:
            if needs_liveness:
                if not await async_tcp_alive(self.gate, host, config.liveness_ports):
                    return
                if not config.policy.dry_run:
                    self.report.alive.setdefault(host, None)
            mac = self.report.alive.get(host)
            local_ip = self._source(host)
            if config.snmp and config.snmp_credentials:
                found = await async_probe_snmp(
                    self.gate,
                    self.snmp,
                    host,
                    config.snmp_credentials,
                    port=config.snmp_port,
                    mac=mac,
                    local_ip=local_ip,
                    agent=self.agent,
                )
                self._keep(host, found)
            if config.http and config.http_ports:
                # Checked port by port: a medical maker's start page stops the ports after it.
                await self.http.async_probe(
                    host, mac=mac, local_ip=local_ip, on_found=lambda found: self._keep(host, found)
                )
            if self.dicom is not None:
                self._keep(host, await self.dicom.async_probe(host, mac=mac, local_ip=local_ip))
        except ProbeDenied as exc:
            # The gate refused the rest (a probe showed a medical device): the row is in the log.
            _LOGGER.debug("probing %s stopped by the safety gate: %s", host, exc)
        except Exception:
            # A bug met on one host (an answer no parser foresaw) must not end the sweep of the others.
            _QUIET.exception("probing a host failed unexpectedly; the sweep goes on")

    def _keep(self, host: str, observations: Sequence[Observation]) -> None:
        for observation in observations:
            self.emit(observation)
        if observations:
            self._check_medical(host, observations)

    async def hosts(self, plan: Sequence[tuple[str, bool]]) -> None:
        """Run host chains with bounded concurrency (workers pull from the plan in order)."""
        queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
        for item in plan:
            queue.put_nowait(item)
        done = 0
        total = len(plan)

        async def worker() -> None:
            nonlocal done
            while True:
                try:
                    host, needs_liveness = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await self.host(host, needs_liveness=needs_liveness)
                done += 1
                if self.progress is not None:
                    self.progress(done, total)

        workers = max(1, min(self.config.policy.concurrency, total))
        await asyncio.gather(*(worker() for _ in range(workers)))


def _in(ip: str, network: Network) -> bool:
    address = ipaddress.ip_address(ip)
    return address.version == network.version and address in network


async def async_sweep(
    config: ProbeConfig | _DaemonConfig,
    store: Store | None,
    *,
    site: str = "default",
    agent: str = "lanterne",
    index: Index | None = None,
    clients: ProbeClients | None = None,
    pseudonymiser: Callable[[str], str] | None = None,
    progress: Progress | None = None,
    on_record: Callable[[ProbeRecord], None] | None = None,
    bucket: TokenBucket | None = None,
    mdns: bool = True,
) -> SweepReport:
    """Run one sweep (module docstring); the store may be None (nothing stored, e.g. a dry run).

    ``bucket``: the packet budget to draw from (the daemon shares one between its sweeps and its
    long-running mDNS browser, so the configured rate holds for all of them together); ``mdns``
    False: no browsing in this sweep (the daemon's own browser runs all along).

    ``config`` is a :class:`ProbeConfig`, or the daemon's configuration: then the sweep covers the
    whole ``[probe]`` scope with its SNMP communities, pseudonymised as the daemon is.
    """
    if pseudonymiser is None and not isinstance(config, ProbeConfig) and config.pseudonym_key:
        pseudonymiser = Pseudonymiser(config.pseudonym_key)
    config = sweep_config(config)
    report = SweepReport(started=datetime.now(UTC))
    clients = clients or ProbeClients()
    if index is None:
        index = await asyncio.to_thread(default_index)
    targets = expand_targets(config.targets, config.max_hosts)
    report.targets = len(targets)
    medical = MedicalRegistry()
    if store is not None:
        known = await asyncio.to_thread(_stored_medical, store, site, index, config.medical_categories)
        for ip in targets:
            key = pseudonymiser(ip) if pseudonymiser is not None else ip
            if key in known:
                medical.mark(ip, known[key])
    sweep = _Sweep(
        config,
        index,
        clients,
        medical,
        report,
        agent=agent,
        on_record=on_record,
        progress=progress,
        bucket=bucket,
    )
    gate = sweep.gate
    started = time.monotonic()
    browser: MdnsBrowser | None = None
    try:
        admitted = [ip for ip in targets if gate.admit(ip)]
        report.denied_hosts = gate.stats.denied_hosts
        report.medical_skipped.update({ip: reason for ip in targets if (reason := medical.reason(ip))})
        relevant = sweep_interfaces(config, clients.interfaces)
        covered: set[str] = set()
        if config.arp:
            covered = await sweep.arp(relevant, admitted)
        # mDNS after ARP: the neighbours learnt our MAC from our requests, so their unicast answers
        # to our first (QU) queries need no ARP request to us, nor a reply from our kernel.
        started = time.monotonic()
        if config.mdns and mdns and relevant:
            options: dict[str, Any] = {"agent": agent}
            if clients.zeroconf is not None:
                options["zeroconf_factory"] = clients.zeroconf
            browser = MdnsBrowser(sweep.emit, gate=gate, interfaces=relevant, **options)
            try:
                await browser.async_start()
            except OSError as exc:
                report.notes.append(f"mDNS browsing could not start ({exc.strerror})")
                browser = None
        plan: list[tuple[str, bool]] = []
        for ip in admitted:
            if ip not in covered:
                plan.append((ip, True))
            elif ip in report.alive or config.policy.dry_run:
                # A host whose MAC shows a medical maker stays in the plan: its first probe is
                # refused by the gate, which writes why in the probe log.
                plan.append((ip, False))
        await sweep.hosts(plan)
        if browser is not None and browser.running:
            remaining = config.mdns_listen - (time.monotonic() - started)
            if remaining > 0:
                await asyncio.sleep(remaining)
    finally:
        if browser is not None:
            with contextlib.suppress(Exception):
                await browser.async_stop()
        with contextlib.suppress(Exception):
            await sweep.snmp.aclose()
        report.packets = gate.bucket.packets
        if store is not None and sweep.records:
            report.probe_log_rows = await asyncio.to_thread(write_probe_log, store, agent, sweep.records)
    report.observations = _with_macs(report.observations, report.alive)
    if store is not None and report.observations and not config.policy.dry_run:
        report.stored, report.reconciliation = await asyncio.to_thread(
            ingest_observations,
            store,
            index,
            report.observations,
            site=site,
            agent=agent,
            pseudonymiser=pseudonymiser,
        )
    report.finished = datetime.now(UTC)
    return report


def sweep_interfaces(
    config: ProbeConfig, finder: Callable[[tuple[str, ...] | None], list[Interface]] | None = None
) -> list[Interface]:
    """The interfaces ARP and mDNS use: the configured (or every up IPv4) ones facing a target."""
    interfaces = (finder or local_interfaces)(config.interfaces)
    return [iface for iface in interfaces if any(_overlaps(iface.network, net) for net in config.targets)]


def _stored_medical(store: Store, site: str, index: Index, categories: frozenset[str]) -> dict[str, str]:
    with store.session() as session:
        return stored_medical(session, site, index, categories)


def _overlaps(a: Network, b: Network) -> bool:
    return a.version == b.version and a.overlaps(b)


def with_policy(config: ProbeConfig, **changes: Any) -> ProbeConfig:
    """A copy of ``config`` with policy fields changed (``dry_run=True``...)."""
    return replace(config, policy=replace(config.policy, **changes))
