"""Benchmark input: samples from an export folder or a workspace, each image decoded once.

``load_dataset(path, split)`` reads

* an export folder (``*.parquet`` written by ``refcoco-edit export``/``build``) or one Parquet
  file, checked against the sample schema, or
* a workspace (``workspace.json`` / ``generate/``): its generated samples with the reviewers'
  decisions folded in, exactly as ``refcoco-edit export`` would write them;

keeps only the columns scoring needs, and orders samples by ``sample_id`` (the same order
whichever container holds them). Rows that cannot be scored are *skipped* with a reason code
(``SKIP_REASONS``), counted in results.json, and never stop the run.

``decode_sample`` turns a sample into arrays (source, reference, M_e, M, same-category distractor
masks, every other annotated object's mask when the data carry them), validating every mask before pycocotools sees it and every size against the source's.
Images are decoded once per sample and shared by the editor input, all metrics and the gallery.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from refcoco_edit.errors import InputError, SampleError
from refcoco_edit.reasons import reasons

__all__ = ["BenchSample", "DecodedSample", "Dataset", "load_dataset", "decode_sample", "SKIP_REASONS"]

# why a row is not scored (stable strings); the one table of every code is refcoco_edit.reasons.REASONS
SKIP_REASONS = reasons("skip")

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
COLUMNS = ("sample_id", "split", "image_id", "category", "source_image", "source_mask", "bbox",
           "distractor_categories", "distractor_masks", "other_masks", "referring_expression", "edit_type", "edit_target",
           "prompt", "referring_span", "edit_span", "reference_image", "edit_mask", "review")


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

    @property
    def hw(self) -> Tuple[int, int]:
        return int(self.source.shape[0]), int(self.source.shape[1])


@dataclass
class Dataset:
    samples: List[BenchSample]
    skipped: List[Dict[str, str]]
    """[{sample_id, reason, error}] of rows left out at load time"""
    info: Dict[str, Any]
    """kind (export|workspace), path, split, splits available, rows, schema_version"""

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
    return [{k: r.get(k) for k in COLUMNS} for r in rows], {"kind": "workspace", "schema_version": version}


def _read_export(path: Path) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    from refcoco_edit.export import load_export

    try:
        table = load_export(path)
    except ValueError as e:  # schema check
        raise InputError(f"--data {path}: {e}") from None
    except OSError as e:  # not Parquet, unreadable
        raise InputError(f"--data {path}: cannot read Parquet ({e})") from None
    version = (table.schema.metadata or {}).get(b"refcoco_edit.schema_version", b"").decode() or None
    return table.select(list(COLUMNS)).to_pylist(), {"kind": "export", "schema_version": version}


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
    )


def load_dataset(path: Union[str, Path], split: Optional[str] = None, status: str = "all",
                 limit: Optional[int] = None) -> Dataset:
    """Scorable samples of ``path`` (export or workspace), optionally of one ``split`` and only
    reviewed-accepted ones (``status="accepted"``), the first ``limit`` by sample_id."""
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
    if limit is not None:
        samples = samples[: max(0, int(limit))]
    skipped.sort(key=lambda d: (d["sample_id"], d["reason"]))
    info.update({"path": str(path), "split": split, "splits_available": splits, "status": status,
                 "rows": len(rows), "limit": limit})
    return Dataset(samples=samples, skipped=skipped, info=info)


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
    return DecodedSample(source=src, reference=ref, edit_mask=me, target_mask=target, distractor_masks=distractors,
                         other_masks=others)
