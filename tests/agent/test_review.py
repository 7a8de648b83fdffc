"""Decisions and the alert life cycle: history, expiry, blocked tools seen again, false positives."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from agent._reconcile import reconcile
from agent._review import (
    ReviewError,
    add_months,
    current_decision,
    decide,
    latest_reviews,
    list_alerts,
    open_alerts,
    review_history,
)
from fingerprints import Catalog
from store._models import Alert, AlertReason, AlertState, ChangeLogEntry, Endpoint, ReviewDecision
from tests.agent.store_backends import add_detection, add_endpoint, add_entry, database_url
from tests.store.dburl import BACKENDS

SITE = "ch-test"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
D = ReviewDecision
R = AlertReason


@pytest.fixture
def pc(session: Session) -> Endpoint:
    return add_endpoint(session, SITE, "10.1.0.10")


def seen(session: Session, pc: Endpoint, at: datetime, host: str = "chatgpt.com") -> None:
    add_detection(session, SITE, "openai-chatgpt", pc, seen=(at - timedelta(hours=1), at), hosts=[host])


def reasons(session: Session) -> list[tuple[str, R]]:
    return [(alert.product_key, alert.reason) for alert in open_alerts(session, SITE)]


def test_decision_closes_alerts_and_keeps_history(session: Session, pc: Endpoint, catalog: Catalog) -> None:
    seen(session, pc, NOW)
    (alert,) = reconcile(session, SITE, NOW, catalog=catalog).raised
    review = decide(session, alert.id, "rejected_to_block", "Données patients", by="rssi", now=NOW)
    assert review.product_key == "openai-chatgpt"
    assert review.next_review_due == datetime(2027, 11, 28, 12, 0, tzinfo=UTC)
    session.refresh(alert)
    assert (alert.state, alert.closed_by_review) == (AlertState.CLOSED, review.id)
    assert reasons(session) == []
    later = NOW + timedelta(days=1)
    decide(session, "openai-chatgpt", "approved", "Offre entreprise signée", by="dpo", now=later, site=SITE)
    history = review_history(session, SITE, "openai-chatgpt")
    assert [(r.decision, r.decided_by) for r in history] == [
        (D.REJECTED_TO_BLOCK, "rssi"),
        (D.APPROVED, "dpo"),
    ]
    assert current_decision(latest_reviews(session, SITE).get("openai-chatgpt")) is D.APPROVED
    assert current_decision(None) is D.PENDING_REVIEW
    decisions = session.scalars(select(ChangeLogEntry).where(ChangeLogEntry.action == "decision")).all()
    assert [(row.actor, row.changes["review_decision"]) for row in decisions] == [
        ("rssi", ["pending_review", "rejected_to_block"]),
        ("dpo", ["rejected_to_block", "approved"]),
    ]
    assert review.details["snapshot"]["signals"] == ["tls.sni=chatgpt.com"]


def test_decision_validation(session: Session, pc: Endpoint, catalog: Catalog) -> None:
    seen(session, pc, NOW)
    (alert,) = reconcile(session, SITE, NOW, catalog=catalog).raised
    with pytest.raises(ReviewError, match="needs a reason"):
        decide(session, alert.id, "approved", "  ", by="rssi", now=NOW)
    with pytest.raises(ReviewError, match="not a decision"):
        decide(session, alert.id, "pending_review", "x", by="rssi", now=NOW)
    with pytest.raises(ReviewError, match="unknown decision"):
        decide(session, alert.id, "maybe", "x", by="rssi", now=NOW)
    with pytest.raises(ReviewError, match="needs the conditions and their expiry"):
        decide(session, alert.id, "approved_with_conditions", "x", by="rssi", now=NOW, conditions="pilote")
    with pytest.raises(ReviewError, match="in the future"):
        decide(
            session, alert.id, "approved_with_conditions", "x", by="rssi", now=NOW, conditions="pilote",
            expires_at=NOW - timedelta(days=1),
        )  # fmt: skip
    with pytest.raises(ReviewError, match="only go with approved_with_conditions"):
        decide(session, alert.id, "approved", "x", by="rssi", now=NOW, expires_at=NOW + timedelta(days=9))
    with pytest.raises(ReviewError, match="no alert 999"):
        decide(session, 999, "approved", "x", by="rssi", now=NOW)
    with pytest.raises(ReviewError, match="no product 'nothing-here'"):
        decide(session, "nothing-here", "approved", "x", by="rssi", now=NOW, site=SITE)
    # A catalogue product may be decided before anyone uses it.
    decide(session, "deepseek", "rejected_to_block", "Hébergement hors UE", by="rssi", now=NOW, site=SITE)
    assert reasons(session) == [("openai-chatgpt", R.UNDECLARED_OBSERVED)]


def test_conditions_expire_and_the_alert_comes_back(session: Session, pc: Endpoint, catalog: Catalog) -> None:
    seen(session, pc, NOW)
    (alert,) = reconcile(session, SITE, NOW, catalog=catalog).raised
    expiry = NOW + timedelta(days=90)
    review = decide(
        session, alert.id, "approved_with_conditions", "Pilote", by="rssi", now=NOW,
        conditions="Aucune donnée patient; compte entreprise", expires_at=expiry,
    )  # fmt: skip
    assert review.next_review_due == expiry
    reconcile(session, SITE, NOW + timedelta(days=30), catalog=catalog)
    assert reasons(session) == []
    reconcile(session, SITE, expiry + timedelta(hours=1), catalog=catalog)
    assert reasons(session) == [("openai-chatgpt", R.CONDITION_EXPIRED)]
    # It waits for a person even once the product is no longer seen.
    reconcile(session, SITE, expiry + timedelta(days=60), catalog=catalog)
    assert reasons(session) == [("openai-chatgpt", R.CONDITION_EXPIRED)]


def test_blocked_tool_seen_again(session: Session, pc: Endpoint, catalog: Catalog) -> None:
    seen(session, pc, NOW)
    (alert,) = reconcile(session, SITE, NOW, catalog=catalog).raised
    decide(session, alert.id, "rejected_to_block", "Interdit", by="rssi", now=NOW + timedelta(hours=1))
    reconcile(session, SITE, NOW + timedelta(hours=2), catalog=catalog)
    assert reasons(session) == []  # the sightings the reviewer knew about
    seen(session, pc, NOW + timedelta(days=2))
    reconcile(session, SITE, NOW + timedelta(days=2), catalog=catalog)
    assert reasons(session) == [("openai-chatgpt", R.BLOCKED_SEEN_AGAIN)]
    (again,) = open_alerts(session, SITE)
    assert again.severity == "high"
    assert again.id != alert.id


def test_false_positive_until_the_evidence_changes(session: Session, pc: Endpoint, catalog: Catalog) -> None:
    seen(session, pc, NOW, host="openai.com")
    (alert,) = reconcile(session, SITE, NOW, catalog=catalog).raised
    decide(session, alert.id, "false_positive", "Visite du site vitrine", by="rssi", now=NOW)
    seen(session, pc, NOW + timedelta(days=1), host="openai.com")  # the same visit again
    reconcile(session, SITE, NOW + timedelta(days=1), catalog=catalog)
    assert reasons(session) == []
    seen(session, pc, NOW + timedelta(days=2), host="chatgpt.com")  # now the application
    reconcile(session, SITE, NOW + timedelta(days=2), catalog=catalog)
    assert reasons(session) == [("openai-chatgpt", R.UNDECLARED_OBSERVED)]


def test_approval_covers_the_status_it_saw(session: Session, catalog: Catalog) -> None:
    device = add_endpoint(session, SITE, "10.1.0.50")
    add_detection(session, SITE, "ollama", device, seen=(NOW - timedelta(hours=2), NOW), hosts=["ollama.com"])
    add_entry(session, SITE, "O", "Ollama", catalog_id="ollama", deployment="on_prem")
    (alert,) = reconcile(session, SITE, NOW, catalog=catalog).raised
    assert (alert.reason, alert.severity) == (R.DECLARED_MISMATCH, "high")
    decide(session, alert.id, "approved", "Téléchargement des modèles autorisé", by="dsi", now=NOW)
    reconcile(session, SITE, NOW + timedelta(hours=1), catalog=catalog)
    assert reasons(session) == []
    # A new cloud host is a new question.
    add_detection(
        session, SITE, "ollama", device, seen=(NOW, NOW + timedelta(days=1)), hosts=["registry.ollama.ai"]
    )
    reconcile(session, SITE, NOW + timedelta(days=1), catalog=catalog)
    assert reasons(session) == [("ollama", R.DECLARED_MISMATCH)]


def test_retired_product_seen_again(session: Session, pc: Endpoint, catalog: Catalog) -> None:
    seen(session, pc, NOW)
    (alert,) = reconcile(session, SITE, NOW, catalog=catalog).raised
    decide(session, alert.id, "retired", "Abandonné", by="rssi", now=NOW)
    reconcile(session, SITE, NOW + timedelta(hours=1), catalog=catalog)
    assert reasons(session) == []
    seen(session, pc, NOW + timedelta(days=3))
    reconcile(session, SITE, NOW + timedelta(days=3), catalog=catalog)
    assert reasons(session) == [("openai-chatgpt", R.UNDECLARED_OBSERVED)]


def test_one_open_alert_per_site_product_reason(session: Session, catalog: Catalog) -> None:
    for i in range(3):
        pc = add_endpoint(session, SITE, f"10.1.0.{20 + i}")
        add_detection(
            session, SITE, "openai-chatgpt", pc, seen=(NOW - timedelta(hours=1), NOW), hosts=["chatgpt.com"]
        )
        add_detection(
            session, SITE, "unknown", pc, seen=(NOW - timedelta(hours=1), NOW), vendor="Acme", category=None,
            signals=[("mac_oui", "x")],
        )  # fmt: skip
    for hour in range(3):
        reconcile(session, SITE, NOW + timedelta(hours=hour), catalog=catalog)
    alerts = list_alerts(session, SITE, include_closed=True)
    assert [(a.product_key, a.reason, a.severity) for a in alerts] == [
        ("openai-chatgpt", R.UNDECLARED_OBSERVED, "high"),
        ("unknown:Acme", R.UNKNOWN_OBSERVED, "low"),
    ]
    assert alerts[0].title == "Undeclared ChatGPT (OpenAI) seen on 3 endpoints"
    assert alerts[0].summary["endpoints"] == 3
    assert len(session.scalars(select(Alert)).all()) == 2


def test_add_months() -> None:
    assert add_months(datetime(2026, 1, 31, tzinfo=UTC), 1) == datetime(2026, 2, 28, tzinfo=UTC)
    assert add_months(datetime(2027, 2, 28, tzinfo=UTC), 12) == datetime(2028, 2, 28, tzinfo=UTC)
    assert add_months(datetime(2028, 2, 29, tzinfo=UTC), 12) == datetime(2029, 2, 28, tzinfo=UTC)
    assert add_months(datetime(2026, 11, 28, tzinfo=UTC), 14) == datetime(2028, 1, 28, tzinfo=UTC)


# -- the CLI ------------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def cli_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from store import open_store

    with database_url(request.param, tmp_path_factory) as url:
        store = open_store(url)
        now = datetime.now(UTC)
        with store.write() as session:
            pc = add_endpoint(session, SITE, "10.1.0.10")
            add_detection(
                session, SITE, "openai-chatgpt", pc, hosts=["chatgpt.com", "[bold red]x[/]"],
                seen=(now - timedelta(hours=2), now - timedelta(hours=1)),
            )  # fmt: skip
            reconcile(session, SITE, now)
        store.dispose()
        yield url


def cli(db: str, *args: str) -> tuple[int, str, str]:
    from typer.testing import CliRunner

    from agent.cli import app

    env = {"LANTERNE_DB": db, "LANTERNE_SITE": SITE, "LANTERNE_USER": "rssi-test", "COLUMNS": "250"}
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_cli_alerts_and_decisions(cli_db: str) -> None:
    code, stdout, stderr = cli(cli_db, "alerts", "list", "--json")
    assert code == 0, stderr
    (alert,) = json.loads(stdout)
    assert (alert["product_key"], alert["reason"], alert["severity"]) == (
        "openai-chatgpt", "undeclared_observed", "high",
    )  # fmt: skip
    code, stdout, _ = cli(cli_db, "alerts", "list")
    assert "openai-chatgpt" in stdout
    code, stdout, _ = cli(cli_db, "alerts", "show", str(alert["id"]))
    assert code == 0
    assert "[bold red]x[/]" in stdout  # hostile markup shown as text, not interpreted
    assert cli(cli_db, "alerts", "show", "999")[0] == 2

    code, stdout, stderr = cli(
        cli_db, "review", "decide", str(alert["id"]), "--decision", "approved_with_conditions",
        "--reason", "Pilote aux urgences", "--conditions", "Pas de données patient",
        "--expires", "01/06/2099", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    decided = json.loads(stdout)
    assert decided["decided_by"] == "rssi-test"
    assert decided["expires_at"] == "2099-06-01T00:00:00+00:00"
    assert "next review due" in stderr
    assert json.loads(cli(cli_db, "alerts", "list", "--json")[1]) == []
    closed = json.loads(cli(cli_db, "alerts", "list", "--state", "all", "--json")[1])
    assert [(a["state"], a["closed_by_review"]) for a in closed] == [("closed", decided["id"])]

    code, _, stderr = cli(
        cli_db, "review", "decide", "openai-chatgpt", "-d", "rejected_to_block", "-r", "Bloqué", "--by", "dpo"
    )
    assert code == 0, stderr
    code, stdout, _ = cli(cli_db, "review", "history", "openai-chatgpt", "--json")
    assert [(r["decision"], r["decided_by"]) for r in json.loads(stdout)] == [
        ("approved_with_conditions", "rssi-test"), ("rejected_to_block", "dpo"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-d", "approved", "-r", ""], "needs a reason"),
        (["-d", "bof", "-r", "x"], "unknown decision"),
        (
            ["-d", "approved_with_conditions", "-r", "x", "--conditions", "c"],
            "needs the conditions and their expiry",
        ),
        (
            ["-d", "approved_with_conditions", "-r", "x", "--conditions", "c", "--expires", "demain"],
            "not a date",
        ),
    ],
)
def test_cli_decision_errors(cli_db: str, args: list[str], message: str) -> None:
    code, _, stderr = cli(cli_db, "review", "decide", "openai-chatgpt", *args)
    assert code == 2
    assert message in " ".join(stderr.split())
    assert cli(cli_db, "review", "history", "openai-chatgpt", "--json")[1].strip() == "[]"
