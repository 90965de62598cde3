"""refcoco-edit: Referring Image Editing datasets from RefCOCO, and a benchmark to score editors.

The core package imports nothing heavy at import time (no torch, no pyarrow): see DESIGN.md.
"""
__version__ = "0.1.0"
