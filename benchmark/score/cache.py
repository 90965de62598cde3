"""The output cache of a score run (``RESULTS/outputs/``) and the run fingerprint that guards it.

Layout::

    run.json                 at RESULTS/: the fingerprint of (editor, its config and protocol,
                             seed, --resize-outputs); a different one is refused without --overwrite
    outputs/{sample_id}.png  the checked output, lossless PNG (written atomically)
    outputs/{sample_id}.mask.png  the predicted mask M_hat of an editor with ``returns_mask``
                             (grey levels round(255 * p)); ``mask_iou`` is computed from it
    outputs/{sample_id}.json {status: ok|failed, reason, error, resized, output_hw, input_sha256
                             [, mask: true]}; written after the PNGs, so its presence marks the
                             sample done

``input_sha256`` (``input_key``) hashes what the editor saw (source bytes, prompt, seed, protocol
inputs, the exemplar image and mask for an editor that declares ``reference_object``): a cached output made from other inputs (a rebuilt dataset, a corrected prompt) is
edited again. Plain files and dicts only: the pass's per-sample state is in ``score.items``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence

from refcoco_edit.errors import InputError
from refcoco_edit.workspace import atomic_write_bytes, fingerprint

from ..data import BenchSample

if TYPE_CHECKING:
    import numpy as np

__all__ = ["RUN_MANIFEST", "OUTPUTS_DIR", "CACHE_VERSION", "run_manifest", "prepare_out", "input_key",
           "read_meta", "write_output"]

RUN_MANIFEST = "run.json"
OUTPUTS_DIR = "outputs"
CACHE_VERSION = 1


def run_manifest(model: str, editor: Dict[str, Any], seed: int, resize_outputs: bool) -> Dict[str, Any]:
    """The content of ``run.json``: the settings the cached outputs depend on and their
    fingerprint. ``editor``: ``Editor.describe()``."""
    settings = {"model": model, "editor_class": editor["class"], "editor_config": editor["config"],
                "editor_protocol": editor["protocol"], "editor_version": editor["version"], "seed": int(seed),
                "resize_outputs": bool(resize_outputs), "cache_version": CACHE_VERSION}
    return {"fingerprint": fingerprint(settings), "settings": settings}


def prepare_out(out: Path, manifest: Dict[str, Any], overwrite: bool) -> None:
    """Make ``out`` ready for a run with ``manifest``: refuse a foreign folder or another run's
    outputs (unless ``overwrite``, which discards them), clear temp files a killed run left,
    write ``run.json``."""
    man_path = out / RUN_MANIFEST
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not man_path.exists():
        raise InputError(f"--out {out} exists, is not empty and holds no {RUN_MANIFEST}: "
                         "not a refcoco-edit results folder; refusing to write into it")
    old = json.loads(man_path.read_text()) if man_path.exists() else None
    if old is not None and old.get("fingerprint") != manifest["fingerprint"]:
        if not overwrite:
            a, b = old.get("settings", {}), manifest["settings"]
            diffs = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
            raise InputError(f"--out {out} holds outputs of another run ({diffs or 'other settings'}); "
                             "pass --overwrite to discard them, or choose another --out")
    if overwrite and out.exists():
        for name in (OUTPUTS_DIR, "gallery", "plots"):
            if (out / name).exists():
                shutil.rmtree(out / name)
        for name in ("results.json", "samples.parquet", "report.md", "gallery.html", "timing.json",
                     "judge/answers.parquet"):  # the judge's cache stays: its keys hold the image hashes
            if (out / name).exists():
                (out / name).unlink()
    (out / OUTPUTS_DIR).mkdir(parents=True, exist_ok=True)
    for p in (out / OUTPUTS_DIR).glob("*.tmp-*"):  # left by a killed run
        p.unlink()
    for d in (out, out / "gallery"):
        for p in d.glob("*.tmp-*") if d.is_dir() else ():
            if p.is_file():
                p.unlink()
    atomic_write_bytes(man_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def input_key(sample: BenchSample, seed: int, protocol: Sequence[str]) -> str:
    """A hash of everything the editor sees for a sample: source bytes, prompt, seed and the
    protocol inputs. A cached output whose key differs (the dataset was rebuilt with another
    prompt for the same sample_id, say) is edited again instead of reused."""
    import hashlib

    h = hashlib.sha256()

    def add(tag: str, data: Any) -> None:
        b = data if isinstance(data, bytes) else json.dumps(data, sort_keys=True, default=str).encode("utf-8")
        h.update(tag.encode() + b"\x00" + str(len(b)).encode() + b"\x00" + b)

    add("source", bytes(sample.source_bytes))
    add("prompt", sample.prompt)
    add("seed", int(seed))
    p = set(protocol)
    if "gt_mask" in p:
        add("gt_mask", sample.edit_mask)
    if "object_mask" in p:
        add("object_mask", sample.source_mask)
    if "edit_phrase" in p:
        add("edit_phrase", sample.edit_phrase)
    if "referring_phrase" in p:
        add("referring_phrase", sample.referring_phrase)
    if "edit_type" in p:
        add("edit_type", sample.edit_type)
    if "reference" in p:
        add("reference", bytes(sample.reference_bytes))
    if "reference_object" in p:  # the exemplar and its object mask (another exemplar: edit again)
        add("reference_object", bytes(sample.exemplar_bytes or b""))
        add("reference_object_mask", sample.exemplar_mask)
    return h.hexdigest()


def read_meta(out: Path, sid: str, key: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The marker of ``sid``'s cached output, or None when there is no usable one (missing,
    unreadable, another cache version, made from other inputs than ``key``, files missing)."""
    p = out / OUTPUTS_DIR / f"{sid}.json"
    try:
        meta = json.loads(p.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, OSError):
        return None  # unreadable marker: redo the sample
    if meta.get("cache_version") != CACHE_VERSION:
        return None
    if key is not None and meta.get("input_sha256") != key:
        return None  # made from other inputs: edit again
    if meta.get("status") == "ok" and not (out / OUTPUTS_DIR / f"{sid}.png").exists():
        return None
    if meta.get("mask") and not (out / OUTPUTS_DIR / f"{sid}.mask.png").exists():
        return None
    return meta


def write_output(out: Path, sid: str, array: Optional[np.ndarray], meta: Dict[str, Any],
                 mask: Optional[np.ndarray] = None) -> None:
    """Cache one sample: the output PNG and mask PNG (when given), then the marker, each atomically."""
    from refcoco_edit.imageio import encode_png

    if array is not None:
        atomic_write_bytes(out / OUTPUTS_DIR / f"{sid}.png", encode_png(array))
    if mask is not None:
        atomic_write_bytes(out / OUTPUTS_DIR / f"{sid}.mask.png", encode_png(mask))
    atomic_write_bytes(out / OUTPUTS_DIR / f"{sid}.json", (json.dumps(meta, sort_keys=True) + "\n").encode("utf-8"))
