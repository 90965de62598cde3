"""`refcoco-edit build` end to end on the demo data: export contents, the reference contract,
resume, overwrite, settings fingerprint, readers (pyarrow, pandas, datasets)."""
from __future__ import annotations

import glob
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from refcoco_edit import rle
from refcoco_edit.build import BuildConfig, build
from refcoco_edit.errors import InputError
from refcoco_edit.export import export_workspace, import_export, load_export
from refcoco_edit.schema import arrow_schema, column_names


def _cfg(demo_dir, out, **kw):
    kw.setdefault("num_images", 10)
    return BuildConfig.of(out=str(out), refcoco=str(demo_dir), images=str(demo_dir / "images"), progress=False, **kw)


@pytest.fixture(scope="module")
def built(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    res = build(_cfg(demo_dir, out, shard_size=6), log=lambda s: None)
    return res


def _img(struct):
    return np.asarray(Image.open(io.BytesIO(struct["bytes"])).convert("RGB"))


# The first 10 demo images plan 20 samples, all made (exemplars are cut from whole objects: a
# half-hidden donut once gave a fragment that failed the generate stage's fit check).
ROWS = 20


def test_build_exports_every_selected_sample(built):
    assert built.selection["images_kept"] == 10
    assert built.selection["samples"] == 20
    assert built.counts["generate"] == built.export["rows"] == ROWS
    assert built.quarantine == {}
    table = load_export(built.export_dir)
    assert table.num_rows == ROWS
    # the sample columns, and which candidate is the reference (after reference_image)
    names = column_names()
    at = names.index("reference_image") + 1
    assert table.column_names == names[:at] + ["reference_candidate"] + names[at:]
    assert len(set(table.column("sample_id").to_pylist())) == ROWS


def test_reference_equals_source_outside_edit_mask_and_differs_inside(built):
    for r in load_export(built.export_dir).to_pylist():
        src, ref = _img(r["source_image"]), _img(r["reference_image"])
        me = rle.decode(r["edit_mask"])
        assert src.shape == ref.shape and me.shape == src.shape[:2]
        assert np.array_equal(src[~me], ref[~me]), r["sample_id"]
        assert np.abs(src[me].astype(int) - ref[me].astype(int)).max() > 20, r["sample_id"]
        assert rle.decode(r["source_mask"])[~me].sum() == 0  # the source object lies inside M_e


def test_rows_are_complete_and_consistent(built):
    rows = load_export(built.export_dir).to_pylist()
    assert {r["edit_type"] for r in rows} == {"replace", "remove", "attribute"}
    per_image = {}
    for r in rows:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
        a, b = r["referring_span"]
        assert r["prompt"][a:b] == r["referring_expression"]
        a, b = r["edit_span"]
        assert b > a and r["prompt"][a:b].strip()
        if r["edit_type"] == "replace":
            assert r["edit_target"] != r["category"]
            assert r["edit_target"] in r["prompt"][a:b]
            ex = Image.open(io.BytesIO(r["exemplar_image"]["bytes"]))
            assert ex.mode == "RGBA" and np.asarray(ex)[..., 3].any()
        else:
            assert r["exemplar_image"] is None
        assert r["prompt_source"] == "template"
        assert r["review"]["status"] == "pending"
        assert r["distractor_ann_ids"] and len(r["distractor_masks"]) == len(r["distractor_ann_ids"])
        if r["selection"]["n_same_category"]:  # else kept by a visually similar object (rule 2)
            assert all(c == r["category"] for c in r["distractor_categories"])
        assert len(r["candidates"]) == 1
        cand = r["candidates"][0]
        assert cand["pipeline"].startswith("classical-") and json.loads(cand["params"])
        assert cand["image"]["bytes"] == r["reference_image"]["bytes"] and cand["edit_mask"] == r["edit_mask"]
        m = rle.decode(r["source_mask"])
        x, y, w, h = r["bbox"]
        ys, xs = np.nonzero(m)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (int(x), int(y), int(x + w), int(y + h))
        assert r["schema_version"] == arrow_schema().metadata[b"refcoco_edit.schema_version"].decode()
    assert all(n == 2 for n in per_image.values())


def test_export_reads_back_with_pandas_and_datasets(built):
    import datasets
    import pandas as pd

    from refcoco_edit.storage import stored_schema

    files = sorted(glob.glob(str(built.export_dir / "*.parquet")))
    df = pd.read_parquet(files)
    # the stored layout: the sample columns plus reference_candidate, the chosen candidate's image once
    assert len(df) == ROWS and list(df.columns) == stored_schema().names
    assert set(df.columns) - set(column_names()) == {"reference_candidate"}
    assert (df["reference_candidate"] == 0).all()
    assert all(c[0]["image"] is None for c in df["candidates"])
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.num_rows == ROWS
    row = ds[0]
    assert isinstance(row["source_image"], Image.Image) and isinstance(row["reference_image"], Image.Image)
    assert row["reference_image"].size == row["source_image"].size
    assert row["reference_candidate"] == 0 and row["candidates"][0]["image"] is None
    dd = datasets.load_dataset(str(built.export_dir))  # splits from the dataset card's configs
    assert sum(d.num_rows for d in dd.values()) == ROWS
    assert set(dd) == set(df["split"])
    card = (built.export_dir / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and f"{ROWS} samples" in card and "`edit_mask`" in card


def test_resume_skips_done_shards_and_changes_nothing(built, demo_dir):
    before = {p: p.read_bytes() for p in sorted(built.workdir.glob("*/shard-*.parquet"))}
    mtimes = {p: p.stat().st_mtime_ns for p in before}
    res = build(_cfg(demo_dir, built.workdir, shard_size=6), log=lambda s: None)
    assert res.counts == built.counts
    for p, data in before.items():
        assert p.read_bytes() == data and p.stat().st_mtime_ns == mtimes[p]


def test_changed_settings_need_overwrite(built, demo_dir):
    with pytest.raises(InputError, match="seed: 0 -> 5"):
        build(_cfg(demo_dir, built.workdir, shard_size=6, seed=5), log=lambda s: None)


def test_overwrite_redoes_and_seed_changes_choices(demo_dir, tmp_path, built):
    out = tmp_path / "w"
    a = build(_cfg(demo_dir, out, num_images=4, seed=1), log=lambda s: None)
    ids_a = set(load_export(a.export_dir).column("sample_id").to_pylist())
    b = build(_cfg(demo_dir, out, num_images=4, seed=2, overwrite=True), log=lambda s: None)
    ids_b = set(load_export(b.export_dir).column("sample_id").to_pylist())
    assert ids_a != ids_b
    assert len(ids_b) == 8


def test_export_status_view_and_import_back(built, tmp_path):
    from refcoco_edit.workspace import Workspace, atomic_write_table

    s = export_workspace(built.workdir, out=tmp_path / "acc", status="accepted")
    assert s["rows"] == 0  # nothing reviewed yet
    # a reconciled review (as the annotation tools write it) accepts one sample
    first = load_export(built.export_dir).to_pylist()[0]
    import pyarrow as pa

    reviews = pa.Table.from_pylist([{"sample_id": first["sample_id"], "status": "accepted", "reviewer": "ann",
                                     "chosen_candidate": 0, "notes": "ok", "updated_at": "2026-11-22T00:00:00Z"}])
    atomic_write_table(built.workdir / "review" / "reviews.parquet", reviews)
    try:
        s = export_workspace(built.workdir, out=tmp_path / "acc", status="accepted")
        assert s["rows"] == 1
        (row,) = load_export(tmp_path / "acc").to_pylist()
        assert row["sample_id"] == first["sample_id"] and row["review"]["status"] == "accepted"
        assert row["review"]["reviewer"] == "ann"
    finally:
        (built.workdir / "review" / "reviews.parquet").unlink()
    rb = export_workspace(built.workdir, out=tmp_path / "rb", view="reference-based")
    rows = load_export(built.export_dir).to_pylist()
    n_replace = sum(1 for r in rows if r["edit_type"] == "replace")
    n_remove = sum(1 for r in rows if r["edit_type"] == "remove")
    assert rb["rows"] == n_replace + n_remove  # plus an "add" triplet per reversed removal
    t = pq.read_table(sorted((tmp_path / "rb").glob("*.parquet"))[0])
    assert "exemplar_image" in t.column_names and "candidates" not in t.column_names
    info = import_export(built.export_dir, tmp_path / "imported", shard_size=7)
    assert info["rows"] == ROWS and info["shards"] == 3
    again = export_workspace(Workspace(tmp_path / "imported"), out=tmp_path / "again")
    assert load_export(tmp_path / "again").to_pylist() == load_export(built.export_dir).to_pylist()
    assert again["rows"] == ROWS


def test_export_refuses_to_replace_a_foreign_folder(built, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="not a refcoco-edit export"):
        export_workspace(built.workdir, out=foreign)
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_local_worker_pool_gives_identical_output(demo_dir, tmp_path, built):
    res = build(_cfg(demo_dir, tmp_path / "pool", shard_size=6, workers=2), log=lambda s: None)
    assert load_export(res.export_dir).to_pylist() == load_export(built.export_dir).to_pylist()


def test_dataset_card_says_where_the_data_came_from(built):
    from refcoco_edit.export import dataset_card

    card = (built.export_dir / "README.md").read_text()  # built from a refer folder: COCO photos
    assert "splits from `refs(unc).p` (the dataset's default)" in card and "`default`" not in card
    assert "license: cc-by-4.0" in card and "COCO (train2014, CC BY 4.0" in card
    assert "`reference_candidate`" in card and "Each image is stored once" in card
    summary = {"view": "rie", "rows": 1, "images": 1, "splits": {"val": 1}, "edit_types": {}, "categories": {},
               "prompt_sources": {}, "review": {}, "candidate_pipelines": {}}
    demo = dataset_card(summary, {"demo_data": True, "settings": {"dataset": "refcocog", "split_by": None}})
    assert "license: apache-2.0" in demo and "synthetic" in demo
    assert "Flickr" not in demo.replace("no COCO or Flickr content", "") and "CC BY 4.0" not in demo
    assert "splits from `refs(umd).p` (the dataset's default)" in demo
    assert 'data_files={s: f"path/to/this/folder/{s}-*.parquet" for s in [\'val\']}' in demo
    # the backend's quality tier, in the card's metadata and in how it was built
    assert "\nquality_tier: weight-free classical\n" in card.split("\n---\n", 1)[0] + "\n"
    assert "quality tier: weight-free classical" in card and "--backend diffusion" in card
    diffusion = dataset_card(summary, {"settings": {"backend": "diffusion"}})
    assert "quality_tier: diffusion" in diffusion and "weight-free" not in diffusion
    assert "quality_tier" not in dataset_card(summary, {})  # imported: no build settings, no tier


def test_other_objects_are_recorded_and_every_reference_preserves_them(built):
    a = built.audit
    rows = load_export(built.export_dir).to_pylist()
    assert a["samples"] == len(rows) == built.counts["generate"] and a["references_marked"] == 0
    assert a["candidates_marked"] == 0
    for r in rows:
        assert len(r["other_ann_ids"]) == len(r["other_categories"]) == len(r["other_masks"]) >= 1
        assert r["ann_id"] not in r["other_ann_ids"] and set(r["distractor_ann_ids"]) <= set(r["other_ann_ids"])
        src, ref, m = _img(r["source_image"]), _img(r["reference_image"]), rle.decode(r["source_mask"])
        me = rle.decode(r["edit_mask"])
        for o in r["other_masks"]:
            own = rle.decode(o) & ~m
            assert np.array_equal(src[own], ref[own]), r["sample_id"]  # bit-exact: never painted
            assert not (me & own).any()
        assert json.loads(r["candidates"][0]["filter_scores"])["others_damaged"] == 0
    card = (built.export_dir / "README.md").read_text()
    assert "Audit of the other annotated objects" in card and f"0 of {len(rows)} candidates marked" in card


# -- several candidates per sample; the weight-free notice ---------------------------------------

@pytest.fixture(scope="module")
def three_candidates(demo_dir, tmp_path_factory):
    """A tiny build (two images, every edit type) with --num-candidates 3 (the Telea remover:
    fast), and what it logged."""
    logged = []
    res = build(_cfg(demo_dir, tmp_path_factory.mktemp("three"), num_images=2, num_candidates=3,
                     pipeline_params={"classical-remove": {"method": "telea"}}), log=logged.append)
    return res, logged


def test_num_candidates_gives_distinct_images_for_every_sample(three_candidates):
    res, _ = three_candidates
    rows = load_export(res.export_dir).to_pylist()
    assert {r["edit_type"] for r in rows} == {"remove", "replace", "attribute"}
    assert res.candidate_failures == {}
    for r in rows:
        cands = r["candidates"]
        assert len(cands) == 3, r["sample_id"]
        pixels = {_img(c["image"]).tobytes() for c in cands}
        assert len(pixels) == 3, f"{r['sample_id']} ({r['edit_type']}): identical candidates"
        assert len({c["seed"] for c in cands}) == 3
        params = [json.loads(c["params"]) for c in cands]
        assert "variation" not in params[0] and all(p["variation"] for p in params[1:])  # candidate 0: canonical
        k = r["reference_candidate"]
        assert k == 0 and _img(cands[k]["image"]).tobytes() == _img(r["reference_image"]).tobytes()


def test_weight_free_notice_once_on_other_data_never_on_the_demo(three_candidates, tmp_path):
    _, logged = three_candidates  # built from a refer folder given with --refcoco: the user's data
    notes = [line for line in logged if "weight-free `classical` backend" in line]
    assert len(notes) == 1 and "--backend diffusion" in notes[0] and "pip install" in notes[0]
    demo_log = []
    res = build(BuildConfig.of(out=str(tmp_path / "demo"), num_images=1, edit_types=["attribute"], progress=False),
                log=demo_log.append)  # no --refcoco: the bundled demo
    assert res.counts["generate"] > 0 and demo_log
    assert not [line for line in demo_log if "weight-free" in line]
