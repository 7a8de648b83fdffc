"""Recog databases load on first use: start-up reads files only, and a bad pattern is still reported."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from collectors import Endpoint, Kind, Observation
from fingerprints import load_index, load_recog, run_recog_examples

SERVERS = """<?xml version='1.0' encoding='UTF-8'?>
<fingerprints matches="http_header.server" protocol="http">
  <fingerprint pattern="^Apache(?:/(\\d[\\d.]*))?">
    <description>Apache</description>
    <example service.version="2.4.1">Apache/2.4.1</example>
    <param pos="0" name="service.vendor" value="Apache"/>
    <param pos="1" name="service.version"/>
  </fingerprint>
  <fingerprint pattern="^Broken[[:^alpha:]]server">
    <description>Untranslatable</description>
    <example>Broken server</example>
    <example>Broken server 2</example>
  </fingerprint>
</fingerprints>
"""
SYSDESCR = """<?xml version='1.0' encoding='UTF-8'?>
<fingerprints matches="snmp.sys_description">
  <fingerprint pattern="^Cisco IOS">
    <description>Cisco IOS</description>
    <example>Cisco IOS Software</example>
    <param pos="0" name="os.vendor" value="Cisco"/>
  </fingerprint>
</fingerprints>
"""


@pytest.fixture
def recog_dir(tmp_path: Path) -> Path:
    xml = tmp_path / "recog" / "xml"
    xml.mkdir(parents=True)
    (xml / "http_servers.xml").write_text(SERVERS, encoding="utf-8")
    (xml / "snmp_sysdescr.xml").write_text(SYSDESCR, encoding="utf-8")
    return tmp_path / "recog"


def test_loading_reads_the_files_but_compiles_nothing(recog_dir: Path) -> None:
    recog = load_recog(recog_dir)
    assert set(recog.databases) == {"http_servers", "snmp_sysdescr"}
    assert not any(database.loaded for database in recog.databases.values())
    index = load_index(recog_dir=recog_dir)
    assert index.recog is not None
    assert not any(database.loaded for database in index.recog.databases.values())


def test_a_database_loads_at_the_first_value_of_its_kind(
    recog_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    index = load_index(recog_dir=recog_dir)
    assert index.recog is not None
    servers, sysdescr = index.recog.databases["http_servers"], index.recog.databases["snmp_sysdescr"]
    banner = Observation(ts=0, kind=Kind.HTTP_SERVER, value="Apache/2.4.1", dst=Endpoint(ip="10.0.0.1"))
    with caplog.at_level(logging.WARNING, logger="fingerprints._recog"):
        (evidence,) = index.match(banner)
    assert dict(evidence.fields)["service.version"] == "2.4.1"
    assert servers.loaded
    assert not sysdescr.loaded
    # The bad pattern is reported when its database loads, once.
    assert [record.getMessage() for record in caplog.records] == [
        "recog http_servers.xml #2 (Untranslatable) left out: POSIX class [:^alpha:] is not supported"
    ]
    assert index.recog_rules[evidence.rule.rule_id].description == "Apache"
    assert "recog:http_servers:2" not in index.recog_rules
    assert not sysdescr.loaded


def test_the_full_check_still_sees_every_bad_pattern(recog_dir: Path) -> None:
    recog = load_recog(recog_dir)
    (issue,) = recog.issues
    assert (issue.database, issue.ordinal, issue.examples) == ("http_servers", 2, 2)
    assert all(database.loaded for database in recog.databases.values())
    total, failures = run_recog_examples(load_recog(recog_dir))
    assert total == 4
    assert [(failure.description, failure.example) for failure in failures] == [
        ("Untranslatable", 1),
        ("Untranslatable", 2),
    ]
    assert recog.example_count == 4


def test_rule_ids_resolve_one_database_at_a_time(recog_dir: Path) -> None:
    index = load_index(recog_dir=recog_dir)
    assert index.recog is not None
    assert index.recog_rules.get("recog:snmp_sysdescr:1") is not None
    assert index.recog.databases["snmp_sysdescr"].loaded
    assert not index.recog.databases["http_servers"].loaded
    for unknown in ("recog:snmp_sysdescr:9", "recog:nope:1", "recog:snmp_sysdescr:x", "p:rule"):
        assert index.recog_rules.get(unknown) is None
    assert sorted(index.recog_rules) == ["recog:http_servers:1", "recog:snmp_sysdescr:1"]
    assert len(index.recog_rules) == 2


def test_a_database_that_is_not_xml_costs_its_fingerprints_not_the_run(
    recog_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It is parsed at its first value, mid-scan: it is reported and left out, the others still match."""
    (recog_dir / "xml" / "snmp_sysdescr.xml").write_text(
        "<fingerprints><fingerprint pattern='", encoding="utf-8"
    )
    index = load_index(recog_dir=recog_dir)
    sysdescr = Observation(
        ts=0, kind=Kind.SNMP_SYSDESCR, value="Cisco IOS Software", src=Endpoint(ip="10.0.0.2")
    )
    with caplog.at_level(logging.WARNING, logger="fingerprints._recog"):
        assert index.match(sysdescr) == ()
    (message,) = [record.getMessage() for record in caplog.records]
    assert message.startswith("recog snmp_sysdescr.xml #0 (the whole file) left out: not well-formed XML")
    banner = Observation(ts=0, kind=Kind.HTTP_SERVER, value="Apache/2.4.1", dst=Endpoint(ip="10.0.0.1"))
    assert [item.rule.rule_id for item in index.match(banner)] == ["recog:http_servers:1"]
    recog = load_recog(recog_dir)
    assert [(issue.database, issue.ordinal) for issue in recog.issues] == [
        ("http_servers", 2),
        ("snmp_sysdescr", 0),
    ]
