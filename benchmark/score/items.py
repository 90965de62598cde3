"""The per-sample state one score pass carries (``Item``): its cache lookup and its decoding.

An ``Item`` goes through the pass of ``refcoco_edit.benchmark.harness.run_score`` chunk by chunk:
``lookup_cache`` finds a usable cached output (or none: edit), ``decode_item`` decodes its
inputs and cached output once, the editing (``score.editing``) fills ``output``/``meta``, and
``score.samples`` turns it into a record. The arrays are dropped once a chunk is done.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from refcoco_edit.errors import SampleError

from ..data import BenchSample, DecodedSample, decode_image, decode_sample
from ..editors.base import Editor
from .cache import OUTPUTS_DIR, input_key, read_meta

__all__ = ["Item", "chunks", "lookup_cache", "decode_item"]


@dataclass
class Item:
    """One sample in the pass: its editor seed, cache key and marker, decoded arrays, output,
    predicted mask, skip reason (reason, message) and, once scored, its record."""

    sample: BenchSample
    seed: int
    key: str = ""
    meta: Optional[Dict[str, Any]] = None
    decoded: Optional[DecodedSample] = None
    output: Optional[np.ndarray] = None
    pred_mask: Optional[np.ndarray] = None
    skip: Optional[Tuple[str, str]] = None
    record: Optional[Dict[str, Any]] = None


def chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    """``seq`` in consecutive slices of ``n``."""
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def lookup_cache(out: Path, it: Item, editor: Editor, retry_failed: bool, wants_mask: bool) -> None:
    """Set ``it.key`` and ``it.meta`` (the cached output's marker, or None: edit this sample)."""
    it.key = input_key(it.sample, it.seed, editor.protocol)
    it.meta = read_meta(out, it.sample.sample_id, it.key)
    if it.meta is not None and it.meta["status"] == "failed" and retry_failed:
        it.meta = None
    if it.meta is not None and it.meta["status"] == "ok" and wants_mask and not it.meta.get("mask"):
        it.meta = None  # cached without the predicted mask: edit again


def decode_item(out: Path, it: Item) -> None:
    """Decode a sample's inputs (and its cached output, if any): each image once."""
    try:
        it.decoded = decode_sample(it.sample)
    except SampleError as e:
        it.skip = (e.reason, str(e))
        return
    it.decoded.source.setflags(write=False)  # editors get read-only inputs: metrics read them after
    it.decoded.reference.setflags(write=False)
    for a in (it.decoded.exemplar, it.decoded.exemplar_mask):  # reference-based track only
        if a is not None:
            a.setflags(write=False)
    if it.meta is not None and it.meta["status"] == "ok":
        try:
            arr = decode_image((out / OUTPUTS_DIR / f"{it.sample.sample_id}.png").read_bytes(), "cached output")
        except (SampleError, OSError):
            it.meta = None  # a damaged cache file: edit again
            return
        if arr.shape != it.decoded.source.shape:
            it.meta = None
            return
        it.output = arr
        if it.meta.get("mask"):
            try:
                from PIL import Image

                with Image.open(out / OUTPUTS_DIR / f"{it.sample.sample_id}.mask.png") as im:
                    mask = np.asarray(im.convert("L"))
            except (OSError, ValueError):
                mask = None
            if mask is None or mask.shape != it.decoded.hw:
                it.meta, it.output = None, None  # a damaged cached mask: edit again
                return
            it.pred_mask = mask
