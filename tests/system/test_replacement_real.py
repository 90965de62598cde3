"""Replacement on photo-like data where a category appears once (issue 25 items 3 and 5).

The crafted street set (``tests/support/street_refer.py``): one bus in the whole data, two people
standing in front of it (annotated over its coarse outline), two cars in another image. A default
build replaces a car with the bus: exemplars come from any instance of the data, and the bus is
cut by its own visible pixels, so none of the people's pixels come along.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.street_refer import write_street  # noqa: E402


def _rgba(struct) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(struct["bytes"])) as im:
        return np.asarray(im.convert("RGBA"))


def _near(rgb: np.ndarray, colour, tol: int = 60) -> int:
    """How many pixels lie within ``tol`` (every channel) of ``colour``."""
    return int((np.abs(rgb.astype(int) - np.array(colour)).max(axis=-1) <= tol).sum())


@pytest.fixture(scope="module")
def street(tmp_path_factory) -> dict:
    return write_street(tmp_path_factory.mktemp("street"))


@pytest.fixture(scope="module")
def built(street, tmp_path_factory):
    """A default build of the street set (the classical backend, seed 0), its export rows."""
    from refcoco_edit.cli import main
    from refcoco_edit.export import load_export

    work = tmp_path_factory.mktemp("street-build") / "W"
    assert main(["build", "--out", str(work), "--refcoco", street["root"], "--images", street["images_dir"],
                 "--no-progress"]) == 0
    return work, load_export(work / "export").to_pylist()


def test_a_category_seen_once_is_a_replacement_target(street, built):
    """The bus is in one image only; a car of the other image is replaced by it (before, the bank
    offered only categories seen in two images: no replacement at all)."""
    from refcoco_edit.rle import decode

    _, rows = built
    replaced = [r for r in rows if r["edit_type"] == "replace"]
    assert replaced, [(r["category"], r["edit_type"]) for r in rows]
    for r in replaced:
        assert r["category"] == "car" and r["edit_target"] == "bus" and r["ann_id"] in street["cars"]
        src, ref = _rgba(r["source_image"])[..., :3], _rgba(r["reference_image"])[..., :3]
        m_e = decode(r["edit_mask"])
        assert np.array_equal(src[~m_e], ref[~m_e])  # the contract: bit-exact outside M_e
        changed = np.abs(src.astype(int) - ref.astype(int)).max(axis=-1) > 8
        assert changed[decode(r["source_mask"])].mean() > 0.5  # the car is gone under the bus
        ex = _rgba(r["exemplar_image"])
        for colour in street["shirts"].values():  # the people in front of the bus stayed behind
            assert _near(ex[..., :3][ex[..., 3] > 0], colour) == 0
            assert _near(ref[m_e], colour) == 0


def test_the_quarantine_says_why_the_people_got_no_replacement(built):
    """No person is replaced (nothing in the data fits a standing person's box), and the reason is
    no_fitting_target, never no_exemplar: every category has an instance to cut."""
    import pyarrow.parquet as pq

    work, _ = built
    files = sorted((work / "quarantine").glob("*.parquet"))
    reasons = [q["reason"] for f in files for q in pq.read_table(f).to_pylist()]
    assert "no_exemplar" not in reasons and set(reasons) <= {"no_fitting_target"}


def test_an_occluded_exemplar_has_none_of_its_occluders_pixels(street):
    """The bus's annotation is a coarse outline that holds the two people in front of it; its
    exemplar is its visible pixels, the people subtracted and their place completed from the
    bus's own pixels (neither their colours, nor a hole where they stood)."""
    from refcoco_edit.refcoco import RefCOCO
    from refcoco_edit.stages.exemplars import CLEAR_VISIBLE, MIN_VISIBLE, ExemplarBank

    root = Path(street["root"])
    refer = RefCOCO(root, dataset="refcoco", images_dir=root / "images")
    bank = ExemplarBank(refer, min_fraction=0.01)
    assert {"bus", "car", "person"} <= set(bank.categories())
    rgba, ann_id = bank.cut("bus", None, np.random.default_rng(0))
    assert ann_id == street["bus"]
    alpha = rgba[..., 3] > 0
    for colour in street["shirts"].values():
        assert _near(rgba[..., :3], colour) == 0  # not even under alpha 0
    assert not rgba[~alpha, :3].any()  # the RGB outside the cut-out is black
    _, fraction = bank._cut_one(ann_id)
    assert MIN_VISIBLE <= fraction < CLEAR_VISIBLE  # occluded, completed, still usable
    bus = refer.ann_mask(street["bus"])
    assert alpha.sum() >= 0.9 * bus.sum()  # completed where the people stood: no person-shaped hole
    # the referred object is never its own exemplar; another instance of the same image may be
    for seed in range(4):
        _, got = bank.cut("car", street["cars"][0], np.random.default_rng(seed))
        assert got != street["cars"][0]
