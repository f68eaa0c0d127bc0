"""Kept for callers of the old path: the evaluation now lives in `fleetscore.evaluation.metrics`."""

from __future__ import annotations

from fleetscore.evaluation.metrics import Match, episodes_from_flags, fault_windows, match_alerts

__all__ = ["Match", "episodes_from_flags", "fault_windows", "match_alerts"]
