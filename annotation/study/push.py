"""`refcoco-edit study push`: a blind rating project in Label Studio from score runs.

One task per sample (found again by the ``sample_id`` in its data, as in ``review push``); in each
task the methods' outputs stand in slots "Output 1..n" whose order is shuffled per task, seeded
by (``--seed``, sample_id). Which method fills which slot is written only to
``STUDY/study_state.json`` on our side: task data, media file names, titles, the project's
title, description and config never name a method or a run (the tests check the served pages).

Media go through Label Studio's local-files storage exactly as in the review (see
``refcoco_edit.annotation.push``): ``STUDY/media/<sample_id>/source.png`` (the referred object
outlined) and ``out_<slot>.png``, each output re-encoded (no metadata that could name its maker).

Samples: those every run scored (status ok, an output on disk); ``--samples N`` takes the first N
in a seeded order (a pure function of (seed, sample_id), so a larger N keeps the earlier ones);
samples already in the study always stay.

Re-push: an unchanged task is left alone; a changed one gets its data updated in place and keeps
its annotations. Adding a run adds a slot: methods keep the slots they had (a rater's existing
ratings stay attached to the same method), the new method takes the next free slot of each task.
A push may add runs, never drop one (the project would lose the meaning of its ratings).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence


from refcoco_edit import rle as rle_mod
from refcoco_edit.errors import InputError
from refcoco_edit.imageio import encode_png
from refcoco_edit.schema import is_safe_name
from refcoco_edit.seeds import derive_seed, rng_for
from refcoco_edit.workspace import atomic_write_json

from .. import config as review_cfg
from ..client import Connection
from ..push import (MAX_TITLE, MediaUrls, decode_rgb, ensure_storage, find_project, list_tasks, placeholder_png,
                    source_overlay, write_if_changed)
from . import labeling as lab
from .runs import ScoreRun, load_run, source_rows

STATE_FILE = "study_state.json"
MEDIA_DIR = "media"
PLACEHOLDER = "_no_output.png"
TITLE_PREFIX = "refcoco-edit study"
STATE_VERSION = 1


@dataclass
class StudyPushResult:
    """What a study push did."""

    url: str
    project_id: int
    title: str
    created: bool
    selected: int
    imported: int
    updated: int
    unchanged: int
    num_slots: int
    seconds: float


def state_path(study: Path) -> Path:
    return Path(study) / STATE_FILE


def load_state(study: Path) -> Dict[str, Any]:
    """``STUDY/study_state.json`` (empty when nothing was pushed yet)."""
    p = state_path(study)
    if not p.exists():
        return {}
    try:
        state = json.loads(p.read_text())
    except ValueError:
        raise InputError(f"{p} is not valid JSON; it holds the blind mapping of the study, restore it from a backup") from None
    if state.get("state_version") != STATE_VERSION:
        raise InputError(f"{p}: state version {state.get('state_version')!r}, this refcoco-edit reads {STATE_VERSION}")
    return state


def register_methods(state: Dict[str, Any], runs: Sequence[ScoreRun]) -> Dict[str, ScoreRun]:
    """Blind keys (m1, m2, ...) of the runs: a run keeps the key it had (by its folder); new runs
    get the next keys. InputError when a run of the study is missing or given twice."""
    methods: Dict[str, Dict[str, Any]] = dict(state.get("methods") or {})
    by_path = {m["run"]: k for k, m in methods.items()}
    given = [str(r.path) for r in runs]
    dup = sorted({p for p in given if given.count(p) > 1})
    if dup:
        raise InputError(f"--runs: {dup[0]} is given twice")
    dropped = sorted(p for p in by_path if p not in given)
    if dropped:
        raise InputError(f"--runs: the study already holds {', '.join(dropped)}; a push can add runs, not drop one "
                         "(give every run again, or start a new study with another --out and --title)")
    out: Dict[str, ScoreRun] = {}
    for r in runs:
        key = by_path.get(str(r.path)) or f"m{len(methods) + 1}"
        labels = {m["label"] for k, m in methods.items() if k != key}
        label = r.editor_name if r.editor_name not in labels else f"{r.editor_name} ({r.path.name})"
        methods[key] = {"run": str(r.path), "label": methods.get(key, {}).get("label", label), "editor": r.editor_spec,
                        "results_sha256": r.results_sha256}
        out[key] = r
    state["methods"] = dict(sorted(methods.items(), key=lambda kv: int(kv[0][1:])))
    return out


def select_samples(runs: Dict[str, ScoreRun], kept: Sequence[str], n: Optional[int], seed: int) -> List[str]:
    """The study's samples: those already in it, then the eligible ones (every run has an output)
    in a seeded order, up to ``n`` in all (all when None)."""
    keys = sorted(runs)
    ids = set(runs[keys[0]].rows)
    for k in keys[1:]:
        ids &= set(runs[k].rows)
    eligible = [s for s in ids if all(runs[k].output_path(s) is not None for k in keys)]
    bad = [s for s in eligible if not is_safe_name(s)]
    if bad:
        raise InputError(f"sample_id {bad[0]!r} is not a plain name; refusing to write study media for it")
    chosen = [s for s in kept]
    ranked = sorted((s for s in eligible if s not in set(kept)), key=lambda s: (derive_seed(seed, "study-sample", s), s))
    room = len(ranked) if n is None else max(0, n - len(chosen))
    chosen += ranked[:room]
    if not chosen:
        raise InputError("no sample was scored by every run (status ok with an output); nothing to rate")
    return sorted(chosen)


def assign_slots(sample_id: str, old: Sequence[str], available: Sequence[str], seed: int) -> List[str]:
    """The slot order of one task: methods keep their old slots; methods new to the task take the
    next slots in an order shuffled by (seed, sample_id, the methods already there)."""
    new = sorted(k for k in available if k not in old)
    if new:
        perm = rng_for(seed, "study-order", sample_id, len(old)).permutation(len(new))
        new = [new[i] for i in perm]
    return list(old) + new


def _info(row: Dict[str, Any], sid: str) -> str:
    target = row.get("edit_target") or ""
    what = {"replace": f"replace with {target}", "attribute": f"attribute: {target}", "remove": "remove"}.get(
        row.get("edit_type"), str(row.get("edit_type")))
    return f"{row.get('category')} · {what} · sample {sid}"


def write_task_media(media: Path, row: Dict[str, Any], slots: Sequence[str], runs: Dict[str, ScoreRun]) -> Dict[str, Any]:
    """Write a task's images; returns their paths relative to ``media`` and a digest of their bytes."""
    sid = row["sample_id"]
    image = decode_rgb(row["source_image"]["bytes"])
    mask = rle_mod.decode(row["source_mask"])
    if mask.shape != image.shape[:2]:
        raise InputError(f"sample {sid}: source mask {mask.shape} does not match its image {image.shape[:2]}")
    digest = hashlib.sha256()
    src = encode_png(source_overlay(image, mask))
    write_if_changed(media / sid / "source.png", src)
    digest.update(src)
    outs: List[Optional[str]] = []
    for k, key in enumerate(slots):
        path = runs[key].output_path(sid) if key in runs else None
        if path is None:
            outs.append(None)
            continue
        data = encode_png(decode_rgb(path.read_bytes()))  # re-encoded: no metadata of the editor's
        write_if_changed(media / sid / f"out_{k}.png", data)
        digest.update(data)
        outs.append(f"{sid}/out_{k}.png")
    return {"source": f"{sid}/source.png", "outputs": outs, "digest": digest.hexdigest()}


def task_data(row: Dict[str, Any], media: Dict[str, Any], num_slots: int, url: Callable[[str], str]) -> Dict[str, Any]:
    """The data of one task (every ``$variable`` of the study config) and its hash. Blind: no key,
    label, run or editor of a method."""
    sid = row["sample_id"]
    data: Dict[str, Any] = {
        lab.KEY_SAMPLE_ID: sid, lab.KEY_SOURCE: url(media["source"]), lab.KEY_PROMPT: row["prompt"],
        lab.KEY_PROMPT_HTML: review_cfg.prompt_html(row["prompt"], row["referring_span"], row["edit_span"]),
        lab.KEY_INFO: _info(row, sid),
    }
    for k in range(num_slots):
        rel = media["outputs"][k] if k < len(media["outputs"]) else None
        data[lab.key_out_image(k)] = url(rel if rel else PLACEHOLDER)
        data[lab.key_out_title(k)] = lab.slot_title(k) if rel else f"{lab.slot_title(k)}: none for this sample"
    blob = json.dumps({"data": data, "media": media["digest"]}, sort_keys=True, separators=(",", ":"))
    data[lab.KEY_HASH] = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]
    return data


def default_title(study: Path) -> str:
    return f"{TITLE_PREFIX}: {Path(study).resolve().name}"[:MAX_TITLE]


def push(study: str | Path, runs: Sequence[str | Path], url: str, token: Optional[str] = None,
         title: Optional[str] = None, samples: Optional[int] = None, seed: Optional[int] = None,
         document_root: Optional[str] = None, media_url: Optional[str] = None, batch_size: int = 50,
         raters_per_task: int = 3, log: Callable[[str], None] = print) -> StudyPushResult:
    """Create or update the study project and its tasks (see the module doc)."""
    t0 = time.perf_counter()
    study = Path(study)
    if len(runs) < 2 and not load_state(study).get("methods"):
        raise InputError("--runs: a study compares at least two score runs")
    loaded = [load_run(r) for r in runs]
    state = load_state(study)
    if seed is not None and state.get("seed") is not None and int(seed) != int(state["seed"]):
        raise InputError(f"--seed {seed}: this study was pushed with --seed {state['seed']} (the order of the outputs "
                         "must not change under the raters); leave --seed out or start a new study")
    seed = int(state.get("seed", 0) if seed is None else seed)
    if samples is not None and samples < 1:
        raise InputError("--samples: give a positive number")
    if raters_per_task < 1:
        raise InputError("--raters-per-task: give a positive number")
    n = samples if samples is not None else state.get("samples_requested")
    method_runs = register_methods(state, loaded)
    if len(method_runs) < 2:
        raise InputError("--runs: a study compares at least two score runs")
    tasks_state: Dict[str, Any] = dict(state.get("tasks") or {})
    chosen = select_samples(method_runs, sorted(tasks_state), n, seed)
    slots = {sid: assign_slots(sid, (tasks_state.get(sid) or {}).get("slots", []),
                               [k for k in method_runs if method_runs[k].output_path(sid) is not None], seed)
             for sid in chosen}
    num_slots = max([len(s) for s in slots.values()] + [int(state.get("num_slots") or 0), 2])
    rows: Dict[str, Dict[str, Any]] = {}
    for r in loaded:  # each run's own data: a run may have scored another copy of the dataset
        todo = [s for s in chosen if s not in rows and s in r.rows]
        if todo:
            rows.update(source_rows(r, todo))
    media_dir = study / MEDIA_DIR
    url_of = MediaUrls(media_dir, document_root, media_url)
    conn = Connection(url, token)
    conn.whoami()  # a bad token fails here, before anything is written
    title = title or state.get("title") or default_title(study)
    if len(title) > MAX_TITLE:
        raise InputError(f"--title is {len(title)} characters; Label Studio allows {MAX_TITLE}")

    # 1. the project (its config never loses slots that annotations may use)
    project = find_project(conn, state, title)
    created = project is None
    if not created:
        try:
            num_slots = max(num_slots, lab.parse_study_config(project.label_config or "").num_slots)
        except ValueError:
            raise InputError(f"project {project.id} {title!r} on {conn.url} is not a refcoco-edit study; "
                             "give another --title") from None
    xml = lab.study_config(num_slots)
    if created:
        project = conn.call("creating the project", conn.client.projects.create, title=title, label_config=xml,
                            description="RefCOCO-Edit human study: rate each output (blind, shuffled per task)",
                            maximum_annotations=raters_per_task)
        log(f"created project {project.id} {title!r} on {conn.url}")
    else:
        if (project.label_config or "").strip() != xml.strip():
            conn.call("updating the labeling config", conn.client.projects.update, id=project.id, label_config=xml)
            log(f"updated the labeling config of project {project.id} ({num_slots} outputs per task)")
        if getattr(project, "maximum_annotations", raters_per_task) != raters_per_task:
            conn.call("setting the raters per task", conn.client.projects.update, id=project.id,
                      maximum_annotations=raters_per_task)
    pid = int(project.id)
    if state.get("project_id") not in (None, pid) or state.get("url") not in (None, conn.url):
        tasks_state = {}  # another project: the old task ids mean nothing there
    write_if_changed(media_dir / PLACEHOLDER, placeholder_png())
    if media_url is None:
        ensure_storage(conn, pid, media_dir)

    # 2. media + tasks
    existing: Dict[str, Dict[str, Any]] = {}
    for t in sorted(list_tasks(conn, pid), key=lambda t: t["id"]):
        sid = t["data"].get(lab.KEY_SAMPLE_ID)
        if sid is not None and sid not in existing:
            existing[sid] = t
    to_import: List[Dict[str, Any]] = []
    updated = unchanged = 0
    for sid in chosen:
        media = write_task_media(media_dir, rows[sid], slots[sid], method_runs)
        data = task_data(rows[sid], media, num_slots, url_of)
        old = existing.get(sid)
        if old is None:
            to_import.append({"data": data})
        elif old["data"].get(lab.KEY_HASH) == data[lab.KEY_HASH]:
            unchanged += 1
        else:
            conn.call("updating a task", conn.client.tasks.update, id=str(old["id"]), data=data)
            updated += 1
    for k in range(0, len(to_import), batch_size):
        conn.call("importing tasks", conn.client.projects.import_tasks, id=pid, request=to_import[k: k + batch_size])
    task_ids = {sid: t["id"] for sid, t in existing.items()}
    if to_import:
        for t in list_tasks(conn, pid):
            sid = t["data"].get(lab.KEY_SAMPLE_ID)
            if sid is not None and (sid not in task_ids or t["id"] < task_ids[sid]):
                task_ids[sid] = t["id"]

    # 3. our side: the blind mapping (the only place it is written)
    for sid in chosen:
        tasks_state[sid] = {"task_id": int(task_ids[sid]), "slots": slots[sid]}
    state.update({"state_version": STATE_VERSION, "url": conn.url, "project_id": pid,
                  "title": title if created else project.title, "seed": seed, "samples_requested": n,
                  "num_slots": num_slots, "label_config_hash": review_cfg.config_hash(xml),
                  "media": {"document_root": str(url_of.document_root) if url_of.document_root else None,
                            "media_url": media_url},
                  "tasks": dict(sorted(tasks_state.items()))})
    atomic_write_json(state_path(study), state)
    res = StudyPushResult(conn.url, pid, title, created, len(chosen), len(to_import), updated, unchanged, num_slots,
                          time.perf_counter() - t0)
    log(f"pushed {len(chosen)} samples x {len(method_runs)} methods to project {pid}: {res.imported} imported, "
        f"{updated} updated, {unchanged} unchanged ({res.seconds:.1f}s)")
    return res
