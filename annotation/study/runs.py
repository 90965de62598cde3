"""Score runs as plain files: ``RESULTS/results.json``, ``samples.parquet`` and ``outputs/``.

The study reads what ``refcoco-edit score`` wrote without importing ``refcoco_edit.benchmark``
(annotation and benchmark are independent): the few facts it needs are read here with json and
pyarrow. Every numeric per-sample column of samples.parquet that is not one of the fixed
bookkeeping columns is a metric (the paper's, PIE-Bench, MagicBrush, referring, a VLM judge's,
anything a later version adds); its title and direction come from results.json ``metrics``
when it is listed there, else the column name and an unknown direction.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from refcoco_edit.errors import InputError

READS_RESULTS_VERSIONS = ("1.0", "1.1")  # 1.1 adds by_attribute and data.subset
# samples.parquet's fixed columns (results schema 1.0); every other numeric column is a metric
BOOKKEEPING = frozenset({"sample_id", "split", "image_id", "category", "edit_type", "prompt", "referring_span",
                         "edit_span", "seed", "n_distractors", "status", "reason", "error", "resized", "output",
                         "height", "width"})


@dataclass
class MetricColumn:
    """One metric column of a run."""

    name: str
    title: str
    higher_is_better: Optional[bool]


@dataclass
class ScoreRun:
    """What the study uses of one finished score run."""

    path: Path
    editor_spec: str
    editor_name: str
    data_path: str
    data_kind: str
    results_sha256: str
    rows: Dict[str, Dict[str, Any]] = field(default_factory=dict)   # sample_id -> samples.parquet row
    metrics: List[MetricColumn] = field(default_factory=list)

    def output_path(self, sample_id: str) -> Optional[Path]:
        """The checked output file of a scored sample (None when it has none). Refuses a path
        that leaves the run folder (samples.parquet is input, not trusted)."""
        row = self.rows.get(sample_id)
        if not row or row.get("status") != "ok" or not row.get("output"):
            return None
        root = self.path.resolve()
        p = (root / str(row["output"])).resolve()
        try:
            p.relative_to(root)
        except ValueError:
            raise InputError(f"{self.path}: output {row['output']!r} of sample {sample_id} is outside the run folder") from None
        return p if p.is_file() else None

    def metric_values(self, name: str) -> Dict[str, float]:
        """sample_id -> finite value of metric ``name`` on scored samples."""
        out = {}
        for sid, row in self.rows.items():
            v = row.get(name)
            if row.get("status") == "ok" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[sid] = float(v)
        return out


def load_run(path: str | Path) -> ScoreRun:
    """A finished score run (InputError when the folder is not one)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = Path(path)
    res_p, samples_p = run / "results.json", run / "samples.parquet"
    if not res_p.is_file() or not samples_p.is_file():
        raise InputError(f"--runs {path}: not a finished `refcoco-edit score` run (needs results.json and samples.parquet)")
    raw = res_p.read_bytes()
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise InputError(f"{res_p}: not valid JSON ({e})") from None
    version = doc.get("results_schema_version") if isinstance(doc, dict) else None
    if version not in READS_RESULTS_VERSIONS:
        raise InputError(f"{res_p}: results schema version {version!r}; the study reads {', '.join(READS_RESULTS_VERSIONS)}")
    try:
        editor, data, listed = doc["editor"], doc["data"], doc.get("metrics") or {}
        spec, name, data_path, kind = str(editor["spec"]), str(editor["name"]), str(data["path"]), str(data["kind"])
    except (KeyError, TypeError):
        raise InputError(f"{res_p}: lacks editor.spec/name or data.path/kind") from None
    try:
        table = pq.read_table(samples_p)
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"{samples_p}: unreadable ({e})") from None
    if "sample_id" not in table.column_names or "status" not in table.column_names:
        raise InputError(f"{samples_p}: no sample_id/status columns")
    metrics = []
    for f in table.schema:
        numeric = pa.types.is_floating(f.type) or pa.types.is_integer(f.type)
        if f.name in BOOKKEEPING or not numeric:
            continue
        m = listed.get(f.name) if isinstance(listed.get(f.name), dict) else {}
        hib = m.get("higher_is_better")
        metrics.append(MetricColumn(f.name, str(m.get("title") or f.name), hib if isinstance(hib, bool) else None))
    rows = {r["sample_id"]: r for r in table.to_pylist()}
    return ScoreRun(run.resolve(), spec, name, data_path, kind, hashlib.sha256(raw).hexdigest(), rows, metrics)


def source_rows(run: ScoreRun, sample_ids: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """The dataset rows (source image, source mask, prompt, spans, edit) of ``sample_ids``, read
    from the data the run scored (an export folder or Parquet file, or a workspace)."""
    from refcoco_edit.export import load_export
    from refcoco_edit.workspace import Workspace

    p = Path(run.data_path)
    if not p.exists():
        raise InputError(f"{run.path}: its data {p} is gone; the study shows the source images from it")
    wanted = set(sample_ids)
    if run.data_kind == "workspace":
        table = Workspace(p).stage("generate").read_samples()
        if table is None:
            raise InputError(f"{p}: the workspace holds no generated samples")
    else:
        table = load_export(p)
    keep = ("sample_id", "source_image", "source_mask", "prompt", "referring_span", "edit_span", "category",
            "edit_type", "edit_target")
    table = table.select([c for c in keep if c in table.column_names])
    out = {r["sample_id"]: r for r in table.to_pylist() if r["sample_id"] in wanted}
    missing = sorted(wanted - set(out))
    if missing:
        raise InputError(f"{p}: {len(missing)} scored sample(s) are not in the run's data, e.g. {missing[0]}")
    return out
