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
