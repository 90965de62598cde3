"""Fault injection, every stage: SIGKILL at seeded random moments, and a full disk.

* ``refcoco-edit score``, ``review pull`` (a real Label Studio, tests/support/labelstudio.py) and ``train``
  (a tiny ReferDiffusion) run as real CLI subprocesses and are killed with SIGKILL at seeded
  random moments spread over the phases of an uninterrupted run, timed first: score in its
  start-up, after a seeded number of outputs, and in the report; pull in its start-up, while its
  export snapshot exists on the server, and after it is deleted; train after a seeded number of
  logged steps (+ a seeded part of a step). A phase is recognised by its progress (files, the
  server), not by the clock alone: these machines are busy and a run's length varies by a factor
  of two. Each is re-run; the outputs must equal the
  uninterrupted run's (score: results.json, samples.parquet, report.md, gallery.html and every
  output PNG byte for byte; pull: reviews.parquet byte for byte; train: the logged losses, the
  checkpoints' step list and the final weights), with no sample lost or duplicated and no temp
  file left that a reader could take as done. (The build's own kill test is test_kill_resume.py.)
* A full disk in build, export, score, review pull and train: the n-th write of the process
  (seeded) fails with ``OSError(ENOSPC)`` after half its bytes reached the temp file (train: a
  ``torch.save`` of a checkpoint), through ``refcoco_edit.cli.main`` in this process. The command
  must stop with exit 1 and one line on stderr naming the disk and the file and saying that
  re-running resumes (no traceback); the next run, disk fixed, must produce what an
  uninterrupted run produces. A full disk met inside one sample's work (a pipeline's or an
  editor's own write) must stop the run too, not quarantine / fail that sample for good.

How many kills landed mid-way per stage is printed (``-s``) and asserted to be at least one.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import pyarrow.parquet as pq
import pytest

from conftest import REPO, nan_eq  # (conftest also gives the session's Label Studio server: label_studio)

SEED = 803  # issue #8, item 3
BUILD_ARGS = ("--num-images", "6", "--shard-size", "3", "--no-progress")
FIGURES: Dict[str, Any] = {}


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def _env(*extra_paths: Path, **extra: str) -> Dict[str, str]:
    paths = [str(p) for p in extra_paths] + [str(REPO), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    env.update(extra)
    return env


def _popen(argv: Sequence[str], env: Dict[str, str], cwd: Path) -> subprocess.Popen:
    """`refcoco-edit ARGV` as a real process (the console script's module)."""
    return subprocess.Popen([sys.executable, "-m", "refcoco_edit", *argv], env=env, cwd=str(cwd),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _run_to_end(argv: Sequence[str], env: Dict[str, str], cwd: Path, timeout: float = 300) -> float:
    t0 = time.monotonic()
    proc = _popen(argv, env, cwd)
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode(errors="replace")
    return time.monotonic() - t0


def _moments(rng: random.Random, n: int, lo: float, hi: float) -> List[float]:
    """``n`` seeded random moments in [lo, hi), one in each of ``n`` equal slices (shuffled)."""
    w = (hi - lo) / n
    out = [lo + (k + rng.random()) * w for k in range(n)]
    rng.shuffle(out)
    return out


def _kill_after(proc: subprocess.Popen, delay: float, when: Callable[[], bool] = lambda: True,
                timeout: float = 120, poll: float = 0.005) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after ``when()`` first holds (polled every ``poll`` s);
    True when it was still running then (a real kill). Progress conditions make the moments land
    in the phase meant on these busy machines, where a run's length varies by a factor of two."""
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout and not when():
        time.sleep(poll)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
    alive = proc.poll() is None
    if alive:
        proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return alive


def cli(argv: Sequence[str]) -> tuple:
    """`refcoco-edit ARGV` through refcoco_edit.cli.main in this process: (code, stdout, stderr)."""
    from refcoco_edit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _leftovers(root: Path) -> List[Path]:
    """Temp files / folders of interrupted writes anywhere under ``root``."""
    return sorted(p for p in root.rglob("*") if ".tmp" in p.name or ".old" in p.name)


class DiskFull:
    """The ``fail_at``-th atomic write of this process (among those whose path ``only`` accepts)
    fails like a full disk: half of its bytes reach the temp file, then ``OSError(ENOSPC)`` (no
    file name, as ``f.write`` raises it). ``fail_at=None`` only counts the writes (``calls``)."""

    def __init__(self, monkeypatch: Any, fail_at: Optional[int] = None,
                 only: Callable[[Path], bool] = lambda p: True):
        import refcoco_edit.workspace as ws

        self.calls, self.fail_at, self.failed_path = 0, fail_at, None
        self._lock = threading.Lock()
        original = ws.atomic_write

        def atomic_write(path: Path, writer: Callable[[str], None]) -> None:
            if not only(Path(path)):
                return original(path, writer)
            with self._lock:
                self.calls += 1
                hit = self.calls == self.fail_at
            if not hit:
                return original(path, writer)
            self.failed_path = Path(path)

            def full(tmp: str) -> None:
                writer(tmp)
                size = os.path.getsize(tmp)
                with open(tmp, "r+b") as f:
                    f.truncate(size // 2)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            return original(path, full)

        monkeypatch.setattr(ws, "atomic_write", atomic_write)

        # an export's Parquet files are streamed, not written at once: the same count, and the
        # hit file's sink fills up after its first 64 KiB
        import refcoco_edit.export_writer as ew

        original_sink = ew.open_sink

        def open_sink(path: Path) -> Any:
            f = original_sink(path)
            if not only(Path(path)):
                return f
            with self._lock:
                self.calls += 1
                hit = self.calls == self.fail_at
            if not hit:
                return f
            self.failed_path = Path(path)
            return _FullSink(f)

        monkeypatch.setattr(ew, "open_sink", open_sink)


class _FullSink(io.RawIOBase):
    """A file that takes 64 KiB, then raises ``OSError(ENOSPC)`` as a full disk does."""

    def __init__(self, f: Any, room: int = 64 * 1024) -> None:
        self.f, self.room = f, room

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if len(b) > self.room:
            self.f.write(bytes(b)[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)

    def close(self) -> None:
        self.f.close()
        super().close()


def _messages(err: str) -> List[str]:
    """The lines of stderr, progress bars (tqdm: carriage returns, ``NN%|``) left out."""
    import re

    parts = re.split(r"[\r\n]", err)
    return [p for p in parts if p.strip() and not re.search(r"\d+%\|", p)]


def _assert_disk_full_message(code: int, out: str, err: str, path: Path) -> None:
    assert code == 1, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = _messages(err)
    assert len(lines) == 1, err  # one line
    low = lines[0].lower()
    assert "no space left on device" in low and "disk is full" in low, err
    assert str(path) in err, (path, err)
    assert "re-run" in low and "resume" in low, err


def _report(stage: str, **figures: Any) -> None:
    FIGURES[stage] = figures
    print(f"\nfault injection [{stage}]: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# ----------------------------------------------------------------------------------------------
# shared inputs
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(demo_dir, tmp_path_factory, request) -> Dict[str, Any]:
    """An uninterrupted build (12 samples in 4 shards) through the CLI main, counting its writes."""
    mp = pytest.MonkeyPatch()
    request.addfinalizer(mp.undo)
    counter = DiskFull(mp)
    wd = tmp_path_factory.mktemp("fi-build") / "work"
    code, out, err = cli(["build", "--out", str(wd), "--refcoco", str(demo_dir), "--images",
                          str(demo_dir / "images"), *BUILD_ARGS])
    mp.undo()
    assert code == 0, err
    return {"workdir": wd, "export": wd / "export", "writes": counter.calls}


def _export_files(d: Path) -> Dict[str, Any]:
    """Every file of an export folder: Parquet as rows (cells compared), the rest as bytes."""
    out: Dict[str, Any] = {}
    for p in sorted(d.iterdir()):
        out[p.name] = pq.read_table(p).to_pylist() if p.suffix == ".parquet" else p.read_bytes()
    return out


# ----------------------------------------------------------------------------------------------
# score
# ----------------------------------------------------------------------------------------------

SLOW_EDITOR = textwrap.dedent("""
    import os, time
    import numpy as np
    from refcoco_edit.benchmark.editors import Editor

    FULL_AT = None  # the test sets it: that call's scratch write finds the disk full
    CALLS = []

    class SlowFlip(Editor):
        '''Flips the photo upside down (a real change to score), slowly in killed runs.'''
        name = "slow-flip"
        batch_size = 1

        def edit(self, images, prompts, seeds, extras):
            CALLS.append(1)
            if len(CALLS) == FULL_AT:
                import errno
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/scratch/slow-flip.tmp")
            time.sleep(float(os.environ.get("FI_EDIT_SLEEP", "0")))
            return [np.array(img[::-1], copy=True) for img in images]
""")


@pytest.fixture(scope="module")
def score_setup(built, tmp_path_factory) -> Dict[str, Any]:
    """The editor module and an uninterrupted `refcoco-edit score` (a real process, timed)."""
    root = tmp_path_factory.mktemp("fi-score")
    (root / "fi_slow_editor.py").write_text(SLOW_EDITOR)
    env = _env(root, FI_EDIT_SLEEP="0.05")
    clean = root / "clean"
    argv = ["score", "--model", "fi_slow_editor:SlowFlip", "--data", str(built["export"]), "--no-plots",
            "--bootstrap", "200"]
    t0 = time.time()
    seconds = _run_to_end([*argv, "--out", str(clean)], env, root)
    marks = sorted(p.stat().st_mtime - t0 for p in (clean / "outputs").glob("*.json"))
    # the phases of the run, from its files' times: start-up (imports, data, editor), editing, report
    return {"root": root, "env": env, "argv": argv, "clean": clean, "seconds": seconds,
            "first_output": marks[0], "last_output": marks[-1]}


def _score_outputs(out: Path) -> Dict[str, Any]:
    rows = pq.read_table(out / "samples.parquet").to_pylist()
    ids = [r["sample_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a sample is duplicated in samples.parquet"
    pngs = {p.name: p.read_bytes() for p in sorted((out / "outputs").glob("*.png"))}
    return {"rows": rows, "ids": ids, "pngs": pngs,
            "files": {n: (out / n).read_bytes() for n in ("results.json", "report.md", "gallery.html")}}


def _assert_same_score(got: Path, want: Path, what: str) -> None:
    g, w = _score_outputs(got), _score_outputs(want)
    assert g["ids"] == w["ids"], f"{what}: lost or extra samples"
    assert nan_eq(g["rows"], w["rows"]), f"{what}: samples.parquet differs"
    assert g["pngs"].keys() == w["pngs"].keys(), f"{what}: output PNGs lost or extra"
    for name in w["pngs"]:
        assert g["pngs"][name] == w["pngs"][name], f"{what}: {name} differs"
    for name in w["files"]:  # results.json holds no timing (that is timing.json)
        assert g["files"][name] == w["files"][name], f"{what}: {name} differs"
    assert not _leftovers(got), _leftovers(got)


def test_score_sigkill_at_random_moments_then_resume(score_setup, monkeypatch):
    s = score_setup
    monkeypatch.syspath_prepend(str(s["root"]))
    rng = random.Random(SEED)
    n_ids = len(_score_outputs(s["clean"])["ids"])
    landed = mid_edit = 0
    first, last, end = s["first_output"], s["last_output"], s["seconds"]
    per_sample = (last - first) / (n_ids - 1)
    # four moments: one in the start-up (seconds after the start), two while samples are edited
    # (after a seeded number of outputs, plus a seeded part of a sample's time), one while the
    # report is written (seconds after the last output)
    n_done = lambda out: len(list((out / "outputs").glob("*.json"))) if (out / "outputs").exists() else 0  # noqa: E731
    moments = [("start-up", 0, _moments(rng, 1, 0.2 * first, 0.9 * first)[0])]
    # (the harness writes a chunk's outputs together once it is edited: the window is that burst)
    moments += [("editing", j, rng.uniform(0, per_sample)) for j in sorted(rng.sample(range(1, n_ids - 3), 2))]
    moments += [("report", n_ids, _moments(rng, 1, 0.0, 0.8 * (end - last))[0])]
    for k, (phase, after, delay) in enumerate(moments):
        out = s["root"] / f"killed-{k}"
        proc = _popen([*s["argv"], "--out", str(out)], s["env"], s["root"])
        alive = _kill_after(proc, delay, lambda: n_done(out) >= after, poll=0.001)
        landed += alive
        done = len(list((out / "outputs").glob("*.json"))) if (out / "outputs").exists() else 0
        if alive and 0 < done < n_ids:
            mid_edit += 1
        if (out / "results.json").exists():  # written last: a complete run only
            assert done == n_ids
        code, _, err = cli([*s["argv"], "--out", str(out)])  # the same command again
        assert code == 0, err
        timing = json.loads((out / "timing.json").read_text())
        assert timing["outputs_reused"] + timing["outputs_edited"] == n_ids
        assert timing["outputs_reused"] >= done - 1  # at most the sample in flight is redone
        _assert_same_score(out, s["clean"], f"kill {k} ({phase}, {after} outputs + {delay:.2f}s)")
    _report("score sigkill", kills=len(moments), landed_while_running=landed, landed_mid_editing=mid_edit,
            clean_run_s=round(end, 2), editing_s=f"{first:.2f}-{last:.2f}",
            moments=[(p, a, round(d, 2)) for p, a, d in moments])
    assert landed >= 3 and mid_edit >= 1, (landed, mid_edit)


def test_score_disk_full_then_resume(score_setup, monkeypatch):
    s = score_setup
    monkeypatch.syspath_prepend(str(s["root"]))
    out = s["root"] / "disk-full"
    counter = DiskFull(monkeypatch)
    code, _, err = cli([*s["argv"], "--out", str(s["root"] / "count")])
    assert code == 0, err
    fail_at = random.Random(SEED + 1).randint(2, counter.calls - 1)  # not the run.json manifest
    faulty = DiskFull(monkeypatch, fail_at)
    code, stdout, err = cli([*s["argv"], "--out", str(out)])
    _assert_disk_full_message(code, stdout, err, faulty.failed_path)
    assert not _leftovers(out), _leftovers(out)
    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(s["root"]))
    code, _, err = cli([*s["argv"], "--out", str(out)])
    assert code == 0, err
    _assert_same_score(out, s["clean"], f"disk full at write {fail_at} of {counter.calls}")
    _report("score disk full", failed_write=f"{fail_at}/{counter.calls}", path=faulty.failed_path.name)


def test_score_disk_full_inside_the_editor_stops_instead_of_failing_the_sample(score_setup, monkeypatch):
    """An editor whose own write hits a full disk: the sample is not cached as failed (a failed
    sample is never edited again without --retry-failed); the run stops and the re-run edits it."""
    s = score_setup
    monkeypatch.syspath_prepend(str(s["root"]))
    import fi_slow_editor

    out = s["root"] / "editor-disk-full"
    monkeypatch.setattr(fi_slow_editor, "FULL_AT", len(fi_slow_editor.CALLS) + 5)
    code, stdout, err = cli([*s["argv"], "--out", str(out)])
    _assert_disk_full_message(code, stdout, err, Path("/scratch/slow-flip.tmp"))
    failed = [p.name for p in (out / "outputs").glob("*.json") if json.loads(p.read_text())["status"] != "ok"]
    assert not failed, failed
    monkeypatch.setattr(fi_slow_editor, "FULL_AT", None)
    code, _, err = cli([*s["argv"], "--out", str(out)])
    assert code == 0, err
    _assert_same_score(out, s["clean"], "disk full inside the editor")


# ----------------------------------------------------------------------------------------------
# build and export: a full disk
# ----------------------------------------------------------------------------------------------

def test_build_disk_full_then_resume(built, demo_dir, tmp_path, monkeypatch):
    wd = tmp_path / "work"
    argv = ["build", "--out", str(wd), "--refcoco", str(demo_dir), "--images", str(demo_dir / "images"), *BUILD_ARGS]
    rng = random.Random(SEED + 2)
    n = built["writes"]
    in_export = lambda p: p.parent.name.startswith(".export.tmp-")  # noqa: E731
    # a write inside the stages (select/prompts/generate shards, stats, quarantine), then one of
    # the final export's files (in the resumed run)
    faults = [(rng.randint(2, n - 4), lambda p: True), (rng.randint(1, 2), in_export)]
    for fail_at, only in faults:
        monkeypatch.undo()
        faulty = DiskFull(monkeypatch, fail_at, only)
        code, out, err = cli(argv)
        _assert_disk_full_message(code, out, err, faulty.failed_path)
        assert not _leftovers(wd), _leftovers(wd)
        if (wd / "export").exists():  # the previous export stays whole (or there is none)
            _export_files(wd / "export")
    monkeypatch.undo()
    code, out, err = cli(argv)
    assert code == 0, err
    got, want = _export_files(wd / "export"), _export_files(built["export"])
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == want[name], f"{name} differs after a full disk"
    assert not _leftovers(wd), _leftovers(wd)
    _report("build disk full", writes=n, failed_writes=[f for f, _ in faults])


def test_build_disk_full_in_a_worker_process_then_resume(built, demo_dir, tmp_path, monkeypatch):
    """--workers 2: the full disk is met in a forked worker (its copy of the patched write); the
    error crosses the process pool with its errno and file name, and the message is the same."""
    wd = tmp_path / "work"
    argv = ["build", "--out", str(wd), "--refcoco", str(demo_dir), "--images", str(demo_dir / "images"), *BUILD_ARGS,
            "--workers", "2"]
    faulty = DiskFull(monkeypatch, 2, lambda p: p.parent.name == "generate")  # each worker's 2nd shard write
    code, out, err = cli(argv)
    assert code == 1 and "Traceback" not in err and len(_messages(err)) == 1, err
    assert "no space left on device" in err and f"{wd / 'generate'}{os.sep}shard-" in err, err
    assert faulty.calls == 0  # it happened in the workers, not here
    # the other worker is terminated wherever it was: a temp file may stay (the next run removes
    # it), but every shard marked done reads whole
    from refcoco_edit.workspace import Workspace

    for name in ("select", "prompts", "generate"):
        stage = Workspace(wd).stage(name)
        for i in stage.done_shards():
            assert stage.read_shard(i).num_rows == stage.stats(i)["rows"]
    monkeypatch.undo()
    code, out, err = cli(argv)
    assert code == 0, err
    assert _export_files(wd / "export") == _export_files(built["export"])
    assert not _leftovers(wd), _leftovers(wd)


def test_build_disk_full_inside_a_sample_stops_instead_of_quarantining(built, demo_dir, tmp_path, monkeypatch):
    """A pipeline whose own write hits a full disk (a model cache, a temp file): the sample is not
    quarantined as broken (a done shard is never redone: the sample would be lost for good); the
    build stops, and the re-run makes it."""
    from refcoco_edit.pipelines.recolor import Recolor

    wd = tmp_path / "work"
    argv = ["build", "--out", str(wd), "--refcoco", str(demo_dir), "--images", str(demo_dir / "images"), *BUILD_ARGS]
    real, calls = Recolor.generate, []
    cache = tmp_path / "cache" / "scratch.bin"

    def generate(self: Any, request: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(cache))
        return real(self, request)

    monkeypatch.setattr(Recolor, "generate", generate)
    code, out, err = cli(argv)
    _assert_disk_full_message(code, out, err, cache)
    quarantined = [q for q in _quarantine(wd) if "No space" in (q.get("error") or "")]
    assert not quarantined, quarantined
    monkeypatch.undo()
    code, out, err = cli(argv)
    assert code == 0, err
    got, want = _export_files(wd / "export"), _export_files(built["export"])
    assert got == want


def _quarantine(wd: Path) -> List[Dict[str, Any]]:
    return [r for p in sorted((wd / "quarantine").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_export_disk_full_then_rerun(built, tmp_path, monkeypatch):
    argv = ["export", "--workdir", str(built["workdir"])]
    code, out, err = cli([*argv, "--out", str(tmp_path / "clean")])
    assert code == 0, err
    want = _export_files(tmp_path / "clean")
    for k, fail_at in enumerate((1, 2)):  # the first split's file, then the second's
        monkeypatch.undo()
        target = tmp_path / f"exp-{k}"
        faulty = DiskFull(monkeypatch, fail_at)
        code, out, err = cli([*argv, "--out", str(target)])
        _assert_disk_full_message(code, out, err, faulty.failed_path)
        assert not target.exists(), "a half export is in place"
        assert not _leftovers(tmp_path), _leftovers(tmp_path)
        monkeypatch.undo()
        code, out, err = cli([*argv, "--out", str(target)])
        assert code == 0, err
        assert _export_files(target) == want
    # a full disk while replacing an earlier export keeps the earlier one whole
    faulty = DiskFull(monkeypatch, 1)
    code, out, err = cli([*argv, "--out", str(tmp_path / "clean")])
    _assert_disk_full_message(code, out, err, faulty.failed_path)
    assert _export_files(tmp_path / "clean") == want
    assert not _leftovers(tmp_path), _leftovers(tmp_path)


# ----------------------------------------------------------------------------------------------
# review pull (a real Label Studio)
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reviewed(label_studio, built) -> Dict[str, Any]:
    """A workspace below the server's document root, pushed, every task annotated."""
    from refcoco_edit.annotation import config as cfg
    from refcoco_edit.annotation.push import push

    ls = label_studio
    wd = ls.files_root / "fault-injection-work"
    if wd.exists():
        shutil.rmtree(wd)
    shutil.copytree(built["workdir"], wd)
    res = push(wd, ls.url, token=ls.token, document_root=str(ls.files_root), log=lambda s: None)
    pid = res.project_id
    spec = cfg.parse_label_config(ls.api("GET", f"/api/projects/{pid}")["label_config"])
    tasks = ls.api("GET", f"/api/tasks/?project={pid}&page=1&page_size=100&fields=all")
    tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
    assert len(tasks) == 12
    for i, t in enumerate(sorted(tasks, key=lambda t: t["id"])):
        value = cfg.REJECT if i % 3 == 2 else "0"
        for _ in range(1 + (i % 2)):  # every other task has two annotations
            body = {"result": [{"id": f"d{i}", "from_name": spec.decision, "to_name": spec.source, "type": "choices",
                                "value": {"choices": [value]}, "origin": "manual"}],
                    "was_cancelled": False, "ground_truth": False, "lead_time": 3.0, "task": t["id"], "project": pid}
            ls.api("POST", f"/api/tasks/{t['id']}/annotations/?project={pid}", body)
    return {"wd": wd, "pid": pid, "argv": ["review", "pull", "--workdir", str(wd), "--url", ls.url],
            "env": _env(LABEL_STUDIO_API_KEY=ls.token)}


def _snapshots(ls, pid: int) -> int:
    got = ls.api("GET", f"/api/projects/{pid}/exports/")
    return len(got if isinstance(got, list) else got.get("results", []))


class _SnapshotWatch:
    """Watches the project's export snapshots on the server: a pull creates one, then deletes it."""

    def __init__(self, ls, pid: int):
        self.ls, self.pid = ls, pid
        self.base = _snapshots(ls, pid)
        self.seen = self.gone = False

    def poll(self) -> int:
        n = _snapshots(self.ls, self.pid) - self.base
        self.seen |= n > 0
        self.gone |= self.seen and n == 0
        return n

    def created(self) -> bool:
        return self.poll() > 0 or self.seen

    def deleted(self) -> bool:
        self.poll()
        return self.gone


def test_review_pull_sigkill_at_random_moments_then_rerun(label_studio, reviewed, tmp_path, monkeypatch):
    from refcoco_edit.workspace import REVIEW_FILE

    ls, r = label_studio, reviewed
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", r["env"]["LABEL_STUDIO_API_KEY"])  # the in-process re-runs
    path = r["wd"] / REVIEW_FILE
    # the uninterrupted pull, its phases timed from the server: start-up (imports, login, project,
    # users), the export snapshot (created .. deleted), then reconcile + write
    watch, t0 = _SnapshotWatch(ls, r["pid"]), time.monotonic()
    proc = _popen(r["argv"], r["env"], tmp_path)
    t_snap = t_del = None
    while proc.poll() is None:
        n = watch.poll()
        if n and t_snap is None:
            t_snap = time.monotonic() - t0
        if watch.gone and t_del is None:
            t_del = time.monotonic() - t0
        time.sleep(0.005)
    seconds = time.monotonic() - t0
    assert proc.wait() == 0, proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    assert t_snap is not None and t_del is not None, "the clean pull's snapshot was not seen"
    want = path.read_bytes()
    rows = pq.read_table(path).to_pylist()
    assert len(rows) == 12 and len({x["sample_id"] for x in rows}) == 12
    assert {x["status"] for x in rows} == {"accepted", "rejected"}
    rng = random.Random(SEED + 3)
    moments = [("start-up", _moments(rng, 1, 0.2 * t_snap, 0.9 * t_snap)[0])]
    moments += [("snapshot", d) for d in _moments(rng, 2, 0.0, t_del - t_snap)]
    moments += [("reconcile", rng.uniform(0.0, max(0.0, seconds - t_del)))]
    landed, mid_pull, base = 0, 0, _snapshots(ls, r["pid"])
    for k, (phase, delay) in enumerate(moments):
        path.unlink()
        watch = _SnapshotWatch(ls, r["pid"])
        when = {"start-up": lambda: True, "snapshot": watch.created, "reconcile": watch.deleted}[phase]
        alive = _kill_after(_popen(r["argv"], r["env"], tmp_path), delay, when)
        landed += alive
        mid_pull += bool(alive and watch.seen)  # killed after it created its snapshot
        if path.exists():  # written whole or not at all
            assert path.read_bytes() == want
        code, out, err = cli(r["argv"])
        assert code == 0, err
        assert path.read_bytes() == want, f"kill {k} ({phase} + {delay:.2f}s): reviews.parquet differs"
        assert not _leftovers(r["wd"] / "review"), _leftovers(r["wd"] / "review")
    # what a kill inside the final rename window leaves: a temp file, removed by the next pull
    stray = path.with_name(path.name + ".tmp-killed")
    stray.write_bytes(want[: len(want) // 2])
    code, out, err = cli(r["argv"])
    assert code == 0 and not stray.exists() and path.read_bytes() == want
    _report("review pull sigkill", kills=len(moments), landed_while_running=landed, landed_mid_pull=mid_pull,
            snapshots_left_on_the_server=_snapshots(ls, r["pid"]) - base, clean_run_s=round(seconds, 2), snapshot_s=f"{t_snap:.2f}-{t_del:.2f}",
            moments=[(p, round(d, 2)) for p, d in moments])
    assert landed >= 2 and mid_pull >= 1, (landed, mid_pull)


def test_review_pull_disk_full_then_rerun(reviewed, monkeypatch):
    from refcoco_edit.annotation.pull import table_bytes
    from refcoco_edit.workspace import REVIEW_FILE

    path = reviewed["wd"] / REVIEW_FILE
    key = reviewed["env"]["LABEL_STUDIO_API_KEY"]
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", key)
    if not path.exists():  # (when run alone)
        assert cli(reviewed["argv"])[0] == 0
    want = path.read_bytes()
    table = pq.read_table(path)
    older = table_bytes(table.slice(0, table.num_rows - 1))  # an earlier pull: one review fewer
    for previous in (older, None):  # over an earlier table, and with none
        if previous is None:
            path.unlink()
        else:
            path.write_bytes(previous)
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", key)
        faulty = DiskFull(monkeypatch, 1)
        code, out, err = cli(reviewed["argv"])
        _assert_disk_full_message(code, out, err, path)
        assert faulty.failed_path == path
        assert (path.read_bytes() if path.exists() else None) == previous  # the old table, untouched
        assert not _leftovers(path.parent), _leftovers(path.parent)
        monkeypatch.undo()
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", key)
        code, out, err = cli(reviewed["argv"])
        assert code == 0, err
        assert path.read_bytes() == want


# ----------------------------------------------------------------------------------------------
# train (tiny ReferDiffusion)
# ----------------------------------------------------------------------------------------------

TRAIN_STEPS = 8


@pytest.fixture(scope="module")
def train_setup(built, tmp_path_factory) -> Dict[str, Any]:
    """A tiny InstructPix2Pix, a stage-1 config on the demo export, and an uninterrupted run."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    pytest.importorskip("accelerate")
    import yaml

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("fi-train")
        from support.tiny_bench_models import save_tiny_ip2p

        ip2p = save_tiny_ip2p(root / "ip2p")
        cfg = {"pretrained": str(ip2p), "data": str(built["export"]), "stage": "stage1", "resolution": 32,
               "batch_size": 2, "lr": 1e-3, "max_steps": TRAIN_STEPS, "checkpoint_every": 2, "seed": 0,
               "model": {"num_heads": 4, "image_feature_dim": 16}, "synth": {"crop_scale": [0.8, 1.0]}}
        (root / "train.yaml").write_text(yaml.safe_dump(cfg))
        clean = root / "clean"
        code, out, err = cli(["train", "--config", str(root / "train.yaml"), "--output_dir", str(clean)])
        assert code == 0, err
        done = [(clean / "checkpoints" / f"step-{k:07d}" / "trainer_state.json").stat().st_mtime for k in (2, TRAIN_STEPS)]
        step_s = (done[1] - done[0]) / (TRAIN_STEPS - 2)  # one step (with its share of checkpointing)
        yield {"root": root, "config": root / "train.yaml", "clean": clean, "torch": torch, "step_s": step_s}
    finally:
        torch.set_num_threads(threads)


def _train_log(out: Path) -> List[Dict[str, Any]]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def _weights(torch: Any, folder: Path) -> Dict[str, Any]:
    """Every tensor of a saved model folder (safetensors and .pt files), by relative path."""
    from safetensors.torch import load_file

    out: Dict[str, Any] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix == ".safetensors":
            for k, v in load_file(str(p)).items():
                out[f"{p.relative_to(folder)}:{k}"] = v
        elif p.suffix in (".pt", ".bin"):
            for k, v in torch.load(str(p), map_location="cpu", weights_only=True).items():
                out[f"{p.relative_to(folder)}:{k}"] = v
    return out


def _assert_same_training(torch: Any, got: Path, want: Path, what: str) -> None:
    a, b = _train_log(got), _train_log(want)
    assert [r["step"] for r in a] == list(range(1, TRAIN_STEPS + 1)), f"{what}: steps lost or duplicated in the log"
    for ra, rb in zip(a, b):  # bit for bit: same threads (1), batches and noise are f(seed, step)
        assert ra == rb, (what, ra, rb)
    ck = lambda d: sorted(p.name for p in (d / "checkpoints").iterdir())  # noqa: E731
    assert ck(got) == ck(want), f"{what}: checkpoints differ"
    wa, wb = _weights(torch, got / "final"), _weights(torch, want / "final")
    assert wa.keys() == wb.keys() and len(wb) > 0
    for k in wb:
        assert torch.equal(wa[k], wb[k]), f"{what}: final weight {k} differs"
    assert not _leftovers(got), _leftovers(got)


def test_train_sigkill_at_random_moments_then_resume(train_setup):
    s, torch = train_setup, train_setup["torch"]
    env = _env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    rng = random.Random(SEED + 4)
    # two kills, triggered by progress so that they land in training, not in the 5-10 s of
    # importing torch: (1) after a seeded number of logged steps + a seeded part of a step
    # (before or after a checkpoint: the log holds steps past it that the resumed run must not
    # log twice); (2) while a seeded checkpoint is being saved (its temp folder exists)
    target = rng.randrange(1, TRAIN_STEPS - 1)
    saving = 2 * rng.randrange(1, TRAIN_STEPS // 2)
    plans = [(f"after step {target}", lambda out: _logged(out) >= target, rng.uniform(0.0, 0.5) * s["step_s"]),
             (f"saving step-{saving}", lambda out: (out / "checkpoints" / f".step-{saving:07d}.tmp").exists(), 0.0)]
    kills = []
    for k, (what, when, delay) in enumerate(plans):
        out = s["root"] / f"killed-{k}"
        argv = ["train", "--config", str(s["config"]), "--output_dir", str(out), "--resume", "latest"]
        alive = _kill_after(_popen(argv, env, s["root"]), delay, lambda: when(out), poll=0.001)
        cks = sorted(p.name for p in (out / "checkpoints").iterdir()) if (out / "checkpoints").exists() else []
        kills.append({"kill": what, "alive": alive, "logged_steps": _logged(out), "checkpoints": cks})
        assert not (out / "final").exists() or not alive, "a final model from a killed run"
        code, _, err = cli(argv)  # the same command: resumes from the latest complete checkpoint
        assert code == 0, err
        _assert_same_training(torch, out, s["clean"], f"kill {k} ({what})")
    landed = sum(k["alive"] for k in kills)
    mid_save = sum(any(c.startswith(".step-") for c in k["checkpoints"]) for k in kills)
    _report("train sigkill", kills=len(kills), landed_mid_training=landed, landed_mid_checkpoint_save=mid_save,
            step_s=round(s["step_s"], 3), detail=kills)
    assert landed >= 1, kills


def _logged(out: Path) -> int:
    log = out / "log.jsonl"
    return len(log.read_bytes().splitlines()) if log.exists() else 0


def test_train_disk_full_in_a_checkpoint_then_resume(train_setup, monkeypatch):
    s, torch = train_setup, train_setup["torch"]
    out = s["root"] / "disk-full"
    argv = ["train", "--config", str(s["config"]), "--output_dir", str(out)]
    real_save, calls, failed = torch.save, [], []

    def full_save(obj: Any, f: Any, *a: Any, **kw: Any) -> None:
        calls.append(str(f))
        if "step-0000004" in str(f) and not failed:  # the second checkpoint: weights written, this half
            failed.append(str(f))
            buf = io.BytesIO()
            real_save(obj, buf, *a, **kw)
            Path(f).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_save)
    code, stdout, err = cli(argv)
    monkeypatch.undo()
    ck_dir = out / "checkpoints"
    _assert_disk_full_message(code, stdout, err, ck_dir / ".step-0000004.tmp")
    assert "--resume latest" in err, err  # this config does not resume by itself: say how
    assert sorted(p.name for p in ck_dir.iterdir()) == ["step-0000002"], "a half checkpoint is left"
    assert not (out / "final").exists()
    code, _, err = cli([*argv, "--resume", "latest"])
    assert code == 0, err
    _assert_same_training(torch, out, s["clean"], "disk full in the step-4 checkpoint")
    _report("train disk full", failed_save=failed[0].replace(str(out), "OUT"))
