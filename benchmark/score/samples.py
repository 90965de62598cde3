"""The metrics pass of a score run: one record per sample, computed from the decoded arrays.

``score_item`` makes a sample's record (``samples.parquet``'s row) with the weight-free metrics,
``score_models`` adds the model metrics of a chunk in one batched pass, and ``write_thumbnails``
writes the gallery's source/reference thumbnails. All of them read the arrays ``score.items``
decoded once per sample.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np

from ..metrics import MetricParams, SampleArrays, compute_sample
from .cache import OUTPUTS_DIR
from .items import Item

__all__ = ["new_record", "score_item", "score_models", "write_thumbnails"]


def new_record(item: Item) -> Dict[str, Any]:
    """A sample's record before scoring: its data fields, status ok and no metrics."""
    from refcoco_edit.difficulty import buckets

    s = item.sample
    return {
        "sample_id": s.sample_id, "split": s.split, "image_id": s.image_id, "category": s.category,
        "edit_type": s.edit_type, "prompt": s.prompt, "referring_span": list(s.referring_span),
        "edit_span": list(s.edit_span), "seed": item.seed,
        "n_distractors": len(s.distractor_masks), "status": "ok", "reason": None, "error": None,
        "resized": False, "output": None, "height": None, "width": None, "metrics": {},
        **buckets(s.difficulty),  # attr_*: the difficulty buckets the breakdowns group by
    }


def score_item(it: Item, names: Sequence[str], params: MetricParams) -> None:
    """Set ``it.record``: skipped or failed with the reason, or scored with the metrics ``names``
    (weight-free) computed from the decoded arrays."""
    rec = new_record(it)
    it.record = rec
    if it.skip is not None:
        rec.update(status="skipped", reason=it.skip[0], error=it.skip[1])
        return
    d, meta = it.decoded, it.meta
    assert d is not None and meta is not None
    rec["height"], rec["width"] = d.hw
    if meta["status"] != "ok":
        rec.update(status="failed", reason=meta.get("reason"), error=meta.get("error"))
        return
    rec["resized"] = bool(meta.get("resized"))
    rec["output"] = f"{OUTPUTS_DIR}/{it.sample.sample_id}.png"
    arrays = SampleArrays(source=d.source, output=it.output, edit_mask=d.edit_mask, reference=d.reference,  # type: ignore[arg-type]
                          target_mask=d.target_mask, distractor_masks=d.distractor_masks, other_masks=d.other_masks,
                          pred_mask=it.pred_mask)
    rec["metrics"] = compute_sample(arrays, names, params)


def score_models(mm: Any, items: Sequence[Item]) -> None:
    """The model metrics of a chunk's scored samples, one batched pass (same decoded arrays)."""
    from ..metrics.model_based import ModelSample, target_text

    todo = [it for it in items if it.record is not None and it.record["status"] == "ok"]
    if not todo:
        return
    batch = []
    for it in todo:
        s, d = it.sample, it.decoded
        assert d is not None and it.output is not None
        batch.append(ModelSample(output=it.output, source=d.source, edit_mask=d.edit_mask, reference=d.reference,
                                 prompt=s.prompt, edit_phrase=s.edit_phrase, referring_phrase=s.referring_phrase,
                                 target_text=target_text(s.edit_type, s.edit_target, s.category),
                                 exemplar=d.exemplar, exemplar_mask=d.exemplar_mask, pred_mask=it.pred_mask))
    for it, values in zip(todo, mm.compute(batch)):
        it.record["metrics"].update(values)  # type: ignore[index]


def write_thumbnails(out: Path, it: Item) -> None:
    """The gallery thumbnails of a decoded sample: ``gallery/{sample_id}.{source,reference}.jpg``."""
    if it.decoded is None:
        return
    _thumbnail(out, it.sample.sample_id, "source", it.decoded.source)
    _thumbnail(out, it.sample.sample_id, "reference", it.decoded.reference)


def _thumbnail(out: Path, sid: str, kind: str, array: np.ndarray, size: int = 256) -> None:
    from PIL import Image

    p = out / "gallery" / f"{sid}.{kind}.jpg"
    if p.exists():
        return
    im = Image.fromarray(array)
    im.thumbnail((size, size), Image.BICUBIC)
    import io

    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    _replace_bytes(p, buf.getvalue())


def _replace_bytes(path: Path, data: bytes) -> None:
    """Write to a temp name and rename: readers never see half a file. No fsync (unlike outputs,
    which use atomic_write_bytes): a thumbnail lost to a power cut is simply made again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
