"""Metrics, one file per family, each tested against a reference formula."""
