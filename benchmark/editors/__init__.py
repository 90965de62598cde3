"""Editors under test: the Editor ABC and its lazy registry."""
