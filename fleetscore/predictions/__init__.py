"""Predictions: reading and validating prediction files, indexing them, and completing their runs."""
