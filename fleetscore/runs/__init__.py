"""Runs: schedule slots, claims, export of closed windows, the run manifest and the run service (`start_run`)."""
