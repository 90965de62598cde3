"""Twice-repainting of the reference-based view with the weight-free repainter (``backdrop``):
triplets are (before = a first repaint, exemplar = the real object on a new surrounding,
after = the real photo), and no exemplar shares pixel context with its after image."""
from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from refcoco_edit import rle
from refcoco_edit.export import REFERENCE_BASED_COLUMNS, REPAINT_COLUMNS, reference_based_rows, write_export
from refcoco_edit.imageio import decode_image_bytes, encode_png
from refcoco_edit.repaint import BackdropRepainter
from refcoco_edit.refcoco import RefCOCO


def _first_repaint(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A before image: the object region filled (Telea), as a removal pipeline would."""
    return cv2.inpaint(img, cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)), 5, cv2.INPAINT_TELEA)


@pytest.fixture(scope="module")
def rows(demo_dir):
    """Replace and remove samples over real demo objects (sample columns the view reads)."""
    refer = RefCOCO(demo_dir, "refcoco", "unc", images_dir=demo_dir / "images")
    out = []
    for k, ref_id in enumerate(refer.ref_ids()[:12]):
        ref = refer.refs[ref_id]
        li = refer.load_image(ref["image_id"])
        img = li.array
        m = rle.decode(refer.ann_rle(ref["ann_id"]))
        etype = ("replace", "remove")[k % 2]
        before = _first_repaint(img, m)
        out.append({
            "sample_id": f"s{k}", "dataset": "refcoco", "split": "train", "image_id": ref["image_id"], "ref_id": ref_id,
            "sent_id": ref["sent_ids"][0], "category": refer.cats[ref["category_id"]],
            "source_image": {"bytes": encode_png(img), "path": "x.png"}, "source_mask": rle.encode(m),
            "bbox": rle.to_bbox(rle.encode(m)), "exemplar_image": None, "edit_type": etype,
            "edit_target": "giraffe" if etype == "replace" else "", "prompt": "p", "referring_span": [0, 0],
            "edit_span": [0, 1], "prompt_source": "template", "reference_image": {"bytes": encode_png(before), "path": None},
            "edit_mask": rle.encode(m), "review": {"status": "pending", "chosen_candidate": 0},
            "candidates": [{"pipeline": "classical-remove" if etype == "remove" else "classical-replace"}],
            "schema_version": "x",
        })
    return out


def _background_shares_pixels(exemplar: np.ndarray, ex_mask: np.ndarray, after: np.ndarray, patch: int = 12) -> float:
    """The smallest mean squared difference (8-bit levels) between a patch of the exemplar's
    background (3 px clear of the object) and any same-size patch of the after image: 0 when a
    piece of the surrounding was copied."""
    clear = ~cv2.dilate(ex_mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    H, W = ex_mask.shape
    spots = [(y, x) for y in range(0, H - patch, patch) for x in range(0, W - patch, patch)
             if clear[y:y + patch, x:x + patch].all()]
    assert spots, "no background in the exemplar"
    best = np.inf
    a = after.astype(np.float32)
    for y, x in spots[:: max(1, len(spots) // 12)]:  # about 12 patches spread over the background
        t = exemplar[y:y + patch, x:x + patch].astype(np.float32)
        best = min(best, float(cv2.matchTemplate(a, t, cv2.TM_SQDIFF).min()) / (patch * patch * 3))
    return best


def test_triplets_are_twice_repainted(rows):
    out = reference_based_rows(rows)
    assert [r["edit_type"] for r in out] == ["replace", "add"] * 6
    for src, t in zip(rows, out):
        assert t["reference_image"]["bytes"] == src["source_image"]["bytes"]       # after: the real photo
        assert t["source_image"]["bytes"] == src["reference_image"]["bytes"]       # before: the first repaint
        rep = json.loads(t["repaint"])
        assert rep["before"] == {"repaint": "first", "pipeline": src["candidates"][0]["pipeline"],
                                 "sample_id": src["sample_id"]}
        assert rep["exemplar"]["repaint"] == "second" and rep["exemplar"]["repainter"] == "backdrop"
        a, b = t["referring_span"]
        c, d = t["edit_span"]
        if t["edit_type"] == "replace":
            assert t["prompt"] == f"replace the giraffe with {t['prompt'][c + 5:]}" and t["prompt"][a:b] == "the giraffe"
            assert t["prompt"][c:d].startswith("with ") and t["category"] in t["prompt"][c:d]
            assert t["prompt_source"] == "reversed-replacement"
        else:
            assert t["prompt"] == t["prompt"][c:d] and a == b == len(t["prompt"]) and t["prompt"].startswith("add ")
        assert t["sample_id"] != src["sample_id"]
    assert reference_based_rows(rows) == out  # seeded by sample id: deterministic


def test_no_exemplar_shares_pixel_context_with_its_after_image(rows):
    for src, t in zip(rows, reference_based_rows(rows)):
        after = decode_image_bytes(t["reference_image"]["bytes"])
        ex = decode_image_bytes(t["exemplar_image"]["bytes"])
        ex_mask = rle.decode(t["exemplar_mask"])
        m = rle.decode(src["source_mask"])
        assert ex_mask.shape == ex.shape[:2] and ex_mask.any() and (~ex_mask).sum() > 0.2 * ex_mask.size
        # identity: the object's colours are the after image's
        assert np.abs(ex[ex_mask].mean(0) - after[m].mean(0)).max() < 12
        # context: no background patch of the exemplar is found in the after image
        assert _background_shares_pixels(ex, ex_mask, after) > 4.0, t["sample_id"]
    # the check itself finds a copied surrounding: a plain crop of the after image around the object
    after = decode_image_bytes(rows[0]["source_image"]["bytes"])
    m = rle.decode(rows[0]["source_mask"])
    ys, xs = np.nonzero(m)
    y0, y1, x0, x1 = max(0, ys.min() - 30), ys.max() + 30, max(0, xs.min() - 30), xs.max() + 30
    assert _background_shares_pixels(after[y0:y1, x0:x1], m[y0:y1, x0:x1], after) == 0.0


def test_backdrop_repainter_jitters_geometry_and_checks_inputs():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)
    m = np.zeros((80, 100), bool)
    m[20:50, 30:50] = True
    rp = BackdropRepainter()
    outs = [rp.repaint(img, m, "cup", s) for s in range(8)]
    assert len({(o.params["flip"], o.params["angle"]) for o in outs}) == 8
    assert any(o.params["flip"] for o in outs) and not all(o.params["flip"] for o in outs)
    for o in outs:
        assert o.image.shape[0] == o.image.shape[1] >= 64 and o.mask.shape == o.image.shape[:2]
        assert 0.8 * 0.8 * 600 < o.mask.sum() < 1.25 * 1.25 * 600 * 1.1  # area follows the scale change
    a, b = rp.repaint(img, m, "cup", 3), rp.repaint(img, m, "cup", 3)
    assert np.array_equal(a.image, b.image) and a.params == b.params
    with pytest.raises(ValueError, match="empty"):
        rp.repaint(img, np.zeros_like(m), "cup", 0)
    with pytest.raises(ValueError, match="mask"):
        rp.repaint(img, m[:10], "cup", 0)
    with pytest.raises(ValueError, match="fill"):
        BackdropRepainter(fill=(0.9, 0.2))


def test_reference_based_export_has_repaint_columns_and_card(rows, tmp_path):
    from refcoco_edit.schema import sample_fields

    full = [dict({f.name: None for f in sample_fields()}, **r) for r in rows]
    info = write_export(full, tmp_path / "rb", view="reference-based")
    assert info["rows"] == 12
    import pyarrow.parquet as pq

    t = pq.read_table(sorted((tmp_path / "rb").glob("*.parquet"))[0])
    assert set(t.column_names[:-2]) == set(REFERENCE_BASED_COLUMNS) and tuple(t.column_names[-2:]) == REPAINT_COLUMNS
    card = (tmp_path / "rb" / "README.md").read_text()
    assert "## Twice-repainting" in card and '"repainter": "backdrop"' in card
    import datasets

    ds = datasets.load_dataset(str(tmp_path / "rb"), split="train")
    ex = ds[0]["exemplar_image"]
    assert isinstance(ex, Image.Image) and json.loads(ds[0]["repaint"])["exemplar"]["repaint"] == "second"
    assert np.asarray(ex).shape[:2] == tuple(rle.decode(ds[0]["exemplar_mask"]).shape)


def test_load_export_reads_a_reference_based_export_and_import_refuses_it(rows, tmp_path):
    from refcoco_edit.errors import InputError
    from refcoco_edit.export import import_export, load_export
    from refcoco_edit.schema import sample_fields

    full = [dict({f.name: None for f in sample_fields()}, **r) for r in rows]
    write_export(full, tmp_path / "rb", view="reference-based")
    t = load_export(tmp_path / "rb")
    assert t.num_rows == 12 and "repaint" in t.column_names and "candidates" not in t.column_names
    with pytest.raises(InputError, match="reference-based export"):
        import_export(tmp_path / "rb", tmp_path / "w")
