"""`fleetscore train`: fit the fleet's models on its windows and write a model-pack version."""

from __future__ import annotations

from typing import Annotated

import typer

from fleetscore.cli.console import console, err, parse_time, progress_bar, services
from fleetscore.training import SPARSE_COVERAGE, TrainResult
from fleetscore.training import train as train_fleet

SKIPPED_SHOWN = 50
"""Skipped pairs listed by name; the rest are counted."""


def train(
    from_: Annotated[str | None, typer.Option("--from", help="oldest window end (exclusive), ISO-8601")] = None,
    until: Annotated[str | None, typer.Option(help="newest window end (inclusive), ISO-8601")] = None,
    min_windows: Annotated[int | None, typer.Option(help="skip pairs with fewer windows")] = None,
    algorithm: Annotated[str | None, typer.Option(help="change-z, ocsvm-rbf, ocsvm-linear, isolation-forest, lof, "
                                                       "elliptic-envelope")] = None,
    activate: Annotated[bool, typer.Option(help="point models/CURRENT at the new pack")] = False,
) -> None:
    """Fit one model per device+sensor on its windows and write a new model-pack version."""
    svc = services()
    s = svc.settings
    with progress_bar() as bar:
        task = bar.add_task("train", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            result = train_fleet(svc.engine, svc.store, from_ms=parse_time(from_), until_ms=parse_time(until),
                                 min_windows=min_windows or s.model_min_windows,
                                 algorithm=algorithm or s.model_algorithm,
                                 features=s.features_for(algorithm or s.model_algorithm),
                                 window_minutes=s.window_minutes, activate=activate, params=s.model_params,
                                 progress=tick, false_rate=s.alert_false_rate, announce=s.announce)
        except ValueError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
    _print_result(result, s.window_minutes)


def _print_result(result: TrainResult, window_minutes: int) -> None:
    """The new pack's version and size, the skipped pairs (the first SKIPPED_SHOWN by name), then how many models
    are sparse (`fleetscore.training.sparse_models`) and what that means for their alerts."""
    console.print(f"model pack {result.version}: {result.models:,} models from {result.windows:,} windows"
                  + (", active" if result.activated else " (not active: use --activate)"))
    if result.skipped:
        console.print(f"skipped {len(result.skipped):,} pair(s):")
        for (device, sensor), why in sorted(result.skipped.items())[:SKIPPED_SHOWN]:
            console.print(f"  {device}/{sensor}: {why}")
        if len(result.skipped) > SKIPPED_SHOWN:
            console.print(f"  … and {len(result.skipped) - SKIPPED_SHOWN:,} more")
    if result.sparse:
        (device, sensor), coverage = next(iter(result.sparse.items()))
        console.print(f"{len(result.sparse):,} model(s) trained on windows in less than {SPARSE_COVERAGE:.0%} of their "
                      f"range (e.g. {device}/{sensor}: {coverage:.0%}): ALERT_PERSISTENCE counts windows of time and "
                      f"a window without a reading as normal, so these alert only on a strong window (or two high "
                      f"ones in a row); a WINDOW_MINUTES (now {window_minutes}) of at least their reporting interval "
                      f"lets persistence count their readings")
