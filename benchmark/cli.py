"""`refcoco-edit score` and `refcoco-edit report`: parsers and handlers.

``refcoco_edit.cli`` adds them with ``add_score_parser(sub)`` / ``add_report_parser(sub)``.
Nothing heavy is imported here (numpy, pyarrow, cv2, matplotlib load inside the handlers), so
``refcoco-edit --help`` stays fast and torch-free. Handlers raise ``InputError`` for bad usage
(exit 2) and return 0 when the run finished, failed samples included.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional

from refcoco_edit.errors import InputError

__all__ = ["add_score_parser", "add_report_parser", "cmd_score", "cmd_report", "parse_editor_args"]


def _csv(text: str) -> List[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def parse_editor_args(items: Optional[List[str]]) -> Dict[str, Any]:
    """``["steps=20", "guidance=7.5", "name=x"]`` -> {"steps": 20, "guidance": 7.5, "name": "x"}
    (values read as YAML scalars: numbers, true/false, null; anything else stays a string)."""
    out: Dict[str, Any] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise InputError(f"--editor-arg {item!r}: expected key=value")
        import yaml

        try:
            v = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            v = value
        if not isinstance(v, (str, int, float, bool, list, dict, type(None))):
            v = value  # dates and other YAML types: keep the text
        out[key] = v
    return out


def add_score_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "score", help="score an editor on a RefCOCO-Edit export or workspace",
        description="Run an editor over a dataset split (resumable: outputs are cached per sample) and write "
                    "RESULTS/results.json, samples.parquet, report.md, gallery.html and plots/*.png.",
        epilog="--model: a registered name (identity, oracle; instruct-pix2pix, magicbrush, blended-latent, "
               "inpaint-anything with --editor-arg model=PATH_OR_HUB_ID steps=N device=cuda ...; plug-ins of the "
               "refcoco_edit.editors entry-point group), module:Class, dir:PATH (PATH/{sample_id}.png) or cmd:\"prog {input} {prompt} {output}\" "
               "(placeholders {input} {output} {prompt} {seed} {sample_id} {mask} {object_mask} {edit_phrase} "
               "{referring_phrase} {edit_type}, or {batch} for a JSON-lines batch file; run without a shell). "
               "Exit codes: 0 done (failed samples included), 2 bad usage or unusable input, 1 other errors.")
    p.add_argument("--model", help="the editor (see below); --list-editors shows the known names")
    p.add_argument("--data", default="refcoco-edit-work",
                   help="export folder, .parquet file or workspace (default: refcoco-edit-work)")
    p.add_argument("--out", default=None, help="results folder (default: refcoco-edit-results/<model>)")
    p.add_argument("--split", default=None, help="score only this split (default: all)")
    p.add_argument("--metrics", type=_csv, default=None,
                   help="comma-separated metric or family names: paper, pie, magicbrush, referring (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of editor seeds and bootstrap (default: 0)")
    p.add_argument("--status", choices=("all", "accepted"), default="all", help="all samples or reviewed-accepted only")
    p.add_argument("--limit", type=int, default=None, help="score only the first N samples (by sample_id)")
    p.add_argument("--batch-size", type=int, default=None, help="editor batch size (default: the editor's)")
    p.add_argument("--editor-arg", action="append", metavar="KEY=VALUE", default=[],
                   help="editor constructor option (repeatable), e.g. --editor-arg protocol=gt_mask for dir:")
    p.add_argument("--resize-outputs", action="store_true",
                   help="resize outputs of the wrong size to the source's (recorded); default: they fail")
    p.add_argument("--retry-failed", action="store_true", help="edit samples that failed in an earlier run again")
    p.add_argument("--overwrite", action="store_true", help="discard cached outputs of another configuration")
    p.add_argument("--cmd-timeout", type=float, default=None, help="cmd: time limit per call in seconds (default: 600)")
    p.add_argument("--cmd-shell", action="store_true",
                   help="cmd: run the template through /bin/sh (values shlex-quoted); only for pipes/redirections")
    p.add_argument("--clip-model", default=None,
                   help="CLIP model folder or hub id, e.g. openai/clip-vit-large-patch14 (AP, CLIP-Sim_fg, CLIP "
                        "whole/edited, CLIP-I, CLIP-T)")
    p.add_argument("--aesthetic-weights", default=None,
                   help="LAION aesthetic predictor v2 MLP (sac+logos+ava1-l14-linearMSE.pth; a file or "
                        "owner/repo/file in the hub cache) for AP, with --clip-model ViT-L/14")
    p.add_argument("--dino-model", default=None, help="DINO ViT model folder or hub id, e.g. facebook/dino-vits16 "
                                                      "(MagicBrush DINO)")
    p.add_argument("--lpips-weights", default=None,
                   help="LPIPS weights (PIE-Bench LPIPS_bg): one file with the whole lpips.LPIPS state dict, or a "
                        "folder with the lpips package's alex.pth and torchvision's alexnet weights")
    p.add_argument("--device", default="auto", help="device of the metric models: auto (cuda when present), cpu, "
                                                    "cuda, cuda:1 ... (default: auto)")
    p.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                   help="dtype of the CLIP/DINO models: auto = fp16 on CUDA, fp32 elsewhere (default: auto)")
    p.add_argument("--metric-batch-size", type=int, default=32, help="images per model forward pass (default: 32)")
    p.add_argument("--local-files-only", action=argparse.BooleanOptionalAction, default=True,
                   help="metric models: hub ids only from the local cache, never downloaded (default: on)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (default: 1000)")
    p.add_argument("--referring-eps", type=float, default=0.01, help="referring accuracy margin (default: 0.01)")
    p.add_argument("--preservation-tau", type=float, default=0.05, help="distractor preservation threshold (default: 0.05)")
    p.add_argument("--workers", type=int, default=2,
                   help="threads decoding images and computing metrics; with --executor ray also the number of Ray "
                        "actors editing (default: 2)")
    p.add_argument("--chunk-size", type=int, default=32,
                   help="samples decoded, edited and scored together; with --executor ray the unit of work of an "
                        "actor (default: 32)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where editing runs: local (this process) or ray (--workers actors, each loading the editor "
                        "once; RESULTS must be on storage every node sees); metrics and reports run here (default: local)")
    p.add_argument("--ray-address", default=None,
                   help="ray executor: the cluster to attach to (auto, HOST:6379, ray://HOST:10001; default: a private "
                        "local Ray instance with --workers CPUs, listening on 127.0.0.1 only)")
    p.add_argument("--num-gpus-per-worker", type=float, default=0.0,
                   help="ray executor: GPUs reserved by each actor (fractions share a GPU; Ray sets each actor's "
                        "CUDA_VISIBLE_DEVICES, the editor picks its device as it does locally)")
    p.add_argument("--no-gallery", dest="gallery", action="store_false", help="skip gallery.html and thumbnails")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip plots/*.png")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal only)")
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
    p.set_defaults(func=cmd_report)
    return p


def cmd_score(args: argparse.Namespace) -> int:
    if getattr(args, "list_editors", False):
        from .editors import list_editors

        for row in list_editors():
            print(f"{row['name']:<26} {row['kind']:<9} {row['target']}")
        return 0
    if not args.model:
        raise InputError("score: --model is required (e.g. --model identity); --list-editors shows the names")
    from .harness import ScoreConfig, run_score

    cfg = ScoreConfig(
        model=args.model, data=args.data, out=args.out, split=args.split, metrics=args.metrics, seed=args.seed,
        status=args.status, limit=args.limit, batch_size=args.batch_size, resize_outputs=args.resize_outputs,
        retry_failed=args.retry_failed, overwrite=args.overwrite, editor_args=parse_editor_args(args.editor_arg),
        cmd_timeout=args.cmd_timeout, cmd_shell=args.cmd_shell, clip_model=args.clip_model,
        aesthetic_weights=args.aesthetic_weights, dino_model=args.dino_model, lpips_weights=args.lpips_weights,
        device=args.device, dtype=args.dtype, metric_batch_size=args.metric_batch_size,
        local_files_only=args.local_files_only,
        bootstrap=args.bootstrap, referring_eps=args.referring_eps, preservation_tau=args.preservation_tau,
        workers=args.workers, gallery=args.gallery, plots=args.plots, progress=args.progress,
        chunk_size=args.chunk_size, executor=args.executor, ray_address=args.ray_address,
        num_gpus_per_worker=args.num_gpus_per_worker,
    )
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
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .report import compare_runs

    out = Path(args.out)
    compare_runs([Path(r) for r in args.runs], out, gallery=args.gallery, plots=args.plots)
    print(f"compared {len(args.runs)} run(s) -> {out / 'report.md'}")
    return 0
