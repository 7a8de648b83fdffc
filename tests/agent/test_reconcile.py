"""Reconciliation: the five statuses, matching declared entries, mismatches, the window, idempotence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from agent._reconcile import ReconcileConfig, compute, reconcile
from fingerprints import Catalog
from store._models import Alert, AlertReason, ChangeLogEntry, Reconciliation, ReconciliationStatus
from tests.agent.store_backends import add_detection, add_endpoint, add_entry

SITE = "ch-test"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
RECENT = (NOW - timedelta(days=3), NOW - timedelta(days=1))
S = ReconciliationStatus


def statuses(session: Session, catalog: Catalog, **config: timedelta) -> dict[str, tuple[str, str | None]]:
    rows = compute(session, SITE, NOW, catalog=catalog, config=ReconcileConfig(**config))
    return {row.key: (str(row.status), row.mismatch) for row in rows}


def test_the_five_statuses(session: Session, catalog: Catalog) -> None:
    pc = add_endpoint(session, SITE, "10.1.0.10", mac="00:00:5e:00:53:10")
    pump = add_endpoint(session, SITE, "10.1.0.20", mac="00:12:21:00:00:01")
    add_detection(session, SITE, "openai-chatgpt", pc, seen=RECENT, hosts=["chatgpt.com"])
    add_detection(session, SITE, "anthropic-claude", pc, seen=RECENT, hosts=["claude.ai"])
    add_detection(
        session, SITE, "unknown", pump, seen=RECENT, vendor="B. Braun", category="medical_device",
        signals=[("dhcp.vendor_class", "x")],
    )  # fmt: skip
    add_entry(session, SITE, "INV-1", "ChatGPT", vendor="OpenAI", catalog_id="openai-chatgpt")
    add_entry(session, SITE, "INV-2", "Le Chat", vendor="Mistral AI", catalog_id="mistral-le-chat")
    add_entry(session, SITE, "INV-3", "Outil maison", vendor="Nous")
    add_entry(
        session, SITE, "INV-4", "Ollama", catalog_id="ollama", deployment="on_prem", ips=["10.1.0.10"]
    )  # fmt: skip
    add_detection(session, SITE, "ollama", pc, seen=RECENT, hosts=["registry.ollama.ai"])
    assert statuses(session, catalog) == {
        "anthropic-claude": ("undeclared_observed", None),
        "entry:INV-3": ("declared_not_observed", None),
        "mistral-le-chat": ("declared_not_observed", None),
        "ollama": ("declared_mismatch", "declared on_prem, seen calling cloud hosts: registry.ollama.ai"),
        "openai-chatgpt": ("declared_observed", None),
        "unknown:B. Braun": ("unknown_observed", None),
    }


def test_lookback_window(session: Session, catalog: Catalog) -> None:
    pc = add_endpoint(session, SITE, "10.1.0.10")
    add_detection(
        session, SITE, "openai-chatgpt", pc, seen=(NOW - timedelta(days=50), NOW - timedelta(days=40))
    )
    add_entry(session, SITE, "INV-1", "ChatGPT", catalog_id="openai-chatgpt")
    assert statuses(session, catalog)["openai-chatgpt"][0] == "declared_not_observed"
    assert statuses(session, catalog, lookback=timedelta(days=60))["openai-chatgpt"][0] == "declared_observed"


def test_match_by_declared_host_ip_mac_and_ae_title(session: Session, catalog: Catalog) -> None:
    pc = add_endpoint(session, SITE, "10.1.0.10")
    gateway = add_endpoint(session, SITE, "10.1.0.50", mac="00:00:5e:00:53:50")
    monitor = add_endpoint(session, SITE, "10.1.0.60", mac="00:00:5e:00:53:60")
    add_detection(session, SITE, "nabla", pc, seen=RECENT, hosts=["eu.api.nabla.com"])
    add_detection(session, SITE, "gleamer", gateway, seen=RECENT, signals=[("dicom.association", "BONEVIEW")])
    add_detection(
        session, SITE, "unknown", monitor, seen=RECENT, vendor="Acme Medical", category="medical_device",
        signals=[("snmp.sysdescr", "Acme monitor")],
    )  # fmt: skip
    # No catalogue id, names that say nothing: only identifiers can tie them.
    add_entry(session, SITE, "A", "Scribe des urgences", hosts=["*.nabla.com"])
    add_entry(session, SITE, "B", "Passerelle imagerie", ips=["10.1.0.50"])
    add_entry(session, SITE, "C", "Moniteur", macs=["00:00:5e:00:53:60"])
    assert statuses(session, catalog) == {
        "gleamer": ("declared_observed", None),
        "nabla": ("declared_observed", None),
        "unknown:Acme Medical": ("declared_observed", None),
    }


def test_match_by_vendor_and_name(session: Session, catalog: Catalog) -> None:
    pc = add_endpoint(session, SITE, "10.1.0.10")
    pump = add_endpoint(session, SITE, "10.1.0.20")
    add_detection(session, SITE, "b-braun", pump, seen=RECENT, signals=[("dhcp.vendor_class", "bbraun")])
    add_detection(session, SITE, "microsoft-copilot", pc, seen=RECENT, hosts=["copilot.microsoft.com"])
    add_detection(session, SITE, "github-copilot", pc, seen=RECENT, hosts=["api.githubcopilot.com"])
    add_entry(session, SITE, "A", "Pousse-seringues", vendor="B Braun")  # a device family: vendor is enough
    add_entry(session, SITE, "B", "Teams", vendor="Microsoft")  # must not hide Copilot
    add_entry(session, SITE, "C", "Copilot for developers", vendor="GitHub")  # shares a word, same vendor
    assert statuses(session, catalog) == {
        "b-braun": ("declared_observed", None),
        "entry:B": ("declared_not_observed", None),
        "github-copilot": ("declared_observed", None),
        "microsoft-copilot": ("undeclared_observed", None),
    }


def test_declared_catalogue_product_seen_only_as_an_unknown_of_its_vendor(
    session: Session, catalog: Catalog
) -> None:
    pump = add_endpoint(session, SITE, "10.1.0.20", mac="00:12:21:00:00:01")
    add_detection(
        session, SITE, "unknown", pump, seen=RECENT, vendor="B. Braun", category="medical_device",
        signals=[("mac_oui", "00:12:21:00:00:01")],
    )  # fmt: skip
    add_entry(session, SITE, "A", "Pompe", vendor="B. Braun", catalog_id="b-braun")
    assert statuses(session, catalog) == {"unknown:B. Braun": ("declared_observed", None)}


def test_mismatches(session: Session, catalog: Catalog) -> None:
    device = add_endpoint(session, SITE, "10.1.0.21", mac="00:00:5e:00:53:21", service="Réanimation")
    other = add_endpoint(session, SITE, "10.1.0.22", mac="00:00:5e:00:53:22", service="Urgences")
    add_detection(
        session, SITE, "philips-patient-monitoring", device, seen=RECENT, signals=[("snmp.sysdescr", "x")]
    )
    add_detection(
        session, SITE, "philips-patient-monitoring", other, seen=RECENT, signals=[("snmp.sysdescr", "x")]
    )
    add_entry(
        session, SITE, "M", "Moniteur", catalog_id="philips-patient-monitoring", service="Réanimation",
        ips=["10.1.0.21"], macs=["00:00:5e:00:53:21"], deployment="embedded_device",
    )  # fmt: skip
    (status, why) = statuses(session, catalog)["philips-patient-monitoring"]
    assert status == "declared_mismatch"
    assert why == (
        "seen on undeclared IPs: 10.1.0.22; seen on undeclared MACs: 00:00:5e:00:53:22; "
        "used by undeclared services: Urgences"
    )


def test_saas_endpoints_are_users_not_the_product(session: Session, catalog: Catalog) -> None:
    pc = add_endpoint(session, SITE, "10.1.0.10")
    add_detection(session, SITE, "openai-chatgpt", pc, seen=RECENT, hosts=["chatgpt.com"])
    # A workstation declared with its IP does not declare every SaaS it uses...
    add_entry(session, SITE, "PC", "Poste de soins", ips=["10.1.0.10"])
    # ...and a SaaS declared with some IP is not a mismatch for the workstations that use it.
    add_entry(session, SITE, "G", "ChatGPT", catalog_id="openai-chatgpt", ips=["10.9.9.9"])
    assert statuses(session, catalog)["openai-chatgpt"] == ("declared_observed", None)
    assert statuses(session, catalog)["entry:PC"] == ("declared_not_observed", None)


def test_inactive_entries_do_not_declare(session: Session, catalog: Catalog) -> None:
    pc = add_endpoint(session, SITE, "10.1.0.10")
    add_detection(session, SITE, "openai-chatgpt", pc, seen=RECENT, hosts=["chatgpt.com"])
    add_entry(session, SITE, "G", "ChatGPT", catalog_id="openai-chatgpt", active=False)
    assert statuses(session, catalog) == {"openai-chatgpt": ("undeclared_observed", None)}


def test_other_sites_do_not_count(session: Session, catalog: Catalog) -> None:
    pc = add_endpoint(session, "elsewhere", "10.1.0.10")
    add_detection(session, "elsewhere", "openai-chatgpt", pc, seen=RECENT, hosts=["chatgpt.com"])
    add_entry(session, "elsewhere", "G", "Claude", catalog_id="anthropic-claude")
    assert statuses(session, catalog) == {}


def test_observed_details(session: Session, catalog: Catalog) -> None:
    a = add_endpoint(session, SITE, "10.1.0.10", mac="00:00:5e:00:53:10", service="Urgences", vlan=110)
    b = add_endpoint(session, SITE, "10.1.0.11", service="Imagerie", vlan=120)
    add_detection(session, SITE, "openai-chatgpt", a, seen=RECENT, hosts=["chatgpt.com"], count=4)
    add_detection(
        session, SITE, "openai-chatgpt", b, seen=(NOW - timedelta(days=9), NOW), hosts=["chatgpt.com"]
    )
    (row,) = compute(session, SITE, NOW, catalog=catalog)
    observed = row.observed_product
    assert observed is not None
    assert row.endpoints == 2
    assert row.first_seen == NOW - timedelta(days=9)
    assert row.last_seen == NOW
    assert observed.hosts == {"chatgpt.com"}
    assert observed.services == {"Urgences", "Imagerie"}
    assert observed.vlans == {110, 120}
    assert observed.observations == 7
    assert row.signals == {"tls.sni=chatgpt.com"}
    assert (row.name, row.vendor, row.category, row.is_ai, row.is_medical) == (
        "ChatGPT", "OpenAI", "llm_chat", True, False,
    )  # fmt: skip


def count(session: Session, model: type[ChangeLogEntry] | type[Alert]) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def test_reconcile_persists_logs_and_is_idempotent(session: Session, catalog: Catalog) -> None:
    pc = add_endpoint(session, SITE, "10.1.0.10")
    add_detection(session, SITE, "openai-chatgpt", pc, seen=RECENT, hosts=["chatgpt.com"])
    first = reconcile(session, SITE, NOW, catalog=catalog)
    assert first.status_changes == 1
    assert [(a.product_key, a.reason, a.severity) for a in first.raised] == [
        ("openai-chatgpt", AlertReason.UNDECLARED_OBSERVED, "high")
    ]
    stored = session.get_one(Reconciliation, (SITE, "openai-chatgpt"))
    assert (stored.status, stored.endpoints, stored.confidence) == (S.UNDECLARED_OBSERVED, 1, 0.9)
    logged = count(session, ChangeLogEntry)

    again = reconcile(session, SITE, NOW, catalog=catalog)
    assert (again.status_changes, again.raised, again.closed) == (0, [], [])
    assert count(session, ChangeLogEntry) == logged
    alert = session.scalars(select(Alert)).one()
    assert alert.occurrences == 1

    # Seen again later: the same alert counts one more occurrence, no second alert.
    add_detection(
        session, SITE, "openai-chatgpt", pc, seen=(NOW, NOW + timedelta(hours=2)), hosts=["chatgpt.com"]
    )
    reconcile(session, SITE, NOW + timedelta(hours=3), catalog=catalog)
    session.refresh(alert)
    assert (count(session, Alert), alert.occurrences) == (1, 2)

    # Declared: the status changes, the alert closes by itself, both are logged.
    add_entry(session, SITE, "G", "ChatGPT", catalog_id="openai-chatgpt")
    later = reconcile(session, SITE, NOW + timedelta(hours=4), catalog=catalog)
    assert later.status_changes == 1
    assert [a.id for a in later.closed] == [alert.id]
    log = list(session.scalars(select(ChangeLogEntry).order_by(ChangeLogEntry.id)))
    assert log[-2].changes == {"reconciliation_status": ["undeclared_observed", "declared_observed"]}
    assert log[-1].changes["state"] == ["open", "closed"]


def test_products_leaving_the_window_leave_the_table(session: Session, catalog: Catalog) -> None:
    pc = add_endpoint(session, SITE, "10.1.0.10")
    add_detection(session, SITE, "openai-chatgpt", pc, seen=RECENT, hosts=["chatgpt.com"])
    reconcile(session, SITE, NOW, catalog=catalog)
    result = reconcile(session, SITE, NOW + timedelta(days=45), catalog=catalog)
    assert result.removed == 1
    assert session.scalars(select(Reconciliation)).all() == []
    assert session.scalars(select(Alert)).one().state == "closed"


def test_deterministic(session: Session, catalog: Catalog) -> None:
    for i in range(5):
        pc = add_endpoint(session, SITE, f"10.1.0.{10 + i}")
        for product in ("openai-chatgpt", "anthropic-claude", "deepseek"):
            add_detection(session, SITE, product, pc, seen=RECENT, hosts=[f"{product}.example"])
    add_entry(session, SITE, "B", "Claude", catalog_id="anthropic-claude")
    add_entry(session, SITE, "A", "Claude (pôle B)", catalog_id="anthropic-claude")
    first = compute(session, SITE, NOW, catalog=catalog)
    assert [row.key for row in first] == ["anthropic-claude", "deepseek", "openai-chatgpt"]
    assert first[0].entry_refs == ("A", "B")
    assert [
        (r.key, r.status, r.entry_refs, r.endpoints) for r in compute(session, SITE, NOW, catalog=catalog)
    ] == [(r.key, r.status, r.entry_refs, r.endpoints) for r in first]


def test_software_seen_on_a_declared_device_is_that_device(session: Session, catalog: Catalog) -> None:
    gateway = add_endpoint(session, SITE, "10.1.0.50", mac="00:00:5e:00:53:50")
    dicom = [("dicom.association", "PYNETDICOM")]
    add_detection(session, SITE, "pynetdicom", gateway, seen=RECENT, signals=dicom)
    add_detection(session, SITE, "cursor", gateway, seen=RECENT, hosts=["api2.cursor.sh"])
    add_entry(session, SITE, "G", "Passerelle (BoneView)", catalog_id="gleamer", ips=["10.1.0.50"])
    assert statuses(session, catalog) == {
        "cursor": ("undeclared_observed", None),  # desktop software: the endpoint is its user
        "pynetdicom": ("declared_observed", None),  # the entry is observed through it
    }
