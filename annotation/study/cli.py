"""`refcoco-edit study push|pull`: the command line of the human study of editors.

Registered on the main parser by ``add_study_parser(subparsers)``. As in the review: the token
comes from ``$LABEL_STUDIO_API_KEY`` only; a missing or refused token or bad usage raises
``InputError`` (exit 2, one line), a server that fails or stops answering ``LabelStudioError``
(exit 1). Nothing heavy is imported until a handler runs.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from ..cli import DOCUMENT_ROOT_ENV, URL_ENV, _url


def cmd_study_push(args: argparse.Namespace) -> int:
    """Handler of `study push`."""
    from .push import push

    push(args.out, args.runs, _url(args), title=args.title, samples=args.samples, seed=args.seed,
         document_root=args.document_root or os.environ.get(DOCUMENT_ROOT_ENV), media_url=args.media_url,
         batch_size=args.batch_size, raters_per_task=args.raters_per_task)
    return 0


def cmd_study_pull(args: argparse.Namespace) -> int:
    """Handler of `study pull`."""
    from .pull import pull

    pull(args.out, _url(args), resamples=args.bootstrap, timeout=args.timeout)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="STUDY",
                   help="the study folder: the blind mapping (study_state.json), the media, and after a pull "
                        "study.json, study.md, ratings.parquet, plots/")
    p.add_argument("--url", default=None, help=f"Label Studio URL (default: ${URL_ENV}); the API token is read from "
                                                "$LABEL_STUDIO_API_KEY")


def add_study_parser(subparsers: Any) -> None:
    """Register ``study push`` and ``study pull`` on the main parser's subparsers."""
    study = subparsers.add_parser(
        "study", help="a blind human rating study of editors in Label Studio (Table 3, agreement, metric alignment)",
        description="Rate the outputs of several score runs in Label Studio, blind and shuffled per task; pull the "
                    "ratings into per-method means (the paper's Table 3), Krippendorff's alpha and the agreement of "
                    "every metric with people. The API token comes from $LABEL_STUDIO_API_KEY.")
    sub = study.add_subparsers(dest="study_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("push", help="create/update the rating project: one task per sample (idempotent)",
                       description="Create or find the study project and import or update one task per sample, "
                                   "showing the source, the prompt and every run's output as 'Output 1..n' in a "
                                   "per-task shuffled order (the mapping stays in STUDY/study_state.json). "
                                   "Re-pushing never duplicates tasks; adding a run adds a slot and keeps ratings.")
    _common(p)
    p.add_argument("--runs", nargs="+", required=True, metavar="RESULTS",
                   help="score run folders (refcoco-edit score --out), at least two; a re-push gives them all again")
    p.add_argument("--samples", type=int, default=None, metavar="N",
                   help="rate N samples (seeded choice among those every run scored; default: all)")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="seed of the sample choice and the output order (default: 0; fixed at the first push)")
    p.add_argument("--title", default=None, help="project title (default: 'refcoco-edit study: <STUDY name>')")
    p.add_argument("--document-root", default=None,
                   help=f"the server's local-files document root, an ancestor of STUDY (default: ${DOCUMENT_ROOT_ENV})")
    p.add_argument("--media-url", default=None,
                   help="serve the images from this URL prefix instead (STUDY/media/ copied there)")
    p.add_argument("--raters-per-task", type=int, default=3, metavar="K",
                   help="how many raters the labeling stream gives each task to (the project's maximum annotations; "
                        "alpha needs at least 2; default: 3)")
    p.add_argument("--batch-size", type=int, default=50, help="tasks per import request (default: 50)")
    p.set_defaults(func=cmd_study_push)
    p = sub.add_parser("pull", help="export the ratings; write study.json, study.md, ratings.parquet, plots/",
                       description="Export every rating through an export snapshot, de-blind it with "
                                   "STUDY/study_state.json and write the study's numbers into STUDY (atomic; "
                                   "unchanged files are not rewritten).")
    _common(p)
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples of every CI (default: 1000)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the export snapshot (default: 300)")
    p.set_defaults(func=cmd_study_pull)
