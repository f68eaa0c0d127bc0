"""`fleetscore up`: run the Functions app on this machine (the local host)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from fleetscore.cli.console import console, err, settings_or_exit
from fleetscore.host.app import LocalHost
from fleetscore.host.bindings import HostConfigError


def up(
    port: Annotated[int, typer.Option(help="HTTP port on 127.0.0.1 (0: any free port)")] = 7071,
    state_dir: Annotated[Path, typer.Option(help="the host's spool, blob receipts and timer status")] = Path(
        ".fleetscore/host"),
    blob_poll_seconds: Annotated[float, typer.Option(help="how often blob paths are listed (Event Grid stand-in)",
                                                     min=0.05)] = 1.0,
) -> None:
    """Serve function_app's functions locally: timers on their schedule, events from POST /events, blob triggers.

    Stops cleanly on Ctrl-C or SIGTERM (running invocations finish; the spool keeps what is not delivered).
    """
    for name in ("fleetscore.host", "fleetscore.functions"):
        if logging.getLogger(name).getEffectiveLevel() > logging.INFO:
            logging.getLogger(name).setLevel(logging.INFO)
    s = settings_or_exit()
    try:
        host = LocalHost(s, port=port, state_dir=state_dir, blob_poll_seconds=blob_poll_seconds,
                         shield_workers=True).start()
    except HostConfigError as exc:
        err.print(f"[red]fleetscore up: {exc}[/red]", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    except OSError as exc:
        err.print(f"[red]fleetscore up: cannot listen on 127.0.0.1:{port}: {exc}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None
    _print_endpoints(host, state_dir)
    console.file.flush()
    host.run_until_signalled()
    console.print("stopped", highlight=False)


def _print_endpoints(host: LocalHost, state_dir: Path) -> None:
    """What a person needs to use the running host: its URL, state folder, functions and admin endpoints."""
    console.print(f"Listening on {host.url}", soft_wrap=True, highlight=False)
    console.print(f"state in {state_dir.resolve()}", soft_wrap=True, highlight=False)
    for fn in host.functions:
        console.print(f"  {fn.name}: {fn.describe()}", soft_wrap=True, highlight=False, markup=False)
    for name in host.skipped:
        console.print(f"  {name}: not served (trigger not supported locally)", soft_wrap=True, highlight=False)
    hubs = sorted(host.spools)
    if hubs:
        console.print(f"POST events to {host.url}/events" + (f" (or /events/<hub>: {', '.join(hubs)})"
                                                            if len(hubs) > 1 else ""), soft_wrap=True,
                      highlight=False)
    timers = [f.name for f in host.functions if f.trigger == "timerTrigger"]
    if timers:
        console.print(f"fire a timer slot: POST {host.url}/admin/timers/<{'|'.join(timers)}> "
                      '{"slot": "<ISO time>"}', soft_wrap=True, highlight=False, markup=False)
    console.print(f"health: GET {host.url}/health — Ctrl-C to stop", soft_wrap=True, highlight=False)
