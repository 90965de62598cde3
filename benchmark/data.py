"""Benchmark input: samples from an export folder or a workspace, each image decoded once.

``load_dataset(path, split)`` reads

* an export folder (``*.parquet`` written by ``refcoco-edit export``/``build``) or one Parquet
  file, checked against the sample schema, or
* a workspace (``workspace.json`` / ``generate/``): its generated samples with the reviewers'
  decisions folded in, exactly as ``refcoco-edit export`` would write them;

keeps only the columns scoring needs, and orders samples by ``sample_id`` (the same order
whichever container holds them). Rows that cannot be scored are *skipped* with a reason code
(``SKIP_REASONS``), counted in results.json, and never stop the run.

An export of the *reference-based* view (``refcoco-edit export --view reference-based``:
FreeBench-style triplets before / exemplar / after) is read the same way; its view comes from
the export marker (``.refcoco-edit-export.json``) and is checked against its columns
(``Dataset.view``: ``rie`` | ``reference-based``; a workspace is always ``rie``). Its rows keep the
exemplar (``BenchSample.exemplar_bytes`` / ``exemplar_mask``), and carry no distractor or other
object masks (the view has none: those metrics do not apply). A triplet without a usable exemplar
is skipped (``no_exemplar``).

``decode_sample`` turns a sample into arrays (source, reference, M_e, M, same-category distractor
masks, every other annotated object's mask when the data carry them, and on the reference-based
track the exemplar image and its object mask), validating every mask before pycocotools sees it
and every size against its image's (the exemplar mask against the exemplar, the rest against the
source). Images are decoded once per sample and shared by the editor input, all metrics and the
gallery.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from refcoco_edit.errors import InputError, SampleError
from refcoco_edit.reasons import reasons

__all__ = ["BenchSample", "DecodedSample", "Dataset", "load_dataset", "decode_sample", "SKIP_REASONS", "VIEWS",
           "RIE", "REFERENCE_BASED"]

# why a row is not scored (stable strings); the one table of every code is refcoco_edit.reasons.REASONS
SKIP_REASONS = reasons("skip")

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
COLUMNS = ("sample_id", "split", "image_id", "category", "source_image", "source_mask", "bbox",
           "distractor_categories", "distractor_masks", "other_masks", "referring_expression", "edit_type", "edit_target",
           "prompt", "referring_span", "edit_span", "reference_image", "edit_mask", "review",
           "dataset", "selection", "other_ann_ids", "difficulty")
RIE, REFERENCE_BASED = "rie", "reference-based"
VIEWS = (RIE, REFERENCE_BASED)
# the reference-based view's columns scoring reads (it has no distractor / other-object masks)
REFERENCE_COLUMNS = tuple(c for c in COLUMNS if c not in (
    "distractor_categories", "distractor_masks", "other_masks", "referring_expression", "dataset", "selection",
    "other_ann_ids", "difficulty")) + (
    "exemplar_image", "exemplar_mask")


@dataclass
class BenchSample:
    """One scorable row (undecoded)."""

    sample_id: str
    split: str
    image_id: Optional[int]
    category: str
    edit_type: str
    edit_target: str
    prompt: str
    referring_span: Tuple[int, int]
    edit_span: Tuple[int, int]
    source_bytes: bytes
    reference_bytes: bytes
    edit_mask: Dict[str, Any]
    source_mask: Optional[Dict[str, Any]]
    distractor_masks: List[Dict[str, Any]]
    """same-category distractors only"""
    n_distractors_all: int = 0
    bbox: Optional[List[float]] = None
    other_masks: Optional[List[Dict[str, Any]]] = None
    """every other annotated object (any category); None: unknown (data before schema 1.1)"""
    exemplar_bytes: Optional[bytes] = None
    """reference-based track: the exemplar image (the object to put in, in a repainted
    surrounding); None on the rie view"""
    exemplar_mask: Optional[Dict[str, Any]] = None
    """reference-based track: the object's mask in the exemplar (RLE of the exemplar's size)"""
    difficulty: Optional[Dict[str, Any]] = None
    """the difficulty attributes (``refcoco_edit.difficulty``): the export's column, or computed
    from the row when the data predate it (schema < 1.2); None on the reference-based view"""

    def _span(self, span: Tuple[int, int]) -> str:
        a, b = span
        return self.prompt[a:b] if 0 <= a <= b <= len(self.prompt) else ""

    @property
    def edit_phrase(self) -> str:
        return self._span(self.edit_span)

    @property
    def referring_phrase(self) -> str:
        return self._span(self.referring_span)


@dataclass
class DecodedSample:
    source: np.ndarray
    reference: np.ndarray
    edit_mask: np.ndarray
    target_mask: Optional[np.ndarray]
    distractor_masks: List[np.ndarray] = field(default_factory=list)
    other_masks: Optional[List[np.ndarray]] = None
    exemplar: Optional[np.ndarray] = None
    """reference-based track: the exemplar image, HxWx3 uint8 (its own size); None on the rie view"""
    exemplar_mask: Optional[np.ndarray] = None
    """reference-based track: the object in the exemplar, HxW bool of the exemplar's size"""

    @property
    def hw(self) -> Tuple[int, int]:
        return int(self.source.shape[0]), int(self.source.shape[1])


@dataclass
class Dataset:
    samples: List[BenchSample]
    skipped: List[Dict[str, str]]
    """[{sample_id, reason, error}] of rows left out at load time"""
    info: Dict[str, Any]
    """kind (export|workspace), view, path, split, splits available, rows, schema_version"""
    view: str = RIE
    """the data view: ``rie`` (RefCOCO-Edit samples) or ``reference-based`` (triplets with exemplars)"""

    def sample_ids_sha256(self) -> str:
        h = hashlib.sha256()
        for s in self.samples:
            h.update(s.sample_id.encode("utf-8") + b"\n")
        return h.hexdigest()


def _read_workspace(root: Path) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    from refcoco_edit.export import apply_review
    from refcoco_edit.workspace import Workspace

    ws = Workspace(root)
    table = ws.stage("generate").read_samples()
    if table is None:
        raise InputError(f"--data {root}: the workspace has no generated samples; run `refcoco-edit build --out {root}` first")
    reviews = ws.read_reviews()
    rows = [apply_review(r, reviews.get(r["sample_id"])) for r in table.to_pylist()]
    version = (table.schema.metadata or {}).get(b"refcoco_edit.schema_version", b"").decode() or None
    return [{k: r.get(k) for k in COLUMNS} for r in rows], {"kind": "workspace", "schema_version": version,
                                                          "view": RIE}


def _marker_view(path: Path) -> Optional[str]:
    """The view named by the export marker of ``path`` (the folder, or a file's folder), or None
    when there is no marker (a loose Parquet file)."""
    from refcoco_edit.export import EXPORT_MARKER

    marker = (path if path.is_dir() else path.parent) / EXPORT_MARKER
    if not marker.is_file():
        return None
    try:
        view = json.loads(marker.read_text(encoding="utf-8")).get("view", RIE)
    except (OSError, ValueError, AttributeError) as e:
        raise InputError(f"--data {path}: unreadable export marker {marker} ({e})") from None
    if view not in VIEWS:
        raise InputError(f"--data {path}: the export marker names view {view!r}; known views: {', '.join(VIEWS)}")
    return str(view)


def _read_export(path: Path) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    from refcoco_edit.export import is_reference_based, load_export

    marked = _marker_view(path)
    try:
        table = load_export(path)
    except ValueError as e:  # schema check
        raise InputError(f"--data {path}: {e}") from None
    except OSError as e:  # not Parquet, unreadable
        raise InputError(f"--data {path}: cannot read Parquet ({e})") from None
    view = REFERENCE_BASED if is_reference_based(table) else RIE
    if marked is not None and marked != view:
        raise InputError(f"--data {path}: the export marker says view {marked!r} but the files hold the {view!r} "
                         "view's columns; export it again")
    version = (table.schema.metadata or {}).get(b"refcoco_edit.schema_version", b"").decode() or None
    cols = REFERENCE_COLUMNS if view == REFERENCE_BASED else COLUMNS
    return table.select(list(cols)).to_pylist(), {"kind": "export", "schema_version": version, "view": view}


def _read_rows(path: Path) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    if path.is_file():
        if path.suffix != ".parquet":
            raise InputError(f"--data {path}: expected an export folder, a workspace or a .parquet file")
        return _read_export(path)
    if not path.is_dir():
        raise InputError(f"--data {path}: no such file or folder")
    if (path / "workspace.json").exists() or (path / "generate").is_dir():
        return _read_workspace(path)
    if any(path.glob("*.parquet")):
        return _read_export(path)
    raise InputError(f"--data {path}: neither an export folder (*.parquet) nor a workspace (workspace.json)")


def _check_row(r: Dict[str, Any]) -> Optional[Tuple[str, str]]:
    sid = r.get("sample_id")
    if not isinstance(sid, str) or not _SAFE_ID.match(sid):
        return "bad_sample_id", f"sample_id {sid!r}"
    if not (r.get("source_image") or {}).get("bytes"):
        return "no_source_image", "source_image has no bytes"
    if not (r.get("reference_image") or {}).get("bytes"):
        return "no_reference", "reference_image is missing"
    if not r.get("edit_mask"):
        return "no_edit_mask", "edit_mask is missing"
    if not (r.get("prompt") or "").strip():
        return "empty_prompt", "prompt is empty"
    if "exemplar_image" in r:  # a reference-based triplet: the exemplar is the task's input
        if not (r.get("exemplar_image") or {}).get("bytes"):
            return "no_exemplar", "exemplar_image is missing"
        if not r.get("exemplar_mask"):
            return "no_exemplar", "exemplar_mask is missing"
    return None


def _to_sample(r: Dict[str, Any]) -> BenchSample:
    cat = str(r.get("category") or "")
    masks = list(r.get("distractor_masks") or [])
    cats = list(r.get("distractor_categories") or [])
    same = [m for m, c in zip(masks, cats) if c == cat and m]
    span = lambda v: (int(v[0]), int(v[1])) if v and len(v) == 2 else (0, 0)  # noqa: E731
    return BenchSample(
        sample_id=r["sample_id"], split=str(r.get("split") or ""), image_id=r.get("image_id"), category=cat,
        edit_type=str(r.get("edit_type") or ""), edit_target=str(r.get("edit_target") or ""), prompt=str(r["prompt"]),
        referring_span=span(r.get("referring_span")), edit_span=span(r.get("edit_span")),
        source_bytes=r["source_image"]["bytes"], reference_bytes=r["reference_image"]["bytes"],
        edit_mask=r["edit_mask"], source_mask=r.get("source_mask"), distractor_masks=same,
        n_distractors_all=len(masks), bbox=r.get("bbox"),
        other_masks=[m for m in r["other_masks"] if m] if r.get("other_masks") is not None else None,
        exemplar_bytes=(r.get("exemplar_image") or {}).get("bytes"), exemplar_mask=r.get("exemplar_mask"),
        difficulty=_difficulty(r),
    )


def _difficulty(r: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The row's stored difficulty attributes, else computed from its columns (older data; an
    attribute whose inputs are missing stays None); None for a reference-based triplet."""
    if "exemplar_image" in r:
        return None
    if r.get("difficulty") is not None:
        return dict(r["difficulty"])
    from refcoco_edit.difficulty import attributes

    try:
        return attributes(r)
    except (ValueError, TypeError, KeyError):  # a malformed mask: the metrics' checks report it
        return None


def load_dataset(path: Union[str, Path], split: Optional[str] = None, status: str = "all",
                 limit: Optional[int] = None, subset: Optional[str] = None) -> Dataset:
    """Scorable samples of ``path`` (export of either view, or a workspace), optionally of one
    ``split``, only reviewed-accepted ones (``status="accepted"``), only those matching the
    ``subset`` expression over their difficulty attributes (``refcoco_edit.difficulty.
    subset_filter``), the first ``limit`` by sample_id. ``Dataset.view`` says which view the data
    are (read from the export marker); ``info["subset"]`` records the expression and the counts."""
    if status not in ("all", "accepted"):
        raise InputError(f"--status {status!r}: choose all or accepted")
    path = Path(path)
    rows, info = _read_rows(path)
    splits = sorted({str(r.get("split") or "") for r in rows})
    if split is not None:
        rows = [r for r in rows if str(r.get("split") or "") == split]
        if not rows:
            raise InputError(f"--split {split!r}: no samples; the data has split(s) {', '.join(splits) or '(none)'}")
    if status == "accepted":
        rows = [r for r in rows if (r.get("review") or {}).get("status") == "accepted"]
    skipped: List[Dict[str, str]] = []
    seen = set()
    samples: List[BenchSample] = []
    for r in rows:
        bad = _check_row(r)
        sid = str(r.get("sample_id"))
        if bad is None and sid in seen:
            bad = ("duplicate_sample_id", f"sample_id {sid!r} appears more than once")
        if bad is not None:
            skipped.append({"sample_id": sid, "reason": bad[0], "error": bad[1]})
            continue
        seen.add(sid)
        samples.append(_to_sample(r))
    samples.sort(key=lambda s: s.sample_id)
    subset_info = None
    if subset is not None:
        from refcoco_edit.difficulty import subset_filter

        try:
            keep = subset_filter(subset)
        except ValueError as e:
            raise InputError(str(e)) from None
        before = len(samples)
        samples = [s for s in samples if keep({**(s.difficulty or {}), "edit_type": s.edit_type,
                                                "category": s.category, "split": s.split})]
        subset_info = {"expr": subset, "matched": len(samples), "of": before}
        if not samples:
            raise InputError(f"--subset {subset!r}: no sample matches (of {before})")
    if limit is not None:
        samples = samples[: max(0, int(limit))]
    skipped.sort(key=lambda d: (d["sample_id"], d["reason"]))
    info.update({"path": str(path), "split": split, "splits_available": splits, "status": status,
                 "rows": len(rows), "limit": limit, "subset": subset_info})
    return Dataset(samples=samples, skipped=skipped, info=info, view=str(info["view"]))


def _mask(rle: Dict[str, Any], hw: Tuple[int, int], what: str) -> np.ndarray:
    from refcoco_edit import rle as rle_mod

    try:
        rle_mod.validate_compressed(rle, hw)
        return rle_mod.decode(rle)
    except rle_mod.MaskError as e:
        reason = "size_mismatch" if "differs from the image" in str(e) else e.reason
        raise SampleError(reason, f"{what}: {e}") from None


def decode_image(data: bytes, what: str) -> np.ndarray:
    from refcoco_edit.imageio import ImageError, decode_image_bytes

    try:
        return decode_image_bytes(data)
    except ImageError as e:
        raise SampleError(e.reason, f"{what}: {e}") from None


def decode_sample(s: BenchSample, reference: bool = True) -> DecodedSample:
    """Decode a sample's images and masks (raises SampleError with a SKIP_REASONS code)."""
    src = decode_image(s.source_bytes, "source_image")
    hw = (int(src.shape[0]), int(src.shape[1]))
    ref = decode_image(s.reference_bytes, "reference_image") if reference else None
    if ref is not None and ref.shape != src.shape:
        raise SampleError("size_mismatch", f"reference_image is {ref.shape[0]}x{ref.shape[1]}, the source {hw[0]}x{hw[1]}")
    me = _mask(s.edit_mask, hw, "edit_mask")
    target = _mask(s.source_mask, hw, "source_mask") if s.source_mask else None
    distractors = [_mask(m, hw, f"distractor_masks[{i}]") for i, m in enumerate(s.distractor_masks)]
    others = ([_mask(m, hw, f"other_masks[{i}]") for i, m in enumerate(s.other_masks)]
              if s.other_masks is not None else None)
    exemplar = ex_mask = None
    if s.exemplar_bytes is not None:
        exemplar = decode_image(s.exemplar_bytes, "exemplar_image")
        if s.exemplar_mask is None:
            raise SampleError("no_exemplar", "exemplar_mask is missing")
        ex_mask = _mask(s.exemplar_mask, (int(exemplar.shape[0]), int(exemplar.shape[1])), "exemplar_mask")
        if not ex_mask.any():
            raise SampleError("no_exemplar", "exemplar_mask is empty: the exemplar shows no object")
    return DecodedSample(source=src, reference=ref, edit_mask=me, target_mask=target, distractor_masks=distractors,
                         other_masks=others, exemplar=exemplar, exemplar_mask=ex_mask)
