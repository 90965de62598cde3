"""Executors run "process shard i" functions.

A shard function does all of a shard's work, writes its outputs through the workspace
(atomically, stats last) and returns the shard's stats dict. Executors only decide *where* those
calls run; outputs are identical whichever runs them, because every random choice comes from
(seed, sample_id).

* ``local`` (default): in this process, one shard after the other (``workers=1``), or in a pool
  of worker processes (``workers>1``; each worker sets up its own state once).
* ``ray``: arrives with the scale-out issue; named here so the CLI can say so clearly.
"""
from __future__ import annotations

import difflib
import signal
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

ShardFn = Callable[[int], Dict[str, Any]]

EXECUTORS = ("local", "ray")


def _progress(total: int, desc: str, enabled: Optional[bool]):
    from tqdm.auto import tqdm

    # disable=None: bars on a terminal, silent in logs and CI
    return tqdm(total=total, desc=desc, unit="shard", disable=None if enabled is None else not enabled, leave=False)


_WORKER_FN: Optional[ShardFn] = None


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when its parent dies, so a killed build leaves
    no orphan still writing shards while the next run resumes."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _init_worker(factory: Callable[[], ShardFn]) -> None:
    global _WORKER_FN
    _die_with_parent()
    _WORKER_FN = factory()


def _call_worker(i: int) -> Dict[str, Any]:
    assert _WORKER_FN is not None
    return _WORKER_FN(i)


class LocalExecutor:
    """Run shard functions in this process (or a local process pool when workers > 1)."""

    name = "local"

    def __init__(self, workers: int = 1, progress: Optional[bool] = None):
        self.workers = max(1, int(workers))
        self.progress = progress

    def run(self, factory: Callable[[], ShardFn], shard_ids: Sequence[int], desc: str = "") -> List[Dict[str, Any]]:
        """Build the shard function with ``factory()`` (once per process) and run it over
        ``shard_ids``. Returns the stats of each shard, in shard order."""
        ids = list(shard_ids)
        if not ids:
            return []
        results: Dict[int, Dict[str, Any]] = {}
        bar = _progress(len(ids), desc, self.progress)
        try:
            if self.workers == 1 or len(ids) == 1:
                fn = factory()
                for i in ids:
                    results[i] = fn(i)
                    bar.update(1)
            else:
                import multiprocessing as mp

                ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
                with ctx.Pool(min(self.workers, len(ids)), initializer=_init_worker, initargs=(factory,)) as pool:
                    for i, stats in zip(ids, pool.imap(_call_worker, ids)):
                        results[i] = stats
                        bar.update(1)
        finally:
            bar.close()
        return [results[i] for i in ids]


def get_executor(name: str, workers: int = 1, progress: Optional[bool] = None, **kwargs: Any) -> LocalExecutor:
    if name == "local":
        return LocalExecutor(workers=workers, progress=progress)
    if name == "ray":
        from .errors import InputError

        raise InputError("--executor ray is not available in this version yet; use --executor local")
    close = difflib.get_close_matches(name, EXECUTORS, n=1)
    from .errors import InputError

    raise InputError(f"unknown executor {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
