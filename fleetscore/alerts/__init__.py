"""Alerts: episode rules, severity, the alert store and documents, and webhook delivery."""
