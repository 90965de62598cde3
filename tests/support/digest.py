"""Content digests of a demo export and of score runs: what "outputs unchanged" means, as numbers.

Images are hashed as decoded pixels (mode, size, bytes) and masks as decoded arrays, so a change
of PNG compression or of the RLE string of an identical mask does not move a digest, while one
changed pixel, span, id or prompt does. Floats are rounded to 12 significant digits. Each column
has its own digest, so a failing test names the column that drifted.

    python tests/support/digest.py export WORKDIR/export      # print the per-column digests
    python tests/support/digest.py samples RESULTS/samples.parquet
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List

# score columns that measure time or locate files, not what the editor or the metrics produced
SAMPLES_VOLATILE = {"output", "seconds", "edit_seconds"}


def _image_key(struct: Dict[str, Any]) -> Any:
    from PIL import Image

    import numpy as np

    if struct.get("bytes") is None:
        return {"path": struct.get("path"), "pixels": None}
    with Image.open(io.BytesIO(struct["bytes"])) as im:
        im.load()
        arr = np.asarray(im)
        mode = im.mode
    return {"path": struct.get("path"), "mode": mode, "shape": list(arr.shape),
            "pixels": hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()}


def _mask_key(rle: Dict[str, Any]) -> Any:
    import numpy as np
    from pycocotools import mask as mask_utils

    m = mask_utils.decode({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")})
    return {"size": list(rle["size"]), "pixels": hashlib.sha256(np.ascontiguousarray(m).tobytes()).hexdigest()}


def canonical(value: Any) -> Any:
    """A JSON-able form of one cell: images and masks as pixel hashes, floats rounded."""
    if isinstance(value, dict):
        if set(value) == {"bytes", "path"}:
            return _image_key(value)
        if set(value) == {"size", "counts"} and isinstance(value.get("counts"), str):
            return _mask_key(value)
        return {k: canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return canonical(value.tolist())
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return float(f"{value:.12g}")
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()
    return value


def _digest(values: List[Any]) -> str:
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def table_digest(rows: List[Dict[str, Any]], skip: frozenset = frozenset()) -> Dict[str, str]:
    """Per-column digests of rows sorted by (split, sample_id), plus ``__rows__`` (the count) and
    ``__all__`` (a digest of every column's digest)."""
    rows = sorted(rows, key=lambda r: (str(r.get("split")), str(r["sample_id"])))
    columns = sorted({k for r in rows for k in r} - set(skip))
    out = {c: _digest([canonical(r.get(c)) for r in rows]) for c in columns}
    out["__rows__"] = str(len(rows))
    out["__all__"] = _digest(sorted(out.items()))
    return out


def export_digest(export_dir: Path) -> Dict[str, str]:
    """Digests of every row of the Parquet files of an export folder."""
    import pyarrow.parquet as pq

    rows: List[Dict[str, Any]] = []
    for f in sorted(Path(export_dir).glob("*.parquet")):
        rows.extend(pq.read_table(f).to_pylist())
    return table_digest(rows)


def samples_digest(path: Path) -> Dict[str, str]:
    """Digests of a score run's samples.parquet (timings and output paths left out)."""
    import pyarrow.parquet as pq

    return table_digest(pq.read_table(path).to_pylist(), skip=frozenset(SAMPLES_VOLATILE))


if __name__ == "__main__":
    kind, path = sys.argv[1], Path(sys.argv[2])
    d = export_digest(path) if kind == "export" else samples_digest(path)
    print(json.dumps(d, indent=4, sort_keys=True))
