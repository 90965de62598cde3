"""`refcoco-edit review pull`: export the annotations, reconcile them into the review table.

The annotations come through the export **snapshot** API (create a snapshot, wait until it is
completed, download it as JSON, delete it), which returns every task and annotation of the
project at one point in time. Webhooks are at-most-once and are not used.

The review table ``WORKDIR/review/reviews.parquet`` (schema :func:`review_schema`) has one row per
sample that has at least one annotation in the project. It is a function of the server's state:
rows are sorted by ``sample_id``, every time stamp comes from the annotations themselves, and the
file is only rewritten when its content changes, so pulling twice changes nothing. It is written
to a temporary file and renamed only after everything was downloaded and reconciled: a server
that dies mid-pull leaves the previous table as it was. Rows of samples that are not in this
project (reviewed elsewhere) are kept.

Several annotations on one task are resolved by this rule:

1. skipped (cancelled) annotations do not count (``n_skipped``);
2. if annotations are marked *ground truth*, the most recently updated one of them decides;
3. otherwise the majority decision wins (a candidate index or "reject"); a tie goes to the
   decision of the most recently updated annotation among the tied ones;
4. the most recently updated annotation with the winning decision supplies the prompt edit,
   the repainted M_e, the quality, the note and the reject reason.

``disagreement`` is true when the counted annotations do not all make the same decision;
``disagreement_details`` (JSON) lists each annotation's decision and quality, and which rule
decided.

An edited prompt is validated: its spans are recomputed (from ``[...]`` / ``{...}`` marks, or
by finding the original phrases again) and checked with :meth:`refcoco_edit.prompts.Prompt.validate`.
An edit whose phrases cannot be found is kept in ``prompt_edited`` and flagged in
``prompt_edit_invalid``; the prompt columns then stay null, and the sample is not exported as
accepted until a reviewer fixes it (see ``refcoco_edit.export.apply_review``).
"""
from __future__ import annotations

import datetime as dt
import io
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from refcoco_edit import rle as rle_mod
from refcoco_edit.errors import InputError
from refcoco_edit.prompts import Prompt, find_span
from refcoco_edit.workspace import Workspace, atomic_write_bytes

from . import config as cfg
from .config import brush_to_mask, mask_to_brush_rle  # noqa: F401  (re-exported)
from .client import Connection, LabelStudioError, ServerUnreachable
from .push import default_title, find_project, load_samples, load_state

REVIEW_TABLE_VERSION = "1"
EXPORT_TIMEOUT_S = 300.0


def review_schema():
    """The explicit Arrow schema of ``review/reviews.parquet``."""
    import pyarrow as pa

    rle = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])
    span = pa.list_(pa.int32())
    return pa.schema([
        pa.field("sample_id", pa.string(), nullable=False),
        ("status", pa.string()),                 # accepted | rejected | pending
        ("reviewer", pa.string()),               # e-mail (or user:<id>) of the deciding annotation
        ("chosen_candidate", pa.int32()),
        ("notes", pa.string()),
        ("created_at", pa.string()),             # ISO 8601 UTC, first counted annotation
        ("updated_at", pa.string()),             # ISO 8601 UTC, deciding annotation
        ("prompt", pa.string()),                 # the reviewed prompt, only when edited and valid
        ("referring_span", span),
        ("edit_span", span),
        ("prompt_source", pa.string()),          # human:<reviewer>
        ("prompt_edited", pa.string()),          # the text as the reviewer typed it (when changed)
        ("prompt_edit_invalid", pa.string()),    # why the edit could not be used (null when fine)
        ("edit_mask", rle),                      # repainted M_e (COCO RLE), null unless repainted
        ("quality", pa.int32()),                 # 1-5
        ("reject_reason", pa.string()),
        ("n_annotations", pa.int32()),           # counted (not skipped)
        ("n_skipped", pa.int32()),
        ("disagreement", pa.bool_()),
        ("disagreement_details", pa.string()),   # JSON
        ("problems", pa.list_(pa.string())),     # anything that kept a decision from being used
        ("lead_time_s", pa.float64()),
        ("ls_project_id", pa.int64()),
        ("ls_task_id", pa.int64()),
        ("ls_annotation_ids", pa.list_(pa.int64())),
    ], metadata={"refcoco_edit.review_version": REVIEW_TABLE_VERSION})


@dataclass
class PullResult:
    """What a pull found and did."""

    project_id: int
    tasks: int
    reviewed: int
    counts: Dict[str, int]
    disagreements: int
    invalid_prompt_edits: int
    changed: bool
    seconds: float
    path: Path
    problems: List[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# pieces of an annotation
# ----------------------------------------------------------------------------------------------

def iso_utc(value: Any) -> Optional[str]:
    """An ISO 8601 time stamp in UTC with a ``Z`` (microseconds kept); None stays None."""
    if value in (None, ""):
        return None
    t = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _strip_marks(text: str) -> Tuple[str, Optional[Tuple[int, int]], Optional[Tuple[int, int]]]:
    """Remove ``[...]`` and ``{...}`` marks; returns the text and the marked spans in it."""
    out: List[str] = []
    spans: Dict[str, Optional[Tuple[int, int]]] = {"ref": None, "edit": None}
    open_: Dict[str, Optional[int]] = {"ref": None, "edit": None}
    kinds = {cfg.REF_MARK[0]: ("ref", True), cfg.REF_MARK[1]: ("ref", False),
             cfg.EDIT_MARK[0]: ("edit", True), cfg.EDIT_MARK[1]: ("edit", False)}
    pos = 0
    for ch in text:
        if ch in kinds:
            kind, opening = kinds[ch]
            if opening:
                if open_[kind] is not None or spans[kind] is not None:
                    raise ValueError(f"more than one {ch}...{cfg.REF_MARK[1] if kind == 'ref' else cfg.EDIT_MARK[1]} mark")
                open_[kind] = pos
            else:
                if open_[kind] is None:
                    raise ValueError(f"a closing {ch} without its opening mark")
                spans[kind] = (open_[kind], pos)
                open_[kind] = None
            continue
        out.append(ch)
        pos += 1
    for kind, start in open_.items():
        if start is not None:
            raise ValueError("a mark is opened but never closed")
    return "".join(out), spans["ref"], spans["edit"]


def _find_outside(text: str, phrase: str, avoid: Optional[Tuple[int, int]]) -> Optional[Tuple[int, int]]:
    """The first occurrence of ``phrase`` in ``text`` that does not overlap ``avoid``."""
    start = 0
    while True:
        sp = find_span(text[start:], phrase)
        if sp is None:
            return None
        a, b = sp[0] + start, sp[1] + start
        if avoid is None or not (a < avoid[1] and avoid[0] < b):
            return (a, b)
        start = a + 1


def reconcile_prompt(row: Dict[str, Any], edited: Optional[str], reviewer: str) -> Dict[str, Any]:
    """Fields of an edited prompt: spans recomputed and validated, or the reason it is invalid.

    Returns ``{}`` when the text is unchanged (or empty: nothing was typed)."""
    if edited is None or not edited.strip():
        return {}
    text_in = " ".join(edited.split())
    if text_in == " ".join(row["prompt"].split()):
        return {}
    out: Dict[str, Any] = {"prompt_edited": edited}
    ref_phrase = row["prompt"][row["referring_span"][0]: row["referring_span"][1]]
    edit_phrase = row["prompt"][row["edit_span"][0]: row["edit_span"][1]]
    try:
        text, ref, edit = _strip_marks(text_in)
    except ValueError as e:
        out["prompt_edit_invalid"] = f"bad marks in the edited prompt: {e}"
        return out
    if ref is None:
        ref = find_span(text, ref_phrase)
        if ref is None:
            out["prompt_edit_invalid"] = (f"the referring phrase {ref_phrase!r} is not in the edited prompt; "
                                          f"mark the new one as {cfg.REF_MARK[0]}...{cfg.REF_MARK[1]}")
            return out
    if edit is None:
        edit = _find_outside(text, edit_phrase, ref)
        if edit is None:
            out["prompt_edit_invalid"] = (f"the edit phrase {edit_phrase!r} is not in the edited prompt; "
                                          f"mark the new one as {cfg.EDIT_MARK[0]}...{cfg.EDIT_MARK[1]}")
            return out
    prompt = Prompt(text=text, referring_span=ref, edit_span=edit, source=f"human:{reviewer}")
    try:
        prompt.validate()
    except ValueError as e:
        out["prompt_edit_invalid"] = f"the edited prompt's spans are not valid: {e}"
        return out
    if prompt.referring_phrase.strip() != prompt.referring_phrase or prompt.edit_phrase.strip() != prompt.edit_phrase:
        out["prompt_edit_invalid"] = "a marked phrase starts or ends with a space"
        return out
    out.update(prompt.to_fields())
    return out


# ----------------------------------------------------------------------------------------------
# one task
# ----------------------------------------------------------------------------------------------

@dataclass
class _Ann:
    id: int
    decision: Optional[str]        # "0", "1", ... or "reject" (None: no decision)
    raw: Dict[str, Any]
    updated: str
    created: str
    ground_truth: bool


def _results(ann: Dict[str, Any], name: str) -> List[Dict[str, Any]]:
    return [r for r in ann.get("result") or [] if r.get("from_name") == name]


def _text(ann: Dict[str, Any], name: Optional[str]) -> Optional[str]:
    if not name:
        return None
    texts = [t for r in _results(ann, name) for t in (r.get("value") or {}).get("text") or [] if str(t).strip()]
    return str(texts[-1]) if texts else None


def _decision(ann: Dict[str, Any], spec: cfg.ConfigSpec) -> Optional[str]:
    for r in _results(ann, spec.decision):
        for v in (r.get("value") or {}).get("choices") or []:
            if v in spec.choice_index:
                idx = spec.choice_index[v]
                return "reject" if idx is None else str(idx)
            return f"unknown:{v}"
    return None


def resolve(anns: List[_Ann]) -> Tuple[Optional[_Ann], str]:
    """The deciding annotation by the documented rule, and the rule's name."""
    if not anns:
        return None, "none"
    latest = lambda xs: max(xs, key=lambda a: (a.updated, a.id))  # noqa: E731
    gt = [a for a in anns if a.ground_truth]
    if gt:
        return latest(gt), "ground_truth"
    decided = [a for a in anns if a.decision is not None]
    if not decided:
        return latest(anns), "latest"
    votes = Counter(a.decision for a in decided)
    top = max(votes.values())
    tied = {d for d, n in votes.items() if n == top}
    winner = latest([a for a in decided if a.decision in tied]).decision
    rule = "majority" if len(tied) == 1 else "latest_of_tie"
    return latest([a for a in decided if a.decision == winner]), rule


def reconcile_task(task: Dict[str, Any], row: Dict[str, Any], spec: cfg.ConfigSpec, project_id: int,
                   users: Dict[int, str]) -> Optional[Dict[str, Any]]:
    """The review row of one exported task (None when it has no annotation)."""
    all_anns = task.get("annotations") or []
    counted = [a for a in all_anns if not a.get("was_cancelled")]
    n_skipped = len(all_anns) - len(counted)
    if not all_anns:
        return None
    anns = [_Ann(int(a["id"]), _decision(a, spec), a, iso_utc(a.get("updated_at") or a.get("created_at")) or "",
                 iso_utc(a.get("created_at")) or "", bool(a.get("ground_truth"))) for a in counted]
    winner, rule = resolve(anns)
    base: Dict[str, Any] = {
        "sample_id": row["sample_id"], "status": "pending", "n_annotations": len(counted), "n_skipped": n_skipped,
        "ls_project_id": int(project_id), "ls_task_id": int(task["id"]),
        "ls_annotation_ids": sorted(int(a["id"]) for a in all_anns), "problems": [],
        "disagreement": False,
    }
    if winner is None:  # only skipped annotations
        base["updated_at"] = max(iso_utc(a.get("updated_at") or a.get("created_at")) or "" for a in all_anns) or None
        base["problems"] = ["every annotation was skipped"]
        return base
    a = winner.raw
    reviewer = _reviewer(a.get("completed_by"), users)
    decisions = {str(x.id): x.decision for x in sorted(anns, key=lambda x: x.id)}
    distinct = {x.decision for x in anns}
    base.update(
        reviewer=reviewer,
        created_at=min(x.created for x in anns) or None,
        updated_at=winner.updated or None,
        notes=_text(a, spec.notes),
        lead_time_s=float(a["lead_time"]) if a.get("lead_time") is not None else None,
        disagreement=len(distinct) > 1,
        disagreement_details=json.dumps({
            "rule": rule, "decisions": decisions,
            "quality": {str(x.id): _quality(x.raw, spec) for x in sorted(anns, key=lambda x: x.id)},
        }, sort_keys=True),
    )
    q = _quality(a, spec)
    base["quality"] = q
    problems: List[str] = []
    d = winner.decision
    cands = row.get("candidates") or []
    if d is None:
        problems.append("no decision (neither a candidate nor reject was chosen)")
    elif d == "reject":
        base["status"] = "rejected"
        if spec.reject_reason:
            reasons = [c for r in _results(a, spec.reject_reason) for c in (r.get("value") or {}).get("choices") or []]
            base["reject_reason"] = "; ".join(reasons) if reasons else None
    elif d.startswith("unknown:"):
        problems.append(f"unknown decision {d[len('unknown:'):]!r}")
    elif int(d) >= len(cands):
        problems.append(f"candidate {int(d) + 1} was chosen but the sample has {len(cands)}")
    else:
        base["status"] = "accepted"
        base["chosen_candidate"] = int(d)
        mask, mask_problem = _repainted_mask(a, spec, int(d), cands[int(d)])
        if mask_problem:
            problems.append(mask_problem)
        base["edit_mask"] = mask
    edited = reconcile_prompt(row, _text(a, spec.prompt_edit), reviewer or "unknown")
    if base["status"] == "rejected":  # the prompt of a rejected sample does not matter: keep the text only
        edited = {k: v for k, v in edited.items() if k == "prompt_edited"}
    base.update(edited)
    if problems:  # the decision cannot be used as it is: back to the queue, nothing folded in
        base.update(status="pending", chosen_candidate=None, edit_mask=None)
    base["problems"] = problems
    return base


def _quality(ann: Dict[str, Any], spec: cfg.ConfigSpec) -> Optional[int]:
    if not spec.quality:
        return None
    for r in _results(ann, spec.quality):
        v = (r.get("value") or {}).get("rating")
        if v is not None:
            return int(v)
    return None


def _reviewer(completed_by: Any, users: Dict[int, str]) -> Optional[str]:
    if isinstance(completed_by, dict):
        return completed_by.get("email") or (f"user:{completed_by['id']}" if "id" in completed_by else None)
    if completed_by is None:
        return None
    return users.get(int(completed_by), f"user:{int(completed_by)}")


def _repainted_mask(ann: Dict[str, Any], spec: cfg.ConfigSpec, index: int,
                    cand: Dict[str, Any]) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """The union of the brush regions on the chosen candidate, as COCO RLE when it differs from
    the candidate's M_e (None when unchanged or not painted)."""
    names = [n for n, i in spec.masks.items() if i == index]
    regions = [r for r in ann.get("result") or [] if r.get("from_name") in names and r.get("type") == "brushlabels"]
    if not regions:
        return None, None
    original = rle_mod.decode(cand["edit_mask"])
    union = np.zeros(original.shape, dtype=bool)
    for r in regions:
        try:
            m = brush_to_mask(r)
        except (ValueError, KeyError) as e:
            return None, f"unreadable brush mask: {e}"
        if m.shape != union.shape:
            return None, f"brush mask is {m.shape[1]}x{m.shape[0]}, the candidate is {union.shape[1]}x{union.shape[0]}"
        union |= m
    if np.array_equal(union, original):
        return None, None
    if not union.any():
        return None, "the repainted M_e is empty"
    return rle_mod.encode(union), None


# ----------------------------------------------------------------------------------------------
# the pull
# ----------------------------------------------------------------------------------------------

SNAPSHOT_TITLE = "refcoco-edit review pull"


def remove_stale_snapshots(conn: Connection, project_id: int, older_than_s: float,
                           log: Callable[[str], None] = print) -> int:
    """Delete our own export snapshots (titled ``SNAPSHOT_TITLE``) older than ``older_than_s``: the
    ones a killed pull left on the server. Younger ones may belong to a pull running right now, and
    snapshots with other titles are someone else's. Returns how many were deleted."""
    from datetime import datetime, timezone

    exports = conn.client.projects.exports
    now = datetime.now(timezone.utc)
    n = 0
    for snap in conn.call("listing export snapshots", exports.list, project_id):
        created = getattr(snap, "created_at", None)
        if getattr(snap, "title", None) != SNAPSHOT_TITLE or created is None:
            continue
        if created.tzinfo is None:
            created = created.replace(tzinfo=timezone.utc)
        if (now - created).total_seconds() < older_than_s:
            continue
        try:
            conn.call("deleting a stale export snapshot", exports.delete, project_id, export_pk=str(snap.id))
            n += 1
        except LabelStudioError as e:
            log(f"warning: stale export snapshot {snap.id} was not deleted ({e})")
    return n


def export_snapshot(conn: Connection, project_id: int, timeout: float = EXPORT_TIMEOUT_S,
                    on_step: Optional[Callable[[str], None]] = None,
                    log: Callable[[str], None] = print,
                    stale_after_s: Optional[float] = None) -> List[Dict[str, Any]]:
    """Every annotated task of the project with its annotations, through an export snapshot (JSON).

    First removes our snapshots older than ``stale_after_s`` (default: twice ``timeout``, so a pull
    still running elsewhere keeps its own) - what killed pulls left behind.
    ``on_step`` is called with "snapshot-created", "snapshot-ready" and "downloaded" (tests use it
    to stop the server mid-pull)."""
    step = on_step or (lambda s: None)
    exports = conn.client.projects.exports
    remove_stale_snapshots(conn, project_id, 2 * timeout if stale_after_s is None else stale_after_s, log=log)
    snap = conn.call("creating an export snapshot", exports.create, project_id,
                     title=SNAPSHOT_TITLE, task_filter_options={"annotated": "only"})
    step("snapshot-created")
    t0 = time.monotonic()
    while getattr(snap, "status", None) != "completed":
        if getattr(snap, "status", None) == "failed":
            raise LabelStudioError(f"Label Studio at {conn.url} failed to make export snapshot {snap.id}")
        if time.monotonic() - t0 > timeout:
            raise LabelStudioError(f"export snapshot {snap.id} was not ready after {timeout:.0f}s")
        time.sleep(0.5)
        snap = conn.call("waiting for the export snapshot", exports.get, project_id, export_pk=str(snap.id))
    step("snapshot-ready")

    def download() -> bytes:
        return b"".join(exports.download(project_id, export_pk=str(snap.id), export_type="JSON"))

    raw = conn.call("downloading the export snapshot", download)
    step("downloaded")
    try:
        tasks = json.loads(raw)
    except ValueError:
        raise ServerUnreachable(f"the export snapshot from {conn.url} is not complete JSON ({len(raw)} bytes); "
                                "the server may have stopped while sending it") from None
    if not isinstance(tasks, list):
        raise LabelStudioError(f"the export snapshot from {conn.url} is not a list of tasks")
    try:  # tidy up; the data is complete already, so a failure here costs nothing
        conn.call("deleting the export snapshot", exports.delete, project_id, export_pk=str(snap.id))
    except LabelStudioError as e:
        log(f"warning: export snapshot {snap.id} was not deleted ({e})")
    return tasks


def _users(conn: Connection) -> Dict[int, str]:
    users = conn.call("listing users", conn.client.users.list)
    return {int(u.id): (u.email or u.username or f"user:{u.id}") for u in users}


def reviews_table(rows: Iterable[Dict[str, Any]]):
    """Review rows -> Arrow table with :func:`review_schema`, sorted by sample_id."""
    import pyarrow as pa

    schema = review_schema()
    rows = sorted(rows, key=lambda r: r["sample_id"])
    cols = {f.name: pa.array([r.get(f.name) for r in rows], type=f.type) for f in schema}
    return pa.Table.from_pydict(cols, schema=schema)


def table_bytes(table: Any) -> bytes:
    """The Parquet bytes of the review table, written as ``atomic_write_table`` writes them."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def pull(workdir: str | Path, url: str, token: Optional[str] = None, title: Optional[str] = None,
         timeout: float = EXPORT_TIMEOUT_S, log: Callable[[str], None] = print,
         on_step: Optional[Callable[[str], None]] = None) -> PullResult:
    """Export the project's annotations and reconcile them into ``review/reviews.parquet``."""
    t0 = time.perf_counter()
    ws = Workspace(workdir)
    samples = {r["sample_id"]: r for r in load_samples(ws)}
    state = load_state(ws)
    conn = Connection(url, token)
    conn.whoami()
    project = find_project(conn, state, title or state.get("title") or default_title(ws))
    if project is None:
        raise InputError(f"no review project for {ws.root} on {conn.url}; run `refcoco-edit review push` first")
    pid = int(project.id)
    try:
        spec = cfg.parse_label_config(project.label_config or "")
    except ValueError as e:
        raise InputError(f"project {pid} on {conn.url}: {e}") from None
    users = _users(conn)
    tasks = export_snapshot(conn, pid, timeout=timeout, on_step=on_step, log=log)
    problems: List[str] = []
    new_rows: Dict[str, Dict[str, Any]] = {}
    for task in sorted(tasks, key=lambda t: int(t["id"])):
        sid = (task.get("data") or {}).get(cfg.KEY_SAMPLE_ID)
        if sid not in samples:
            problems.append(f"task {task.get('id')}: sample {sid!r} is not in the workspace")
            continue
        if sid in new_rows:
            problems.append(f"task {task.get('id')}: a second task for sample {sid} (task {new_rows[sid]['ls_task_id']}) is ignored")
            continue
        row = reconcile_task(task, samples[sid], spec, pid, users)
        if row is not None:
            new_rows[sid] = row
    path = ws.review_path
    for stale in path.parent.glob(path.name + ".tmp-*"):  # left by a pull killed while writing it
        stale.unlink()
    kept: List[Dict[str, Any]] = []
    for r in ws.read_reviews().values():
        if r.get("ls_project_id") != pid and r["sample_id"] not in new_rows:
            kept.append(r)  # reviewed in another project: not this pull's business
    table = reviews_table(list(new_rows.values()) + kept)
    data = table_bytes(table)
    changed = not (path.exists() and path.read_bytes() == data)
    if changed:
        atomic_write_bytes(path, data)
    counts = dict(sorted(Counter(r["status"] for r in new_rows.values()).items()))
    res = PullResult(pid, len(tasks), len(new_rows), counts, sum(bool(r.get("disagreement")) for r in new_rows.values()),
                     sum(bool(r.get("prompt_edit_invalid")) for r in new_rows.values()), changed,
                     time.perf_counter() - t0, path, problems)
    for p in problems:
        log(f"warning: {p}")
    summary = ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
    log(f"pulled {len(tasks)} annotated tasks of project {pid}: {summary}; {res.disagreements} with disagreement, "
        f"{res.invalid_prompt_edits} invalid prompt edits; {'wrote' if changed else 'unchanged'} {path} ({res.seconds:.1f}s)")
    return res
