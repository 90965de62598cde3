"""The Parquet files of an export, written as the rows stream in.

An export is ``{split}-{k:05d}-of-{n:05d}.parquet`` files (``rows_per_file`` rows each). Rows
arrive shard by shard, in the workspace's order, with their splits mixed; each split's rows go to
that split's open file in row groups of at most ``ROW_GROUP_ROWS`` rows or ``ROW_GROUP_BYTES``.
Each open file has its own writer thread (Arrow releases the GIL while it compresses), so the
files of different splits are written side by side and the row groups of one file in their
order; at most ``max_inflight`` row groups wait to be written, so an export of a 50k-sample build
holds no more memory than one of the demo. A file is closed when full, and fsynced only with
``fsync``: the export is derived from the workspace, whose shards are fsynced, and a disk flush
costs ~1.5 s per GB, more than the export itself. Files are written under a part name and
renamed to their final ``-of-{n}`` name once the last row is in (``n`` is only known then).
"""
from __future__ import annotations

import os
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Sequence

from .errors import is_disk_error, with_path

ROW_GROUP_ROWS = 100  # as HF datasets writes image datasets: small enough to stream, big enough to scan
ROW_GROUP_BYTES = 8 << 20  # or fewer rows when they are big: compressed while the next shard is read


def open_sink(path: Path) -> Any:
    """The file one export file is written through: Arrow's own (no Python call, no GIL per
    write). The fault-injection tests wrap it to fill the disk mid-file."""
    import pyarrow as pa

    return pa.OSFile(str(path), "wb")


def _named(e: BaseException, path: Path) -> BaseException:
    return with_path(e, path) if isinstance(e, OSError) and is_disk_error(e) else e


class SplitFiles:
    """Writers of one export's files, one open file per split."""

    def __init__(self, folder: Path, schema: Any, rows_per_file: int, options: Dict[str, Any],
                 max_inflight: int = 8, fsync: bool = False) -> None:
        self.folder, self.schema, self.rows_per_file, self.options = Path(folder), schema, rows_per_file, options
        self.fsync = fsync  # flush each file to the disk before it counts as written (see export --fsync)
        self.max_inflight = max_inflight  # row groups handed over and not yet written: bounded memory
        self._open: Dict[str, Dict[str, Any]] = {}   # split -> {path, rows, pending..., thread, state}
        self._parts: Dict[str, List[Path]] = {}
        self._inflight: Deque[Future] = deque()
        self._files: List[Dict[str, Any]] = []  # every file's thread and state, for finish()/abort()

    def add(self, split: str, table: Any, row_bytes: float = 0.0) -> None:
        """Append ``table``'s rows (all of split ``split``) to that split's files. ``row_bytes``:
        their mean size, for the row-group byte cap (default: measured here; a caller slicing
        one table into many runs passes the whole table's, as a slice's own ``nbytes`` walks
        its buffers). A full disk raises ``OSError`` naming the file."""
        if not row_bytes and table.num_rows:
            row_bytes = table.nbytes / table.num_rows
        while table.num_rows:
            f = self._open.get(split) or self._start(split)
            room = self.rows_per_file - f["rows"] - f["pending_rows"]
            piece, table = table.slice(0, room), table.slice(room)
            f["pending"].append(piece)
            f["pending_rows"] += piece.num_rows
            f["pending_bytes"] += piece.num_rows * row_bytes
            if f["rows"] + f["pending_rows"] >= self.rows_per_file:
                self._close(split)
            elif f["pending_rows"] >= ROW_GROUP_ROWS or f["pending_bytes"] >= ROW_GROUP_BYTES:
                self._flush(f)

    def finish(self) -> List[str]:
        """Close every file and give each its final name; returns the names, split by split."""
        for split in list(self._open):
            self._close(split)
        while self._inflight:
            self._inflight.popleft().result()  # the first error, its file named
        for f in self._files:
            f["thread"].shutdown()
        names = []
        for split in sorted(self._parts):
            parts = self._parts[split]
            for k, part in enumerate(parts):
                name = f"{split}-{k:05d}-of-{len(parts):05d}.parquet"
                os.replace(part, self.folder / name)
                names.append(name)
        return names

    def abort(self) -> None:
        """Stop a failed export: let the writes in flight end, close every file (the folder is
        removed by the caller)."""
        for f in self._files:
            f["thread"].shutdown(wait=True)
            _close_quietly(f["state"])
        self._inflight.clear()
        self._open.clear()

    # -- one file: its own writer thread, so its row groups keep their order; files side by side --

    def _submit(self, f: Dict[str, Any], work: Callable[[Dict[str, Any]], None]) -> None:
        state, path = f["state"], f["path"]

        def run() -> None:
            try:
                work(state)
            except BaseException as e:
                raise _named(e, path) from None

        self._inflight.append(f["thread"].submit(run))
        while len(self._inflight) > self.max_inflight:  # back-pressure: bounded memory
            self._inflight.popleft().result()

    def _start(self, split: str) -> Dict[str, Any]:
        k = len(self._parts.setdefault(split, []))
        path = self.folder / f".{split}-{k:05d}.part"
        f = {"path": path, "rows": 0, "pending": [], "pending_rows": 0, "pending_bytes": 0, "state": {},
             "thread": ThreadPoolExecutor(1, thread_name_prefix=f"export-{split}")}
        self._files.append(f)
        schema, options = self.schema, self.options

        def open_file(state: Dict[str, Any]) -> None:
            import pyarrow.parquet as pq

            state["sink"] = open_sink(path)
            state["writer"] = pq.ParquetWriter(state["sink"], schema, **options)  # writes the header already

        self._submit(f, open_file)
        self._open[split] = f
        return f

    def _flush(self, f: Dict[str, Any]) -> None:
        import pyarrow as pa

        if f["pending_rows"]:
            t = pa.concat_tables(f["pending"])
            self._submit(f, lambda state: state["writer"].write_table(t, row_group_size=t.num_rows))
            f["rows"] += t.num_rows
        f["pending"], f["pending_rows"], f["pending_bytes"] = [], 0, 0

    def _close(self, split: str) -> None:
        f = self._open[split]
        self._flush(f)
        path, fsync = f["path"], self.fsync

        def close_file(state: Dict[str, Any]) -> None:
            state["writer"].close()
            state.pop("writer")
            state.pop("sink").close()
            if fsync:
                _fsync(path)

        self._submit(f, close_file)
        f["thread"].shutdown(wait=False)  # its last task still runs; then the thread ends
        del self._open[split]
        self._parts[split].append(path)


def _close_quietly(state: Dict[str, Any]) -> None:
    for key in ("writer", "sink"):
        if key in state:
            try:
                state.pop(key).close()
            except Exception:  # noqa: BLE001 - already failing; the folder goes anyway
                pass


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Counts:
    """The counts of an export's dataset card, gathered part by part from the small columns."""

    def __init__(self) -> None:
        self.rows = 0
        self.images: set = set()
        self.counters: Dict[str, Counter] = {k: Counter() for k in (
            "splits", "edit_types", "categories", "prompt_sources", "review", "candidate_pipelines", "audit")}
        self.difficulty: Dict[str, Counter] = {}

    def add(self, table: Any, splits: Sequence[str]) -> None:
        import pyarrow.compute as pc

        if not table.num_rows:
            return
        col, c = table.column, self.counters
        self.rows += table.num_rows
        self.images.update(col("image_id").to_pylist())
        c["splits"].update(splits)
        c["edit_types"].update(str(v) for v in col("edit_type").to_pylist())
        c["categories"].update(str(v) for v in col("category").to_pylist())
        c["prompt_sources"].update(str(v) for v in col("prompt_source").to_pylist())
        c["review"].update(str(v) for v in pc.struct_field(col("review"), "status").to_pylist())
        if "candidates" in table.schema.names:
            flat = pc.list_flatten(col("candidates"))
            c["candidate_pipelines"].update(str(v) for v in pc.struct_field(flat, "pipeline").to_pylist())
        self._add_audit(table)
        if "difficulty" in table.schema.names:  # the difficulty buckets (refcoco_edit.difficulty)
            from .difficulty import buckets

            for d in col("difficulty").to_pylist():
                for k, v in buckets(d).items():
                    self.difficulty.setdefault(k, Counter())[v if v is not None else "unknown"] += 1

    def _add_audit(self, table: Any) -> None:
        """The other-objects audit (``pipelines.filters.audit_other_objects``) from the
        ``other_masks`` column and the candidates' ``filter_scores``: samples audited, objects,
        candidates (marked), samples with a marked candidate, references marked. Only the
        ``filter_scores`` strings become Python objects (the candidates' images stay in Arrow),
        and only those that mention the audit are parsed."""
        import json

        import numpy as np
        import pyarrow.compute as pc

        names, a = table.schema.names, self.counters["audit"]
        if "other_masks" not in names:
            return
        others = table.column("other_masks")
        known = np.asarray(others.is_valid(), dtype=bool)
        a["samples"] += int(known.sum())
        a["samples_unknown"] += int((~known).sum())
        a["objects"] += int(pc.sum(pc.list_value_length(others)).as_py() or 0)
        if "candidates" not in names:
            return
        refs = (table.column("reference_candidate").fill_null(-1).to_numpy().astype(np.int64)
                if "reference_candidate" in names else np.full(table.num_rows, -1, dtype=np.int64))
        if known.any():
            for key in ("candidates", "candidates_marked", "samples_marked", "references_marked"):
                a[key] += 0  # present (as 0) once anything was audited
        base = 0
        for chunk in table.column("candidates").chunks:
            rows = len(chunk)
            flat = chunk.flatten()  # the candidates of this chunk's rows, in order (null lists: none)
            parents = np.asarray(pc.list_parent_indices(chunk), dtype=np.int64) + base
            lengths = np.asarray(pc.list_value_length(chunk).fill_null(0), dtype=np.int64)
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            marked_rows: set = set()
            for k, text in enumerate(pc.struct_field(flat, "filter_scores").to_pylist()):
                row = int(parents[k])
                if not known[row] or not text or "others_damaged" not in text:
                    continue
                score = json.loads(text)
                if "others_damaged" not in score:
                    continue
                a["candidates"] += 1
                if int(score.get("others_damaged", 0) or 0) > 0:
                    a["candidates_marked"] += 1
                    marked_rows.add(row)
                    a["references_marked"] += int(refs[row] == k - starts[row - base])
            a["samples_marked"] += len(marked_rows)
            base += rows

    def summary(self, view: str) -> Dict[str, Any]:
        out: Dict[str, Any] = {"view": view, "rows": self.rows, "images": len(self.images)}
        out.update({k: dict(sorted(v.items())) for k, v in self.counters.items()})
        if self.difficulty:
            out["difficulty"] = {k: dict(v) for k, v in self.difficulty.items()}
        return out
