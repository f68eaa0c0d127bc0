"""`write_report`: load what the report shows, render it, and write the page to a file."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from fleetscore.evaluation.stored import Evaluation
from fleetscore.report.data import BlobLister, load_report_data
from fleetscore.report.html import render_report


def write_report(engine: Engine, out: Path, store: BlobLister | None = None, run_id: str | None = None,
                 evaluation: Evaluation | None = None) -> Path:
    """Load, render and write the report to `out` (atomically: a temp file beside it, then a rename), with the
    detection section when an `evaluation` is given; returns the path written."""
    out = Path(out)
    page = render_report(load_report_data(engine, store=store, run_id=run_id), evaluation)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
