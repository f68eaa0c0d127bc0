"""`fleetscore alerts`: list alerts; `redeliver` drains the alert outbox (pending documents and webhook
deliveries) now."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from fleetscore.alerts.documents import alert_document
from fleetscore.alerts.outbox import drain, mark_all_pending
from fleetscore.alerts.store import list_alerts
from fleetscore.cli.console import console, services
from fleetscore.clock import iso_exact

alerts_app = typer.Typer(help="Alerts: one per anomaly episode of a device+sensor.", invoke_without_command=True)


@alerts_app.callback()
def alerts(
    ctx: typer.Context,
    open_only: Annotated[bool, typer.Option("--open", help="only open alerts")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON documents (the blob/webhook schema)")] = False,
    limit: Annotated[int, typer.Option(help="at most this many, newest change first")] = 200,
) -> None:
    """List alerts (newest change first); `fleetscore alerts redeliver` resends undelivered ones."""
    if ctx.invoked_subcommand is not None:
        return
    svc = services()
    rows = list_alerts(svc.engine, open_only=open_only, limit=limit)
    if as_json:
        docs = [{**alert_document(r), "delivered_revision": r["delivered_revision"],
                 "delivery_error": r["delivery_error"]} for r in rows]
        console.print_json(json.dumps(docs))
        return
    console.print(alerts_table(rows, open_only=open_only, webhook=svc.settings.alert_webhook_url is not None))


def alerts_table(rows: list[dict[str, Any]], open_only: bool, webhook: bool) -> Table:
    """`list_alerts`' rows as a table; the delivered column says '-' when no webhook is configured."""
    table = Table(title=f"{'open ' if open_only else ''}alerts ({len(rows)})")
    for col in ("alert", "device", "sensor", "status", "severity", "opened by", "first window", "last window",
                "windows", "max score", "rev", "delivered"):
        table.add_column(col, justify="right" if col in ("windows", "max score", "rev") else "left")
    for r in rows:
        delivered = "-" if not webhook else (
            "yes" if r["delivered_revision"] >= r["revision"] else f"no ({r['delivery_attempts']} tries)")
        table.add_row(r["alert_id"], r["device"], r["sensor"], r["status"], r["severity"], r.get("opened_by") or "",
                      iso_exact(r["first_window_end"]), iso_exact(r["last_window_end"]), str(r["windows"]),
                      f"{r['max_score']:.3f}", str(r["revision"]), delivered)
    return table


@alerts_app.command("redeliver")
def redeliver_cmd(
    blobs: Annotated[bool, typer.Option("--blobs", help="rewrite every alert's JSON document, not only pending ones")]
    = False,
) -> None:
    """Drain the alert outbox now: write every pending alert document, POST every undelivered alert revision
    to ALERT_WEBHOOK_URL (no deadline). Exit code 1 when something is still pending."""
    svc = services()
    if blobs:
        mark_all_pending(svc.engine)
    result = drain(svc.engine, svc.store, svc.settings, seconds=None)
    console.print(f"wrote {result.documents:,} alert document(s)"
                  + (f", {result.document_failures:,} failed" if result.document_failures else ""))
    if svc.settings.alert_webhook_url is None:
        console.print("ALERT_WEBHOOK_URL is not set: nothing to deliver")
    else:
        console.print(f"delivered {result.delivered:,} alert revision(s), {result.delivery_failed:,} failed")
    if result.document_failures or result.delivery_failed:
        raise typer.Exit(1)
