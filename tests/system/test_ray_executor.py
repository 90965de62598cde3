"""The Ray executor on the session's local Ray instance (2 CPUs, loopback only; see
tests/support/ray_instance.py): the same export as the local executor (rows, bytes per cell, dataset
card), the same quarantine, dynamic dispatch with one factory call per actor, shard errors raised
on the driver as their own type, and no Ray server reachable from the network."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from support.ray_instance import LOOPBACK, listening_sockets, ray_processes  # noqa: E402
from refcoco_edit.build import BuildConfig, ShardTask, build  # noqa: E402
from refcoco_edit.errors import InputError, RunError  # noqa: E402
from refcoco_edit.executors import LOOPBACK_ENV, LocalExecutor, RayExecutor, get_executor  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ray_instance(ray_local):
    """The session's Ray: executors attach to it and leave it running. Test-local factories
    travel by value (workers cannot import tests/)."""
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray_local


def _cfg(demo_dir: Path, out: Path, **kw) -> BuildConfig:
    kw.setdefault("num_images", 6)
    kw.setdefault("shard_size", 3)
    return BuildConfig.of(out=str(out), refcoco=str(demo_dir), images=str(demo_dir / "images"), progress=False, **kw)


def _outputs(workdir: Path):
    """Every export table cell by cell, the dataset card and the quarantine rows."""
    files = sorted((workdir / "export").glob("*.parquet"))
    assert files, f"no export in {workdir}"
    tables = {f.name: pq.read_table(f).to_pylist() for f in files}
    card = (workdir / "export" / "README.md").read_text()
    qfiles = sorted((workdir / "quarantine").glob("*.parquet")) if (workdir / "quarantine").exists() else []
    quarantine = {f.name: pq.read_table(f).to_pylist() for f in qfiles}
    return tables, card, quarantine


def _assert_same(a: Path, b: Path) -> None:
    ta, ca, qa = _outputs(a)
    tb, cb, qb = _outputs(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        assert len(ta[name]) == len(tb[name]), name
        for ra, rb in zip(ta[name], tb[name]):
            assert ra.keys() == rb.keys()
            for col in ra:
                assert ra[col] == rb[col], f"{name}: {ra['sample_id']}: column {col} differs"
    assert ca == cb
    assert qa == qb


@pytest.fixture(scope="module")
def parity(demo_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-parity")
    local = build(_cfg(demo_dir, root / "local"), log=lambda s: None)
    on_ray = build(_cfg(demo_dir, root / "ray", executor="ray", workers=2), log=lambda s: None)
    return local, on_ray


def test_ray_build_equals_local_build_cell_by_cell(parity):
    local, on_ray = parity
    assert local.export["rows"] == on_ray.export["rows"] == 12
    assert on_ray.counts == local.counts and on_ray.quarantine == local.quarantine == {}
    _assert_same(local.workdir, on_ray.workdir)
    # the same shards, each marked done by its stats file
    for stage in ("prompts", "generate"):
        assert sorted(p.name for p in (on_ray.workdir / stage).iterdir()) == \
            sorted(p.name for p in (local.workdir / stage).iterdir())


def test_ray_resume_skips_done_shards(parity, demo_dir):
    _, on_ray = parity
    shards = sorted(on_ray.workdir.glob("*/shard-*.parquet"))
    mtimes = {p: p.stat().st_mtime_ns for p in shards}
    (on_ray.workdir / "generate" / "shard-00001.stats.json").unlink()  # as if killed before its stats
    again = build(_cfg(demo_dir, on_ray.workdir, executor="ray", workers=2), log=lambda s: None)
    assert again.counts == on_ray.counts
    redone = [p for p in shards if p.stat().st_mtime_ns != mtimes[p]]
    assert redone == [on_ray.workdir / "generate" / "shard-00001.parquet"]
    _assert_same(parity[0].workdir, on_ray.workdir)


def test_ray_quarantine_equals_local(parity, demo_dir, tmp_path):
    local, _ = parity
    bad = tmp_path / "demo"
    shutil.copytree(demo_dir, bad)
    victim = sorted(r["source_image"]["path"] for r in load_rows(local.workdir))[0]
    (bad / "images" / Path(victim).name).unlink()
    a = build(_cfg(bad, tmp_path / "local"), log=lambda s: None)
    b = build(_cfg(bad, tmp_path / "ray", executor="ray", workers=2), log=lambda s: None)
    assert a.quarantine and a.quarantine == b.quarantine
    assert a.export["rows"] == b.export["rows"] < local.export["rows"]
    _assert_same(a.workdir, b.workdir)


def load_rows(workdir: Path):
    from refcoco_edit.export import load_export

    return load_export(workdir / "export").to_pylist()


# -- the executor itself ---------------------------------------------------------------------

class _PidShard:
    """A factory: counts its calls per process; the shard function reports pid and call count."""

    calls = 0

    def __call__(self):
        type(self).calls += 1
        n = type(self).calls

        def fn(i: int):
            import time

            time.sleep(0.05 * (i % 3))  # uneven shards: a free actor takes the next one
            return {"shard": i, "pid": os.getpid(), "factory_calls": n}

        return fn


class _Failing:
    def __init__(self, exc_type, bad: int):
        self.exc_type, self.bad = exc_type, bad

    def __call__(self):
        def fn(i: int):
            if i == self.bad:
                raise self.exc_type(f"shard {i}: the LLM server answered 503 three times")
            return {"shard": i}

        return fn


def test_dispatch_returns_stats_in_shard_order_one_factory_call_per_actor():
    ids = [7, 3, 5, 0, 1, 2, 4, 6]
    with RayExecutor(workers=2, progress=False) as ex:
        stats = ex.run(_PidShard(), ids, desc="t")
        assert [s["shard"] for s in stats] == ids
        pids = {s["pid"] for s in stats}
        assert len(pids) == 2 and os.getpid() not in pids
        assert {s["factory_calls"] for s in stats} == {1}  # pipelines stay loaded: one factory call per actor
        # the next stage runs on the same actors (their processes keep what they loaded)
        again = ex.run(_PidShard(), [1, 0], desc="t2")
        assert [s["shard"] for s in again] == [1, 0] and {s["pid"] for s in again} <= pids
        assert {s["factory_calls"] for s in again} == {1}  # the new stage's factory, once per actor
    assert ex._pool == []
    assert ray.is_initialized()  # a Ray started by the caller is left running


@pytest.mark.parametrize("exc_type", [InputError, RunError])
def test_shard_errors_keep_their_type_on_the_driver(exc_type):
    with pytest.raises(exc_type, match="shard 3: the LLM server answered 503") as info:
        RayExecutor(workers=2, progress=False).run(_Failing(exc_type, 3), range(6), desc="prompts")
    assert type(info.value) is exc_type


def test_get_executor_names():
    assert isinstance(get_executor("local"), LocalExecutor)
    ex = get_executor("ray", workers=3, ray_address="auto", num_gpus_per_worker=0.5)
    assert isinstance(ex, RayExecutor) and (ex.workers, ex.address, ex.num_gpus_per_worker) == (3, "auto", 0.5)
    with pytest.raises(InputError, match="did you mean 'ray'"):
        get_executor("raay")
    assert RayExecutor().run(_PidShard(), []) == []


def test_unreachable_ray_address_is_an_input_error():
    import socket

    from refcoco_edit.executors import _check_reachable

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(InputError, match="no Ray head answers there"):
        _check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(InputError, match="expected auto, HOST:PORT"):
        _check_reachable("just-a-host")


def test_shard_task_is_picklable_with_absolute_paths(demo_dir, tmp_path, monkeypatch):
    import pickle

    monkeypatch.chdir(tmp_path)
    task = ShardTask(BuildConfig.of(out="rel-work", refcoco=str(demo_dir)), "generate")
    back = pickle.loads(pickle.dumps(task))
    assert back.cfg.out == str((tmp_path / "rel-work").resolve()) and back.stage == "generate"
    with pytest.raises(ValueError):
        ShardTask(BuildConfig(), "select")


# -- network exposure --------------------------------------------------------------------------

def test_private_ray_listens_on_loopback_only(parity):
    """Every socket the Ray processes listen on (GCS, raylet, agents, the actors that ran the
    build above, the driver's core worker) is bound to 127.0.0.1, not to the machine's address."""
    import psutil

    procs = ray_processes()
    names = set()
    for p in procs:  # a worker may exit while we look
        try:
            names.add(p.name())
        except psutil.NoSuchProcess:
            continue
    assert {"gcs_server", "raylet"} <= names, names
    socks = listening_sockets(procs)
    assert len(socks) >= 4, socks  # GCS, raylet, the driver and the actors listen
    exposed = [s for s in socks if s[2] not in LOOPBACK]
    assert exposed == [], f"Ray listens beyond loopback: {exposed}"


def test_loopback_switch_is_restored_after_start(monkeypatch):
    """The single-machine switch is set only while a private instance starts: a later
    ``ray.init(address=CLUSTER)`` in the same process sees Ray's own default; a value the user
    exported is left alone."""
    from ray._private import ray_constants

    from refcoco_edit.executors import _loopback_only

    monkeypatch.delenv(LOOPBACK_ENV, raising=False)
    before = ray_constants.ENABLE_RAY_CLUSTER
    with _loopback_only(ray):
        assert os.environ[LOOPBACK_ENV] == "0" and ray_constants.ENABLE_RAY_CLUSTER is False
    assert LOOPBACK_ENV not in os.environ and ray_constants.ENABLE_RAY_CLUSTER == before
    monkeypatch.setenv(LOOPBACK_ENV, "1")
    with _loopback_only(ray):
        assert os.environ[LOOPBACK_ENV] == "1" and ray_constants.ENABLE_RAY_CLUSTER == before


_PRIVATE_SCRIPT = r'''
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import psutil
from support.ray_instance import LOOPBACK, listening_sockets
from refcoco_edit.executors import RayExecutor

class Factory:
    def __call__(self):
        return lambda i: {"shard": i, "pid": os.getpid()}

me = psutil.Process()
ex = RayExecutor(workers=2, progress=False)
t = time.perf_counter()
stats = ex.run(Factory(), [0, 1, 2])
procs = [me, *me.children(recursive=True)]
socks = listening_sockets(procs)
names = sorted({p.name() for p in procs[1:]})
import ray
up = ray.is_initialized()
ex.close()
_, alive = psutil.wait_procs(procs[1:], timeout=20)
print(json.dumps({"shards": [s["shard"] for s in stats], "up": up, "down": not ray.is_initialized(),
                  "names": names, "exposed": [s for s in socks if s[2] not in LOOPBACK], "n_socks": len(socks),
                  "alive": [p.pid for p in alive]}))
'''


def test_executor_starts_a_private_loopback_instance_and_shuts_it_down(tmp_path):
    """Without a running Ray (a fresh process, as `refcoco-edit build --executor ray`), the
    executor starts its own instance, loopback only, and ``close()`` leaves no Ray process."""
    import json
    import subprocess

    from conftest import REPO

    script = tmp_path / "private.py"
    script.write_text(_PRIVATE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != LOOPBACK_ENV}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(script), str(REPO / "tests")], capture_output=True, text=True,
                          timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["shards"] == [0, 1, 2] and got["up"] and got["down"]
    assert {"gcs_server", "raylet"} <= set(got["names"]), got["names"]
    assert got["n_socks"] >= 4 and got["exposed"] == [], got
    assert got["alive"] == [], f"Ray processes left after close(): {got['alive']}"
