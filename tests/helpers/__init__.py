"""Helpers shared by test modules: plain functions, constants and the Azurite fixture plugin (fixtures live in
conftest.py)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The repository's root folder."""
