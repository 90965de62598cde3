"""The streaming export (refcoco_edit.export._stored_parts / _write_parts, export_writer.SplitFiles):
rows keep their order per split whatever the read-ahead, row groups respect both caps, and a
shard's table is relabelled to the stored schema without a copy."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from refcoco_edit import export as export_mod
from refcoco_edit import export_writer
from refcoco_edit.export import export_workspace, load_export
from refcoco_edit.schema import rows_to_table
from refcoco_edit.storage import stored_schema
from refcoco_edit.workspace import Workspace

SPLITS = ("train", "val", "train", "testA", "train", "val", "testB")  # interleaved runs, as in a real shard


def _png(seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


def _workspace(root, shards: int, rows_per_shard: int) -> Workspace:
    """A workspace whose generate shards hold rows of mixed splits (``SPLITS`` cycled), each with a
    distinct reference image, written as the build writes them (``Stage.write_samples``)."""
    ws = Workspace(root)
    stage = ws.stage("generate")
    stage.dir.mkdir(parents=True)
    k = 0
    for i in range(shards):
        rows = []
        for _ in range(rows_per_shard):
            img = _png(k)
            rows.append({"sample_id": f"s{k:04d}", "split": SPLITS[k % len(SPLITS)], "image_id": k,
                         "review": {"status": "pending"},
                         "candidates": [{"pipeline": "p", "params": "{}", "seed": k, "image": {"bytes": img, "path": "c.png"},
                                         "edit_mask": None, "filter_scores": "{}"}],
                         "reference_image": {"bytes": img, "path": f"s{k:04d}.png"}})
            k += 1
        stage.write_samples(i, rows_to_table(rows), {"rows": len(rows)})
    return ws


@pytest.mark.parametrize("readers", [1, 2, 3])
def test_rows_keep_their_order_per_split_whatever_the_read_ahead(tmp_path, monkeypatch, readers):
    monkeypatch.setattr(export_mod, "READERS", readers)
    ws = _workspace(tmp_path / "w", shards=5, rows_per_shard=7)
    summary = export_workspace(ws, tmp_path / "e")
    assert summary["rows"] == 35
    by_split = {}
    for f in sorted((tmp_path / "e").glob("*.parquet")):
        split = f.name.rsplit("-", 3)[0]
        by_split.setdefault(split, []).extend(pq.read_table(f, columns=["sample_id"]).column("sample_id").to_pylist())
    expected = {}
    for k in range(35):
        expected.setdefault(SPLITS[k % len(SPLITS)], []).append(f"s{k:04d}")
    assert by_split == expected
    back = load_export(tmp_path / "e")  # materialised: every candidate has its image again
    assert all(r["candidates"][0]["image"]["bytes"] == r["reference_image"]["bytes"] for r in back.to_pylist())


def test_row_groups_respect_the_row_and_byte_caps(tmp_path, monkeypatch):
    """Rows arrive shard by shard in runs of mixed splits; each file's row groups hold at most
    ``ROW_GROUP_ROWS`` rows and, by the rows' mean size, about ``ROW_GROUP_BYTES``."""
    ws = _workspace(tmp_path / "w", shards=6, rows_per_shard=14)
    row_bytes = ws.stage("generate").read_shard(0).nbytes / 14
    monkeypatch.setattr(export_writer, "ROW_GROUP_ROWS", 5)
    export_workspace(ws, tmp_path / "rows")
    sizes = [pq.ParquetFile(f).metadata.row_group(i).num_rows
             for f in (tmp_path / "rows").glob("*.parquet") for i in range(pq.ParquetFile(f).metadata.num_row_groups)]
    assert max(sizes) == 5 and sum(sizes) == 84
    monkeypatch.setattr(export_writer, "ROW_GROUP_ROWS", 100)
    monkeypatch.setattr(export_writer, "ROW_GROUP_BYTES", int(3 * row_bytes))
    export_workspace(ws, tmp_path / "bytes")
    train = sorted((tmp_path / "bytes").glob("train-*.parquet"))
    md = pq.ParquetFile(train[0]).metadata
    groups = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    # 36 train rows, flushed once a row group's estimate reaches 3 rows' worth (runs are 1-2 rows)
    assert sum(groups) == 36 and len(groups) >= 9 and max(groups) <= 4, groups


def test_a_shard_is_relabelled_to_the_stored_schema_without_a_copy(tmp_path):
    ws = _workspace(tmp_path / "w", shards=1, rows_per_shard=3)
    shard = ws.stage("generate").read_shard(0)
    meta = dict(shard.schema.metadata)
    meta[b"extra"] = b"written by an older build"
    shard = shard.replace_schema_metadata(meta)
    assert shard.schema.equals(stored_schema()) and not shard.schema.equals(stored_schema(), check_metadata=True)
    out = export_mod._as_schema(shard, stored_schema())
    assert out.schema.equals(stored_schema(), check_metadata=True)
    col = shard.schema.get_field_index("reference_image")
    before = shard.column(col).chunk(0).field(0).buffers()[2].address
    assert out.column(col).chunk(0).field(0).buffers()[2].address == before  # the same bytes, not a copy
    assert out.equals(shard)
    # a table of another type is cast (or refused) as before
    narrowed = pa.Table.from_arrays([c.cast(pa.large_string()) if f.name == "prompt" else c
                                     for f, c in zip(shard.schema, shard.columns)],
                                    names=shard.column_names)
    assert export_mod._as_schema(narrowed, stored_schema()).schema.field("prompt").type == pa.string()


def _audit_by_rows(rows):
    """The card's audit counts computed row by row in plain Python (the reference for Counts)."""
    import json
    from collections import Counter

    a = Counter()
    for r in rows:
        if r["other_masks"] is None:
            a["samples_unknown"] += 1
            continue
        a["samples"] += 1
        a["objects"] += len(r["other_masks"])
        scores = [json.loads((c or {}).get("filter_scores") or "{}") for c in r["candidates"] or []]
        marked = [int(s.get("others_damaged", 0) or 0) > 0 for s in scores]
        a["candidates"] += sum("others_damaged" in s for s in scores)
        a["candidates_marked"] += sum(marked)
        a["samples_marked"] += int(any(marked))
        ref = r["reference_candidate"]
        if ref is not None and 0 <= ref < len(marked):
            a["references_marked"] += int(marked[ref])
    return {k: v for k, v in a.items() if v}


def test_audit_counts_match_a_row_by_row_count_on_sliced_and_chunked_parts():
    import json

    from refcoco_edit.export_writer import Counts

    rng = np.random.default_rng(0)
    mask = {"size": [4, 4], "counts": "0"}
    rows = []
    for k in range(60):
        n = int(rng.integers(0, 4))
        cands = None if k % 17 == 5 else [
            None if rng.random() < 0.1 else
            {"pipeline": "p", "params": "{}", "seed": 0, "image": None, "edit_mask": None,
             "filter_scores": rng.choice([json.dumps({"others_damaged": int(rng.integers(0, 3)), "x": 1}),
                                          json.dumps({"clip": 0.5}), "", json.dumps({"note": "others_damaged"})])}
            for _ in range(n)]
        rows.append({"sample_id": f"s{k}", "split": "train", "candidates": cands,
                     "other_masks": None if k % 7 == 3 else [mask] * int(rng.integers(0, 3)),
                     "reference_candidate": None if rng.random() < 0.3 else int(rng.integers(-1, 4))})
    table = rows_to_table([{k: v for k, v in r.items() if k != "reference_candidate"} for r in rows])
    table = table.append_column("reference_candidate", pa.array([r["reference_candidate"] for r in rows], pa.int32()))
    parts = [table.slice(0, 13), pa.concat_tables([table.slice(13, 9), table.slice(22, 20)]), table.slice(42)]
    counts = Counts()
    for part in parts:
        counts.add(part, ["train"] * part.num_rows)
    got = {k: v for k, v in counts.summary("rie")["audit"].items() if v}
    assert got == _audit_by_rows(rows)
    assert got["candidates_marked"] > 0 and got["references_marked"] > 0 and got["samples_unknown"] > 0
