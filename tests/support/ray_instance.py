"""One local Ray instance for the whole test session (its start costs seconds), shared by the Ray
test modules through the ``ray_local`` fixture (imported into conftest.py).

It is started exactly as ``RayExecutor`` starts a private instance (``init_private_ray``: 2 CPUs,
every server on 127.0.0.1 only); executors then find Ray initialised, attach to it and leave it
running. Shut down at the end of the session, with every process it spawned."""
from __future__ import annotations

import os
import sys
from typing import Any, Iterator, List

import pytest

LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


_ROOTS: List[Any] = []  # the processes ray.init spawned (GCS, raylet, ...)


def ray_processes(driver: bool = True) -> List[Any]:
    """The live processes of the session's Ray instance: those ``ray.init`` spawned and their
    descendants (agents, workers), and with ``driver`` this process (its core worker listens)."""
    import psutil

    procs = [psutil.Process(os.getpid())] if driver else []
    for root in _ROOTS:
        try:
            if root.is_running():
                procs.extend([root, *root.children(recursive=True)])
        except psutil.NoSuchProcess:
            continue
    return procs


def listening_sockets(procs: List[Any]) -> List[tuple]:
    """(process name, pid, ip, port) of every TCP/UDP socket these processes listen on."""
    import psutil

    out = []
    for p in procs:
        try:
            conns = p.net_connections(kind="inet")
            name = p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN or (c.type == 2 and not c.raddr):  # TCP LISTEN, bound UDP
                out.append((name, p.pid, c.laddr.ip, c.laddr.port))
    return out


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """The ``ray`` module with a local 2-CPU instance running (loopback only)."""
    ray = pytest.importorskip("ray")
    from refcoco_edit.executors import init_private_ray

    import psutil

    started = not ray.is_initialized()
    if started:
        me = psutil.Process(os.getpid())
        before = {p.pid for p in me.children()}
        init_private_ray(2, object_store_memory=100 * 1024 * 1024, ray=ray)
        _ROOTS[:] = [p for p in me.children() if p.pid not in before]
    yield ray
    if started:
        procs = ray_processes(driver=False)
        ray.shutdown()
        # workers that loaded torch can take a minute to notice their raylet is gone: after a
        # short grace period, end them (they belong to this session's instance only)
        _gone, alive = psutil.wait_procs(procs, timeout=3)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        _gone, alive = psutil.wait_procs(alive, timeout=5)
        for p in alive:
            print(f"ray_local: process {p.pid} survived SIGKILL", file=sys.stderr)
        _ROOTS.clear()
