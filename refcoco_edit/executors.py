"""Executors run "process shard i" functions.

A shard function does all of a shard's work, writes its outputs through the workspace
(atomically, stats last) and returns the shard's stats dict. Executors only decide *where* those
calls run; outputs are identical whichever runs them, because every random choice comes from
(seed, sample_id).

* ``local`` (default): in this process, one shard after the other (``workers=1``), or in a pool
  of worker processes (``workers>1``; each worker sets up its own state once).
* ``ray``: on a Ray cluster (or a private local Ray instance, listening on 127.0.0.1 only):
  ``workers`` actors, each building its shard function once (pipelines stay loaded), fed one
  shard at a time from a work queue. The factory must be picklable
  (``refcoco_edit.stages.workers.ShardTask``); the workspace, the data and the images must be on storage
  every node sees under the same path.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

from .registry import Registry

ShardFn = Callable[[int], Dict[str, Any]]

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

    def close(self) -> None:
        """Nothing to release (the pool lives for one ``run``); here for a common interface."""

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _ShardActor:
    """A Ray actor: builds its shard function once per stage (on the stage's first shard) and runs
    shards with it. What the factory loads may be cached in the actor's process across stages
    (``refcoco_edit.stages.workers.ShardTask`` keeps its BuildContext, hence its pipelines).

    The factory is called lazily, inside a method call, so an error while building it (a model
    that cannot be loaded) reaches the driver as that error, not as a dead actor."""

    def __init__(self) -> None:
        self._factory: Optional[Callable[[], ShardFn]] = None
        self._fn: Optional[ShardFn] = None

    def use(self, factory: Callable[[], ShardFn]) -> None:
        self._factory, self._fn = factory, None

    def run_shard(self, i: int) -> Dict[str, Any]:
        if self._fn is None:
            assert self._factory is not None, "use(factory) first"
            self._fn = self._factory()
            self._factory = None
        return self._fn(i)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        from .errors import InputError

        raise InputError("--executor ray needs Ray: pip install 'refcoco-edit[ray]'") from None
    return ray


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """``HOST:PORT`` of a Ray head accepts TCP connections, else ``InputError``."""
    import socket

    from .errors import InputError

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray-address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise InputError(f"--ray-address {address}: no Ray head answers there ({e}); start one with "
                         "`ray start --head --port=6379`, or leave --ray-address out for a local instance") from None


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _ray_init_kwargs() -> Dict[str, Any]:
    import logging

    return dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, namespace="refcoco-edit")


@contextlib.contextmanager
def _loopback_only(ray: Any) -> Iterator[None]:
    """While Ray starts a local instance: make it listen on 127.0.0.1 only.

    Ray (2.x on Linux) replaces a loopback ``_node_ip_address`` by the machine's network address
    (``services.resolve_ip_for_localhost``), so its servers are reachable from the network. Its
    single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the default on Windows/macOS)
    keeps 127.0.0.1. That switch is read when ``ray`` is imported (the driver) and from the
    environment by every process Ray spawns (GCS, raylet, workers, agents), so both are set here
    for the start and restored afterwards (the spawned processes keep their copy): a later
    ``ray.init(address=CLUSTER)`` in this process is unaffected. A value the user set in the
    environment is respected."""
    if LOOPBACK_ENV in os.environ:
        yield
        return
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    had = hasattr(constants, "ENABLE_RAY_CLUSTER")
    old = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[LOOPBACK_ENV] = "0"
    if had:
        constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        os.environ.pop(LOOPBACK_ENV, None)
        if had:
            constants.ENABLE_RAY_CLUSTER = old


def init_private_ray(num_cpus: int, object_store_memory: int = 200 * 1024 * 1024, ray: Any = None,
                     **kwargs: Any) -> None:
    """Start a private local Ray instance in this process (``address="local"``: even when a
    cluster runs on this machine) with ``num_cpus`` CPUs, no dashboard, listening on 127.0.0.1
    only (``_loopback_only``). Extra ``kwargs`` go to ``ray.init``."""
    ray = ray if ray is not None else _import_ray()
    kw = {**_ray_init_kwargs(), **kwargs}
    with _loopback_only(ray):
        ray.init(address="local", num_cpus=int(num_cpus), _node_ip_address="127.0.0.1",
                 object_store_memory=int(object_store_memory), **kw)


class RayExecutor:
    """Run shard functions on Ray actors (``workers`` of them, ``num_gpus_per_worker`` GPUs each).

    Ray is started lazily on the first ``run``: attached to ``address`` (``auto``, ``HOST:6379``,
    ``ray://...``) when given, else a private local instance with ``workers`` CPUs
    (``init_private_ray``: no dashboard, every Ray server listening on 127.0.0.1 only, so not
    reachable from the network; Ray's token authentication, on by default for local instances
    since Ray 2.59, still guards it against other users of the machine). A Ray already
    initialised in this process (``ray.init`` by the caller) is used as it is and left running.
    ``run`` dispatches shard ids dynamically to the actors (one shard in flight per actor; a free
    actor takes the next shard). The actors live from the first ``run`` to ``close()`` (or the end
    of a ``with`` block), so the stages of a build share them.
    """

    name = "ray"

    def __init__(self, workers: int = 1, address: Optional[str] = None, num_gpus_per_worker: float = 0.0,
                 progress: Optional[bool] = None):
        from .errors import InputError

        self.workers = max(1, int(workers))
        self.address = address or None
        self.num_gpus_per_worker = float(num_gpus_per_worker or 0.0)
        if self.num_gpus_per_worker < 0:
            raise InputError(f"--num-gpus-per-worker must be >= 0, got {num_gpus_per_worker}")
        self.progress = progress
        self._pool: List[Any] = []
        self._ray_started: Optional[bool] = None  # None: Ray not touched yet

    def _start(self, ray: Any) -> bool:
        """Initialise Ray unless it already is. Returns True when this call started it."""
        from .errors import InputError

        if ray.is_initialized():
            return False
        if self.address and self.address != "auto" and "://" not in self.address:
            _check_reachable(self.address)  # ray.init would retry an unreachable GCS for minutes
        try:
            if self.address:
                ray.init(address=self.address, **_ray_init_kwargs())
            else:
                init_private_ray(self.workers, ray=ray)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"at {self.address}" if self.address else "(a local instance)"
            raise InputError(f"cannot start or reach Ray {where}: {e}") from None
        return True

    def start(self) -> None:
        """Start (or attach to) Ray now rather than on the first ``run`` (to time it apart)."""
        if self._ray_started is None:
            self._ray_started = self._start(_import_ray())

    def _actors(self, ray: Any, n: int) -> List[Any]:
        """``n`` actors, reusing those of earlier runs (their processes keep what they loaded)."""
        if self._ray_started is None:
            self._ray_started = self._start(ray)
        if len(self._pool) < n:
            actor_cls = ray.remote(_ShardActor).options(num_cpus=1, num_gpus=self.num_gpus_per_worker,
                                                        max_restarts=0, max_task_retries=0)
            self._pool.extend(actor_cls.remote() for _ in range(n - len(self._pool)))
        return self._pool[:n]

    def run(self, factory: Callable[[], ShardFn], shard_ids: Sequence[int], desc: str = "") -> List[Dict[str, Any]]:
        """Run ``factory()``'s shard function over ``shard_ids`` on Ray actors. Returns the stats
        of each shard, in shard order. An ``InputError`` / ``RunError`` (or any other error)
        raised by a shard function is raised here as the same exception, after ``close()``.
        The actors stay up for the next ``run`` until ``close()``."""
        from .errors import RunError

        ids = list(shard_ids)
        if not ids:
            return []
        ray = _import_ray()
        bar = _progress(len(ids), desc, self.progress)
        ok = False
        try:
            actors = self._actors(ray, min(self.workers, len(ids)))
            for a in actors:
                a.use.remote(factory)  # an actor runs its calls in order: before any shard below
            queue = list(reversed(ids))  # pop() takes the lowest shard first
            idle = list(reversed(actors))
            in_flight: Dict[Any, Any] = {}  # future -> (actor, shard id)
            results: Dict[int, Dict[str, Any]] = {}
            while queue or in_flight:
                while queue and idle:
                    actor, i = idle.pop(), queue.pop()
                    in_flight[actor.run_shard.remote(i)] = (actor, i)
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for fut in done:
                    actor, i = in_flight.pop(fut)
                    try:
                        results[i] = ray.get(fut)
                    except ray.exceptions.RayTaskError as e:
                        cause = getattr(e, "cause", None)
                        if isinstance(cause, BaseException):
                            raise cause from None  # the shard function's own error, same type and message
                        raise RunError(f"{desc or 'stage'} shard {i} failed on a Ray worker: {e}") from None
                    except ray.exceptions.RayActorError as e:
                        first = str(e).splitlines()[0] if str(e) else ""
                        raise RunError(f"the Ray worker running {desc or 'stage'} shard {i} died "
                                       f"({type(e).__name__}: {first}); finished shards are kept, "
                                       "run the same command again to resume") from None
                    idle.append(actor)
                    bar.update(1)
            ok = True
            return [results[i] for i in ids]
        finally:
            bar.close()
            if not ok:  # stop the other shards in flight: their temp files are cleaned up on resume
                self.close()

    def close(self) -> None:
        """Kill the actors, and shut Ray down if this executor started it."""
        pool, self._pool = self._pool, []
        if not pool and not self._ray_started:
            return
        import ray

        for a in pool:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - best effort: the actor may be gone already
                pass
        if self._ray_started:
            ray.shutdown()
        self._ray_started = None

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


Executor = Union[LocalExecutor, RayExecutor]


def _local(workers: int = 1, progress: Optional[bool] = None, **_: Any) -> LocalExecutor:
    return LocalExecutor(workers=workers, progress=progress)


def _ray(workers: int = 1, progress: Optional[bool] = None, ray_address: Optional[str] = None,
         num_gpus_per_worker: float = 0.0, **_: Any) -> RayExecutor:
    return RayExecutor(workers=workers, address=ray_address, num_gpus_per_worker=num_gpus_per_worker, progress=progress)


# name -> factory taking (workers, progress, ray_address, num_gpus_per_worker, ...) keywords; plug-ins
# register theirs in the ``refcoco_edit.executors`` entry point group
EXECUTORS: Registry[Callable[..., Any]] = Registry("executor", {"local": _local, "ray": _ray},
                                                   entry_point_group="refcoco_edit.executors")


def get_executor(name: str, workers: int = 1, progress: Optional[bool] = None, *, ray_address: Optional[str] = None,
                 num_gpus_per_worker: float = 0.0, **kwargs: Any) -> Executor:
    """The executor registered as ``name`` (``UnknownNameError``, an ``InputError``, for a typo)."""
    return EXECUTORS.get(name)(workers=workers, progress=progress, ray_address=ray_address,
                               num_gpus_per_worker=num_gpus_per_worker, **kwargs)
