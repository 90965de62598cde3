"""The `refcoco-edit` command line.

    refcoco-edit demo   --out DIR
    refcoco-edit build  [--out WORKDIR] [--config FILE.yaml] [any setting as --flag]
    refcoco-edit export --workdir WORKDIR --out DIR [--status accepted|all] [--view rie|reference-based]

Settings come from the defaults, then the YAML config, then the command line (which wins).
Exit codes: 0 done (quarantined samples do not fail a run), 2 bad usage or unusable input,
1 anything else. Nothing here imports torch: `refcoco-edit --help` stays fast.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from . import config
from .config import UsageError
from .errors import InputError, RunError, disk_error_message, is_disk_error

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def load_config_file(path: Optional[str], config_cls: Any) -> Dict[str, Any]:
    """Read a YAML config of ``config_cls`` (see :func:`refcoco_edit.config.read_file`)."""
    return config.read_file(path, config_cls)


def make_config(config_cls: Any, args: argparse.Namespace) -> Any:
    """defaults < ``--config`` YAML < the flags given: the command line wins."""
    return config.make(config_cls, args, getattr(args, "config", None))


# ----------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import write_demo

    summary = write_demo(args.out, num_images=args.num_images, seed=args.seed)
    print(f"wrote the synthetic mini-RefCOCO to {args.out}: {summary['images']} images, "
          f"{summary['annotations']} annotations, refs {summary['refs']}")
    print(f"use it with: refcoco-edit build --refcoco {args.out} --images {Path(args.out) / 'images'}")
    return EXIT_OK


def cmd_build(args: argparse.Namespace) -> int:
    from .build import BuildConfig, build, format_quarantine

    cfg = make_config(BuildConfig, args)
    res = build(cfg)
    n_q = sum(sum(v.values()) for v in res.quarantine.values())
    print(res.summary())
    if cfg.llm.model:
        print(f"LLM {cfg.llm.model}: {res.counts.get('llm_calls', 0)} requests, "
              f"{res.counts.get('llm_cache_hits', 0)} answers from the cache")
    if res.candidate_failures:
        print("candidates left out (pipeline/reason; a sample left with none is quarantined): "
              + ", ".join(f"{k}: {v}" for k, v in res.candidate_failures.items()))
    if res.export_dir is None:  # no sample came through: still a finished run (exit 0), and why
        print("\n".join(format_quarantine(res.quarantine, res.workdir)))
    elif n_q:
        detail = ", ".join(f"{st}/{r}: {c}" for st, d in sorted(res.quarantine.items()) for r, c in sorted(d.items()))
        print(f"quarantined {n_q} (see {res.workdir / 'quarantine'}): {detail}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_workspace
    from .workspace import Workspace

    ws = Workspace(args.workdir)
    if not ws.manifest_path.exists() and not ws.stage("generate").dir.exists():
        raise UsageError(f"--workdir {args.workdir} is not a refcoco-edit workspace")
    repainter = None
    if args.repaint_model:
        if args.view != "reference-based":
            raise UsageError("--repaint-model is for --view reference-based")
        from refcoco_edit.models import Runtime
        from refcoco_edit.pipelines.repaint_surround import SDSurroundRepainter

        try:
            repainter = SDSurroundRepainter(args.repaint_model, Runtime(device=args.device),
                                            num_inference_steps=args.repaint_steps, resolution=args.repaint_resolution)
        except ValueError as e:
            raise UsageError(str(e)) from None
    s = export_workspace(ws, out=args.out, status=args.status, view=args.view, repainter=repainter, fsync=args.fsync)
    print(f"exported {s['rows']} samples ({', '.join(f'{k} {v}' for k, v in s['splits'].items())}) to {s['out']}")
    return EXIT_OK


# `refcoco-edit train --model NAME`: the trainer modules (each has main(argv) -> exit code)
TRAINERS = {"referdiffusion": "refcoco_edit.benchmark.referdiffusion.train",
            "freeedit": "refcoco_edit.benchmark.freeedit.train"}
_TRAINERS_HELP = ("Trainers (--model, default referdiffusion):\n"
                  "  --model referdiffusion  ReferDiffusion, the RIE baseline (RefCOCO-Edit exports); its options below\n"
                  "  --model freeedit        FreeEdit, the reference-based baseline, trained in phases on a "
                  "reference-based export;\n"
                  "                          its options: refcoco-edit train --model freeedit --help\n")


def split_train_model(rest: Sequence[str]) -> "tuple[str, list[str]]":
    """(trainer name, the other tokens) of ``train``'s arguments: ``--model NAME`` / ``--model=NAME``
    picks the trainer when NAME is a plain word; ``--model KEY=VALUE``, ``--model.KEY V`` and a
    YAML mapping stay the ReferDiffusion trainer's own ``model`` setting. UsageError for an unknown word."""
    import re

    tokens, name = list(rest), None
    for i, tok in enumerate(tokens):
        if tok == "--":
            break
        value, width = None, 0
        if tok == "--model" and i + 1 < len(tokens):
            value, width = tokens[i + 1], 2
        elif tok.startswith("--model="):
            value, width = tok[len("--model="):], 1
        if value is not None and re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", value):
            if value not in TRAINERS:
                raise UsageError(f"train: unknown --model {value!r}; choose {' or '.join(TRAINERS)}")
            name = value
            del tokens[i:i + width]
            break
    return name or "referdiffusion", tokens


def cmd_train(args: argparse.Namespace) -> int:
    import importlib

    name, rest = split_train_model(args.rest)
    if name == "referdiffusion" and ("-h" in rest or "--help" in rest) and "--model" not in args.rest:
        print(_TRAINERS_HELP, flush=True)  # the plain `train --help`: both trainers, then the default's options
    return int(importlib.import_module(TRAINERS[name]).main(rest) or 0)


def build_parser() -> argparse.ArgumentParser:
    from .build import BuildConfig

    parser = argparse.ArgumentParser(
        prog="refcoco-edit",
        description="Referring Image Editing: build RefCOCO-Edit datasets from RefCOCO, export them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("demo", help="write the synthetic mini-RefCOCO (refer layout)",
                       description="Write the bundled synthetic demo data: a mini-RefCOCO in the refer layout "
                                   "(refcoco/, refcoco+/, refcocog/ with instances.json and refs(*).p, images/), "
                                   "the same data `build` uses when no --refcoco is given. Deterministic per --seed.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-images", type=int, default=48, help="number of images (default: 48)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("build", help="select, prompt, generate and export (resumable)",
                       description="Build a RefCOCO-Edit dataset. With no --refcoco, the bundled demo data.")
    p.add_argument("--config", help="YAML file of settings (the command line wins)", default=None)
    config.add_flags(p, BuildConfig)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("export", help="export a workspace as Parquet + dataset card",
                       description="Export a workspace (build --out) as split-wise Parquet files plus a dataset card "
                                   "(README.md) that pandas, pyarrow and `datasets.load_dataset(OUT)` read; reviews "
                                   "from `review pull` are folded in. Each image is stored once: the reference "
                                   "candidate's image is `reference_image`, its index `reference_candidate`. The "
                                   "folder is replaced atomically.")
    p.add_argument("--workdir", required=True, help="the workspace (build --out)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--status", choices=("accepted", "all"), default="all", help="which samples (default: all)")
    p.add_argument("--view", choices=("rie", "reference-based"), default="rie",
                   help="rie: every column; reference-based: twice-repainted (source, exemplar, reference) triplets")
    p.add_argument("--fsync", action="store_true",
                   help="flush every file to the disk before the folder is swapped in, so that a power loss right "
                        "after keeps the export (costs a disk write, ~1.5 s per GB; without it a crash or a full disk "
                        "still never leaves a half export, and the workspace itself is always written durably)")
    p.add_argument("--repaint-model", default=None,
                   help="reference-based view: an SD inpainting model (folder or hub id) that repaints the exemplars' "
                        "surroundings (sd-inpaint-surround); default: the weight-free backdrop repainter")
    p.add_argument("--repaint-steps", type=int, default=30, help="denoising steps of --repaint-model (default: 30)")
    p.add_argument("--repaint-resolution", type=int, default=512, help="working resolution of --repaint-model (default: 512)")
    p.add_argument("--device", default="auto", help="device of --repaint-model (auto|cpu|cuda[:i]; default: auto)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("train", help="train ReferDiffusion or FreeEdit (--model; the baselines)", add_help=False,
                       description="Train ReferDiffusion (--model referdiffusion, the default) or FreeEdit "
                                   "(--model freeedit); see `refcoco-edit train [--model NAME] --help`.")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_train)

    from refcoco_edit.annotation.cli import add_review_parser
    from refcoco_edit.annotation.study.cli import add_study_parser
    from refcoco_edit.benchmark.cli import add_compare_parser, add_judge_parser, add_report_parser, add_score_parser

    add_review_parser(sub)
    add_study_parser(sub)

    add_score_parser(sub)
    add_report_parser(sub)
    add_compare_parser(sub)
    add_judge_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["train"]:  # the trainer parses its own options (YAML config + overrides)
            args = argparse.Namespace(func=cmd_train, rest=argv[1:])
        else:
            args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: 2 on bad usage, 0 on --help
        return int(e.code or 0)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"refcoco-edit: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except RunError as e:
        print(f"refcoco-edit: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("refcoco-edit: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except OSError as e:
        if not is_disk_error(e):  # any other OSError: the generic one-line message below
            return _other_error(e)
        print(f"refcoco-edit: error: {disk_error_message(e)}", file=sys.stderr)
        if os.environ.get("REFCOCO_EDIT_DEBUG"):
            raise
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - the outermost boundary: one line, exit 1
        return _other_error(e)


def _other_error(e: BaseException) -> int:
    print(f"refcoco-edit: error: {type(e).__name__}: {e}", file=sys.stderr)
    if os.environ.get("REFCOCO_EDIT_DEBUG"):
        raise e
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
