"""Sweeps with injected clients on loopback: the gate's refusals, the probe log, the pipeline, the CLI."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from agent._probing import (
    ProbeClients,
    ProbeConfig,
    ProbeConfigError,
    async_sweep,
    credential_from_mapping,
    expand_targets,
    ingest_observations,
    stored_medical,
    sweep_config,
)
from agent.cli import app
from collectors import Endpoint, Kind, Observation
from collectors.probe import ProbeTimeout, Secret, SnmpCredential
from fingerprints import Index, default_index
from store import Detection, ObservationAggregate, ProbeLogEntry, Store, open_store
from tests.probe.helpers import policy
from tests.store.dburl import BACKENDS, temporary_database

runner = CliRunner()
SCANNER = "127.0.0.1"
WEB = "127.0.0.2"
DENIED = "127.0.0.3"
PUMP = "127.0.0.4"
GATEWAY = "127.0.0.5"  # answers SNMP as a B. Braun device: found medical in the middle of its probes
OUTSIDE = "127.0.1.9"
B_BRAUN_OID = "1.3.6.1.4.1.22447.1.2"


@pytest.fixture(scope="module")
def index() -> Index:
    """The shipped catalogue (and Recog when the corpus is there)."""
    return default_index()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty store on SQLite and on PostgreSQL."""
    with temporary_database(request.param, tmp_path) as url:
        opened = open_store(url)
        try:
            yield opened
        finally:
            opened.dispose()


@dataclass
class FakeSnmp:
    """An SNMP client that answers for some hosts and times out for the others."""

    answers: dict[str, dict[str, str]]
    asked: list[str]

    async def get(
        self, host: str, port: int, credential: SnmpCredential, oids: Sequence[str], seconds: float
    ) -> dict[str, str]:
        self.asked.append(host)
        if host in self.answers:
            return self.answers[host]
        raise ProbeTimeout("no answer (no agent, or the community was refused)")

    async def aclose(self) -> None:
        return None


def web_transport(asked: list[str]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(f"{request.url.host}:{request.url.port}{request.url.path}")
        if request.url.host == WEB and request.url.path == "/":
            return httpx.Response(
                200, headers={"Server": "Apache/2.4.57 (Debian)"}, text="<title>Lab</title>"
            )
        if request.url.host == WEB and request.url.port == 11434 and request.url.path == "/api/tags":
            return httpx.Response(200, json={"models": [{"name": "llama3.2:3b"}]})
        if request.url.host == WEB:
            return httpx.Response(404)
        raise httpx.ConnectError("refused") from ConnectionRefusedError(111, "refused")

    return httpx.MockTransport(handler)


def config(**changes: Any) -> ProbeConfig:
    options: dict[str, Any] = {"retries": 0, "rate": 5000.0, "burst": 100}  # a unit test need not be gentle
    options.update(changes.pop("policy", {}))
    return ProbeConfig(
        targets=(ipaddress.ip_network("127.0.0.0/29"), ipaddress.ip_network(f"{OUTSIDE}/32")),
        policy=policy(("127.0.0.0/29",), deny=(f"{DENIED}/32",), **options),
        snmp_credentials=(SnmpCredential("2c", community=Secret("lab-community")),),
        http_ports=(80, 11434),
        liveness_ports=(1,),  # closed on loopback: the reset proves the address is there
        mdns=False,
        **changes,
    )


def seed_pump(store: Store, index: Index) -> None:
    """Passive listening already identified 127.0.0.4 as a B. Braun device."""
    seen = Observation(1_700_000_000.0, Kind.SNMP_SYSOBJECTID, B_BRAUN_OID, Endpoint(ip=PUMP), source="pcap")
    ingest_observations(store, index, [seen], site="default", agent="passive")


def sweep(store: Store | None, index: Index, the_config: ProbeConfig) -> tuple[Any, list[str], list[str]]:
    snmp_asked: list[str] = []
    http_asked: list[str] = []
    clients = ProbeClients(
        http_transport=lambda: web_transport(http_asked),
        snmp=FakeSnmp(
            {GATEWAY: {"object_id": B_BRAUN_OID, "descr": "gateway"}, WEB: {"descr": "Linux lab"}}, snmp_asked
        ),
        interfaces=lambda names: [],
    )
    report = asyncio.run(async_sweep(the_config, store, index=index, clients=clients, agent="prober"))
    return report, snmp_asked, http_asked


def log_rows(store: Store) -> list[tuple[str, str, int | None, str, str]]:
    with store.session() as session:
        rows = session.execute(
            select(
                ProbeLogEntry.target,
                ProbeLogEntry.protocol,
                ProbeLogEntry.port,
                ProbeLogEntry.outcome,
                ProbeLogEntry.detail,
            ).order_by(ProbeLogEntry.id)
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_a_sweep_spares_denied_outside_and_medical_hosts(store: Store, index: Index) -> None:
    seed_pump(store, index)
    report, snmp_asked, http_asked = sweep(store, index, config())
    asked_hosts = set(snmp_asked) | {entry.split(":")[0] for entry in http_asked}
    assert asked_hosts == {SCANNER, WEB, GATEWAY, "127.0.0.6"}
    for spared in (DENIED, PUMP, OUTSIDE):
        assert spared not in asked_hosts
    rows = log_rows(store)
    assert {row[0] for row in rows if row[1] == "all"} == {DENIED, PUMP, OUTSIDE}
    reasons = {row[0]: row[4] for row in rows if row[1] == "all"}
    assert reasons[DENIED] == "on the deny list (127.0.0.3/32)"
    assert reasons[OUTSIDE] == "outside the allowed scope"
    assert reasons[PUMP].startswith("a medical device (B. Braun")
    # Nothing else was ever logged against them: no probe was even attempted.
    assert all(row[1] == "all" for row in rows if row[0] in {DENIED, PUMP, OUTSIDE})
    # The gateway said it was B. Braun over SNMP: its HTTP probes were refused, and logged as such.
    gateway = [(row[1], row[3]) for row in rows if row[0] == GATEWAY]
    assert gateway == [("tcp", "refused"), ("snmp", "ok"), ("http", "denied")]
    assert report.medical_skipped[GATEWAY].startswith("B. Braun")
    assert report.probe_log_rows == len(rows)
    assert report.outcomes["denied"] == 4


def test_results_go_through_the_pipeline(store: Store, index: Index) -> None:
    report, _, _ = sweep(store, index, config())
    assert report.stored is not None
    assert report.reconciliation is not None
    with store.session() as session:
        detections = {row.product_key for row in session.scalars(select(Detection))}
        kinds = set(session.scalars(select(ObservationAggregate.kind)))
    assert {"ollama", "b-braun"} <= detections
    assert {"snmp.sysobjectid", "snmp.sysdescr", "http.server", "http.title", "llm.server"} <= kinds
    assert report.by_kind()["llm.server"] == 1


def test_dry_run_sends_nothing_and_logs_everything(store: Store, index: Index) -> None:
    seed_pump(store, index)
    report, snmp_asked, http_asked = sweep(store, index, config(policy={"dry_run": True}))
    assert snmp_asked == []
    assert http_asked == []
    rows = log_rows(store)
    assert {row[3] for row in rows} == {"dry_run", "denied"}
    assert {row[0] for row in rows if row[3] == "denied"} == {DENIED, PUMP, OUTSIDE}
    planned = {(row[0], row[1], row[2]) for row in rows if row[3] == "dry_run"}
    assert {(WEB, "snmp", 161), (WEB, "http", 80), (WEB, "http", 11434), (WEB, "tcp", 1)} <= planned
    assert report.stored is None
    with store.session() as session:
        assert session.scalars(select(Detection)).all() != []  # the seeded pump only
        assert {d.product_key for d in session.scalars(select(Detection))} == {"b-braun"}


def test_probe_medical_lets_the_pump_be_probed(store: Store, index: Index) -> None:
    seed_pump(store, index)
    _, snmp_asked, _ = sweep(store, index, config(policy={"probe_medical": True}))
    assert PUMP in snmp_asked


def test_a_medical_maker_s_mac_is_enough(store: Store, index: Index) -> None:
    seen = Observation(1.0, Kind.ARP_HOST, "10.66.9.9", Endpoint(ip="10.66.9.9", mac="00:12:21:00:00:01"))
    ingest_observations(store, index, [seen], site="default", agent="passive")
    with store.session() as session:
        known = stored_medical(session, "default", index, frozenset({"medical_device"}))
    assert known["10.66.9.9"].startswith("B. Braun")


def test_without_store_the_sweep_still_runs(index: Index) -> None:
    report, snmp_asked, _ = sweep(None, index, config())
    assert WEB in snmp_asked
    assert report.probe_log_rows == 0
    assert report.stored is None


def test_expand_targets_bounds() -> None:
    assert expand_targets([ipaddress.ip_network("10.0.0.0/30"), ipaddress.ip_network("10.0.0.1/32")]) == [
        "10.0.0.1",
        "10.0.0.2",
    ]
    with pytest.raises(ProbeConfigError, match="too many addresses"):
        expand_targets([ipaddress.ip_network("10.0.0.0/8")])


# -- configuration ------------------------------------------------------------------------------------


def test_probe_config_from_a_toml_table() -> None:
    env = {"LAB_COMMUNITY": "c1,c2", "LAB_AUTH": "auth-pass-123", "LAB_PRIV": "priv-pass-123"}
    parsed = ProbeConfig.from_mapping(
        {
            "targets": ["10.66.0.0/24"],
            "allow": "10.66.0.0/24, 10.66.1.0/25",
            "deny": ["10.66.1.10"],
            "rate": 200,
            "dicom": True,
            "calling_ae": "LANTERNE",
            "http_ports": [80, 443],
            "snmp_credentials": [
                {
                    "version": "3",
                    "user": "lab",
                    "auth_protocol": "SHA",
                    "auth_key_env": "LAB_AUTH",
                    "priv_protocol": "aes",
                    "priv_key_env": "LAB_PRIV",
                },
                {"version": "2c", "community_env": "LAB_COMMUNITY"},
            ],
        },
        environ=env,
    )
    assert parsed.policy.rate == 200
    assert parsed.dicom
    assert parsed.http_ports == (80, 443)
    assert [str(n) for n in parsed.policy.allow] == ["10.66.0.0/24", "10.66.1.0/25"]
    assert [c.level for c in parsed.snmp_credentials] == ["authPriv", "v2c"]
    assert parsed.snmp_credentials[1].community == Secret("c1,c2")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"allow": ["10.0.0.0/24"], "rat": 5}, "unknown keys rat"),
        ({"allow": ["nope"]}, "allow 'nope' is not a CIDR"),
        ({"allow": ["10.0.0.0/24"], "rate": 0}, "rate"),
        ({"allow": ["10.0.0.0/24"], "http_ports": [0]}, "not a port"),
        (
            {"allow": ["10.0.0.0/24"], "snmp_credentials": [{"community_env": "UNSET_VAR"}]},
            r"\$UNSET_VAR \(community\)",
        ),
        ({"allow": ["10.0.0.0/24"], "snmp_credentials": [{"version": "1", "community": "x"}]}, "2c or 3"),
        (
            {
                "allow": ["10.0.0.0/24"],
                "snmp_credentials": [
                    {"version": "3", "user": "u", "auth_protocol": "sha", "auth_key": "short"}
                ],
            },
            "8 characters",
        ),
    ],
)
def test_probe_config_errors_name_the_key_never_the_secret(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ProbeConfigError, match=message) as caught:
        ProbeConfig.from_mapping(table, environ={})
    assert "short" not in str(caught.value).replace("8 characters", "")


def test_credential_from_mapping_refuses_unknown_keys() -> None:
    with pytest.raises(ProbeConfigError, match="unknown keys password"):
        credential_from_mapping({"version": "3", "password": "x"}, {})


def test_the_daemon_s_configuration_is_understood() -> None:
    @dataclass(frozen=True)
    class Section:
        policy: Any
        snmp_communities: tuple[str, ...]
        sweep: Any = None

    @dataclass(frozen=True)
    class DaemonConfig:
        probe: Section
        pseudonym_key: bytes | None = None

    the_policy = policy(("10.66.0.0/24",))
    converted = sweep_config(DaemonConfig(Section(the_policy, ("a", "b"))))
    assert converted.targets == the_policy.allow
    assert [c.community for c in converted.snmp_credentials] == [Secret("a"), Secret("b")]
    with pytest.raises(ProbeConfigError, match="not enabled"):
        sweep_config(DaemonConfig(Section(None, ())))


# -- the command line -----------------------------------------------------------------------------------


def test_cli_refuses_to_probe_without_a_scope(tmp_path: Path) -> None:
    result = runner.invoke(app, ["probe", "127.0.0.1", "--db", f"sqlite:///{tmp_path}/x.db"])
    assert result.exit_code == 2
    assert "no scope" in result.stderr


def test_cli_bad_cidr_and_unset_secret_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = ["--db", f"sqlite:///{tmp_path}/x.db"]
    result = runner.invoke(app, ["probe", "127.0.0.1", "--allow", "127.0.0.300/32", *db])
    assert result.exit_code == 2
    assert "is not a CIDR" in result.stderr
    monkeypatch.delenv("LAB_UNSET_COMMUNITY", raising=False)
    result = runner.invoke(
        app,
        ["probe", "127.0.0.1", "--allow", "127.0.0.1", "--snmp-community-env", "LAB_UNSET_COMMUNITY", *db],
    )
    assert result.exit_code == 2
    assert "$LAB_UNSET_COMMUNITY is not set" in result.stderr
    monkeypatch.setenv("LAB_AUTH_KEY", "tiny")
    result = runner.invoke(
        app, ["probe", "127.0.0.1", "--allow", "127.0.0.1", "--snmp-v3", "u:sha:LAB_AUTH_KEY", *db]
    )
    assert result.exit_code == 2
    assert "8 characters" in result.stderr
    assert "tiny" not in result.output


def test_cli_dry_run_prints_what_would_be_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_COMMUNITY", "never-printed-community")
    args = [
        "probe", "127.0.0.0/30", "--allow", "127.0.0.0/30", "--deny", "127.0.0.2", "--dry-run", "--no-mdns",
        "--http-ports", "80", "--snmp-community-env", "LAB_COMMUNITY", "--db", f"sqlite:///{tmp_path}/x.db",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "denied\tall\t127.0.0.2\ton the deny list (127.0.0.2/32)" in lines
    assert any(
        line.startswith("dry_run\tsnmp\t127.0.0.1:161\tSNMPv2c (credential 1) GET sysDescr.0")
        for line in lines
    )
    assert any(line.startswith("dry_run\thttp\t127.0.0.1:80\tGET /;") for line in lines)
    assert "never-printed-community" not in result.output
    assert "probe summary" in result.stderr
    json_result = runner.invoke(app, [*args, "--json"])
    records = [json.loads(line) for line in json_result.stdout.splitlines()]
    assert {record["outcome"] for record in records} == {"dry_run", "denied"}
    with open_store(f"sqlite:///{tmp_path}/x.db") as opened, opened.session() as session:
        assert session.scalars(select(ProbeLogEntry.outcome)).all().count("dry_run") == 2 * len(
            [r for r in records if r["outcome"] == "dry_run"]
        )


def test_the_daemon_s_real_configuration_drives_a_sweep(tmp_path: Path, index: Index) -> None:
    """What ``agent._daemon`` hands over: its own Config, a store, the site, the agent, the index."""
    from agent._config import parse_config

    daemon_config = parse_config(
        {
            "agent": "sensor-1",
            "site": "lab",
            "database": {"url": f"sqlite:///{tmp_path}/d.db"},
            "probe": {
                "enabled": True,
                "allow": ["127.0.0.2/32"],
                "rate": 5000,
                "burst": 100,
                "dry_run": True,
                "snmp_communities_env": "LAB_COMMUNITIES",
            },
        },
        env={"LAB_COMMUNITIES": "one,two"},
        base=tmp_path,
    )
    converted = sweep_config(daemon_config)
    assert [str(n) for n in converted.targets] == ["127.0.0.2/32"]
    assert len(converted.snmp_credentials) == 2
    with open_store(f"sqlite:///{tmp_path}/d.db") as opened:
        report = asyncio.run(
            async_sweep(
                daemon_config,
                opened,
                site="lab",
                agent="sensor-1",
                index=index,
                clients=ProbeClients(interfaces=lambda names: []),
            )
        )
    assert report.outcomes["dry_run"] > 0
    assert report.probe_log_rows == sum(report.outcomes.values())


def test_cli_pseudonymous_mode_needs_its_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LANTERNE_PSEUDONYM_KEY", raising=False)
    args = ["probe", "127.0.0.1", "--allow", "127.0.0.1", "--dry-run", "--no-mdns", "--pseudonymous"]
    result = runner.invoke(app, [*args, "--db", f"sqlite:///{tmp_path}/x.db"])
    assert result.exit_code == 2
    assert "LANTERNE_PSEUDONYM_KEY" in result.stderr
    monkeypatch.setenv("LANTERNE_PSEUDONYM_KEY", "k" * 32)
    result = runner.invoke(app, [*args, "--db", f"sqlite:///{tmp_path}/x.db"])
    assert result.exit_code == 0, result.output


def test_a_bug_on_one_host_does_not_end_the_sweep(
    index: Index, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from collectors.probe import HttpProber

    real = HttpProber.async_probe

    async def flaky(self: HttpProber, host: str, **options: Any) -> list[Observation]:
        if host == SCANNER:
            raise RuntimeError("a parser met an answer nobody foresaw")
        return await real(self, host, **options)

    monkeypatch.setattr(HttpProber, "async_probe", flaky)
    report, _, http_asked = sweep(None, index, config())
    assert any(entry.startswith(f"{WEB}:") for entry in http_asked)
    assert "probing a host failed unexpectedly" in caplog.text
    assert report.by_kind()["llm.server"] == 1


def test_the_daemon_sweeps_what_its_probe_table_says(tmp_path: Path) -> None:
    """Targets, SNMPv3 users, DICOM and ports in the daemon's ``[probe]``: what ``lanterne probe`` takes."""
    from agent._config import ConfigError, parse_config

    def probe_table(**keys: Any) -> Any:
        document = {
            "agent": "sensor-1",
            "site": "lab",
            "database": {"url": f"sqlite:///{tmp_path}/d.db"},
            "probe": {"enabled": True, "allow": ["10.66.0.0/16"], "snmp_communities_env": "V2", **keys},
        }
        env = {
            "V2": "public",
            "V3_USER": "lanterne",
            "V3_AUTH": "auth-key-123456",
            "V3_PRIV": "priv-key-123456",
        }
        return parse_config(document, env=env, base=tmp_path)

    config = probe_table(
        targets=["10.66.1.0/24"],
        snmp_credentials=[
            {
                "version": "3",
                "user_env": "V3_USER",
                "auth_protocol": "sha",
                "auth_key_env": "V3_AUTH",
                "priv_protocol": "aes",
                "priv_key_env": "V3_PRIV",
            }
        ],
        dicom=True,
        calling_ae="LANTERNE_CHU",
        http_ports=[80, 8080],
        mdns=False,
    )
    converted = sweep_config(config)
    assert [str(network) for network in converted.targets] == ["10.66.1.0/24"]
    assert converted.policy is config.probe.policy  # the daemon's checked policy, not a second one
    assert [c.version for c in converted.snmp_credentials] == ["3", "2c"]  # the table's first, then v2c
    assert converted.snmp_credentials[0].user == Secret("lanterne")
    assert (converted.dicom, converted.calling_ae, converted.http_ports, converted.mdns) == (
        True,
        "LANTERNE_CHU",
        (80, 8080),
        False,
    )
    assert "auth-key" not in repr(config)
    assert "auth-key" not in repr(converted)
    # Without sweep keys: the whole scope, the v2c communities, the defaults (as before).
    plain = sweep_config(probe_table())
    assert plain.targets == plain.policy.allow
    assert [c.version for c in plain.snmp_credentials] == ["2c"]
    assert not plain.dicom
    # Mistakes are refused at load, with the table's name and never a secret.
    with pytest.raises(ConfigError, match=r"probe.*SNMP credential 1: unknown keys password"):
        probe_table(snmp_credentials=[{"version": "3", "password": "hunter2"}])
    with pytest.raises(ConfigError, match=r"probe") as caught:
        probe_table(snmp_credentials=[{"version": "3", "user_env": "NOT_SET_ANYWHERE"}])
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"probe"):
        probe_table(http_ports=[0])
