"""A real Label Studio server for the review tests: installed once into its own virtualenv, started
on 127.0.0.1 with a fixed admin and legacy API token, stopped when the session ends.

Label Studio's pins (Django, numpy, opencv, ...) clash with ours, so it never goes into the test
environment: it lives in ``~/.cache/refcoco-edit/labelstudio-<version>-py<X.Y>/`` (override with
``$REFCOCO_EDIT_LS_VENV``), keyed by the pinned version, and is reused while it imports. The
first install takes about 1.5 minutes (about 1 GB); a fresh data folder answers ``/health`` after
about 45 s (database migrations).

Facts this relies on (measured with label-studio 1.23.2):

* ``label-studio start`` binds 0.0.0.0 unless ``--internal-host`` is given;
* the admin comes from ``LABEL_STUDIO_USERNAME`` / ``LABEL_STUDIO_PASSWORD`` /
  ``LABEL_STUDIO_USER_TOKEN`` (40 hex) and ``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true`` must be set
  at the first start, or that token is refused;
* it also reads bare ``USERNAME`` / ``PASSWORD``: the server gets a clean environment;
* ``label-studio --version`` starts a server: never call it.
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

LS_VERSION = "1.23.2"
STARTUP_TIMEOUT_S = 420.0
INSTALL_TIMEOUT_S = 1200.0


def venv_dir() -> Path:
    """Where the Label Studio virtualenv lives (one per Label Studio and Python version)."""
    override = os.environ.get("REFCOCO_EDIT_LS_VENV")
    if override:
        return Path(override)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    return Path.home() / ".cache" / "refcoco-edit" / f"labelstudio-{LS_VERSION}-py{py}"


def _works(venv: Path) -> bool:
    """True when the virtualenv holds the pinned Label Studio and it imports (without starting it)."""
    marker = venv / "refcoco-edit-ok.json"
    exe = venv / "bin" / "label-studio"
    if not (marker.exists() and exe.exists()):
        return False
    try:
        if json.loads(marker.read_text()).get("label-studio") != LS_VERSION:
            return False
    except (OSError, ValueError):
        return False
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib.metadata as m, label_studio, django; print(m.version('label-studio'))"],
        capture_output=True, text=True, timeout=120, env=_clean_env({}),
    )
    return probe.returncode == 0 and probe.stdout.strip() == LS_VERSION


def _pip_install(venv: Path, env: Dict[str, str], t0: float, log, every_s: float = 10.0) -> tuple:
    """``pip install label-studio`` in ``venv``, saying how far it got every ``every_s`` seconds
    (packages resolved, downloaded, then installing) instead of a silent minute or two.
    Returns (exit code, the output's tail)."""
    import collections
    import threading

    proc = subprocess.Popen([str(venv / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off",
                             f"label-studio=={LS_VERSION}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    timer = threading.Timer(INSTALL_TIMEOUT_S, proc.kill)
    timer.start()
    tail: collections.deque = collections.deque(maxlen=60)
    seen = {"Collecting": 0, "Downloading": 0}
    last = time.perf_counter()
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            tail.append(line)
            word = line.strip().split(" ", 1)[0]
            if word == "Using":  # "Using cached x.whl": fetched from pip's cache
                word = "Downloading"
            if word in seen:
                seen[word] += 1
            if word == "Installing":
                log(f"  label-studio: installing the {seen['Collecting']} packages ({time.perf_counter() - t0:.0f} s)")
            elif time.perf_counter() - last >= every_s:
                last = time.perf_counter()
                log(f"  label-studio: {seen['Collecting']} packages resolved, {seen['Downloading']} fetched "
                    f"({last - t0:.0f} s)")
        code = proc.wait()
    finally:
        timer.cancel()
    return code, "".join(tail)


def ensure_label_studio(log=print) -> Dict[str, float]:
    """Install the pinned Label Studio into its cached virtualenv unless a working one is there.

    Returns ``{"install_s": seconds}`` (0 when reused). A file lock keeps two test sessions
    from installing into the same folder at once.
    """
    venv = venv_dir()
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv.parent / (venv.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _works(venv):
            return {"install_s": 0.0}
        t0 = time.perf_counter()
        if venv.exists():
            shutil.rmtree(venv)
        log(f"installing label-studio=={LS_VERSION} into {venv} (once; about 1.5 minutes)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
        code, tail = _pip_install(venv, env, t0, log)
        if code != 0:
            raise RuntimeError(f"installing label-studio=={LS_VERSION} failed:\n{tail}")
        (venv / "refcoco-edit-ok.json").write_text(json.dumps({"label-studio": LS_VERSION}))
        if not _works(venv):
            raise RuntimeError(f"label-studio=={LS_VERSION} was installed into {venv} but does not import")
        log(f"  label-studio: ready in {time.perf_counter() - t0:.0f} s ({venv}; reused by later runs)")
        return {"install_s": time.perf_counter() - t0}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env(extra: Dict[str, str]) -> Dict[str, str]:
    """A minimal environment: Label Studio also reads bare USERNAME/PASSWORD and friends."""
    env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ") if k in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    env.update(extra)
    return env


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies (even by kill -9), so no
    server outlives its test session (Linux only; elsewhere the fixture's finaliser does it)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stop_group(pid: int, timeout: float) -> None:
    """SIGTERM the process group led by ``pid`` (a server started with ``start_new_session``) and
    wait for its leader to go; SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        t0 = time.perf_counter()
        while _alive(pid) and time.perf_counter() - t0 < timeout:
            time.sleep(0.1)


@dataclass
class LabelStudioServer:
    """One Label Studio process on 127.0.0.1, with a fixed admin and a 40-hex legacy token."""

    data_dir: Path
    files_root: Path
    port: int = field(default_factory=free_port)
    username: str = "reviewer@refcoco-edit.test"
    password: str = field(default_factory=lambda: secrets.token_hex(12), repr=False)
    token: str = field(default_factory=lambda: secrets.token_hex(20), repr=False)
    proc: Optional[subprocess.Popen] = None
    startup_s: List[float] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    adopted_pid: Optional[int] = None
    """a server this object did not start (the session's early start, ``EarlyStart``): ``stop``
    ends it by its process group; ``start`` then starts one of its own on the same data"""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def env(self) -> Dict[str, str]:
        home = self.data_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        return _clean_env({
            "HOME": str(home),
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "LABEL_STUDIO_USERNAME": self.username,
            "LABEL_STUDIO_PASSWORD": self.password,
            "LABEL_STUDIO_USER_TOKEN": self.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.files_root),
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "COLLECT_ANALYTICS": "false",
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
        })

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> float:
        """Start the server and wait until ``/health`` answers. Returns the seconds it took."""
        if self.running():
            return 0.0
        self.data_dir.mkdir(parents=True, exist_ok=True)
        exe = venv_dir() / "bin" / "label-studio"
        cmd = [str(exe), "start", "--no-browser", "--port", str(self.port), "--internal-host", "127.0.0.1",
               "--data-dir", str(self.data_dir)]
        t0 = time.perf_counter()
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env(), cwd=str(self.data_dir), start_new_session=True,
                                         preexec_fn=_die_with_parent)
        finally:
            log.close()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited with code {self.proc.returncode} while starting:\n{self.log_tail()}")
            if self.healthy():
                break
            if time.perf_counter() - t0 > timeout:
                self.stop()
                raise RuntimeError(f"Label Studio did not answer /health within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.5)
        took = time.perf_counter() - t0
        self.startup_s.append(took)
        return took

    def healthy(self) -> bool:
        """True when GET /health answers 200."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def running(self) -> bool:
        if self.adopted_pid is not None:
            return _alive(self.adopted_pid)
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """Terminate the server's whole process group (SIGTERM, then SIGKILL)."""
        if self.adopted_pid is not None:
            pid, self.adopted_pid = self.adopted_pid, None
            _stop_group(pid, timeout)
            return
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=timeout)
        # children left in the group (workers) go with it
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    # -- API helpers for tests (plain HTTP with the legacy token, as a browser session would) --

    def api(self, method: str, path: str, body: Optional[object] = None, token: Optional[str] = None) -> object:
        """Call the REST API; returns the decoded JSON (or None for an empty answer)."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Token {token or self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
        return json.loads(raw) if raw else None


# ----------------------------------------------------------------------------------------------
# the pytest fixture (import it into a test module: ``from labelstudio import label_studio``)
# ----------------------------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # the module also runs on its own (see __main__)
    pytest = None

EARLY_ENV = "REFCOCO_EDIT_TEST_LS"


class EarlyStart:
    """Install and start the session's server in a background thread as the test run begins, so
    the install (about 1.5 minutes on a fresh machine) and the first start's migrations (about
    45 s) overlap the tests that need no server, instead of stalling the first one that does.

    Started by the main pytest process (the xdist controller, or the only process): it picks the
    port, token and folders up front and publishes them in ``$REFCOCO_EDIT_TEST_LS`` before the
    workers start, so the worker that runs the Label Studio tests adopts this server (the
    ``label_studio`` fixture waits for ``ready.json``). The thread that starts the server stays
    alive until the session ends: the server dies with the thread that started it
    (PR_SET_PDEATHSIG), and this thread stops it."""

    def __init__(self, log=print) -> None:
        import tempfile
        import threading

        self.root = Path(tempfile.mkdtemp(prefix="refcoco-edit-ls-"))
        self.server = LabelStudioServer(data_dir=self.root / "data", files_root=self.root / "files")
        self.server.files_root.mkdir(parents=True, exist_ok=True)
        self.log = log
        self._done = threading.Event()
        os.environ[EARLY_ENV] = json.dumps({
            "root": str(self.root), "data_dir": str(self.server.data_dir), "files_root": str(self.server.files_root),
            "port": self.server.port, "username": self.server.username, "password": self.server.password,
            "token": self.server.token})
        self._thread = threading.Thread(target=self._run, name="label-studio-early-start", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ready = self.root / "ready.json"
        try:
            timings = ensure_label_studio(log=self.log)
            timings["startup_s"] = self.server.start()
            state = {"pid": self.server.proc.pid, **timings}
        except BaseException as e:  # reported by the fixture, in the test that needs the server
            state = {"error": f"{type(e).__name__}: {e}"}
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, ready)
        self._done.wait()
        self.server.stop()

    def close(self) -> None:
        """Stop the server (if the session's worker has not) and remove its folders."""
        self._done.set()
        self._thread.join(timeout=INSTALL_TIMEOUT_S + STARTUP_TIMEOUT_S)
        shutil.rmtree(self.root, ignore_errors=True)


def adopt_early_server(timeout: float = INSTALL_TIMEOUT_S + STARTUP_TIMEOUT_S) -> Optional[LabelStudioServer]:
    """The server ``EarlyStart`` is bringing up (waiting until it answers), or None when this
    session has none."""
    raw = os.environ.get(EARLY_ENV)
    if not raw:
        return None
    info = json.loads(raw)
    ready = Path(info["root"]) / "ready.json"
    t0 = time.perf_counter()
    while not ready.exists():
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"Label Studio's early start gave no answer within {timeout:.0f}s ({info['root']})")
        time.sleep(0.5)
    state = json.loads(ready.read_text())
    if "error" in state:
        raise RuntimeError(f"Label Studio could not be installed or started: {state['error']}")
    server = LabelStudioServer(data_dir=Path(info["data_dir"]), files_root=Path(info["files_root"]), port=info["port"],
                               username=info["username"], password=info["password"], token=info["token"],
                               adopted_pid=int(state["pid"]))
    server.startup_s.append(float(state["startup_s"]))
    server.timings = {k: float(state[k]) for k in ("install_s", "startup_s")}
    if not server.healthy():
        raise RuntimeError(f"Label Studio (started early, pid {state['pid']}) does not answer /health:\n{server.log_tail()}")
    return server


if pytest is not None:
    @pytest.fixture(scope="session")
    def label_studio(tmp_path_factory, request):
        """A running Label Studio (installed on first use), stopped at the end of the session.

        ``server.files_root`` is its local-files document root: build workspaces below it.
        ``server.timings`` holds the install and start-up seconds. The first install's progress
        goes to the terminal, past pytest's capture. When the session started the server early
        (``EarlyStart``, see tests/conftest.py), this adopts it."""
        capman = request.config.pluginmanager.getplugin("capturemanager")

        def say(text: str) -> None:
            with capman.global_and_fixture_disabled():
                print(text, file=sys.stderr, flush=True)

        early = adopt_early_server()
        if early is not None:
            try:
                yield early
            finally:
                early.stop()
            return
        timings = ensure_label_studio(log=say)
        root = tmp_path_factory.mktemp("labelstudio")
        server = LabelStudioServer(data_dir=root / "data", files_root=root / "files")
        server.files_root.mkdir(parents=True, exist_ok=True)
        try:
            timings["startup_s"] = server.start()
            server.timings = timings
            yield server
        finally:
            server.stop()


if __name__ == "__main__":  # manual use: python tests/support/labelstudio.py  (installs, starts, waits for Ctrl-C)
    import tempfile

    print(ensure_label_studio())
    root = Path(tempfile.mkdtemp(prefix="ls-"))
    srv = LabelStudioServer(data_dir=root / "data", files_root=root)
    try:
        print(f"started in {srv.start():.1f}s at {srv.url}; token {srv.token}; files root {root}")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()


def all_tasks(ls: LabelStudioServer, pid: int) -> List[Dict[str, object]]:
    """Every task of project ``pid`` with all its fields, page by page (REST, as a browser sees them)."""
    tasks: List[Dict[str, object]] = []
    page = 1
    while True:
        got = ls.api("GET", f"/api/tasks/?project={pid}&page={page}&page_size=100&fields=all")
        items = got["tasks"] if isinstance(got, dict) else got
        tasks += items
        if len(items) < 100:
            return tasks
        page += 1
