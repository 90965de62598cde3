"""The build's ground-truth audit of the other annotated objects on the demo data.

A remover that ignores the other objects (``protect_others=False``, the behaviour before the
audit) is run beside the default one: its candidates that paint over an object in front of the
removed one are marked in ``filter_scores`` and never become the reference while the clean
candidate exists; run alone, the audit still marks them and counts the references it could not
avoid, in the build report and the dataset card."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from refcoco_edit import rle
from refcoco_edit.build import BuildConfig, build
from refcoco_edit.export import load_export
from refcoco_edit.pipelines import base
from refcoco_edit.pipelines.classical import InpaintRemoval


class RawRemove(InpaintRemoval):
    """The classical remover as it was before the audit: it paints wherever its hole reaches."""

    name = "raw-remove"

    def __init__(self, **kw):
        super().__init__(protect_others=False, **kw)


def _build(monkeypatch, demo_dir, out, removers):
    monkeypatch.setattr(base.PIPELINES, "_entries", {**base.PIPELINES.entries, "raw-remove": RawRemove})
    monkeypatch.setattr(base.PIPELINES, "_loaded", {})
    monkeypatch.setitem(base.BACKENDS["classical"], "remove", removers)
    logs = []
    res = build(BuildConfig.of(out=str(out), refcoco=str(demo_dir), images=str(demo_dir / "images"), num_images=6,
                               progress=False), log=logs.append)
    return res, logs


def _img(struct):
    return np.asarray(Image.open(io.BytesIO(struct["bytes"])).convert("RGB"))


def _damaged(row, image):
    src, m = _img(row["source_image"]), rle.decode(row["source_mask"])
    return [a for a, o in zip(row["other_ann_ids"], row["other_masks"])
            if (np.abs(src.astype(int) - image.astype(int)).max(axis=2)[rle.decode(o) & ~m] > 8).mean() > 0.01]


def test_a_marked_candidate_is_not_the_reference_while_a_clean_one_exists(monkeypatch, demo_dir, tmp_path):
    res, logs = _build(monkeypatch, demo_dir, tmp_path / "w", ["raw-remove", "classical-remove"])
    a = res.audit
    assert a["samples"] == res.counts["generate"] and a["samples_unknown"] == 0
    assert a["candidates_marked"] >= 3 and a["references_marked"] == 0  # the demo's occluded removals
    rows = {r["sample_id"]: r for r in load_export(res.export_dir).to_pylist()}
    assert set(a["marked_sample_ids"]) <= set(rows)
    for sid in a["marked_sample_ids"]:
        r = rows[sid]
        scores = [json.loads(c["filter_scores"]) for c in r["candidates"]]
        assert [c["pipeline"] for c in r["candidates"]] == ["raw-remove", "classical-remove"]
        assert scores[0]["others_damaged"] >= 1 and scores[1]["others_damaged"] == 0
        assert _damaged(r, _img(r["candidates"][0]["image"]))  # the mark is real: recomputed here
        assert r["reference_image"]["bytes"] == r["candidates"][1]["image"]["bytes"]  # the clean one
        assert not _damaged(r, _img(r["reference_image"]))
    assert any("0 references changed one" in line for line in logs)


def test_without_a_clean_candidate_the_audit_counts_the_reference(monkeypatch, demo_dir, tmp_path):
    res, logs = _build(monkeypatch, demo_dir, tmp_path / "w", ["raw-remove"])
    a = res.audit
    assert a["references_marked"] == a["samples_marked"] == a["candidates_marked"] >= 3
    card = (res.export_dir / "README.md").read_text()
    assert f"{a['candidates_marked']} of {a['candidates']} candidates marked" in card
    assert f"{a['references_marked']} references damage another object" in card
    assert any(f"{a['references_marked']} references changed one" in line for line in logs)
