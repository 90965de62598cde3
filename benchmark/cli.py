"""`refcoco-edit score`, `report`, `judge` and `compare`: parsers and handlers.

``refcoco_edit.cli`` adds them with ``add_score_parser(sub)`` / ``add_report_parser(sub)`` /
``add_judge_parser(sub)`` / ``add_compare_parser(sub)``.
Nothing heavy is imported here (numpy, pyarrow, cv2, matplotlib load inside the handlers), so
``refcoco-edit --help`` stays fast and torch-free. Handlers raise ``InputError`` for bad usage
(exit 2) and return 0 when the run finished, failed samples included.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional

from refcoco_edit import config
from refcoco_edit.config import parse_key_values
from refcoco_edit.errors import InputError

from .score.config import JudgeSettings, ScoreConfig

__all__ = ["add_score_parser", "add_report_parser", "add_judge_parser", "add_compare_parser", "cmd_score",
           "cmd_report", "cmd_judge", "cmd_compare", "parse_editor_args"]


def parse_editor_args(items: Optional[List[str]]) -> Dict[str, Any]:
    """``["steps=20", "guidance=7.5", "name=x"]`` -> {"steps": 20, "guidance": 7.5, "name": "x"}
    (values read as YAML scalars: numbers, true/false, null; anything else stays a string)."""
    return parse_key_values(items, "--editor-arg")


# the cmd: template placeholders as `score --help` lists them; the same names as the adapter's
# SAMPLE_PLACEHOLDERS (a test holds them equal: importing the adapter here would import numpy)
CMD_PLACEHOLDERS = ("input", "prompt", "output", "seed", "sample_id", "mask", "object_mask", "edit_phrase",
                    "referring_phrase", "edit_type", "output_mask")


def _placeholders() -> str:
    return " ".join("{" + k + "}" for k in CMD_PLACEHOLDERS)


def add_score_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "score", help="score an editor on a RefCOCO-Edit export or workspace",
        description="Run an editor over a dataset split (resumable: outputs are cached per sample) and write "
                    "RESULTS/results.json, samples.parquet, report.md, gallery.html and plots/*.png.",
        epilog="--model: a registered name (identity, oracle; instruct-pix2pix, magicbrush, blended-latent, "
               "inpaint-anything with --editor-arg model=PATH_OR_HUB_ID steps=N device=cuda ...; plug-ins of the "
               "refcoco_edit.editors entry-point group), module:Class, dir:PATH (PATH/{sample_id}.png) or cmd:\"prog {input} {prompt} {output}\" "
               f"(placeholders {_placeholders()}, of which {{output_mask}} is where the editor may write its "
               "predicted mask of the referred object; or {batch} for a JSON-lines batch file; run without a shell). "
               "--list-editors shows every name and alias. Exit codes: 0 done (failed samples included), 2 bad usage or unusable input, 1 other errors.")
    p.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="YAML file of settings (keys: the setting names, e.g. limit: 10, metrics: [paper], "
                        "gallery: false, editor_args: {steps: 20}); the command line wins")
    config.add_flags(p, ScoreConfig)
    p.add_argument("--list-editors", action="store_true", help="list the known editor names and exit")
    p.set_defaults(func=cmd_score)
    return p


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report", help="put several score runs side by side",
        description="Read RESULTS folders of `refcoco-edit score` and write DIR/report.md (one row per run in each "
                    "table), comparison.json, gallery.html (outputs side by side) and plots/.")
    p.add_argument("runs", nargs="+", metavar="RESULTS", help="results folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-gallery", dest="gallery", action="store_false", help="skip gallery.html")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip plots/*.png")
    p.add_argument("--study", default=None, metavar="STUDY",
                   help="add a human study (`refcoco-edit study pull --out STUDY`): its Table 3, agreement and "
                        "metric alignment go into report.md and comparison.json")
    p.set_defaults(func=cmd_report)
    return p


def add_judge_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "judge", help="judge the cached outputs of a finished score run with a VLM (nothing is edited again)",
        description="Ask a VLM judge (any OpenAI-compatible server) about every scored sample of RESULTS: VIEScore "
                    "SC/PQ/O and the referring questions; adds the judge section to results.json, judge columns to "
                    "samples.parquet, judge/answers.parquet (raw answers), and redraws report.md and gallery.html. "
                    "Answers are cached (SQLite): a re-run or a resumed run asks only what is missing.",
        epilog="Key: $OPENAI_API_KEY (or --judge-api-key-env); not needed with --judge-base-url. Exit codes: 0 done "
               "(judge failures included, counted with reasons), 2 bad usage or a rejected key, 1 the server failed "
               "(re-run the same command to resume).")
    p.add_argument("run", metavar="RESULTS", help="results folder of `refcoco-edit score`")
    p.add_argument("--config", default=None, metavar="FILE.yaml", help="YAML file of judge settings (judge: MODEL, ...)")
    config.add_flags(p, JudgeSettings)
    p.set_defaults(func=cmd_judge)
    return p


def cmd_judge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .judge.api import judge_existing

    values = config.merge(config.read_file(getattr(args, "config", None), JudgeSettings),
                          config.from_namespace(JudgeSettings, args))
    if not values.get("judge"):
        raise InputError("judge: --judge MODEL is required (the judge model as its server names it)")
    s = config.build(JudgeSettings, values)
    res = judge_existing(Path(args.run), s)
    _print_judge(res.section, res.timing)
    return 0


def _print_judge(j: Dict[str, Any], timing: Dict[str, Any]) -> None:
    c = j["counts"]
    print(f"judge {j['model']} ({j['base_url_class']}, prompts {j['prompt_version']}): {c['samples']} samples, "
          f"{c['valid']} of {c['answers']} answers valid; {timing.get('requests', 0)} requests, "
          f"{timing.get('cache_hits', 0)} answers from the cache")
    for name, m in j["metrics"].items():
        if m["mean"] is not None and not name.endswith("_spread"):
            lo, hi = m["ci95"] or (m["mean"], m["mean"])
            print(f"  {name:<26} {m['mean']:.4g}  [{lo:.4g}, {hi:.4g}]  (n={m['n']}, failed {m['n_failed']})")
    if c["failed"]:
        print("  judge failures: " + ", ".join(f"{k} {v}" for k, v in c["failed_by_reason"].items()))


def cmd_score(args: argparse.Namespace) -> int:
    if getattr(args, "list_editors", False):
        from .editors import list_editors

        for row in list_editors():
            print(f"{row['name']:<26} {row['kind']:<9} {row['target']}")
        return 0
    from .harness import run_score

    values = config.merge(config.read_file(getattr(args, "config", None), ScoreConfig),
                          config.from_namespace(ScoreConfig, args))
    if not values.get("model"):
        raise InputError("score: --model is required (e.g. --model identity, or model: in --config); "
                         "--list-editors shows the names")
    cfg = config.build(ScoreConfig, values)
    res = run_score(cfg)
    r, c = res.results, res.results["counts"]
    print(f"scored {c['scored']} of {c['samples']} samples with {r['editor']['spec']} "
          f"({c['failed']} failed, {c['skipped']} skipped; {res.timing['outputs_reused']} outputs reused) "
          f"in {res.timing['total_s']:.1f}s -> {res.out}")
    for name in ("ap", "l2_bg", "clip_sim_fg", "clip_sim_fg_pr", "psnr_bg", "ssim_bg", "lpips_bg", "referring_accuracy"):
        m = r["metrics"].get(name)
        if m and m["mean"] is not None:
            lo, hi = m["ci95"] or (m["mean"], m["mean"])
            print(f"  {name:<20} {m['mean']:.4g}  [{lo:.4g}, {hi:.4g}]  (n={m['n']})")
    if r["not_computed"]:
        print("  not computed: " + "; ".join(f"{n} ({v['reason']})" for n, v in r["not_computed"].items()))
    if c["failed"]:
        print("  failed: " + ", ".join(f"{k} {v}" for k, v in c["failed_by_reason"].items()))
    if r.get("judge"):
        _print_judge(r["judge"], res.timing.get("judge", {}))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .report import compare_runs

    out = Path(args.out)
    compare_runs([Path(r) for r in args.runs], out, gallery=args.gallery, plots=args.plots,
                 study=Path(args.study) if args.study else None)
    print(f"compared {len(args.runs)} run(s) -> {out / 'report.md'}")
    return 0


def add_compare_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare", help="paired significance tests between score runs and a leaderboard",
        description="Join RESULTS folders of `refcoco-edit score` by sample_id and write DIR/compare.json, "
                    "leaderboard.md and leaderboard.html: for every pair of runs and every metric both computed, the "
                    "mean paired difference with a paired bootstrap 95% CI, a Wilcoxon signed-rank p-value "
                    "Holm-adjusted over the pair's metrics and wins/ties/losses; the runs ranked on --metric with the "
                    "groups that are not significantly different (compact letters), overall and per edit_type and "
                    "attr_* bucket. Runs of different protocols are flagged in every output.",
        epilog="Runs scored on different samples (one failed, skipped or absent in a run) are refused unless "
               "--intersect; different data views are refused. Exit codes: 0 done, 2 bad usage or unusable input, "
               "1 other errors. See docs/compare.md.")
    p.add_argument("runs", nargs="+", metavar="RESULTS", help="results folders (at least two)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--metric", default=None, metavar="NAME",
                   help="leaderboard metric (default: referring_accuracy, else the first of referring_margin, "
                        "vie_o, clip_sim_fg, l2_bg every run computed and measured alike)")
    p.add_argument("--intersect", action="store_true",
                   help="compare on the samples every run scored; prints and records what each run lost "
                        "(default: different sample sets are an error)")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap resamples (default: 2000)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the bootstraps (default: 0)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level after Holm (default: 0.05)")
    p.add_argument("--diagnostics", action="store_true",
                   help="also test the diagnostic metrics (no better direction, e.g. change_target): "
                        "A higher / B higher instead of better / worse; they join each pair's Holm family")
    p.set_defaults(func=cmd_compare)
    return p


def cmd_compare(args: argparse.Namespace) -> int:
    from .report.compare import run_compare
    from .report.leaderboard import summary_lines

    doc = run_compare(list(args.runs), args.out, metric=args.metric, intersect=args.intersect,
                      bootstrap=args.bootstrap, seed=args.seed, alpha=args.alpha, diagnostics=args.diagnostics)
    print("\n".join(summary_lines(doc, args.out)))
    return 0
