"""Reports of a score run: results.json, samples.parquet, report.md, gallery.html, plots/*.png;
and ``refcoco-edit report RUN1 RUN2 ... --out DIR`` to put several runs side by side.

The modules: ``schema`` (the results.json schema, documented there, and its checker), ``results``
(building, writing and reading results.json and samples.parquet), ``markdown`` (report.md; its
cells in ``format``, its judge part in ``judge``), ``gallery`` (gallery.html), ``plots`` (plots/),
and ``build``, which writes them together (``write_run``, ``compare_runs``). Their public names
are importable from here. Nothing heavy is imported until used (pyarrow, matplotlib: in the
functions that need them).
"""
from .build import compare_runs, write_run
from .gallery import render_gallery
from .markdown import TABLE_FAMILIES, protocol_text, render_markdown, run_label
from .plots import write_plots
from .results import build_results, dumps, git_info, load_run, package_versions, read_samples, samples_table
from .schema import RESULTS_SCHEMA, RESULTS_SCHEMA_VERSION, schema_errors, validate_results

__all__ = ["write_run", "compare_runs",
           "RESULTS_SCHEMA_VERSION", "RESULTS_SCHEMA", "TABLE_FAMILIES", "schema_errors", "validate_results",
           "git_info", "package_versions", "dumps", "build_results", "samples_table", "read_samples", "load_run",
           "protocol_text", "run_label", "render_markdown", "render_gallery", "write_plots"]
