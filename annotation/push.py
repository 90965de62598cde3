"""`refcoco-edit review push`: one Label Studio task per sample, with predictions pre-filled.

How the images reach the server: **local-files storage**. Push writes every image a reviewer
looks at as a file under ``WORKDIR/review/media/<sample_id>/`` (``source.png``: the source image
with the referred object tinted and outlined; ``cand_<i>.png``: the candidates as generated)
and the tasks point at them with ``/data/local-files/?d=<path relative to the document root>``.
Label Studio serves them when it runs with::

    LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true
    LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<a folder that holds WORKDIR>

and push adds a local import storage for the media folder to the project (Label Studio serves
local files only below such a storage). ``--document-root`` names the server's document root
(default: ``$LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``). So the server must see the workspace's
media folder on its own filesystem (the same machine, or a shared mount at the same path). For a
remote server that cannot, copy ``WORKDIR/review/media/`` to any web server or bucket and push
with ``--media-url https://host/prefix/`` (the files' relative paths are appended); no storage is
created then. Uploading was not chosen: Label Studio's upload turns every file into a task of
its own, and uploaded files cannot be updated in place after a re-build.

Idempotence: the project is found again by the id stored in ``WORKDIR/review/project.json``
(same server URL), else by its title, else created. Tasks are matched to samples by the
``sample_id`` in their data (the server is the truth; ``project.json`` is a cache of it). Each
task carries a hash of its data and predictions: an unchanged sample is left alone, a changed one
(after a re-build) gets its data updated and its predictions replaced, a new one is imported.
Nothing is ever imported twice. Annotations are never touched.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from refcoco_edit import rle as rle_mod
from refcoco_edit.errors import InputError
from refcoco_edit.imageio import encode_png
from refcoco_edit.schema import is_safe_name
from refcoco_edit.workspace import Workspace, atomic_write_bytes, atomic_write_json

from . import config as cfg
from .client import Connection, LabelStudioError

PROJECT_FILE = Path("review") / "project.json"
MEDIA_DIR = Path("review") / "media"
MODEL_VERSION = "refcoco-edit"
DEFAULT_TITLE_PREFIX = "refcoco-edit review"
MAX_TITLE = 50  # Label Studio's limit on project titles
PLACEHOLDER = "_no_candidate.png"


@dataclass
class PushResult:
    """What a push did."""

    url: str
    project_id: int
    title: str
    created: bool
    selected: int
    imported: int
    updated: int
    unchanged: int
    seconds: float
    num_candidates: int
    task_ids: Dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# workspace side
# ----------------------------------------------------------------------------------------------

def load_samples(ws: Workspace) -> List[Dict[str, Any]]:
    """The generated samples of a workspace (InputError when there are none, saying why: never
    built, or every sample quarantined)."""
    from refcoco_edit.export import no_samples_message

    table = ws.stage("generate").read_samples()
    if table is None or table.num_rows == 0:
        raise InputError(no_samples_message(ws, "review"))
    rows = table.to_pylist()
    bad = [r["sample_id"] for r in rows if not is_safe_name(r["sample_id"])]
    if bad:  # a sample id names the sample's media folder: never a path
        raise InputError(f"{ws.root}: {len(bad)} sample_id(s) are not plain names ([A-Za-z0-9_.-], at most 128 "
                         f"characters), e.g. {bad[0]!r}; refusing to write review media for them")
    return rows


def is_final(review: Optional[Dict[str, Any]]) -> bool:
    """True when a sample's review is settled (accepted or rejected, with no flagged problem)."""
    if not review:
        return False
    return review.get("status") in ("accepted", "rejected") and not review.get("prompt_edit_invalid") \
        and not review.get("problems")


def select_samples(rows: Sequence[Dict[str, Any]], reviews: Dict[str, Dict[str, Any]],
                   samples: Optional[Sequence[str]] = None, pending_only: bool = False) -> List[Dict[str, Any]]:
    """The samples to push: all, a subset by id, and/or those without a settled review; the ones
    whose referred object's annotation overlaps another object's (a candidate's audit says
    ``review_first``) first, each group in workspace order, so that Label Studio (which lists
    tasks in import order) shows them to reviewers first."""
    out = list(rows)
    if samples:
        known = {r["sample_id"] for r in rows}
        unknown = [s for s in samples if s not in known]
        if unknown:
            raise InputError(f"--samples: {len(unknown)} id(s) not in the workspace: {', '.join(unknown[:5])}")
        wanted = set(samples)
        out = [r for r in out if r["sample_id"] in wanted]
    if pending_only:
        out = [r for r in out if not is_final(reviews.get(r["sample_id"]))]
    return sorted(out, key=lambda r: not review_first(r))  # stable: order kept within each group


def review_first(row: Dict[str, Any]) -> bool:
    """Whether a sample's candidates' audit put it at the front of the review queue (its object's
    annotation overlaps another's: ``pipelines.filters.audit_other_objects`` ``review_first``)."""
    for c in row.get("candidates") or []:
        text = (c or {}).get("filter_scores") or ""
        if "review_first" in text:
            try:
                if int(json.loads(text).get("review_first", 0) or 0) > 0:
                    return True
            except (ValueError, TypeError, AttributeError):
                continue
    return False


def decode_rgb(data: bytes) -> np.ndarray:
    """Image bytes -> HxWx3 uint8 (alpha dropped), for the media shown to annotators."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def source_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The source image with the referred object tinted and outlined (what the reviewer sees)."""
    import cv2

    out = image.copy()
    m = mask.astype(bool)
    tint = np.array([255, 221, 0], dtype=np.float32)
    out[m] = (0.65 * out[m].astype(np.float32) + 0.35 * tint).astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(2, int(round(max(image.shape[:2]) / 250)))
    cv2.drawContours(out, contours, -1, (0, 0, 0), thickness + 2)
    cv2.drawContours(out, contours, -1, (255, 221, 0), thickness)
    return out


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` atomically unless ``path`` holds it already (a re-push touches nothing)."""
    if path.exists() and path.read_bytes() == data:
        return False
    atomic_write_bytes(path, data)
    return True


def write_media(ws: Workspace, row: Dict[str, Any]) -> Dict[str, Any]:
    """Write a sample's images under ``review/media/<sample_id>/``; returns their relative paths
    (to the media folder): ``{"source": ..., "candidates": [...]}``."""
    media = ws.root / MEDIA_DIR
    sid = row["sample_id"]
    image = decode_rgb(row["source_image"]["bytes"])
    mask = rle_mod.decode(row["source_mask"])
    if mask.shape != image.shape[:2]:
        raise InputError(f"sample {sid}: source mask {mask.shape} does not match its image {image.shape[:2]}")
    rel_source = f"{sid}/source.png"
    write_if_changed(media / rel_source, encode_png(source_overlay(image, mask)))
    rels = []
    for i, cand in enumerate(row.get("candidates") or []):
        rel = f"{sid}/cand_{i}.png"
        data = cand["image"]["bytes"]
        if not data.startswith(b"\x89PNG"):
            data = encode_png(decode_rgb(data))
        write_if_changed(media / rel, data)
        rels.append(rel)
    return {"source": rel_source, "candidates": rels}


def placeholder_png() -> bytes:
    """A small grey image shown in candidate slots a sample does not have."""
    return encode_png(np.full((48, 64, 3), 200, dtype=np.uint8))


# ----------------------------------------------------------------------------------------------
# tasks and predictions
# ----------------------------------------------------------------------------------------------

class MediaUrls:
    """Turns a path relative to the media folder into the URL the server serves it at."""

    def __init__(self, media_dir: Path, document_root: Optional[str] = None, media_url: Optional[str] = None):
        self.media_dir = Path(media_dir).resolve()
        self.media_url = media_url
        self.document_root: Optional[Path] = None
        if media_url is None:
            if not document_root:
                raise InputError(
                    "images are served as Label Studio local files: give --document-root (the server's "
                    "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, also read from that variable), or --media-url "
                    "for media copied to a web server")
            root = Path(document_root).resolve()
            try:
                self.media_dir.relative_to(root)
            except ValueError:
                raise InputError(f"the media folder {self.media_dir} is not below the document root {root}; "
                                 "Label Studio can only serve files below LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT") from None
            self.document_root = root

    def __call__(self, rel: str) -> str:
        if self.media_url is not None:
            return self.media_url.rstrip("/") + "/" + urllib.parse.quote(rel)
        assert self.document_root is not None
        path = (self.media_dir / rel).relative_to(self.document_root).as_posix()
        return "/data/local-files/?d=" + urllib.parse.quote(path, safe="/")


def _info(row: Dict[str, Any]) -> str:
    target = row.get("edit_target") or ""
    what = {"replace": f"replace with {target}", "attribute": f"attribute: {target}", "remove": "remove"}.get(
        row.get("edit_type"), str(row.get("edit_type")))
    return f"{row.get('category')} · {what} · sample {row['sample_id']}"


def task_data(row: Dict[str, Any], rels: Dict[str, Any], num_candidates: int, url: Callable[[str], str]) -> Dict[str, Any]:
    """The data of one task (every ``$variable`` of the config), without its hash."""
    data: Dict[str, Any] = {
        cfg.KEY_SAMPLE_ID: row["sample_id"],
        cfg.KEY_SOURCE: url(rels["source"]),
        cfg.KEY_PROMPT: row["prompt"],
        cfg.KEY_PROMPT_HTML: cfg.prompt_html(row["prompt"], row["referring_span"], row["edit_span"]),
        cfg.KEY_INFO: _info(row),
    }
    cands = row.get("candidates") or []
    for i in range(num_candidates):
        if i < len(cands):
            c = cands[i]
            data[cfg.key_cand_image(i)] = url(rels["candidates"][i])
            data[cfg.key_cand_title(i)] = f"Candidate {i + 1}: {c['pipeline']} (seed {c['seed']})"
        else:
            data[cfg.key_cand_image(i)] = url(PLACEHOLDER)
            data[cfg.key_cand_title(i)] = f"Candidate {i + 1}: none for this sample"
    return data


def brush_result(mask: np.ndarray, from_name: str, to_name: str, region_id: str) -> Dict[str, Any]:
    """A brush region (Label Studio RLE through the SDK's converter) holding ``mask``."""
    h, w = mask.shape
    rle = cfg.mask_to_brush_rle(mask)
    return {
        "id": region_id, "from_name": from_name, "to_name": to_name, "type": "brushlabels",
        "original_width": int(w), "original_height": int(h), "image_rotation": 0,
        "value": {"format": "rle", "rle": rle, "brushlabels": [cfg.MASK_LABEL]},
    }


def prediction(row: Dict[str, Any], spec: cfg.ConfigSpec) -> Dict[str, Any]:
    """The pre-filled prediction: each candidate's M_e as a brush region, and the prompt text."""
    result: List[Dict[str, Any]] = []
    by_index = {i: name for name, i in spec.masks.items()}
    for i, cand in enumerate(row.get("candidates") or []):
        if i not in by_index:
            continue
        m = rle_mod.decode(cand["edit_mask"])
        result.append(brush_result(m, by_index[i], spec.candidates[i], f"me{i}"))
    if spec.prompt_edit:
        result.append({"id": "prompt", "from_name": spec.prompt_edit, "to_name": spec.prompt, "type": "textarea",
                       "value": {"text": [row["prompt"]]}})
    return {"model_version": MODEL_VERSION, "score": 1.0, "result": result}


def content_hash(data: Dict[str, Any], pred: Dict[str, Any]) -> str:
    """A hash of a task's data and prediction: unchanged samples are not re-sent."""
    blob = json.dumps({"data": data, "prediction": pred}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


# ----------------------------------------------------------------------------------------------
# server side
# ----------------------------------------------------------------------------------------------

def default_title(ws: Workspace) -> str:
    """``refcoco-edit review: <workdir name>``, cut to Label Studio's 50 characters."""
    return f"{DEFAULT_TITLE_PREFIX}: {ws.root.resolve().name}"[:MAX_TITLE]


def load_state(ws: Workspace) -> Dict[str, Any]:
    """``review/project.json`` (empty when not pushed yet)."""
    p = ws.root / PROJECT_FILE
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except ValueError:
        raise InputError(f"{p} is not valid JSON; remove it to push afresh") from None


def find_project(conn: Connection, state: Dict[str, Any], title: str) -> Optional[Any]:
    """The project: by the stored id (same server, same title asked for), else by exact title;
    None if there is none."""
    if state.get("project_id") and state.get("url") == conn.url and title == state.get("title"):
        try:
            return conn.call("reading the stored project", conn.client.projects.get, id=int(state["project_id"]))
        except LabelStudioError as e:
            if e.status_code != 404:
                raise
    projects = conn.call("listing projects", lambda: list(conn.client.projects.list(title=title)))
    same = sorted((p for p in projects if p.title == title), key=lambda p: p.id)
    if len(same) > 1:
        raise InputError(f"{len(same)} projects on {conn.url} are titled {title!r} (ids "
                         f"{', '.join(str(p.id) for p in same)}); give another --title")
    return same[0] if same else None


def list_tasks(conn: Connection, project_id: int, page_size: int = 200) -> List[Dict[str, Any]]:
    """Every task of a project as ``{"id", "data"}`` (the SDK pages through them)."""
    def fetch() -> List[Any]:
        return list(conn.client.tasks.list(project=project_id, page_size=page_size, fields="all", include="id,data"))

    return [{"id": int(t.id), "data": dict(t.data or {})} for t in conn.call("listing tasks", fetch)]


def ensure_storage(conn: Connection, project_id: int, media_dir: Path) -> None:
    """A local import storage for the media folder (Label Studio serves local files only below one)."""
    path = str(media_dir.resolve())
    storages = conn.call("listing local storages", conn.client.import_storage.local.list, project=project_id)
    if any(getattr(s, "path", None) == path for s in storages):
        return
    conn.call("adding the media folder as local storage", conn.client.import_storage.local.create,
              project=project_id, path=path, title="refcoco-edit media", use_blob_urls=False)


def push(workdir: str | Path, url: str, token: Optional[str] = None, title: Optional[str] = None,
         samples: Optional[Sequence[str]] = None, pending_only: bool = False, document_root: Optional[str] = None,
         media_url: Optional[str] = None, batch_size: int = 50, log: Callable[[str], None] = print) -> PushResult:
    """Create or update the project and its tasks for the workspace's samples (see the module doc)."""
    t0 = time.perf_counter()
    ws = Workspace(workdir)
    rows = load_samples(ws)
    chosen = select_samples(rows, ws.read_reviews(), samples, pending_only)
    num_candidates = max(len(r.get("candidates") or []) for r in rows)  # all rows: a stable config
    xml = cfg.label_config(num_candidates)
    spec = cfg.parse_label_config(xml)
    url_of = MediaUrls(ws.root / MEDIA_DIR, document_root, media_url)
    conn = Connection(url, token)
    conn.whoami()  # a bad token fails here, before anything is written
    state = load_state(ws)
    title = title or state.get("title") or default_title(ws)
    if len(title) > MAX_TITLE:
        raise InputError(f"--title is {len(title)} characters; Label Studio allows {MAX_TITLE}")

    # 1. the project (its config never loses candidate slots that annotations may use)
    project = find_project(conn, state, title)
    created = project is None
    if not created:
        try:
            on_server = cfg.parse_label_config(project.label_config or "").num_candidates
        except ValueError:
            on_server = 0
        if on_server > num_candidates:
            num_candidates = on_server
            xml = cfg.label_config(num_candidates)
            spec = cfg.parse_label_config(xml)
    if created:
        project = conn.call("creating the project", conn.client.projects.create, title=title, label_config=xml,
                            description="RefCOCO-Edit human review (refcoco-edit review push)")
        log(f"created project {project.id} {title!r} on {conn.url}")
    elif (project.label_config or "").strip() != xml.strip():
        conn.call("updating the labeling config", conn.client.projects.update, id=project.id, label_config=xml)
        log(f"updated the labeling config of project {project.id}")
    pid = int(project.id)
    write_if_changed(ws.root / MEDIA_DIR / PLACEHOLDER, placeholder_png())
    if media_url is None:
        ensure_storage(conn, pid, ws.root / MEDIA_DIR)

    # 2. media + tasks
    existing: Dict[str, Dict[str, Any]] = {}
    for t in sorted(list_tasks(conn, pid), key=lambda t: t["id"]):
        sid = t["data"].get(cfg.KEY_SAMPLE_ID)
        if sid is not None and sid not in existing:
            existing[sid] = t
    to_import: List[Dict[str, Any]] = []
    updated = unchanged = 0
    for row in chosen:
        rels = write_media(ws, row)
        data = task_data(row, rels, num_candidates, url_of)
        pred = prediction(row, spec)
        h = content_hash(data, pred)
        data[cfg.KEY_HASH] = h
        old = existing.get(row["sample_id"])
        if old is None:
            to_import.append({"data": data, "predictions": [pred]})
        elif old["data"].get(cfg.KEY_HASH) == h:
            unchanged += 1
        else:
            _update_task(conn, old["id"], data, pred)
            updated += 1
    for k in range(0, len(to_import), batch_size):
        batch = to_import[k: k + batch_size]
        conn.call("importing tasks", conn.client.projects.import_tasks, id=pid, request=batch)
    task_ids = {sid: t["id"] for sid, t in existing.items()}
    if to_import:
        for t in list_tasks(conn, pid):
            sid = t["data"].get(cfg.KEY_SAMPLE_ID)
            if sid is not None and (sid not in task_ids or t["id"] < task_ids[sid]):
                task_ids[sid] = t["id"]
    imported = len(to_import)

    # 3. the local state (a cache of the server's)
    tasks_state = dict(state.get("tasks", {})) if state.get("project_id") == pid and state.get("url") == conn.url else {}
    tasks_state.update({sid: int(tid) for sid, tid in task_ids.items()})
    atomic_write_json(ws.root / PROJECT_FILE, {
        "url": conn.url, "project_id": pid, "title": project.title if not created else title,
        "label_config_hash": cfg.config_hash(xml), "num_candidates": num_candidates,
        "media": {"document_root": str(url_of.document_root) if url_of.document_root else None, "media_url": media_url},
        "tasks": dict(sorted(tasks_state.items())),
    })
    res = PushResult(conn.url, pid, title, created, len(chosen), imported, updated, unchanged,
                     time.perf_counter() - t0, num_candidates, task_ids)
    log(f"pushed {len(chosen)} samples to project {pid}: {imported} imported, {updated} updated, "
        f"{unchanged} unchanged ({res.seconds:.1f}s)")
    return res


def _update_task(conn: Connection, task_id: int, data: Dict[str, Any], pred: Dict[str, Any]) -> None:
    """Replace a task's data and our prediction on it (its annotations stay)."""
    conn.call("updating a task", conn.client.tasks.update, id=str(task_id), data=data)
    preds = conn.call("listing predictions", conn.client.predictions.list, task=task_id)
    for p in preds:
        if getattr(p, "model_version", None) == MODEL_VERSION:
            conn.call("deleting an old prediction", conn.client.predictions.delete, id=p.id)
    conn.call("adding a prediction", conn.client.predictions.create, task=task_id, result=pred["result"],
              score=pred["score"], model_version=MODEL_VERSION)
