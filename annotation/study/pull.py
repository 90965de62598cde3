"""`refcoco-edit study pull`: the ratings through an export snapshot, de-blinded on our side,
and the study's numbers written to ``STUDY/`` (see :mod:`.outputs`).

The ratings come through the same export snapshot as the review's pull (create, wait, download,
delete; ``refcoco_edit.annotation.pull.export_snapshot``). Each task's slots are turned back into
methods with the mapping in ``STUDY/study_state.json``. Per rater and task, the most recently
updated annotation counts (a rater who revised counts once); skipped annotations count as skips.

Everything is downloaded and computed before a file is written, and every file is written
atomically and only when its bytes change (study.json last): a server that stops mid-pull leaves
the previous study as it was, and pulling twice writes nothing new.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from refcoco_edit.errors import InputError

from ..client import Connection
from ..pull import EXPORT_TIMEOUT_S, export_snapshot, iso_utc
from ..push import find_project
from . import labeling as lab
from .push import load_state
from .stats import Rating


@dataclass
class Collected:
    """What the annotations of the study hold, de-blinded."""

    ratings: List[Rating] = field(default_factory=list)
    preferences: List[Dict[str, Any]] = field(default_factory=list)   # {sample_id, rater, shown, preferred}
    records: List[Dict[str, Any]] = field(default_factory=list)       # rows of ratings.parquet
    raters: set = field(default_factory=set)
    tasks_annotated: int = 0
    annotations: int = 0
    skipped: int = 0
    missing: int = 0
    problems: List[str] = field(default_factory=list)


def _rater(completed_by: Any, users: Dict[int, str]) -> str:
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or f"user:{completed_by.get('id')}")
    return users.get(int(completed_by), f"user:{int(completed_by)}") if completed_by is not None else "unknown"


def _latest_per_rater(anns: List[Dict[str, Any]], users: Dict[int, str]) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for a in sorted(anns, key=lambda a: (iso_utc(a.get("updated_at") or a.get("created_at")) or "", int(a["id"]))):
        out[_rater(a.get("completed_by"), users)] = a  # later ones replace earlier ones
    return out


def collect(tasks: List[Dict[str, Any]], state: Dict[str, Any], spec: lab.StudySpec,
            users: Dict[int, str]) -> Collected:
    """Ratings and preferences of the exported tasks, each slot turned back into its method."""
    c = Collected()
    mapping = state.get("tasks") or {}
    seen: Dict[str, int] = {}
    for task in sorted(tasks, key=lambda t: int(t["id"])):
        sid = (task.get("data") or {}).get(lab.KEY_SAMPLE_ID)
        info = mapping.get(sid)
        if info is None:
            c.problems.append(f"task {task.get('id')}: sample {sid!r} is not in this study's mapping")
            continue
        if sid in seen:
            c.problems.append(f"task {task.get('id')}: a second task for sample {sid} (task {seen[sid]}) is ignored")
            continue
        seen[sid] = int(task["id"])
        slots: List[str] = info["slots"]
        anns = task.get("annotations") or []
        counted = [a for a in anns if not a.get("was_cancelled")]
        c.skipped += len(anns) - len(counted)
        c.annotations += len(counted)
        if counted:
            c.tasks_annotated += 1
        for rater, a in sorted(_latest_per_rater(counted, users).items()):
            c.raters.add(rater)
            values: Dict[Tuple[str, int], int] = {}
            preferred: Optional[str] = None
            for r in a.get("result") or []:
                name = r.get("from_name")
                if name in spec.ratings:
                    crit, slot = spec.ratings[name]
                    v = (r.get("value") or {}).get("rating")
                    if isinstance(v, (int, float)) and 1 <= v <= 5 and int(v) == v:
                        values[(crit, slot)] = int(v)
                    elif v is not None:
                        c.problems.append(f"task {task['id']}, annotation {a['id']}: rating {v!r} is not 1..5")
                elif name == spec.preference:
                    for choice in (r.get("value") or {}).get("choices") or []:
                        if choice in spec.preference_slot:
                            slot = spec.preference_slot[choice]
                            if slot is None:
                                preferred = lab.TIE
                            elif slot < len(slots):
                                preferred = slots[slot]
                            else:
                                c.problems.append(f"task {task['id']}: preference for an empty slot {slot + 1}")
            for slot, method in enumerate(slots):
                q, k = values.get(("quality", slot)), values.get(("consistency", slot))
                c.missing += (q is None) + (k is None)
                if q is None and k is None:
                    continue
                c.ratings.append(Rating(sid, method, rater, q, k))
                c.records.append({"sample_id": sid, "method": method, "slot": slot, "rater": rater, "quality": q,
                                  "consistency": k, "ls_task_id": int(task["id"]), "ls_annotation_id": int(a["id"]),
                                  "updated_at": iso_utc(a.get("updated_at") or a.get("created_at"))})
            if preferred is not None:
                c.preferences.append({"sample_id": sid, "rater": rater, "shown": list(slots), "preferred": preferred})
    return c


@dataclass
class StudyPullResult:
    """What a study pull found and did."""

    project_id: int
    tasks: int
    raters: int
    ratings: int
    changed: List[str]
    seconds: float
    out: Path
    problems: List[str] = field(default_factory=list)


def pull(study: str | Path, url: str, token: Optional[str] = None, resamples: int = 1000,
         timeout: float = EXPORT_TIMEOUT_S, log: Callable[[str], None] = print,
         on_step: Optional[Callable[[str], None]] = None) -> StudyPullResult:
    """Export the study's ratings and write study.json, study.md, ratings.parquet and plots/."""
    from .outputs import build_study, write_study

    t0 = time.perf_counter()
    study = Path(study)
    state = load_state(study)
    if not state.get("project_id"):
        raise InputError(f"{study}: no study was pushed here (no study_state.json); run `refcoco-edit study push` first")
    if resamples < 0:
        raise InputError("--bootstrap: give 0 or more resamples")
    conn = Connection(url, token)
    conn.whoami()
    project = find_project(conn, state, state["title"])
    if project is None:
        raise InputError(f"the study project {state['title']!r} is not on {conn.url}; push it first")
    pid = int(project.id)
    try:
        spec = lab.parse_study_config(project.label_config or "")
    except ValueError as e:
        raise InputError(f"project {pid} on {conn.url}: {e}") from None
    users = {int(u.id): (u.email or u.username or f"user:{u.id}") for u in conn.call("listing users", conn.client.users.list)}
    tasks = export_snapshot(conn, pid, timeout=timeout, on_step=on_step, log=log)
    collected = collect(tasks, state, spec, users)
    doc, ratings_table = build_study(state, collected, conn.url, pid, resamples)
    changed = write_study(study, doc, ratings_table, log)
    res = StudyPullResult(pid, len(tasks), len(collected.raters), len(collected.ratings), changed,
                          time.perf_counter() - t0, study, list(doc["problems"]))
    for p in doc["problems"]:
        log(f"warning: {p}")
    log(f"pulled {len(tasks)} annotated tasks of project {pid}: {res.raters} raters, {res.ratings} rated outputs; "
        f"{'wrote ' + ', '.join(changed) if changed else 'nothing changed'} in {study} ({res.seconds:.1f}s)")
    return res
