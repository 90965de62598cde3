"""How sample tables are stored: each image's bytes once, and written for their reader.

A sample holds the chosen candidate's image twice, as ``candidates[i].image`` and as
``reference_image`` (the build picks one candidate as the reference). Stored that way, a
workspace or an export is twice the size it needs to be (50 MB instead of 27 MB for the 96 demo
samples, ~27 GB more for a 50k-sample build). Stored tables therefore keep ``reference_image`` —
what most readers want, an ``Image`` column that ``datasets`` decodes — and store the chosen
candidate as ``image = null`` with its index in the extra column ``reference_candidate`` (null
when no candidate is the reference). ``materialize`` puts the bytes back, so code that works on
sample rows (review, scoring, import) sees the sample schema of ``refcoco_edit.schema`` (a table
written before a nullable column was added gets it as nulls: ``schema.conform``).

Parquet settings differ by reader: the workspace's shards are read back by every later command,
so their image bytes (PNG/JPEG, compressed already) are stored without zstd, which halves the
read time for ~20% more disk; the export is downloaded, so it is zstd throughout. Dictionary
encoding is kept to the short repeated strings (trying it on image bytes is wasted work).

Everything here is columnar Arrow compute (no Python loop over rows), so writing an export costs
little more than writing its Parquet files (``perf/bench_export.py``).
"""
from __future__ import annotations

import functools
import json
from typing import Any, Dict, List

REFERENCE_CANDIDATE = "reference_candidate"
# image bytes columns of a sample table (Parquet column paths)
IMAGE_COLUMNS = ("source_image.bytes", "candidates.list.element.image.bytes", "reference_image.bytes",
                 "exemplar_image.bytes")
# short repeated strings, where dictionary encoding pays
DICTIONARY_COLUMNS = ("dataset", "split", "category", "edit_type", "edit_target", "prompt_source", "schema_version",
                      "candidates.list.element.pipeline", "review.status", "distractor_categories.list.element")


def workspace_write_options() -> Dict[str, Any]:
    """``pyarrow.parquet.write_table`` options of a workspace's sample shards: image bytes
    uncompressed (read back fast), the rest zstd."""
    return {"compression": {c: ("none" if c in IMAGE_COLUMNS else "zstd") for c in _leaf_paths()},
            "use_dictionary": list(DICTIONARY_COLUMNS)}


def export_write_options() -> Dict[str, Any]:
    """``pyarrow.parquet.write_table`` options of an export's files: zstd throughout."""
    return {"compression": "zstd", "use_dictionary": list(DICTIONARY_COLUMNS)}


def _leaf_paths() -> List[str]:
    """Every Parquet leaf column path of a stored sample table."""
    import pyarrow as pa

    from .schema import sample_fields

    def walk(prefix: str, t: Any) -> List[str]:
        if pa.types.is_struct(t):
            return [p for i in range(t.num_fields) for p in walk(f"{prefix}.{t.field(i).name}", t.field(i).type)]
        if pa.types.is_list(t):
            return walk(f"{prefix}.list.element", t.value_type)
        return [prefix]

    return [p for f in sample_fields() for p in walk(f.name, f.type)] + [REFERENCE_CANDIDATE]


def read_parquet(path: Any) -> Any:
    """One Parquet file as an Arrow table (``ParquetFile.read``: no dataset discovery, which
    costs more than reading a small shard)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(str(path)).read()
LAYOUT = "reference-once"
LAYOUT_KEY = b"refcoco_edit.export_layout"


def _flat_candidates(table: Any):
    """The candidates list column as (list array, its flattened structs, parent row of each
    struct, first flat index of each row)."""
    import numpy as np
    import pyarrow.compute as pc

    lists = table.column("candidates").combine_chunks()
    flat = lists.flatten()
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return lists, flat, parents, starts


def _rebuild(lists: Any, flat: Any, image: Any) -> Any:
    """``lists`` with every candidate's ``image`` replaced by ``image`` (same offsets, same type)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    children = flat.flatten()
    names = [flat.type.field(i).name for i in range(flat.type.num_fields)]
    children[names.index("image")] = image
    structs = pa.StructArray.from_arrays(children, fields=list(flat.type), mask=flat.is_null())
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    out = pa.ListArray.from_arrays(offsets, structs, mask=lists.is_null())
    return out.cast(lists.type)


def _image(bytes_: Any, path: Any, null: Any, type_: Any) -> Any:
    import pyarrow as pa

    return pa.StructArray.from_arrays([bytes_, path], fields=list(type_), mask=null)


def store_reference_once(table: Any) -> Any:
    """The export layout of a sample table: the candidate whose bytes equal ``reference_image``
    (the first such, per row) gets ``image = null`` and its index goes in ``reference_candidate``
    (inserted after ``reference_image``). Bytes are compared, not indices trusted: a reference a
    reviewer changed, or one no candidate holds, stays as it is. A stored table passes through."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if is_reference_once(table):
        return table
    lists, flat, parents, starts = _flat_candidates(table)
    image = flat.flatten()[flat.type.get_field_index("image")]
    img_bytes, img_path = image.flatten()
    ref_bytes = table.column("reference_image").combine_chunks().flatten()[0]
    same = pc.equal(img_bytes, ref_bytes.take(pa.array(parents, pa.int64()))).fill_null(False)
    hit = np.flatnonzero(same.to_numpy(zero_copy_only=False))
    rows, first = np.unique(parents[hit], return_index=True)
    hit = hit[first]
    index = np.full(table.num_rows, -1, dtype=np.int32)
    index[rows] = (hit - starts[rows]).astype(np.int32)
    drop = np.zeros(len(flat), dtype=bool)
    drop[hit] = True
    null = np.logical_or(drop, image.is_null().to_numpy(zero_copy_only=False))
    new_image = _image(img_bytes, img_path, pa.array(null), image.type)
    out = table.set_column(table.schema.get_field_index("candidates"), table.schema.field("candidates"),
                           _rebuild(lists, flat, new_image))
    column = pa.array(index, pa.int32(), mask=index < 0)
    at = out.schema.get_field_index("reference_image") + 1
    out = out.add_column(at, pa.field(REFERENCE_CANDIDATE, pa.int32()), column)
    return out.replace_schema_metadata(_layout_metadata(table.schema.metadata or {}))


def _layout_metadata(meta: dict) -> dict:
    meta = dict(meta)
    if b"huggingface" in meta:
        hf = json.loads(meta[b"huggingface"])
        features = hf.get("info", {}).get("features")
        if isinstance(features, dict) and REFERENCE_CANDIDATE not in features:
            items = list(features.items())
            at = [k for k, _ in items].index("reference_image") + 1 if "reference_image" in features else len(items)
            items.insert(at, (REFERENCE_CANDIDATE, {"dtype": "int32", "_type": "Value"}))
            hf["info"]["features"] = dict(items)
        meta[b"huggingface"] = json.dumps(hf).encode()
    meta[LAYOUT_KEY] = LAYOUT.encode()
    return meta


@functools.lru_cache(maxsize=1)
def stored_schema() -> Any:
    """The Arrow schema of a stored sample table (the sample schema plus ``reference_candidate``,
    with its ``datasets`` features and the layout mark in the metadata). Built once (schemas are
    immutable)."""
    from .schema import rows_to_table

    return store_reference_once(rows_to_table([])).schema


def is_reference_once(table: Any) -> bool:
    """True for a table stored in the export layout (``store_reference_once``)."""
    return REFERENCE_CANDIDATE in table.schema.names


def with_reference_candidate(table: Any, index: Any) -> Any:
    """A sample table (every candidate with its image) with ``index``, the ``reference_candidate``
    column of its stored form (int32, null where the reference is none of the candidates), put
    back after ``reference_image``, its ``datasets`` feature too: which candidate is the
    reference. Not the stored layout (its images are all there, no layout mark): write it back
    through ``store_reference_once`` only without the column."""
    import pyarrow as pa

    meta = _layout_metadata(table.schema.metadata or {})
    meta.pop(LAYOUT_KEY, None)
    at = table.schema.get_field_index("reference_image") + 1
    out = table.add_column(at, pa.field(REFERENCE_CANDIDATE, pa.int32()), index.cast(pa.int32()))
    return out.replace_schema_metadata(meta)


def materialize(table: Any) -> Any:
    """The sample table back from the export layout: ``candidates[reference_candidate].image``
    gets ``reference_image``'s bytes (its path too: the candidate's own file name is not
    stored) and the ``reference_candidate`` column goes. Tables without it pass through."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from .schema import conform

    table = conform(table)  # a table written before a column was added: that column null
    if not is_reference_once(table):
        return table
    lists, flat, parents, starts = _flat_candidates(table)
    index = table.column(REFERENCE_CANDIDATE).combine_chunks()
    idx = index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero((idx >= 0) & (idx < lengths))
    fill = np.zeros(len(flat), dtype=bool)
    fill[starts[rows] + idx[rows]] = True
    image = flat.flatten()[flat.type.get_field_index("image")]
    img_bytes, img_path = image.flatten()
    ref = table.column("reference_image").combine_chunks()
    ref_bytes, ref_path = ref.flatten()
    take = pa.array(parents, pa.int64())
    mask = pa.array(fill)
    new_bytes = pc.if_else(mask, ref_bytes.take(take), img_bytes)
    new_path = pc.if_else(mask, ref_path.take(take), img_path)
    null = np.logical_and(image.is_null().to_numpy(zero_copy_only=False), ~fill)
    new_image = _image(new_bytes, new_path, pa.array(null), image.type)
    out = table.set_column(table.schema.get_field_index("candidates"), table.schema.field("candidates"),
                           _rebuild(lists, flat, new_image))
    out = out.remove_column(out.schema.get_field_index(REFERENCE_CANDIDATE))
    meta = dict(table.schema.metadata or {})
    meta.pop(LAYOUT_KEY, None)
    if b"huggingface" in meta:
        hf = json.loads(meta[b"huggingface"])
        hf.get("info", {}).get("features", {}).pop(REFERENCE_CANDIDATE, None)
        meta[b"huggingface"] = json.dumps(hf).encode()
    return out.replace_schema_metadata(meta)
