"""The daemon's TOML configuration: the shipped example is valid and complete, every error names its key."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent._config import (
    SWEEP_KEYS,
    CaptureConfig,
    Config,
    ConfigError,
    LimitsConfig,
    LoggingConfig,
    MetricsConfig,
    ScheduleConfig,
    SpoolConfig,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "lanterne.toml.example"
BASE = {"database": {"url": "sqlite:////tmp/l5-never-opened.db"}}


def _parse(document: dict[str, Any], env: dict[str, str] | None = None) -> Config:
    merged = {**BASE, **document}
    return parse_config(merged, env=env or {}, base=Path("/etc/lanterne"))


def _error(document: dict[str, Any], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        _parse(document, env)
    return str(caught.value)


def test_the_example_loads_with_its_documented_values() -> None:
    config = load_config(EXAMPLE, env={})
    assert config.site == "chu-exemple"
    assert config.capture == CaptureConfig(interfaces=("eth1",))
    assert config.schedule == ScheduleConfig()
    assert config.limits == LimitsConfig()
    assert config.spool == SpoolConfig()
    assert config.metrics == MetricsConfig()
    assert config.logging == LoggingConfig()
    assert config.retention_days == 183
    assert not config.pseudonymous
    assert not config.probe.enabled


def test_the_example_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    shown = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.MULTILINE))
    sections = {
        "capture": CaptureConfig,
        "schedule": ScheduleConfig,
        "limits": LimitsConfig,
        "spool": SpoolConfig,
        "logging": LoggingConfig,
    }
    for section, cls in sections.items():
        for field in dataclasses.fields(cls):
            assert field.name in shown, f"{section}.{field.name} is not in {EXAMPLE.name}"
    expected = {
        "agent",
        "site",
        "url",
        "days",
        "lookback_days",
        "pseudonymous",
        "key_env",
        "address",
        "enabled",
    }
    expected |= {"allow", "deny", "passive_only", "passive_interfaces", "probe_medical", "rate", "burst"}
    expected |= {"concurrency", "timeout", "retries", "dry_run", "interval_minutes", "snmp_communities_env"}
    expected |= set(SWEEP_KEYS)
    assert expected <= shown
    assert "[services.vlans]" in text
    assert "[services.subnets]" in text
    assert "[[alerts.channels]]" in text


def test_a_full_configuration() -> None:
    config = _parse(
        {
            "agent": "sensor-1",
            "site": "chu",
            "capture": {"interfaces": ["eth1", "eth2"], "buffer_mib": 64, "continuation_ports": [443]},
            "schedule": {"flush_seconds": 2.5, "reconcile_seconds": 60},
            "services": {
                "vlans": {"110": "Radiologie"},
                "subnets": {"10.1.0.0/16": "Urgences", "10.1.2.0/24": "Accueil"},
            },
            "privacy": {"pseudonymous": True, "key_env": "KEY"},
            "probe": {
                "enabled": True,
                "allow": ["10.20.0.0/24"],
                "rate": 5,
                "snmp_communities_env": "COMMUNITIES",
            },
            "spool": {"path": "spool/lanterne.jsonl"},
            "metrics": {"address": "[::1]:9999"},
        },
        env={"KEY": "k" * 32, "COMMUNITIES": "public, hospital-ro"},
    )
    assert config.capture.interfaces == ("eth1", "eth2")
    assert config.capture.continuation_ports == (443,)
    assert config.schedule.flush_seconds == 2.5
    assert config.pseudonym_key == b"k" * 32
    assert config.probe.policy is not None
    assert config.probe.policy.allow == (ipaddress.ip_network("10.20.0.0/24"),)
    assert config.probe.snmp_communities == ("public", "hospital-ro")
    assert config.spool.path == Path("/etc/lanterne/spool/lanterne.jsonl")
    assert (config.metrics.host, config.metrics.port) == ("::1", 9999)
    services = config.services
    assert services.service_of(110, "10.1.2.3") == "Radiologie"
    assert services.service_of(None, "10.1.2.3") == "Accueil"  # the most specific subnet
    assert services.service_of(None, "10.1.9.9") == "Urgences"
    assert services.service_of(None, "fd00::1") is None
    assert "k" * 32 not in repr(config)  # secrets stay out of reprs (and so out of logs)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"sitee": "x"}, r"^sitee: unknown key \(did you mean 'site'\?\)"),
        (
            {"capture": {"interface": ["eth0"]}},
            r"^capture.interface: unknown key \(did you mean 'capture.interfaces'\?\)",
        ),
        (
            {"capture": {"interfaces": ["eth0", "bad name"]}},
            r"^capture.interfaces\[1\]: not an interface name",
        ),
        ({"capture": {"interfaces": ["eth0", "eth0"]}}, r"^capture.interfaces\[1\]: eth0 is listed twice"),
        ({"capture": {"buffer_mib": 0}}, r"^capture.buffer_mib: must be between 1 and 2048"),
        ({"capture": {"promiscuous": "yes"}}, r"^capture.promiscuous: must be true or false"),
        ({"capture": {"continuation_ports": [443, 70000]}}, r"^capture.continuation_ports\[1\]: not a port"),
        ({"capture": "eth0"}, r"^capture: must be a table"),
        ({"schedule": {"flush_seconds": "10"}}, r"^schedule.flush_seconds: must be a number"),
        ({"schedule": {"flush_seconds": 0}}, r"^schedule.flush_seconds: must be between"),
        ({"retention": {"days": 0}}, r"^retention.days: must be between 1"),
        ({"services": {"vlans": {"5000": "x"}}}, r"^services.vlans.5000: a VLAN id is a number"),
        ({"services": {"vlans": {"10": ""}}}, r"^services.vlans.10: the service must be"),
        ({"services": {"subnets": {"10.1.0.0/33": "x"}}}, r'^services.subnets."10.1.0.0/33": '),
        ({"privacy": {"pseudonymous": True}}, r"^privacy.key: pseudonymous mode needs a key"),
        ({"privacy": {"pseudonymous": True, "key": "short"}}, r"^privacy.key: .*16 bytes"),
        ({"privacy": {"key": "x" * 20, "key_env": "K"}}, r"^privacy.key: give key or key_env, not both"),
        (
            {"privacy": {"key_env": "NOT_SET"}},
            r"^privacy.key_env: the environment variable NOT_SET is not set",
        ),
        ({"privacy": {"key_env": "not a name"}}, r"^privacy.key_env: must name an environment variable"),
        ({"probe": {"enabled": True}}, r"^probe.allow: active probing needs an explicit scope"),
        ({"probe": {"allow": ["10.0.0.0/8", "nonsense"]}}, r"^probe.allow\[1\]: "),
        ({"probe": {"rate": 1e9}}, r"^probe.rate: must be between"),
        ({"metrics": {"address": "9850"}}, r"^metrics.address: expected host:port"),
        ({"logging": {"level": "loud"}}, r"^logging.level: must be one of debug, info, warning, error"),
        ({"alerts": {"channels": [{"name": "siem", "type": "carrier-pigeon"}]}}, r"^alerts.channels\[0\]: "),
        ({"alerts": {"channels": [{"type": "syslog", "host": "h"}]}}, r"^alerts.channels\[0\].name: "),
        ({"alerts": {"channel": []}}, r"^alerts.channel: unknown key"),
        ({"agent": "two words"}, r"^agent: 'two words' is not allowed"),
    ],
)
def test_errors_name_the_key(document: dict[str, Any], message: str) -> None:
    assert re.search(message, _error(document)), _error(document)


def test_the_database_url_can_come_from_the_environment() -> None:
    assert _error({"database": {}}).startswith("database.url: no database")
    config = _parse({"database": {"url_env": "DB"}}, env={"DB": "postgresql://u:secret@db/lanterne"})
    assert config.database_url == "postgresql://u:secret@db/lanterne"
    overridden = _parse({}, env={"LANTERNE_DB": "sqlite:////var/lib/x.db"})
    assert overridden.database_url == "sqlite:////var/lib/x.db"
    assert "secret" not in repr(config)


def test_the_pseudonym_key_variable_wins() -> None:
    config = _parse({"privacy": {"pseudonymous": True}}, env={"LANTERNE_PSEUDONYM_KEY": "z" * 16})
    assert config.pseudonym_key == b"z" * 16


def test_alert_channels_are_validated_by_their_module_and_kept_as_written() -> None:
    channel = {
        "name": "siem",
        "type": "syslog",
        "host": "siem.example.internal",
        "port": 6514,
        "protocol": "tcp",
    }
    config = _parse({"alerts": {"channels": [channel]}})
    assert config.alert_channels == (channel,)
    message = _error(
        {"alerts": {"channels": [{"name": "hook", "type": "webhook", "url": "https://h.example"}]}}
    )
    assert message.startswith("alerts.channels[0]: ")
    assert "LANTERNE_WEBHOOK_SECRET" in message


def test_file_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[capture\ninterfaces = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


def test_the_example_is_plain_toml() -> None:
    assert tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))["capture"]["interfaces"] == ["eth1"]
