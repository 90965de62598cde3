"""Parquet / Hugging Face datasets export of a workspace, its dataset card, and import back.

The export folder holds ``{split}-{k:05d}-of-{n:05d}.parquet`` files with the versioned sample
schema (``refcoco_edit.schema``): image columns are the HF ``Image`` struct and the schema
metadata carries the ``datasets`` features, so all of these read it back::

    pandas.read_parquet(out)                                   # one DataFrame
    datasets.load_dataset("parquet", data_files=f"{out}/*.parquet")
    datasets.load_dataset(out)                                 # splits from the card's configs

The folder is written next to its final place and swapped in with renames, so a killed export
never leaves a half dataset: the old export or the new one is there.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Union

from .errors import InputError
from .export_writer import Counts, SplitFiles
from .storage import (LAYOUT, REFERENCE_CANDIDATE, read_parquet, export_write_options, is_reference_once, materialize,
                      store_reference_once, stored_schema, with_reference_candidate)
from .schema import SCHEMA_VERSION, arrow_schema, check_table, column_names, conform, is_safe_name, rows_to_table, sample_fields
from .workspace import Workspace

EXPORT_MARKER = ".refcoco-edit-export.json"
VIEWS = ("rie", "reference-based")
READERS = 2  # shards read and prepared side by side, ahead of the writers
# FreeBench-style triplets (source, exemplar, reference) for reference-based editing, made by
# twice-repainting (``refcoco_edit.repaint``): the after image (``reference_image``) is always the
# real photo, the before image (``source_image``) a build pipeline's repaint of the object region
# (a removal's or a replacement's output: ``reversed_removal``, ``reversed_replacement``), the
# exemplar the real object in a repainted surrounding. ``exemplar_mask``: the object in the
# exemplar; ``repaint``: JSON naming what made the before image and the exemplar.
REFERENCE_BASED_COLUMNS = (
    "sample_id", "split", "image_id", "ref_id", "category", "source_image", "source_mask", "bbox",
    "exemplar_image", "edit_type", "edit_target", "prompt", "referring_span", "edit_span", "prompt_source",
    "reference_image", "edit_mask", "review", "schema_version",
)
REPAINT_COLUMNS = ("exemplar_mask", "repaint")
ADDITION_SOURCE = "reversed-removal"
REPLACEMENT_SOURCE = "reversed-replacement"


class NothingToExport(InputError):
    """A workspace without a generated sample: never built, or built with every sample
    quarantined (or none selected). The message says which, and where the quarantine is."""


def generated_rows(ws: Workspace) -> int:
    """The samples of a workspace's done ``generate`` shards (from their stats; the Parquet
    footer where a stats file does not count them)."""
    import pyarrow.parquet as pq

    stage = ws.stage("generate")
    n = 0
    for i in stage.done_shards():
        rows = stage.stats(i).get("rows")
        n += int(rows) if rows is not None else pq.ParquetFile(str(stage.shard_path(i))).metadata.num_rows
    return n


def no_samples_message(ws: Workspace, doing: str = "export") -> str:
    """Why a workspace has no generated sample: it was built and its samples were quarantined
    (counts per stage/reason and where the records are), it was built and selected none, or it
    was never built. ``doing``: what there is nothing to do ("nothing to export")."""
    from .workspace import QUARANTINE_DIR

    q = ws.quarantine().to_pylist()
    if q:
        counts = Counter(f"{x['stage']}/{x['reason']}" for x in q)
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        return (f"{ws.root} was built, but no sample came through: {len(q)} quarantined ({detail}; the records, "
                f"with each error, are in {ws.root / QUARANTINE_DIR}/*.parquet): nothing to {doing}")
    if ws.manifest():
        return f"{ws.root} was built, but its selection kept no sample: nothing to {doing}"
    return f"{ws.root} has no generated samples; run `refcoco-edit build --out {ws.root}` first"


def remove_export(out: Union[str, Path]) -> bool:
    """Remove the export folder ``out`` when it is one (it holds the export marker); True when
    it was removed. A folder that is not an export is never touched."""
    out = Path(out)
    if not (out / EXPORT_MARKER).is_file():
        return False
    shutil.rmtree(out)
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_review(row: Dict[str, Any], review: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Fold a reviewer's decision into a sample: status, chosen candidate, corrected prompt/M_e."""
    if not review:
        return row
    row = dict(row)
    row["review"] = {k: review.get(k) for k in ("status", "reviewer", "chosen_candidate", "notes", "updated_at")}
    if review.get("prompt_edit_invalid"):
        # the reviewer's prompt edit lost its referring or edit phrase: nothing is folded in and the
        # sample goes back to pending (never exported as accepted with the edit silently dropped)
        note = f"prompt edit invalid: {review['prompt_edit_invalid']}"
        row["review"]["status"] = "pending"
        row["review"]["notes"] = f"{row['review']['notes']}\n{note}" if row["review"].get("notes") else note
        return row
    chosen = review.get("chosen_candidate")
    if chosen is not None and 0 <= int(chosen) < len(row.get("candidates") or []):
        cand = row["candidates"][int(chosen)]
        row["reference_image"] = {"bytes": cand["image"]["bytes"], "path": f"{row['sample_id']}.png"}
        row["edit_mask"] = cand["edit_mask"]
    if review.get("prompt"):
        row["prompt"] = review["prompt"]
        row["referring_span"] = list(review["referring_span"])
        row["edit_span"] = list(review["edit_span"])
        row["prompt_source"] = review.get("prompt_source") or row.get("prompt_source")
    if review.get("edit_mask"):
        row["edit_mask"] = review["edit_mask"]
    return row


def _safe_swap_dir(tmp: Path, final: Path) -> None:
    """Replace ``final`` (an earlier export, or nothing) by ``tmp`` with two renames."""
    old = None
    if final.exists():
        old = final.with_name(final.name + f".old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_target(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / EXPORT_MARKER).exists():
        raise InputError(f"{out} exists and is not a refcoco-edit export; refusing to replace it")


def _table_of(rows: Union[Sequence[Dict[str, Any]], Any]) -> Any:
    """A sample table from sample dicts, or the table itself normalised to the sample schema."""
    if hasattr(rows, "schema") and hasattr(rows, "column"):
        return conform(rows).select(column_names()).cast(arrow_schema())
    return rows_to_table(rows)


def _split_names(table: Any) -> List[str]:
    """The split of every row (a missing split exports as ``train``)."""
    return [str(s) if s else "train" for s in table.column("split").to_pylist()]


def _reference_based_table(table: Any, repainter: Any = None) -> Any:
    """The reference-based view's table: its rows (``reference_based_rows``), its columns (the
    sample columns of ``REFERENCE_BASED_COLUMNS``, then ``REPAINT_COLUMNS``)."""
    import pyarrow as pa

    rows = reference_based_rows(table.to_pylist(), repainter)
    fields = [f for f in sample_fields() if f.name in REFERENCE_BASED_COLUMNS]
    mask_field = next(f for f in sample_fields() if f.name == "source_mask")
    fields += [pa.field("exemplar_mask", mask_field.type), pa.field("repaint", pa.string())]
    meta = dict(arrow_schema().metadata)
    hf = json.loads(meta[b"huggingface"])
    feats = hf["info"]["features"]
    hf["info"]["features"] = {k: v for k, v in feats.items() if k in REFERENCE_BASED_COLUMNS}
    hf["info"]["features"].update(exemplar_mask=feats["source_mask"], repaint={"dtype": "string", "_type": "Value"})
    meta[b"huggingface"] = json.dumps(hf).encode()
    if not rows:
        return pa.schema(fields, metadata=meta).empty_table()
    base = rows_to_table(rows).select([f.name for f in fields[:-2]])
    base = base.append_column("exemplar_mask", pa.array([r["exemplar_mask"] for r in rows], mask_field.type))
    base = base.append_column("repaint", pa.array([r["repaint"] for r in rows], pa.string()))
    return base.cast(pa.schema(fields, metadata=meta))


def write_export(rows: Union[Sequence[Dict[str, Any]], Any], out: Union[str, Path], view: str = "rie",
                 rows_per_file: int = 500, card: Optional[Dict[str, Any]] = None, repainter: Any = None,
                 fsync: bool = False) -> Dict[str, Any]:
    """Write samples (dicts or a sample table) as split-wise Parquet files plus README.md into
    ``out`` (atomically). The ``rie`` view stores each image once (``storage``); the
    ``reference-based`` view makes its exemplars with ``repainter`` (a ``refcoco_edit.repaint.
    Repainter``; default: the weight-free ``BackdropRepainter``). ``fsync``: flush every file to
    the disk before the folder is swapped in (a power loss then keeps it; see ``export --fsync``)."""
    if view not in VIEWS:
        raise InputError(f"unknown view {view!r}; choose from {', '.join(VIEWS)}")
    table = _table_of(rows)
    if view == "reference-based":
        repainter = repainter if repainter is not None else _default_repainter()
        part = _reference_based_table(table, repainter)
        card = dict(card or {}, repaint=repainter.describe())
    else:
        part = store_reference_once(table)
    return _write_parts([part], part.schema, out, view, rows_per_file, card, fsync)


def _default_repainter() -> Any:
    from .repaint import BackdropRepainter

    return BackdropRepainter()


def _write_parts(parts: Iterable[Any], schema: Any, out: Union[str, Path], view: str, rows_per_file: int,
                 card: Optional[Dict[str, Any]], fsync: bool = False) -> Dict[str, Any]:
    """Stream tables (of ``schema``) into the split files of a new export folder ``out``: written
    next to it, swapped in with renames when complete, removed when anything fails."""
    out = Path(out)
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in list(out.parent.glob(f".{out.name}.tmp-*")) + list(out.parent.glob(f"{out.name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)  # left by an export that was killed
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=str(out.parent)))
    os.chmod(tmp, 0o777 & ~_umask())
    files = SplitFiles(tmp, schema, rows_per_file, export_write_options(), fsync=fsync)
    counts = Counts()
    try:
        for part in parts:
            splits = _split_names(part)
            bad = sorted({s for s in set(splits) if not is_safe_name(s)})
            if bad:  # split names become file names: never a path
                raise InputError(f"split name(s) {', '.join(repr(b) for b in bad[:3])} are not plain names "
                                 "([A-Za-z0-9_.-]); refusing to export")
            counts.add(part, splits)
            part = _as_schema(part, schema)
            row_bytes = part.nbytes / max(part.num_rows, 1)
            at = 0
            for split, run in itertools.groupby(splits):  # each run of one split: a zero-copy slice
                n = sum(1 for _ in run)
                files.add(split, part.slice(at, n), row_bytes)
                at += n
        summary = counts.summary(view)
        summary["files"] = files.finish()
        summary["columns"] = [(f.name, str(f.type)) for f in schema]
        (tmp / "README.md").write_text(dataset_card(summary, card or {}), encoding="utf-8")
        summary.pop("columns")
        marker = {"schema_version": SCHEMA_VERSION, "view": view, "files": summary["files"]}
        if view == "rie":
            marker["layout"] = LAYOUT
        (tmp / EXPORT_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        _safe_swap_dir(tmp, out)
    except BaseException:
        files.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["out"] = str(out)
    return summary


def _as_schema(table: Any, schema: Any) -> Any:
    """``table`` under ``schema``: relabelled without a copy when only the metadata differs (a
    shard's own schema metadata), cast otherwise."""
    import pyarrow as pa

    if table.schema.equals(schema, check_metadata=True):
        return table
    if table.schema.equals(schema):
        return pa.Table.from_arrays(table.columns, schema=schema)
    return table.cast(schema)


def _first_repaint(row: Dict[str, Any]) -> str:
    """The pipeline whose output is the row's reference image (the first repaint)."""
    cands = row.get("candidates") or []
    k = ((row.get("review") or {}).get("chosen_candidate"))
    k = 0 if k is None else int(k)
    if 0 <= k < len(cands) and cands[k].get("pipeline"):
        return str(cands[k]["pipeline"])
    return "reference_image"


def _second_repaint(row: Dict[str, Any], sid: str, repainter: Any) -> Optional[Dict[str, Any]]:
    """The exemplar of a triplet: the row's object (from its real photo) in a repainted
    surrounding; {exemplar_image, exemplar_mask, info}, or None when the row has no usable
    photo or mask."""
    from . import rle as rle_mod
    from .imageio import decode_image_bytes, encode_png
    from .seeds import derive_seed

    src = row.get("source_image") or {}
    if not src.get("bytes") or not row.get("source_mask"):
        return None
    after = decode_image_bytes(src["bytes"])
    mask = rle_mod.decode(row["source_mask"])
    if mask.shape != after.shape[:2] or not mask.any():
        return None
    rep = repainter.repaint(after, mask, str(row.get("category") or "object"), derive_seed(0, "repaint", sid))
    return {"exemplar_image": {"bytes": encode_png(rep.image), "path": f"{sid}-exemplar.png"},
            "exemplar_mask": rle_mod.encode(rep.mask),
            "info": dict(repainter.describe(), **rep.params)}


def _triplet(row: Dict[str, Any], sid: str, prompt: str, referring: List[int], edit: List[int], edit_type: str,
             source: str, repainter: Any) -> Optional[Dict[str, Any]]:
    """A twice-repainted triplet: before = the row's reference (first repaint), after = its real
    photo, exemplar = the second repaint of the real object."""
    ref = row.get("reference_image") or {}
    if not ref.get("bytes"):
        return None
    second = _second_repaint(row, sid, repainter)
    if second is None:
        return None
    out = dict(row)
    out.update(
        sample_id=sid, edit_type=edit_type, edit_target=str(row.get("category") or "object"), prompt=prompt,
        referring_span=referring, edit_span=edit, prompt_source=source,
        source_image={"bytes": ref["bytes"], "path": f"{sid}-before.png"},
        reference_image={"bytes": row["source_image"]["bytes"], "path": row["source_image"].get("path")},
        exemplar_image=second["exemplar_image"], exemplar_mask=second["exemplar_mask"], candidates=[],
        repaint=json.dumps({"before": {"repaint": "first", "pipeline": _first_repaint(row), "sample_id": row.get("sample_id")},
                            "exemplar": dict(second["info"], repaint="second"),
                            "after": "original photo"}, sort_keys=True),
    )
    return out


def reversed_removal(row: Dict[str, Any], repainter: Any = None) -> Optional[Dict[str, Any]]:
    """An *addition* triplet from a removal: the removal's output is the before image (the first
    repaint), the original photo the after image, the removed object in a repainted surrounding
    the exemplar (the second repaint, ``repainter``), "add <a category>" the instruction (its edit
    span is the whole prompt; there is no referring part: the object is not in the before image).
    Source mask and M_e stay those of the removal; the review status is the removal's. None when
    the removal has no reference image."""
    from .prompts import render_target
    from .schema import sample_id

    if row.get("edit_type") != "remove":
        return None
    category = str(row.get("category") or "object")
    prompt = f"add {render_target(category)}"
    sid = sample_id(str(row.get("dataset") or ""), int(row.get("ref_id") or 0), int(row.get("sent_id") or 0), "add", category)
    return _triplet(row, sid, prompt, [len(prompt), len(prompt)], [0, len(prompt)], "add", ADDITION_SOURCE,
                    repainter if repainter is not None else _default_repainter())


def _definite(target: str) -> str:
    """``"a giraffe"`` / ``"giraffe"`` -> ``"the giraffe"``."""
    words = " ".join(str(target).split()).split(" ")
    if len(words) > 1 and words[0].lower() in ("a", "an", "the", "some"):
        words = words[1:]
    return "the " + " ".join(words)


def reversed_replacement(row: Dict[str, Any], repainter: Any = None) -> Optional[Dict[str, Any]]:
    """A *replacement* triplet from a replace sample, reversed so that the real photo is the after
    image: the replacement's output (the object region repainted with the target: the first
    repaint) is the before image, the real object in a repainted surrounding the exemplar (the
    second repaint), "replace the <target> with <a category>" the instruction (referring span: the
    target's phrase, which names the repainted object of the before image; edit span: from "with").
    None when the sample has no reference image."""
    from .prompts import render_target
    from .schema import sample_id

    if row.get("edit_type") != "replace":
        return None
    category = str(row.get("category") or "object")
    ref_phrase = _definite(str(row.get("edit_target") or "object"))
    prompt = f"replace {ref_phrase} with {render_target(category)}"
    a = len("replace ")
    b = a + len(ref_phrase)
    sid = sample_id(str(row.get("dataset") or ""), int(row.get("ref_id") or 0), int(row.get("sent_id") or 0),
                    "replace", f"{row.get('edit_target')}->{category}")
    return _triplet(row, sid, prompt, [a, b], [b + 1, len(prompt)], "replace", REPLACEMENT_SOURCE,
                    repainter if repainter is not None else _default_repainter())


def reference_based_rows(rows: Sequence[Dict[str, Any]], repainter: Any = None) -> List[Dict[str, Any]]:
    """The rows of the reference-based view, in the order of ``rows``: a reversed replacement
    triplet for every replace sample, an addition triplet for every removal (twice-repainted:
    ``reversed_replacement``, ``reversed_removal``); ``repainter`` makes the exemplars."""
    repainter = repainter if repainter is not None else _default_repainter()
    out = []
    for r in rows:
        t = reversed_replacement(r, repainter) if r.get("edit_type") == "replace" else \
            reversed_removal(r, repainter) if r.get("edit_type") == "remove" else None
        if t is not None:
            out.append(t)
    return out


def _with_reviews(table: Any, reviews: Dict[str, Dict[str, Any]]) -> Any:
    """``apply_review`` on the reviewed rows only (the rest stays Arrow), order kept."""
    import numpy as np
    import pyarrow as pa

    if not reviews:
        return table
    ids = table.column("sample_id").to_pylist()
    hit = [i for i, sid in enumerate(ids) if sid in reviews]
    if not hit:
        return table
    rest = sorted(set(range(len(ids))) - set(hit))
    reviewed = rows_to_table([apply_review(r, reviews[r["sample_id"]])
                              for r in table.take(pa.array(hit, pa.int64())).to_pylist()])
    both = pa.concat_tables([table.take(pa.array(rest, pa.int64())), reviewed])
    return both.take(np.argsort(np.asarray(rest + hit, dtype=np.int64), kind="stable"))


def _stored_parts(ws: Workspace, reviews: Dict[str, Dict[str, Any]], status: str) -> Iterator[Any]:
    """The workspace's samples shard by shard in the export layout, reviews folded in, filtered
    by ``status``, in shard order; the next ``READERS`` shards are read and prepared side by side
    while this one is handed to the writers (two readers keep both cores of a small machine busy:
    the writers compress while Arrow decodes)."""
    stage = ws.stage("generate")
    ids = stage.done_shards()
    if not ids:
        raise NothingToExport(no_samples_message(ws))

    def prepared(i: int) -> Any:  # in a read-ahead thread, while the main thread hands rows over
        import pyarrow.compute as pc

        table = conform(stage.read_shard(i))  # a shard written before schema 1.1: other_* null
        if reviews and any(sid in reviews for sid in table.column("sample_id").to_pylist()):
            table = store_reference_once(_with_reviews(_table_of(materialize(table)), reviews))
        elif not is_reference_once(table):  # a shard written before the layout (or imported)
            table = store_reference_once(_table_of(table))
        if status == "accepted":
            keep = pc.equal(pc.struct_field(table.column("review"), "status"), "accepted").fill_null(False)
            table = table.filter(keep)
        return table

    with ThreadPoolExecutor(READERS, thread_name_prefix="export-read") as pool:
        ahead = deque(pool.submit(prepared, i) for i in ids[:READERS])
        for j in range(len(ids)):
            table = ahead.popleft().result()
            if j + READERS < len(ids):
                ahead.append(pool.submit(prepared, ids[j + READERS]))
            yield table


def export_workspace(ws: Union[Workspace, str, Path], out: Optional[Union[str, Path]] = None, status: str = "all",
                     view: str = "rie", build_info: Optional[Dict[str, Any]] = None,
                     repainter: Any = None, fsync: bool = False) -> Dict[str, Any]:
    """Export the generated samples of a workspace (optionally only accepted ones), streaming
    shard by shard (the reference-based view: in memory, its exemplars made by ``repainter``).
    ``fsync``: the files reach the disk before the folder is swapped in. ``NothingToExport``
    (an ``InputError``) when the workspace holds no generated sample (``no_samples_message``
    says why: never built, or every sample quarantined)."""
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    if status not in ("accepted", "all"):
        raise InputError(f"unknown --status {status!r}; choose accepted or all")
    if view not in VIEWS:
        raise InputError(f"unknown view {view!r}; choose from {', '.join(VIEWS)}")
    if generated_rows(ws) == 0:
        raise NothingToExport(no_samples_message(ws))
    q = ws.quarantine().to_pylist()
    info = dict(build_info or ws.manifest())
    info["quarantine"] = dict(Counter(f"{x['stage']}/{x['reason']}" for x in q))
    info["status_filter"] = status
    out = out if out is not None else ws.root / "export"
    reviews = ws.read_reviews()
    if view == "reference-based":
        table = _with_reviews(_table_of(ws.stage("generate").read_samples()), reviews)
        if status == "accepted":
            import pyarrow as pa

            table = table.filter(pa.array([(r or {}).get("status") == "accepted" for r in table.column("review").to_pylist()]))
        return write_export(table, out, view=view, card=info, repainter=repainter, fsync=fsync)
    return _write_parts(_stored_parts(ws, reviews, status), stored_schema(), out, view, 500, info, fsync)


def load_export(path: Union[str, Path], materialized: bool = True) -> Any:
    """Read an export folder (or one Parquet file) back as one Arrow table, checked against the
    schema. ``materialized`` (the default) gives the sample columns with the reference
    candidate's image filled back in (``storage.materialize``), plus ``reference_candidate``
    after ``reference_image``: the index of the candidate that is the reference (null when none
    is, e.g. a reviewer's correction), as stored (an export written before that column: found by
    comparing bytes). False gives the table as stored (each image once)."""
    import pyarrow as pa

    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise InputError(f"{path} holds no Parquet files")
    table = pa.concat_tables([read_parquet(f) for f in files], promote_options="default")
    if is_reference_based(table):  # its own columns: checked against the sample schema's types
        fields = {f.name: f for f in sample_fields()}
        missing = [c for c in REFERENCE_BASED_COLUMNS + REPAINT_COLUMNS if c not in table.schema.names]
        wrong = [c for c in table.schema.names if c in fields and not table.schema.field(c).type.equals(fields[c].type)]
        if missing or wrong:
            raise InputError(f"{path}: not a reference-based export (missing {missing}, wrong types {wrong})")
        return table
    stored = conform(table)
    table = materialize(table)
    check_table(table)
    if not materialized:
        return stored
    table = table.select(column_names())
    index = (stored if is_reference_once(stored) else store_reference_once(table)).column(REFERENCE_CANDIDATE)
    return with_reference_candidate(table, index)


def is_reference_based(table: Any) -> bool:
    """True for a table of the reference-based view (triplets; ``REPAINT_COLUMNS``, no candidates)."""
    return "repaint" in table.schema.names and "candidates" not in table.schema.names


def import_export(export_dir: Union[str, Path], workdir: Union[str, Path], shard_size: int = 16) -> Dict[str, Any]:
    """Read an export back into a workspace as its ``generate`` stage (for review or re-export)."""
    table = load_export(export_dir)
    if is_reference_based(table):
        raise InputError(f"{export_dir} is a reference-based export (triplets, not samples): import the rie export "
                         "of the same workspace instead")
    table = table.select(column_names())  # the samples; storing them finds the reference candidate again
    bad = [v for v in table.column("sample_id").to_pylist() if not is_safe_name(v)]
    if bad:  # sample ids become file names (review media, score outputs): never a path
        raise InputError(f"{export_dir}: {len(bad)} sample_id(s) are not plain names ([A-Za-z0-9_.-], at most 128 "
                         f"characters), e.g. {bad[0]!r}; refusing to import")
    ws = Workspace(workdir)
    ws.root.mkdir(parents=True, exist_ok=True)
    stage = ws.stage("generate")
    stage.clear()
    n = 0
    for i, start in enumerate(range(0, table.num_rows, shard_size)):
        stage.write_samples(i, table.slice(start, shard_size), {"imported_from": str(export_dir)})
        n += 1
    return {"rows": table.num_rows, "shards": n, "workdir": str(ws.root)}


def _table(d: Dict[str, Any]) -> str:
    if not d:
        return "(none)\n"
    lines = ["| value | count |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in d.items()]
    return "\n".join(lines) + "\n"


def _prompt_text(settings: Dict[str, Any]) -> str:
    para = "with" if settings.get("paraphrase") else "without"
    if settings.get("llm_model"):
        return (f"LLM `{settings['llm_model']}` ({settings.get('llm_mode', 'rephrase')} mode) on top of the templates; "
                f"every prompt validated (spans found verbatim, referent and edit kept); prompt_source says `llm:<model>`")
    return f"templates {para} the offline paraphraser; no LLM was used (prompt_source `template`)"


def _selection_text(report: Optional[Dict[str, Any]]) -> str:
    if not report:
        return ""
    d = report.get("dropped", {})
    return (
        f"Selection (the paper's two rules): {report.get('refs_considered')} referred objects considered in "
        f"{report.get('images_considered')} images; dropped {d.get('too_small', 0)} too small, "
        f"{d.get('sole_subject', 0)} as the sole prominent subject (rule 1), {d.get('no_similar', 0)} without a "
        f"similar object (rule 2); kept {report.get('refs_passed')}, of which {report.get('refs_kept')} are used.\n"
    )


def _split_by_text(settings: Dict[str, Any]) -> str:
    """Which refs file gave the splits (the dataset's default one when none was asked for)."""
    from .refcoco import DEFAULT_SPLIT_BY

    chosen = settings.get("split_by")
    if chosen:
        return f"splits from `refs({chosen}).p`"
    default = DEFAULT_SPLIT_BY.get(str(settings.get("dataset")))
    return f"splits from `refs({default}).p` (the dataset's default)" if default else "splits from the dataset's default refs file"


def _layout_text(view: str) -> str:
    if view != "rie":
        return ""
    return ("\nEach image is stored once. `reference_image` is the chosen candidate's image, so that candidate's "
            "own `candidates[i].image` is null and `reference_candidate` holds its index `i` (null when the "
            "reference is none of the candidates, e.g. a reviewer's correction). To get every candidate's image: "
            "`row[\"candidates\"][row[\"reference_candidate\"]][\"image\"] = row[\"reference_image\"]`, which "
            "`refcoco_edit.export.load_export` does for you; it keeps `reference_candidate`, so that with several "
            "candidates per sample you can still tell which one is the reference.\n")


def _repaint_text(view: str, info: Dict[str, Any]) -> str:
    if view != "reference-based":
        return ""
    rep = json.dumps(info.get("repaint") or {}, sort_keys=True)
    return ("\n## Twice-repainting (reference-based view)\nEvery triplet is (`source_image` = before, "
            "`exemplar_image` = reference, `reference_image` = after), and the after image is always the real "
            "photo. First repaint: the before image is a build pipeline's repaint of the object region -- a "
            "removal's output for an `add` triplet (prompt \"add a <category>\"), a replacement's output for a "
            "`replace` one (prompt \"replace the <target> with a <category>\", reversing the build's edit). "
            "Second repaint: the exemplar shows the same object, its pixels taken from the after image, in a "
            "repainted surrounding, so that no pixel of its context is shared with the after image and copying "
            "the exemplar back in place cannot produce the after image. `exemplar_mask` is the object in the "
            "exemplar; `repaint` (JSON) names the pipeline of the first repaint and the repainter and drawn "
            f"parameters of the second. Repainter of this export: `{rep}` (`backdrop`: weight-free, the object "
            "scaled, rotated, maybe mirrored, on a backdrop synthesized from a seed; `sd-inpaint-surround`: SD "
            "inpainting of everything outside the object mask, the object's pixels pasted back exactly).\n")


# what the dataset card calls each backend's references (its ``quality_tier``)
QUALITY_TIERS = {"classical": "weight-free classical", "diffusion": "diffusion"}


def quality_tier(settings: Dict[str, Any]) -> Optional[str]:
    """The quality tier of a build's references, from its backend; None when the backend is unknown
    (a workspace imported from an export carries no build settings)."""
    backend = settings.get("backend")
    return QUALITY_TIERS.get(str(backend), str(backend)) if backend else None


def _tier_text(tier: Optional[str]) -> str:
    """The card's words on what the quality tier means."""
    if tier == QUALITY_TIERS["classical"]:
        return ("; quality tier: weight-free classical (CPU cut-and-paste, inpainting and recolouring references: "
                "reproducible, but not photo-realistic on real photos; rebuild with `--backend diffusion` for generated "
                "references)")
    if tier == QUALITY_TIERS["diffusion"]:
        return "; quality tier: diffusion (generated references, ranked by the candidate filters)"
    return f"; quality tier: {tier}" if tier else ""


def _licence_text(demo: bool) -> str:
    if demo:
        return ("The images are synthetic: drawn by refcoco-edit's demo generator (no photographs, no COCO or "
                "Flickr content), released with the code under Apache-2.0.")
    return "Images come from COCO (train2014, CC BY 4.0 per image terms of Flickr) when built from RefCOCO."


def _audit_text(audit: Dict[str, Any], settings: Dict[str, Any]) -> str:
    """The card's lines on the ground-truth audit of the other annotated objects."""
    if not audit:
        return ""
    thr, share = settings.get("audit_pixel_threshold", 8), settings.get("audit_max_changed", 0.01)
    text = (f"Audit of the other annotated objects (`other_masks`): every candidate is compared with the source over "
            f"each other object of the image; a pixel changed when a channel moved by more than {thr}, an object is "
            f"damaged when more than {share:g} of its pixels changed, and a candidate that damaged one is marked "
            f"(`filter_scores.others_damaged`) and is not the reference while a clean candidate exists. "
            f"{audit.get('samples', 0)} samples audited ({audit.get('objects', 0)} other objects); "
            f"{audit.get('candidates_marked', 0)} of {audit.get('candidates', 0)} candidates marked, in "
            f"{audit.get('samples_marked', 0)} samples; {audit.get('references_marked', 0)} references damage "
            f"another object (no clean candidate).")
    if audit.get("samples_unknown"):
        text += f" {audit['samples_unknown']} samples carry no other-object masks (written before schema 1.1): not audited."
    return text + "\n"


def _difficulty_text(counts: Optional[Dict[str, Dict[str, int]]]) -> str:
    """The card's table of the difficulty buckets (the ``difficulty`` column, ``refcoco_edit.difficulty``)."""
    if not counts:
        return ""
    from .difficulty import BUCKETS, HARD_RULE, label_key

    keys = [k for k in BUCKETS if k in counts] + sorted(set(counts) - set(BUCKETS))
    rows = "\n".join(f"| {k[len('attr_'):]} | " + ", ".join(
        f"{label}: {n}" for label, n in sorted(counts[k].items(), key=lambda kv: label_key(kv[0]))) + " |" for k in keys)
    return ("Difficulty (the `difficulty` column; word rules and definitions: `refcoco_edit.difficulty`; "
            f"{HARD_RULE}):\n\n| attribute | samples per bucket |\n|---|---|\n{rows}\n\n")


def dataset_card(summary: Dict[str, Any], info: Dict[str, Any]) -> str:
    """The README.md of an export: loading configs, schema, counts and how it was built."""
    splits = sorted(summary["splits"])
    yaml = ["---", "configs:", "- config_name: default", "  data_files:"]
    for s in splits:
        yaml += [f"  - split: {s}", f"    path: {s}-*.parquet"]
    demo = bool(info.get("demo_data"))
    settings = info.get("settings", {})
    tier = quality_tier(settings)
    yaml += [f"license: {'apache-2.0' if demo else 'cc-by-4.0'}", "task_categories:", "- image-to-image", "tags:", "- referring-image-editing",
             "- refcoco"] + ([f"quality_tier: {tier}"] if tier else []) + ["---", ""]
    columns = summary.get("columns") or [(f.name, str(f.type)) for f in sample_fields()]
    schema_lines = "\n".join(f"| `{name}` | `{type_}` |" for name, type_ in columns)
    prompt_src = ", ".join(f"{k} ({v})" for k, v in summary["prompt_sources"].items()) or "none"
    body = f"""# RefCOCO-Edit (refcoco-edit export)

Referring Image Editing samples: a photo with several look-alike objects, one sentence that refers
to one object and says how to edit it, the object's mask, a reference edited image and the edited
area M_e. Built with `refcoco-edit build`; schema version {SCHEMA_VERSION}; view `{summary['view']}`.

## Load it
```python
import datasets
dd = datasets.load_dataset("path/to/this/folder")          # one split per RefCOCO split
dd = datasets.load_dataset("parquet", data_files={{s: f"path/to/this/folder/{{s}}-*.parquet" for s in {splits!r}}})
import glob, pandas as pd
df = pd.read_parquet(sorted(glob.glob("path/to/this/folder/*.parquet")))   # every split in one frame
from refcoco_edit.export import load_export
table = load_export("path/to/this/folder")   # one Arrow table, candidate images filled back in,
                                             # reference_candidate kept (the reference's index or null)
```
(`data_files="folder/*.parquet"` without a dict puts every split into one split named `train`.)
{_layout_text(summary['view'])}{_repaint_text(summary['view'], info)}
Masks are COCO RLE (`pycocotools.mask.decode({{"size": m["size"], "counts": m["counts"].encode()}})`).
`prompt[referring_span[0]:referring_span[1]]` is the referring expression verbatim;
`prompt[edit_span[0]:edit_span[1]]` is the phrase naming the edit (the replace target, the new
attribute, or the removal verb). Every `reference_image` equals `source_image` outside `edit_mask`.

## Contents
{summary['rows']} samples over {summary['images']} images.

Splits:
{_table(summary['splits'])}
Edit types:
{_table(summary['edit_types'])}
Prompt sources: {prompt_src}. Review status:
{_table(summary['review'])}
Candidate pipelines:
{_table(summary['candidate_pipelines'])}
Categories of the referred objects:
{_table(summary['categories'])}
{_difficulty_text(summary.get('difficulty'))}Quarantined during the build (stage/reason):
{_table(info.get('quarantine', {}))}
{_audit_text(summary.get('audit') or {}, settings)}
## How it was built
- data: {"bundled synthetic demo data (not real photos)" if demo else settings.get('refcoco', '?')}; dataset `{settings.get('dataset', '?')}`, {_split_by_text(settings)}
- backend: `{settings.get('backend', '?')}`{_tier_text(tier)}; seed {settings.get('seed', '?')}; samples exported: `{info.get('status_filter', 'all')}`
- prompts: {_prompt_text(settings)}

{_selection_text(info.get('selection'))}
Settings:
```json
{json.dumps(settings, indent=2, sort_keys=True, default=str)}
```

## Schema
| column | Arrow type |
|---|---|
{schema_lines}

{_licence_text(demo)}
"""
    return "\n".join(yaml) + body
