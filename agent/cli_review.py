"""``lanterne alerts`` (list, show) and ``lanterne review`` (decide, history).

Alerts are what needs a person (DESIGN §1); a decision records who decided what and why,
closes the product's open alerts and is kept as history (``agent._review`` has the rules).
"""

from __future__ import annotations

import getpass
import json
import os
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from agent._cli_common import DEFAULT_SITE, DbOption, SiteOption, err, fatal, out
from agent._reconcile import reconcile
from agent._review import (
    DECISIONS,
    ReviewError,
    ReviewPolicy,
    alert_document,
    decide,
    iso_utc,
    list_alerts,
    review_history,
)
from agent.cli_inventory import JsonOption, now_utc, open_db
from store._inventory import parse_date
from store._models import Alert, Review

alerts_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Alerts: what needs a person (undeclared or unknown tools, mismatches, expiries).",
    context_settings={"help_option_names": ["-h", "--help"]},
)
review_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Review: record decisions (who, when, why) and read their history.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def alert_dict(alert: Alert) -> dict[str, Any]:
    """The JSON form of an alert."""
    return {**alert_document(alert), "closed_by_review": alert.closed_by_review}


def review_dict(review: Review) -> dict[str, Any]:
    """The JSON form of a decision."""
    return {
        "id": review.id,
        "site": review.site,
        "product_key": review.product_key,
        "decision": str(review.decision),
        "reason": review.reason,
        "conditions": review.conditions,
        "expires_at": iso_utc(review.expires_at),
        "decided_by": review.decided_by,
        "decided_at": iso_utc(review.decided_at),
        "next_review_due": iso_utc(review.next_review_due),
        "details": review.details,
    }


@alerts_app.command("list")
def alerts_list(
    db: DbOption = None,
    site: Annotated[
        str | None,
        typer.Option(
            "--site", envvar="LANTERNE_SITE", help="Only this site (default: every site).", show_default=False
        ),
    ] = None,
    state: Annotated[
        str, typer.Option("--state", envvar="LANTERNE_ALERT_STATE", help="open (default) or all.")
    ] = "open",
    as_json: JsonOption = False,
) -> None:
    """List alerts, most severe and most recent first."""
    if state not in ("open", "all"):
        fatal(f"--state must be open or all, not {state!r}")
    with open_db(db) as store, store.session() as session:
        rows = [alert_dict(alert) for alert in list_alerts(session, site, include_closed=state == "all")]
    if as_json:
        out.print_json(json.dumps(rows, ensure_ascii=False), indent=2)
        return
    table = Table(title="alerts", title_justify="left")
    for column in ("id", "severity", "state", "site", "product", "reason", "title", "seen", "last seen"):
        table.add_column(column, justify="right" if column in ("id", "seen") else "left")
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["severity"],
            row["state"],
            escape(row["site"]),
            escape(row["product_key"]),
            row["reason"],
            escape(row["title"]),
            str(row["occurrences"]),
            (row["last_seen"] or "")[:16],
        )
    out.print(table)
    err.print(f"{len(rows)} alert(s)")


@alerts_app.command("show")
def alerts_show(
    alert_id: Annotated[
        int, typer.Argument(help="Alert id (see 'lanterne alerts list').", show_default=False)
    ],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one alert with its evidence summary and the product's decisions."""
    with open_db(db) as store, store.session() as session:
        alert = session.get(Alert, alert_id)
        if alert is None:
            fatal(f"no alert {alert_id}", tip="see 'lanterne alerts list --state all'")
        data = alert_dict(alert)
        data["decisions"] = [review_dict(r) for r in review_history(session, alert.site, alert.product_key)]
    if as_json:
        out.print_json(json.dumps(data, ensure_ascii=False), indent=2)
        return
    table = Table(title=f"alert {alert_id}", show_header=False, title_justify="left")
    table.add_column("field")
    table.add_column("value")
    for key, value in data.items():
        if key in ("summary", "decisions"):
            continue
        table.add_row(key, escape("" if value is None else str(value)))
    for key, value in (data["summary"] or {}).items():
        shown = (
            ", ".join(map(str, value)) if isinstance(value, list) else ("" if value is None else str(value))
        )
        table.add_row(f"  {key}", escape(shown))
    for review in data["decisions"]:
        table.add_row(
            "decision",
            escape(f"{review['decided_at'][:16]} {review['decision']} by {review['decided_by']}")
            + escape(f": {review['reason']}"),
        )
    out.print(table)


def default_user() -> str:
    """Who decides when --by is not given: $LANTERNE_USER, else the OS user."""
    try:
        return os.environ.get("LANTERNE_USER") or getpass.getuser()
    except (KeyError, OSError):
        return ""


@review_app.command("decide")
def review_decide(
    target: Annotated[
        str, typer.Argument(help="Alert id, or a product key (e.g. openai-chatgpt).", show_default=False)
    ],
    decision: Annotated[
        str,
        typer.Option("--decision", "-d", help=f"One of: {', '.join(DECISIONS)}.", show_default=False),
    ],
    reason: Annotated[
        str, typer.Option("--reason", "-r", help="Why (kept in the history).", show_default=False)
    ],
    conditions: Annotated[
        str | None, typer.Option("--conditions", help="Conditions of an approved_with_conditions.")
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires", help="When the conditions expire (JJ/MM/AAAA or AAAA-MM-JJ).", show_default=False
        ),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(
            "--by", help="Who decides (default: $LANTERNE_USER or the OS user).", show_default=False
        ),
    ] = None,
    db: DbOption = None,
    site: SiteOption = DEFAULT_SITE,
    review_months: Annotated[
        int,
        typer.Option(
            "--review-months", envvar="LANTERNE_REVIEW_MONTHS", min=1, help="Months to the next review."
        ),
    ] = 12,
    as_json: JsonOption = False,
) -> None:
    """Record a decision about an alert's product or a product key; closes its open alerts."""
    expires_at = None
    if expires:
        try:
            expires_at = parse_date(expires)
        except ValueError:
            fatal(f"--expires {expires!r} is not a date (JJ/MM/AAAA or AAAA-MM-JJ)")
    who = by or default_user()
    now = now_utc()
    with open_db(db) as store, store.write() as session:
        try:
            review = decide(
                session,
                target,
                decision,
                reason,
                by=who,
                now=now,
                site=site,
                conditions=conditions,
                expires_at=expires_at,
                policy=ReviewPolicy(review_interval_months=review_months),
            )
        except ReviewError as exc:
            fatal(str(exc))
        data = review_dict(review)
        # Bring the alerts in line with the decision now (e.g. an approval that no longer covers).
        reconcile(session, review.site, now)
    if as_json:
        out.print_json(json.dumps(data, ensure_ascii=False), indent=2)
    else:
        out.print(
            escape(f"{data['product_key']}: {data['decision']} by {data['decided_by']} (review {data['id']})")
        )
    due = data["next_review_due"]
    err.print(f"decision recorded; next review due {due[:10] if due else '-'}")


@review_app.command("history")
def review_history_command(
    product_key: Annotated[
        str, typer.Argument(help="Product key (e.g. openai-chatgpt).", show_default=False)
    ],
    db: DbOption = None,
    site: SiteOption = DEFAULT_SITE,
    as_json: JsonOption = False,
) -> None:
    """Every decision about a product, oldest first."""
    with open_db(db) as store, store.session() as session:
        rows = [review_dict(review) for review in review_history(session, site, product_key)]
    if as_json:
        out.print_json(json.dumps(rows, ensure_ascii=False), indent=2)
        return
    table = Table(title=f"decisions about {escape(product_key)}", title_justify="left")
    for column in ("when", "decision", "by", "reason", "conditions", "expires", "next review"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            (row["decided_at"] or "")[:16],
            row["decision"],
            escape(row["decided_by"]),
            escape(row["reason"]),
            escape(row["conditions"] or ""),
            (row["expires_at"] or "")[:10],
            (row["next_review_due"] or "")[:10],
        )
    out.print(table)
    err.print(f"{len(rows)} decision(s)")
