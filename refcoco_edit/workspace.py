"""The on-disk store of a build: stages made of shards, done-markers, resume and quarantine.

Layout of a workspace (WORKDIR)::

    workspace.json                      settings fingerprint + schema version (refuses a silent mix)
    <stage>/shard-00000.parquet         the rows of one shard (sample schema)
    <stage>/shard-00000.stats.json      written last: its presence marks the shard done
    quarantine/<stage>-shard-00000.parquet   failed samples: stage, key, reason, error, shard
    export/                             Parquet + dataset card (see refcoco_edit.export)

Every file is written to a temporary name in the same folder, flushed, fsynced and renamed
(``os.replace``), so a ``kill -9`` at any moment leaves either the old file or the new one, never
half of one. The stats file is written after the shard and its quarantine file, so a shard
whose stats exist is complete; a shard without stats is redone from scratch.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from .errors import InputError, is_disk_error, with_path
from .schema import SCHEMA_VERSION
from .storage import materialize, read_parquet, store_reference_once, workspace_write_options

QUARANTINE_DIR = "quarantine"
_UMASK = os.umask(0)
os.umask(_UMASK)
MANIFEST = "workspace.json"
REVIEW_FILE = Path("review") / "reviews.parquet"  # relative to the workspace root


# ----------------------------------------------------------------------------------------------
# atomic files
# ----------------------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, writer: Callable[[str], None]) -> None:
    """Call ``writer(tmp_path)`` then rename the temp file onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=str(path.parent))
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give files the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if is_disk_error(e):  # a full disk: say which file (f.write errors carry no path)
            raise with_path(e, path) from None  # type: ignore[arg-type]
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, w)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8"))


def atomic_write_table(path: Path, table: Any, compression: Any = "zstd", **options: Any) -> None:
    """Write an Arrow table as Parquet atomically (``options``: more ``write_table`` options)."""
    import pyarrow.parquet as pq

    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression=compression, **options))


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# quarantine records
# ----------------------------------------------------------------------------------------------

def quarantine_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("stage", pa.string()),
            ("key", pa.string()),
            ("reason", pa.string()),
            ("error", pa.string()),
            ("shard", pa.int32()),
        ]
    )


def quarantine_record(stage: str, key: str, reason: str, error: str, shard: int = -1) -> Dict[str, Any]:
    return {"stage": stage, "key": key, "reason": reason, "error": error, "shard": shard}


# ----------------------------------------------------------------------------------------------
# stages
# ----------------------------------------------------------------------------------------------

class Stage:
    """One stage's shards inside a workspace."""

    def __init__(self, workspace: "Workspace", name: str):
        self.workspace = workspace
        self.name = name
        self.dir = workspace.root / name

    def shard_path(self, i: int) -> Path:
        return self.dir / f"shard-{i:05d}.parquet"

    def stats_path(self, i: int) -> Path:
        return self.dir / f"shard-{i:05d}.stats.json"

    def quarantine_path(self, i: int) -> Path:
        return self.workspace.root / QUARANTINE_DIR / f"{self.name}-shard-{i:05d}.parquet"

    def is_done(self, i: int) -> bool:
        return self.stats_path(i).exists() and self.shard_path(i).exists()

    def done_shards(self) -> List[int]:
        if not self.dir.exists():
            return []
        out = []
        for p in self.dir.glob("shard-*.stats.json"):
            i = int(p.name[len("shard-"): len("shard-") + 5])
            if self.shard_path(i).exists():
                out.append(i)
        return sorted(out)

    def stats(self, i: int) -> Dict[str, Any]:
        return json.loads(self.stats_path(i).read_text())

    def write_shard(self, i: int, table: Any, stats: Dict[str, Any], quarantine: Sequence[Dict[str, Any]] = (),
                    options: Optional[Dict[str, Any]] = None) -> None:
        """Write a shard's rows, its quarantine and (last) its stats, each atomically
        (``options``: Parquet write options of the rows)."""
        import pyarrow as pa

        stats_path = self.stats_path(i)
        if stats_path.exists():  # redoing a done shard (--overwrite): un-mark it first
            stats_path.unlink()
        qpath = self.quarantine_path(i)
        if quarantine:
            qt = pa.Table.from_pylist([dict(q, shard=i) for q in quarantine], schema=quarantine_schema())
            atomic_write_table(qpath, qt)
        elif qpath.exists():
            qpath.unlink()
        atomic_write_table(self.shard_path(i), table, **(options or {}))
        stats = dict(stats, shard=i, rows=table.num_rows, quarantined=len(quarantine), stage=self.name)
        atomic_write_json(stats_path, stats)

    def read_shard(self, i: int) -> Any:
        """Shard ``i`` as stored."""
        return read_parquet(self.shard_path(i))

    def write_samples(self, i: int, table: Any, stats: Dict[str, Any], quarantine: Sequence[Dict[str, Any]] = ()) -> None:
        """``write_shard`` for a table of samples: each image stored once (``storage``)."""
        self.write_shard(i, store_reference_once(table), stats, quarantine, options=workspace_write_options())

    def read_samples(self, shards: Optional[Iterable[int]] = None) -> Any:
        """The samples of the done shards (or of ``shards``) in shard order, as the sample
        schema (``storage.materialize``: every candidate with its image); None when none."""
        import pyarrow as pa

        ids = list(shards) if shards is not None else self.done_shards()
        tables = [materialize(self.read_shard(i)) for i in ids]
        return pa.concat_tables(tables, promote_options="default") if tables else None

    def read_all(self, shards: Optional[Iterable[int]] = None) -> Any:
        """All done shards concatenated in shard order (rows keep their shard order)."""
        import pyarrow as pa

        ids = list(shards) if shards is not None else self.done_shards()
        tables = [self.read_shard(i) for i in ids]
        if not tables:
            return None
        return pa.concat_tables(tables)

    def clear(self) -> None:
        """Remove every shard of this stage (stats first, so nothing is read as done meanwhile)."""
        if not self.dir.exists():
            return
        for p in sorted(self.dir.glob("*.stats.json")):
            p.unlink()
        for p in sorted(self.dir.iterdir()):
            if p.is_file():
                p.unlink()
        qdir = self.workspace.root / QUARANTINE_DIR
        if qdir.exists():
            for p in qdir.glob(f"{self.name}-shard-*.parquet"):
                p.unlink()

    def cleanup_tmp(self) -> int:
        """Delete temp files left by a killed run. Returns how many."""
        n = 0
        for d in (self.dir, self.workspace.root / QUARANTINE_DIR):
            if d.exists():
                for p in d.glob("*.tmp-*"):
                    p.unlink()
                    n += 1
        return n


class Workspace:
    """A build's folder: the manifest, the stages and the quarantine."""

    def __init__(self, root: os.PathLike | str):
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def manifest(self) -> Dict[str, Any]:
        if not self.manifest_path.exists():
            return {}
        return json.loads(self.manifest_path.read_text())

    def stage(self, name: str) -> Stage:
        return Stage(self, name)

    @property
    def review_path(self) -> Path:
        """The reconciled review table (``review pull`` writes it; export and score fold it in)."""
        return self.root / REVIEW_FILE

    def read_reviews(self) -> Dict[str, Dict[str, Any]]:
        """The rows of the review table by sample_id; empty when nothing was reviewed yet."""
        if not self.review_path.exists():
            return {}
        import pyarrow.parquet as pq

        return {r["sample_id"]: r for r in pq.read_table(self.review_path).to_pylist()}

    def prepare(self, settings: Dict[str, Any], stages: Sequence[str], overwrite: bool = False) -> bool:
        """Open the workspace for a run with ``settings`` (everything that changes outputs).

        A workspace built with other settings is refused unless ``overwrite``, which clears the
        listed stages and the export. Returns True when the workspace was (re)started clean.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fp = fingerprint(settings)
        old = self.manifest()
        fresh = False
        if old and old.get("fingerprint") != fp and not overwrite:
            diffs = _diff_settings(old.get("settings", {}), settings)
            raise InputError(
                f"{self.root} was built with other settings ({diffs}); "
                "pass --overwrite to rebuild it, or choose another --out"
            )
        if old and old.get("schema_version") not in (None, SCHEMA_VERSION) and not overwrite:
            raise InputError(
                f"{self.root} holds schema version {old.get('schema_version')}, this refcoco-edit writes "
                f"{SCHEMA_VERSION}; pass --overwrite to rebuild it"
            )
        if overwrite or not old:
            for s in stages:
                self.stage(s).clear()
            export = self.root / "export"
            if overwrite and export.exists():
                import shutil

                shutil.rmtree(export)
            fresh = True
        for s in stages:
            self.stage(s).cleanup_tmp()
        atomic_write_json(
            self.manifest_path,
            {"fingerprint": fp, "settings": settings, "schema_version": SCHEMA_VERSION},
        )
        return fresh

    def quarantine(self) -> Any:
        """Every quarantined record of every stage, as one Arrow table (empty when none)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        qdir = self.root / QUARANTINE_DIR
        files = sorted(qdir.glob("*.parquet")) if qdir.exists() else []
        tables = [pq.read_table(p) for p in files]
        if not tables:
            return quarantine_schema().empty_table()
        return pa.concat_tables(tables)


def _diff_settings(old: Dict[str, Any], new: Dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs[:5]) or "unknown difference"
