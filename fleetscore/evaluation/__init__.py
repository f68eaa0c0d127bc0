"""Detection quality of alerts against labelled events (the simulator's injected faults or a user's labels).

- `metrics`: pure functions over DataFrames: the windows an event touches, episodes from window flags, alerts
  matched to events, and `detect` (event-level recall, precision, false alerts per 1,000 pair-days, median
  time to detect).
- `labels`: the labels CSV (`device,sensor,start,end`, ISO-8601 or epoch ms) read and checked.
- `sweep`: the same metrics over a range of operating points, around a caller's `alerts_at(point)`; the
  default re-runs the episode rules on scored windows with the threshold shifted.
- `stored`: what `fleetscore evaluate` and the report evaluate: the alerts in SQL and the scored windows of
  the prediction files of the runs in a range.

All times are int64 epoch ms UTC.
"""
