"""Reports of a score run: results.json, samples.parquet, report.md, gallery.html, plots/*.png;
and ``refcoco-edit report RUN1 RUN2 ... --out DIR`` to put several runs side by side.

The modules: ``schema`` (the results.json schema, documented there, and its checker), ``results``
(building, writing and reading results.json and samples.parquet), ``markdown`` (report.md; its
cells in ``format``, its judge part in ``judge``), ``gallery`` (gallery.html), ``plots`` (plots/),
and ``build``, which writes them together (``write_run``, ``compare_runs``); ``compare`` (paired
tests between runs, ``run_compare``: ``refcoco-edit compare``), its ``leaderboard`` and ``stats``.
Their public names are importable from here. Nothing heavy is imported until used (pyarrow, matplotlib, scipy: in the
functions that need them).
"""
from .build import compare_runs, write_run
from .compare import COMPARE_SCHEMA_VERSION, check_protocols, join_samples, pair_stats, run_compare
from .gallery import render_gallery
from .leaderboard import build_leaderboard, summary_lines
from .markdown import TABLE_FAMILIES, protocol_text, render_markdown, run_label
from .plots import write_plots
from .results import build_results, dumps, git_info, load_run, package_versions, read_samples, samples_table
from .schema import RESULTS_SCHEMA, RESULTS_SCHEMA_VERSION, schema_errors, validate_results
from .stats import compact_letters, holm, paired_bootstrap_ci, wilcoxon_p, win_tie_loss

__all__ = ["write_run", "compare_runs",
           "RESULTS_SCHEMA_VERSION", "RESULTS_SCHEMA", "TABLE_FAMILIES", "schema_errors", "validate_results",
           "git_info", "package_versions", "dumps", "build_results", "samples_table", "read_samples", "load_run",
           "protocol_text", "run_label", "render_markdown", "render_gallery", "write_plots",
           "COMPARE_SCHEMA_VERSION", "run_compare", "check_protocols", "join_samples", "pair_stats",
           "build_leaderboard", "summary_lines",
           "paired_bootstrap_ci", "wilcoxon_p", "holm", "win_tie_loss", "compact_letters"]
