"""Ingest: reading validation, Azure Stream Analytics window maths, the SQL write path, bulk file import."""
