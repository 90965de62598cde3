"""Editing in a score pass: call the editor in batches, check every output and cache it.

The editor sees only what its protocol declares (``editor_extras``). An exception fails its batch,
then each sample is retried alone (``call_editor``): one bad sample cannot fail its neighbours.
A full disk stops the run instead (it is no fault of the samples). ``edit_items`` is one chunk's
worth of editing, as the Ray actors run it (``score.ray``).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from refcoco_edit.errors import is_disk_error

from ..editors.base import EditFailure, Editor, check_mask, check_output, split_output
from .cache import CACHE_VERSION, write_output
from .items import Item, chunks, decode_item

__all__ = ["editor_extras", "call_editor", "finish_output", "edit_batches", "edit_items"]


def editor_extras(editor: Editor, item: Item) -> Dict[str, Any]:
    """The per-sample ``extras`` the editor gets: its sample_id and the inputs of its protocol."""
    s, d = item.sample, item.decoded
    assert d is not None
    e: Dict[str, Any] = {"sample_id": s.sample_id}
    p = editor.protocol
    if "gt_mask" in p:
        e["gt_mask"] = d.edit_mask
    if "object_mask" in p:
        e["object_mask"] = d.target_mask if d.target_mask is not None else np.zeros(d.hw, dtype=bool)
    if "edit_phrase" in p:
        e["edit_phrase"] = s.edit_phrase
    if "referring_phrase" in p:
        e["referring_phrase"] = s.referring_phrase
    if "edit_type" in p:
        e["edit_type"] = s.edit_type
    if "reference" in p:
        e["reference"] = d.reference
    if "reference_object" in p:  # the harness refused data without exemplars before the pass (check_track)
        e["reference_object"] = {"image": d.exemplar, "mask": d.exemplar_mask}
    return e


def call_editor(editor: Editor, items: List[Item]) -> List[Any]:
    """Outputs for ``items``; an exception fails the batch, then each sample is retried alone so
    one bad sample cannot fail its neighbours."""
    def call(batch: List[Item]) -> List[Any]:
        outs = editor.edit([it.decoded.source for it in batch], [it.sample.prompt for it in batch],  # type: ignore[union-attr]
                           [it.seed for it in batch], [editor_extras(editor, it) for it in batch])
        if not isinstance(outs, (list, tuple)) or len(outs) != len(batch):
            got = len(outs) if isinstance(outs, (list, tuple)) else type(outs).__name__
            return [EditFailure("wrong_count", f"edit() returned {got} outputs for {len(batch)} inputs")] * len(batch)
        return list(outs)

    try:
        return call(items)
    except Exception as e:  # noqa: BLE001 - the per-sample boundary: an editor error fails samples, not the run
        if is_disk_error(e):  # a full disk is no fault of the samples: stop (cached as failed, never redone)
            raise
        if len(items) == 1:
            return [EditFailure("editor_error", f"{type(e).__name__}: {e}"[:2000])]
    out: List[Any] = []
    for it in items:
        try:
            out.extend(call([it]))
        except Exception as e:  # noqa: BLE001 - same boundary, one sample
            if is_disk_error(e):
                raise
            out.append(EditFailure("editor_error", f"{type(e).__name__}: {e}"[:2000]))
    return out


def finish_output(out: Path, it: Item, output: Any, resize: bool, wants_mask: bool) -> None:
    """Check one editor output (and, for a ``returns_mask`` editor, its predicted mask), cache it
    under ``out/outputs`` and set ``it.meta`` / ``it.output`` / ``it.pred_mask``. Called once per
    edited sample, wherever the editing ran."""
    assert it.decoded is not None
    image, mask = split_output(output)
    arr, fail, resized = check_output(image, it.decoded.hw, resize)
    levels = None
    if fail is None and wants_mask:
        levels, fail = check_mask(mask, it.decoded.hw, resize)
        if fail is not None:
            arr, resized = None, False
    if fail is not None:
        meta: Dict[str, Any] = {"status": "failed", "reason": fail.reason, "error": fail.message, "resized": False}
    else:
        meta = {"status": "ok", "reason": None, "error": None, "resized": resized,
                "output_hw": list(np.shape(image)[:2])}
        if levels is not None:
            meta["mask"] = True
        it.output = arr
        it.pred_mask = levels
    meta["cache_version"] = CACHE_VERSION
    meta["input_sha256"] = it.key
    write_output(out, it.sample.sample_id, arr, meta, levels)
    it.meta = meta


def edit_batches(editor: Editor, out: Path, todo: Sequence[Item], resize: bool, wants_mask: bool,
                 pool: Optional[ThreadPoolExecutor] = None) -> Tuple[float, float]:
    """Edit ``todo`` (decoded) in batches of ``editor.batch_size`` and cache each batch's outputs as
    soon as it returns (``finish_output``, in ``pool`` when given): a kill loses one batch at most.
    Returns (editing seconds, checking + writing seconds)."""
    edit_s = write_s = 0.0
    for batch in chunks(todo, int(editor.batch_size)):
        t = time.perf_counter()
        results = list(zip(batch, call_editor(editor, list(batch))))
        t2 = time.perf_counter()

        def finish(pair: Tuple[Item, Any]) -> None:
            finish_output(out, pair[0], pair[1], resize, wants_mask)

        list(pool.map(finish, results) if pool is not None else map(finish, results))
        edit_s += t2 - t
        write_s += time.perf_counter() - t2
    return edit_s, write_s


def edit_items(editor: Editor, out: Path, items: Sequence[Item], resize: bool, wants_mask: bool) -> Dict[str, Any]:
    """Decode, edit (in batches of ``editor.batch_size``), check and cache the outputs of
    ``items`` (samples with no usable cached output), as one chunk of the local pass does; the
    editor must be loaded. Used by the Ray actors; returns counts and seconds."""
    t0 = time.perf_counter()
    for it in items:
        decode_item(out, it)
    todo = [it for it in items if it.skip is None]
    t1 = time.perf_counter()
    edit_s, write_s = edit_batches(editor, out, todo, resize, wants_mask)
    stats = {"edited": len(todo), "failed": sum(1 for it in todo if it.meta and it.meta["status"] != "ok"),
             "skipped": len(items) - len(todo), "decode_s": t1 - t0, "edit_s": edit_s, "write_outputs_s": write_s}
    for it in items:
        it.decoded = it.output = it.pred_mask = None
    return stats
