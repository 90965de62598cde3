"""Scoring image editors on RefCOCO-Edit: editors, metrics, harness, reports."""
