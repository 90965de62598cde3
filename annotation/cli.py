"""`refcoco-edit review push|pull`: the command line of the Label Studio review.

``add_review_parser(subparsers)`` registers the ``review`` command on the main parser; its
handlers raise ``InputError`` for bad usage and a missing or refused token (exit code 2) and
``LabelStudioError`` when the server fails or cannot be reached (exit code 1). The token comes
from ``$LABEL_STUDIO_API_KEY`` only: there is no option for it, so it never lands in a shell
history or a process list. Nothing heavy is imported until a handler runs.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, List

from refcoco_edit.errors import InputError

URL_ENV = "LABEL_STUDIO_URL"
DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"


def _ids(text: str) -> List[str]:
    """``ID,ID,...`` -> list of ids (empty items dropped)."""
    return [t.strip() for t in str(text).split(",") if t.strip()]


def _url(args: argparse.Namespace) -> str:
    url = args.url or os.environ.get(URL_ENV)
    if not url:
        raise InputError(f"give --url (or set ${URL_ENV}) to the Label Studio server")
    return url


def _workdir(args: argparse.Namespace) -> str:
    from refcoco_edit.workspace import Workspace

    ws = Workspace(args.workdir)
    if not ws.root.is_dir() or not (ws.manifest_path.exists() or ws.stage("generate").dir.exists()):
        raise InputError(f"--workdir {args.workdir} is not a refcoco-edit workspace")
    return str(ws.root)


def cmd_review_push(args: argparse.Namespace) -> int:
    """Handler of `review push`."""
    from .push import push

    samples = None
    if args.samples:
        samples = _ids(args.samples)
        if not samples:
            raise InputError("--samples: give comma-separated sample ids")
    push(_workdir(args), _url(args), title=args.title, samples=samples, pending_only=args.pending_only,
         document_root=args.document_root or os.environ.get(DOCUMENT_ROOT_ENV), media_url=args.media_url,
         batch_size=args.batch_size)
    return 0


def cmd_review_pull(args: argparse.Namespace) -> int:
    """Handler of `review pull`."""
    from .pull import pull

    pull(_workdir(args), _url(args), title=args.title, timeout=args.timeout)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="the workspace (build --out)")
    p.add_argument("--url", default=None, help=f"Label Studio URL, e.g. http://127.0.0.1:8080 (default: ${URL_ENV}); "
                                                "the API token is read from $LABEL_STUDIO_API_KEY")
    p.add_argument("--title", default=None,
                   help="project title (default: the one pushed before, else 'refcoco-edit review: <workdir name>')")


def add_review_parser(subparsers: Any) -> None:
    """Register ``review push`` and ``review pull`` on the main parser's subparsers."""
    review = subparsers.add_parser(
        "review", help="human review in Label Studio: push tasks, pull and reconcile reviews",
        description="Human validation in Label Studio. The API token comes from $LABEL_STUDIO_API_KEY.")
    sub = review.add_subparsers(dest="review_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("push", help="create/update the project and one task per sample (idempotent)",
                       description="Create or find the project, write the review images under "
                                   "WORKDIR/review/media/, and import or update one task per sample with "
                                   "its candidates' masks pre-filled. Re-pushing never duplicates tasks.")
    _common(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--all", dest="pending_only", action="store_false",
                       help="push every sample (default)")
    which.add_argument("--pending-only", dest="pending_only", action="store_true",
                       help="push only samples without a settled review")
    p.set_defaults(pending_only=False)
    p.add_argument("--samples", default=None, help="only these sample ids (comma separated)")
    p.add_argument("--document-root", default=None,
                   help=f"the server's local-files document root, an ancestor of WORKDIR (default: ${DOCUMENT_ROOT_ENV})")
    p.add_argument("--media-url", default=None,
                   help="serve the images from this URL prefix instead (WORKDIR/review/media/ copied there)")
    p.add_argument("--batch-size", type=int, default=50, help="tasks per import request (default: 50)")
    p.set_defaults(func=cmd_review_push)

    p = sub.add_parser("pull", help="export the annotations and reconcile them into WORKDIR/review/reviews.parquet",
                       description="Export every annotation through an export snapshot and reconcile it into "
                                   "WORKDIR/review/reviews.parquet (atomic, idempotent).")
    _common(p)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the export snapshot (default: 300)")
    p.set_defaults(func=cmd_review_pull)
