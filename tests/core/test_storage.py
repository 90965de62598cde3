"""Stored sample tables hold each image's bytes once (refcoco_edit.storage), and give them back."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from refcoco_edit.schema import arrow_schema, rows_to_table
from refcoco_edit.storage import (REFERENCE_CANDIDATE, is_reference_once, materialize, store_reference_once,
                                  stored_schema, workspace_write_options)


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _cand(name: str, data, path: str = "c.png"):
    return {"pipeline": name, "params": "{}", "seed": 1, "image": None if data is None else {"bytes": data, "path": path},
            "edit_mask": {"size": [24, 32], "counts": "0"}, "filter_scores": "{}"}


def _rows():
    """Rows covering every case: reference = first / second candidate, a reference no candidate
    holds (a reviewer's correction), no candidates at all, a null candidate list, a null image."""
    a, b, c, d, e = (_png(i) for i in range(5))
    return [
        {"sample_id": "s0", "split": "val", "candidates": [_cand("p", a, "s0-p-0.png"), _cand("q", b, "s0-q-0.png")],
         "reference_image": {"bytes": a, "path": "s0.png"}},
        {"sample_id": "s1", "split": "train", "candidates": [_cand("p", c, "s1-p-0.png"), _cand("q", d, "s1-q-0.png")],
         "reference_image": {"bytes": d, "path": "s1.png"}},
        {"sample_id": "s2", "split": "train", "candidates": [_cand("p", a)], "reference_image": {"bytes": e, "path": "s2.png"}},
        {"sample_id": "s3", "split": "train", "candidates": [], "reference_image": {"bytes": e, "path": "s3.png"}},
        {"sample_id": "s4", "split": "train", "candidates": None, "reference_image": None},
        {"sample_id": "s5", "split": "train", "candidates": [_cand("p", None), _cand("q", b, "s5-q-1.png")],
         "reference_image": {"bytes": b, "path": "s5.png"}},
    ]


def _expected_back(rows):
    """What materialize gives back: the rows, except that a reference candidate's file name is the
    reference's (the candidate's own name is not stored)."""
    out = []
    for r in rows:
        r = dict(r)
        ref = r.get("reference_image")
        cands = []
        done = False
        for c in r.get("candidates") or []:
            c = dict(c)
            if not done and ref and c["image"] and c["image"]["bytes"] == ref["bytes"]:
                c["image"] = dict(ref)
                done = True
            cands.append(c)
        if r.get("candidates") is not None:
            r["candidates"] = cands
        out.append(r)
    return rows_to_table(out).to_pylist()


def test_each_image_once_and_back():
    rows = _rows()
    table = rows_to_table(rows)
    stored = store_reference_once(table)
    assert is_reference_once(stored) and not is_reference_once(table)
    assert stored.schema.names.index(REFERENCE_CANDIDATE) == stored.schema.names.index("reference_image") + 1
    assert stored.column(REFERENCE_CANDIDATE).to_pylist() == [0, 1, None, None, None, 1]
    got = stored.to_pylist()
    assert got[0]["candidates"][0]["image"] is None and got[0]["candidates"][1]["image"]["bytes"] == rows[0]["candidates"][1]["image"]["bytes"]
    assert got[1]["candidates"][1]["image"] is None and got[1]["candidates"][0]["image"] is not None
    assert got[2]["candidates"][0]["image"] is not None  # the reference is none of the candidates: kept
    assert got[5]["candidates"][0]["image"] is None and got[5]["candidates"][1]["image"] is None
    back = materialize(stored)
    assert not is_reference_once(back)
    assert back.schema.equals(table.schema, check_metadata=True)
    assert back.to_pylist() == _expected_back(rows)
    # idempotent: a stored table passes through, and an unstored one through materialize
    assert store_reference_once(stored) is stored and materialize(table) is table


def test_sliced_and_chunked_tables():
    table = rows_to_table(_rows())
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2, 1), table.slice(3)])
    assert store_reference_once(chunked).to_pylist() == store_reference_once(table).to_pylist()
    part = table.slice(1, 4)
    assert materialize(store_reference_once(part)).to_pylist() == _expected_back(_rows()[1:5])
    empty = store_reference_once(rows_to_table([]))
    assert empty.num_rows == 0 and empty.schema.equals(stored_schema(), check_metadata=True)


def test_stored_files_are_smaller_and_read_back(tmp_path):
    rows = _rows()
    table = rows_to_table(rows)
    pq.write_table(table, tmp_path / "dup.parquet", **workspace_write_options())
    pq.write_table(store_reference_once(table), tmp_path / "once.parquet", **workspace_write_options())
    dup, once = (tmp_path / "dup.parquet").stat().st_size, (tmp_path / "once.parquet").stat().st_size
    saved = sum(len(r["reference_image"]["bytes"]) for r in rows[:2]) + len(rows[5]["reference_image"]["bytes"])
    assert dup - once >= saved - 1024  # the bytes saved, less the new column and its metadata
    back = materialize(pq.read_table(tmp_path / "once.parquet"))
    assert back.to_pylist() == _expected_back(rows)
    # the datasets features of the stored file name the new column; image bytes are not zstd'd
    meta = pq.read_schema(tmp_path / "once.parquet").metadata
    assert b"reference_candidate" in meta[b"huggingface"]
    md = pq.ParquetFile(tmp_path / "once.parquet").metadata.row_group(0)
    comp = {md.column(i).path_in_schema: md.column(i).compression for i in range(md.num_columns)}
    assert comp["candidates.list.element.image.bytes"] == "UNCOMPRESSED" and comp["sample_id"] == "ZSTD"


def test_schema_of_stored_tables():
    names = arrow_schema().names
    at = names.index("reference_image") + 1
    assert stored_schema().names == names[:at] + [REFERENCE_CANDIDATE] + names[at:]
    assert stored_schema().field(REFERENCE_CANDIDATE).type == pa.int32()


@pytest.mark.parametrize("n", [1, 7])
def test_materialize_leaves_null_index_rows_alone(n):
    rows = [dict(_rows()[0], sample_id=f"s{i}") for i in range(n)]
    stored = store_reference_once(rows_to_table(rows))
    idx = pa.array([None] * n, pa.int32())
    stored = stored.set_column(stored.schema.get_field_index(REFERENCE_CANDIDATE), stored.schema.field(REFERENCE_CANDIDATE), idx)
    back = materialize(stored).to_pylist()
    assert all(r["candidates"][0]["image"] is None for r in back)  # nothing to fill from: stays null


def test_a_real_full_disk_names_the_export_file_and_leaves_nothing(tmp_path, monkeypatch):
    """Arrow's own file on /dev/full (every write: ENOSPC) in place of an export file."""
    import errno
    import os

    import refcoco_edit.export_writer as ew
    from refcoco_edit.errors import is_disk_error
    from refcoco_edit.export import write_export

    assert os.path.exists("/dev/full")
    opened = []

    def full_sink(path):
        opened.append(path)
        return pa.OSFile("/dev/full", "wb")

    monkeypatch.setattr(ew, "open_sink", full_sink)
    rows = [dict(r, split="train") for r in _rows()] * 40  # a few MB: more than any buffer
    with pytest.raises(OSError) as info:
        write_export(rows, tmp_path / "out")
    e = info.value
    assert is_disk_error(e) and e.errno == errno.ENOSPC and e.filename == str(opened[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no export, no temp folder


def test_a_workspace_written_before_schema_1_1_still_loads_and_exports(tmp_path):
    """Shards without the other_* columns (older builds): read back, exported and re-loaded with
    them null (unknown), in both layouts."""
    from refcoco_edit.export import export_workspace, load_export
    from refcoco_edit.schema import OPTIONAL_COLUMNS, column_names, conform
    from refcoco_edit.workspace import Workspace, atomic_write_json

    ws = Workspace(tmp_path / "w")
    stage = ws.stage("generate")
    stage.dir.mkdir(parents=True)
    full = rows_to_table([dict(r, review={"status": "pending"}) for r in _rows()])
    for i, table in enumerate((store_reference_once(full), full)):  # the stored layout, and the one before it
        old = table.drop_columns(list(OPTIONAL_COLUMNS))
        meta = dict(old.schema.metadata or {})
        meta[b"refcoco_edit.schema_version"] = b"1.0"
        pq.write_table(old.replace_schema_metadata(meta), stage.shard_path(i))
        atomic_write_json(stage.stats_path(i), {"rows": old.num_rows})
    back = stage.read_samples()
    assert back.column_names == column_names() and back.column("other_masks").null_count == back.num_rows
    assert conform(back) is back  # nothing left to add
    export_workspace(ws, tmp_path / "e")
    table = load_export(tmp_path / "e")
    assert table.num_rows == 2 * len(_rows()) and table.column("other_ann_ids").null_count == table.num_rows
    assert "not audited" in (tmp_path / "e" / "README.md").read_text()


def test_load_export_keeps_reference_candidate_and_import_stores_it_again(tmp_path):
    """load_export gives every candidate its image back and says which one is the reference
    (an int index, null when none is); an export of a re-imported export holds the same index."""
    from refcoco_edit.export import export_workspace, import_export, load_export, write_export
    from refcoco_edit.schema import column_names
    from refcoco_edit.workspace import Workspace

    rows = [r for r in _rows() if r["candidates"] is not None]  # s0, s1, s2, s3, s5
    write_export(rows, tmp_path / "e")
    table = load_export(tmp_path / "e")
    names = column_names()
    at = names.index("reference_image") + 1
    assert table.column_names == names[:at] + [REFERENCE_CANDIDATE] + names[at:]
    assert table.schema.field(REFERENCE_CANDIDATE).type == pa.int32()
    got = {r["sample_id"]: r for r in table.to_pylist()}
    assert {sid: r[REFERENCE_CANDIDATE] for sid, r in got.items()} == {"s0": 0, "s1": 1, "s2": None, "s3": None, "s5": 1}
    for r in got.values():  # the index points at the candidate whose (filled-back) image is the reference
        k = r[REFERENCE_CANDIDATE]
        if k is not None:
            assert r["candidates"][k]["image"]["bytes"] == r["reference_image"]["bytes"]
    assert b"reference_candidate" in table.schema.metadata[b"huggingface"]  # datasets sees the column too
    # the stored form is what the file holds; import + export round-trips the index
    files = sorted((tmp_path / "e").glob("*.parquet"))  # one per split
    assert load_export(tmp_path / "e", materialized=False).column(REFERENCE_CANDIDATE).to_pylist() == \
        [k for f in files for k in pq.read_table(f).column(REFERENCE_CANDIDATE).to_pylist()]
    import_export(tmp_path / "e", tmp_path / "w")
    shard = Workspace(tmp_path / "w").stage("generate").read_shard(0).to_pylist()
    assert {r["sample_id"]: r[REFERENCE_CANDIDATE] for r in shard} == {sid: r[REFERENCE_CANDIDATE] for sid, r in got.items()}
    for r in shard:  # imported: each image stored once again
        k = r[REFERENCE_CANDIDATE]
        assert k is None or r["candidates"][k]["image"] is None
    export_workspace(tmp_path / "w", tmp_path / "again")
    assert load_export(tmp_path / "again").to_pylist() == table.to_pylist()
    # an export written before the column existed: the index is found by comparing bytes
    (tmp_path / "old").mkdir()
    pq.write_table(rows_to_table(rows), tmp_path / "old" / "train-00000.parquet")
    old = {r["sample_id"]: r[REFERENCE_CANDIDATE] for r in load_export(tmp_path / "old").to_pylist()}
    assert old == {"s0": 0, "s1": 1, "s2": None, "s3": None, "s5": 1}
