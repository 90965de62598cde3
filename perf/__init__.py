"""Speed/memory benchmarks of refcoco-edit (not tests): ``python -m perf [--quick] [--only NAME]``.

Each ``perf/bench_*.py`` module has ``run(quick: bool = False) -> dict`` returning at least
``{"name", "baseline_s", "value_s", "ratio"}``, where the baseline is measured in the same run
(these machines are noisy, so only ratios are compared across runs).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

CACHE_DIR = "refcoco-edit-perf"


def cached_input(key: str, make: Callable[[Path], None]) -> Path:
    """``$TMPDIR/refcoco-edit-perf/KEY``, made on first use by ``make(folder)``: into a temp folder,
    marked ``DONE`` and renamed, so a killed or concurrent run never leaves a half input that a
    later run would take (a ``make`` that raises leaves no temp folder either). Benchmarks
    regenerate nothing once it exists (bump the key instead)."""
    base = Path(tempfile.gettempdir()) / CACHE_DIR
    root = base / key
    if (root / "DONE").exists():
        return root
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=key + ".tmp-", dir=base))
    try:
        make(tmp)
    except BaseException:  # a failed or interrupted build leaves nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / "DONE").write_text("ok\n")
    try:
        tmp.rename(root)
    except OSError:  # another run made it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return root
