"""`fleetscore alerts`: list alerts, and send undelivered alert revisions to the webhook again."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from fleetscore.alerts.documents import alert_document, write_blobs
from fleetscore.alerts.store import list_alerts
from fleetscore.alerts.webhook import redeliver
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
    for col in ("alert", "device", "sensor", "status", "severity", "first window", "last window", "windows",
                "max score", "rev", "delivered"):
        table.add_column(col, justify="right" if col in ("windows", "max score", "rev") else "left")
    for r in rows:
        delivered = "-" if not webhook else (
            "yes" if r["delivered_revision"] >= r["revision"] else f"no ({r['delivery_attempts']} tries)")
        table.add_row(r["alert_id"], r["device"], r["sensor"], r["status"], r["severity"],
                      iso_exact(r["first_window_end"]), iso_exact(r["last_window_end"]), str(r["windows"]),
                      f"{r['max_score']:.3f}", str(r["revision"]), delivered)
    return table


@alerts_app.command("redeliver")
def redeliver_cmd(
    blobs: Annotated[bool, typer.Option("--blobs", help="also rewrite every alert's JSON blob")] = False,
) -> None:
    """POST every undelivered alert revision to ALERT_WEBHOOK_URL now."""
    svc = services()
    if blobs:
        rows = list_alerts(svc.engine, limit=None)
        failed = write_blobs(svc.store, rows)
        console.print(f"rewrote {len(rows) - len(failed):,} alert JSON blob(s)" + (f", {len(failed)} failed"
                                                                                  if failed else ""))
    if svc.settings.alert_webhook_url is None:
        console.print("ALERT_WEBHOOK_URL is not set: nothing to deliver")
        return
    delivered, failed = redeliver(svc.engine, svc.settings)
    console.print(f"delivered {delivered:,} alert revision(s), {failed:,} failed")
    if failed:
        raise typer.Exit(1)
