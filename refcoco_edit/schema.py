"""Records of a RefCOCO-Edit sample and the versioned Arrow schema they are stored with.

One row per sample, with the same columns in the workspace, in the export and as benchmark
input (see DESIGN.md, "Data model"). Images are the Hugging Face ``Image`` struct
``{bytes, path}`` so that ``datasets`` decodes them; masks are COCO RLE ``{size, counts}``
(compressed string counts) produced by pycocotools.

pyarrow is imported lazily: importing this module costs nothing.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Dict, List, Optional, Sequence

from .reasons import reasons
from .vocab import EDIT_TYPES  # noqa: F401 - the data model's edit types, re-exported here

SCHEMA_VERSION = "1.2"
# versions this code reads: 1.0 lacks the ``other_*`` columns, 1.1 the ``difficulty`` column (added
# as nulls by ``conform``; readers compute the attributes on the fly: ``difficulty.attributes``)
READABLE_VERSIONS = ("1.0", "1.1", "1.2")
# columns added after 1.0: a table without them is read with them null (unknown)
OPTIONAL_COLUMNS = ("other_ann_ids", "other_categories", "other_masks", "difficulty")

REVIEW_STATUSES = ("pending", "accepted", "rejected")

# Reason codes of quarantined samples (stable strings: users filter on them); the one table of
# every code is refcoco_edit.reasons.REASONS.
REASONS = reasons("quarantine")


# What a value from the data must look like before it becomes part of a file name (a sample id in
# review media and score outputs, a split in export file names): no separators, no "..".
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def is_safe_name(value: Any) -> bool:
    """True when ``value`` can be used as one file-name component as it is (``[A-Za-z0-9_.-]``,
    starting with a letter or digit, at most 128 characters)."""
    return isinstance(value, str) and bool(_SAFE_NAME.match(value))


def sample_id(dataset: str, ref_id: int, sent_id: int, edit_type: str, edit_target: str) -> str:
    """Stable id of a sample: a hash of (dataset, ref_id, sent_id, edit).

    The same referring sentence edited two different ways gives two samples.
    """
    key = json.dumps([dataset, int(ref_id), int(sent_id), edit_type, edit_target], separators=(",", ":"))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


def image_struct(data: Optional[bytes], path: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The HF ``Image`` struct, or None when there is no image."""
    if data is None and path is None:
        return None
    return {"bytes": data, "path": path}


def empty_review() -> Dict[str, Any]:
    return {"status": "pending", "reviewer": None, "chosen_candidate": None, "notes": None, "updated_at": None}


# ----------------------------------------------------------------------------------------------
# Arrow schema
# ----------------------------------------------------------------------------------------------

def _types():
    import pyarrow as pa

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rle = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])
    candidate = pa.struct(
        [
            ("pipeline", pa.string()),
            ("params", pa.string()),  # JSON object: heterogeneous per pipeline
            ("seed", pa.int64()),
            ("image", image),
            ("edit_mask", rle),
            ("filter_scores", pa.string()),  # JSON object name -> float
        ]
    )
    review = pa.struct(
        [
            ("status", pa.string()),
            ("reviewer", pa.string()),
            ("chosen_candidate", pa.int32()),
            ("notes", pa.string()),
            ("updated_at", pa.string()),
        ]
    )
    selection = pa.struct(
        [
            ("area_fraction", pa.float64()),
            ("n_sizeable_others", pa.int32()),
            ("n_same_category", pa.int32()),
            ("max_similarity", pa.float64()),
            ("score", pa.float64()),
        ]
    )
    return pa, image, rle, candidate, review, selection


def _difficulty_type():
    """The ``difficulty`` struct (``refcoco_edit.difficulty``: one field per attribute)."""
    import pyarrow as pa

    return pa.struct(
        [
            ("n_distractors", pa.int32()),
            ("n_objects", pa.int32()),
            ("area_fraction", pa.float64()),
            ("size_class", pa.string()),
            ("occlusion", pa.string()),
            ("likeness_only", pa.bool_()),
            ("expression_kinds", pa.list_(pa.string())),
            ("expression_words", pa.int32()),
            ("source_dataset", pa.string()),
            ("hard", pa.bool_()),
        ]
    )


def sample_fields() -> List[Any]:
    """The ordered fields of a sample row."""
    pa, image, rle, candidate, review, selection = _types()
    span = pa.list_(pa.int32())
    return [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string()),
        pa.field("split", pa.string()),
        pa.field("image_id", pa.int64()),
        pa.field("ref_id", pa.int64()),
        pa.field("ann_id", pa.int64()),
        pa.field("sent_id", pa.int64()),
        pa.field("category", pa.string()),
        pa.field("source_image", image),
        pa.field("source_mask", rle),
        pa.field("bbox", pa.list_(pa.float64())),  # COCO [x, y, w, h] in the upright image
        pa.field("distractor_ann_ids", pa.list_(pa.int64())),
        pa.field("distractor_categories", pa.list_(pa.string())),
        pa.field("distractor_masks", pa.list_(rle)),
        # every other annotated (non-crowd) object of the image, the distractors included; null:
        # unknown (a table written before schema 1.1)
        pa.field("other_ann_ids", pa.list_(pa.int64())),
        pa.field("other_categories", pa.list_(pa.string())),
        pa.field("other_masks", pa.list_(rle)),
        pa.field("selection", selection),
        # what makes referring to the object hard (refcoco_edit.difficulty); null: written before
        # schema 1.2 (readers compute it from the other columns)
        pa.field("difficulty", _difficulty_type()),
        pa.field("referring_expression", pa.string()),
        pa.field("edit_type", pa.string()),
        pa.field("edit_target", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("referring_span", span),
        pa.field("edit_span", span),
        pa.field("prompt_source", pa.string()),
        pa.field("candidates", pa.list_(candidate)),
        pa.field("reference_image", image),
        pa.field("edit_mask", rle),
        pa.field("exemplar_image", image),
        pa.field("review", review),
        pa.field("schema_version", pa.string()),
    ]


def column_names() -> List[str]:
    return [f.name for f in sample_fields()]


def _hf_feature(t) -> Any:
    """Translate an Arrow type of ours into the HF ``datasets`` features JSON."""
    import pyarrow as pa

    if pa.types.is_struct(t):
        names = [t.field(i).name for i in range(t.num_fields)]
        if names == ["bytes", "path"]:
            return {"_type": "Image"}
        return {t.field(i).name: _hf_feature(t.field(i).type) for i in range(t.num_fields)}
    if pa.types.is_list(t):
        return [_hf_feature(t.value_type)]
    dtype = {
        pa.string(): "string",
        pa.binary(): "binary",
        pa.int32(): "int32",
        pa.int64(): "int64",
        pa.float64(): "float64",
        pa.float32(): "float32",
        pa.bool_(): "bool",
    }[t]
    return {"dtype": dtype, "_type": "Value"}


def arrow_schema(extra_metadata: Optional[Dict[str, str]] = None):
    """The versioned Arrow schema of a sample table.

    It carries ``refcoco_edit.schema_version`` and the ``huggingface`` features metadata, so
    ``datasets.load_dataset("parquet", ...)`` decodes the image columns as images.
    """
    import pyarrow as pa

    fields = sample_fields()
    features = {f.name: _hf_feature(f.type) for f in fields}
    metadata = {
        "refcoco_edit.schema_version": SCHEMA_VERSION,
        "huggingface": json.dumps({"info": {"features": features}}),
    }
    if extra_metadata:
        metadata.update(extra_metadata)
    return pa.schema(fields, metadata=metadata)


def rows_to_table(rows: Sequence[Dict[str, Any]]):
    """Build a schema-conformant table from sample dicts; missing columns become null."""
    import pyarrow as pa

    schema = arrow_schema()
    cols = {}
    for f in schema:
        cols[f.name] = pa.array([r.get(f.name) for r in rows], type=f.type)
    return pa.Table.from_pydict(cols, schema=schema)


def conform(table):
    """``table`` with the columns of ``OPTIONAL_COLUMNS`` it lacks added as nulls, each where the
    sample schema puts it (after the column before it; works on the stored layout too). A table
    that has them all passes through as it is."""
    import pyarrow as pa

    missing = [n for n in OPTIONAL_COLUMNS if n not in table.schema.names]
    if not missing:
        return table
    fields = sample_fields()
    names = [f.name for f in fields]
    for name in missing:
        f = fields[names.index(name)]
        prev = names[names.index(name) - 1]
        at = table.schema.get_field_index(prev) + 1 if prev in table.schema.names else table.num_columns
        table = table.add_column(at, f, pa.nulls(table.num_rows, f.type))
    return table


def check_table(table) -> None:
    """Raise ValueError when a table does not follow our schema (missing columns, wrong types,
    unknown schema version)."""
    expected = arrow_schema()
    version = (table.schema.metadata or {}).get(b"refcoco_edit.schema_version")
    if version is not None and version.decode() not in READABLE_VERSIONS:
        raise ValueError(
            f"table has schema version {version.decode()}, this refcoco-edit reads {', '.join(READABLE_VERSIONS)}"
        )
    for f in expected:
        if f.name not in table.schema.names:
            raise ValueError(f"table misses column {f.name!r}")
        got = table.schema.field(f.name).type
        if not got.equals(f.type):
            raise ValueError(f"column {f.name!r} has type {got}, expected {f.type}")
