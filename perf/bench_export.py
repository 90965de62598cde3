"""Benchmark: ``refcoco-edit export`` against a raw ``pyarrow.parquet.write_table`` of the same rows.

``run(quick=False) -> dict`` (``python -m perf --only export``). A demo workspace is built once
(``refcoco_edit.build.build`` on the bundled synthetic demo data, the classical backend; cached
under ``$TMPDIR/refcoco-edit-perf/export-v<N>-.../``), then, interleaved round by round:

* ``value`` — ``refcoco_edit.export.export_workspace`` (what ``refcoco-edit export`` runs): stream
  the workspace's ``generate`` shards (the next one read while this one is written), fold in
  reviews, each image stored once (``refcoco_edit.storage``), one zstd Parquet file per split (and
  per 500 rows), fsynced, the dataset card, the atomic folder swap;
* ``baseline`` — the floor for writing the same data: our export's own tables, read back once
  before timing (same columns, same values, same schema metadata), written with plain
  ``pyarrow.parquet.write_table(table, path, compression="zstd")`` into one file per split.

``ratio`` = value / baseline (below 1 would be faster than a bare write; the gap is what the
toolkit adds: reading the workspace, the card, the atomic swap; it writes on two cores where the
bare write uses one). Before each timed write the earlier rounds' files are deleted and
``os.sync()`` flushes the disk cache (untimed), so neither side pays for the other's writeback.
Neither fsyncs (``export --fsync`` would add the disk write itself, ~1.5 s per GB here). Median of
``repeats`` rounds after one warm-up round. The baseline's files are checked to hold the
identical table. The weight-free metric throughput (img/s) is not measured here: ``perf/bench_score.py``
reports it (``samples_per_s``).
"""
from __future__ import annotations

import gc
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

GEN_VERSION = 5  # 2: each image stored once (refcoco_edit.storage); 3: demo v2 (hard cases); 4: schema 1.1; 5: whole-object exemplars
FULL = dict(num_images=400, seed=0, repeats=11)
QUICK = dict(num_images=12, seed=0, repeats=3)


def workspace(num_images: int, seed: int) -> Path:
    """The cached demo workspace (built on first use)."""
    from refcoco_edit.build import BuildConfig, build

    from perf import cached_input

    key = f"export-v{GEN_VERSION}-n{num_images}-seed{seed}"

    def make(tmp: Path) -> None:
        t0 = time.perf_counter()
        build(BuildConfig.of(out=str(tmp / "work"), num_images=num_images, seed=seed, progress=False), log=lambda s: None)
        print(f"export: built the demo workspace {key} in {time.perf_counter() - t0:.1f}s")

    return cached_input(key, make) / "work"


def _split_tables(export_dir: Path) -> Dict[str, Any]:
    """Our export's tables, concatenated per split (file names are ``{split}-k-of-n.parquet``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    by_split: Dict[str, List[Any]] = {}
    for f in sorted(export_dir.glob("*.parquet")):
        by_split.setdefault(f.name.rsplit("-", 3)[0], []).append(pq.read_table(f))
    return {s: pa.concat_tables(ts).combine_chunks() for s, ts in by_split.items()}


def run(quick: bool = False) -> Dict[str, Any]:
    import pyarrow.parquet as pq

    from refcoco_edit.export import export_workspace
    from refcoco_edit.workspace import Workspace

    params = QUICK if quick else FULL
    ws_dir = workspace(params["num_images"], params["seed"])
    scratch = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        ours_dir = scratch / "ours"
        s = export_workspace(Workspace(ws_dir), out=ours_dir)  # warm-up (page cache, imports)
        tables = _split_tables(ours_dir)
        rows = sum(t.num_rows for t in tables.values())
        assert rows == s["rows"], (rows, s["rows"])

        def baseline(out: Path) -> None:
            out.mkdir()
            for split, t in tables.items():
                pq.write_table(t, out / f"{split}.parquet", compression="zstd")

        baseline(scratch / "warm")
        times: Dict[str, List[float]] = {"baseline": [], "ours": []}
        for r in range(params["repeats"]):
            order = ("baseline", "ours") if r % 2 == 0 else ("ours", "baseline")
            for name in order:
                gc.collect()
                # each timed write starts from the same state: the earlier rounds' files gone and
                # flushed (else the kernel writes hundreds of MB back during whichever run is next)
                for old in scratch.glob("*-*"):
                    if old.name != f"baseline-{params['repeats'] - 1}":
                        shutil.rmtree(old, ignore_errors=True)
                os.sync()
                out = scratch / f"{name}-{r}"
                t0 = time.perf_counter()
                if name == "ours":
                    export_workspace(Workspace(ws_dir), out=out)
                else:
                    baseline(out)
                times[name].append(time.perf_counter() - t0)
        # the baseline wrote the identical tables
        last = scratch / f"baseline-{params['repeats'] - 1}"
        for split, t in tables.items():
            assert pq.read_table(last / f"{split}.parquet").equals(t), split
        ours_bytes = sum(f.stat().st_size for f in ours_dir.glob("*.parquet"))
        base_bytes = sum(f.stat().st_size for f in last.glob("*.parquet"))
        # where our time goes: reading the workspace's shards (part of every export)
        t0 = time.perf_counter()
        stage = Workspace(ws_dir).stage("generate")
        for i in stage.done_shards():
            stage.read_shard(i)
        read_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    b, v = statistics.median(times["baseline"]), statistics.median(times["ours"])
    res = {
        "name": "export",
        "baseline": "pyarrow.parquet.write_table of the same tables (zstd), one file per split",
        "notes": f"{rows} demo samples, {ours_bytes / 1e6:.1f} MB Parquet; median of {params['repeats']}",
        "baseline_s": round(b, 4),
        "value_s": round(v, 4),
        "ratio": round(v / b, 3),
        "rows": rows,
        "splits": {k: t.num_rows for k, t in sorted(tables.items())},
        "parquet_mb": {"ours": round(ours_bytes / 1e6, 2), "baseline": round(base_bytes / 1e6, 2)},
        "mb_per_s": {"ours": round(ours_bytes / 1e6 / v, 1), "baseline": round(base_bytes / 1e6 / b, 1)},
        "rows_per_s": round(rows / v, 1),
        "read_workspace_s": round(read_s, 4),
        "repeats": params["repeats"],
        "times": {k: [round(t, 4) for t in ts] for k, ts in times.items()},
    }
    print(f"export: {rows} samples, {ours_bytes / 1e6:.1f} MB; raw pyarrow write {b:.3f}s, export_workspace {v:.3f}s "
          f"(ratio {v / b:.2f}; reading the workspace alone {read_s:.3f}s)")
    return res


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
