"""The bad-input corpus (``tests/support/make_bad_corpus.py``) through every stage, in order:

    build --llm-model (fake OpenAI server)  ->  export  ->  review push / pull (real Label Studio,
    behind a proxy that answers HTTP 500 once)  ->  export --status accepted  ->  score (three
    misbehaving editors: a ``module:Class`` editor, ``dir:`` and ``cmd:``)

Every planted case must land in the quarantine (build) or in the run's failure table (score)
with its reason code; the service failures (LLM 500, Label Studio 500) must stop the command with
exit 1 and one line, and the same command must then resume; every good sample must come out
intact: exported byte-equal to a clean build (same corpus, a well-behaved LLM), reviewed, and
scored with outputs and metrics byte-equal to a clean score run (the identity editor).

The tests run in file order and share one workspace (``flow``); each CLI runs in a subprocess.
"""
from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, run_cli
from support.fake_openai import running
from support.labelstudio import all_tasks
from support.make_bad_corpus import editor_plans, llm_handler, make_bad_corpus, samples_of_image, write_dir_outputs
from test_rephrase import good_rephrase

from refcoco_edit.annotation import config as cfg

OPENAI_KEY = "sk-corpus-test-7f3a9c1e5b2d4608-secret"
IMAGE_CASES = ("truncated_jpeg", "missing_image")
SELECT_CASES = ("polygon_4_numbers", "polygon_2_points", "malformed_rle", "missing_annotation", "empty_sentence")
ENV_PYTHONPATH = {"PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}


# ----------------------------------------------------------------------------------------------
# a proxy in front of Label Studio that answers HTTP 500 to a chosen request
# ----------------------------------------------------------------------------------------------

_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade", "content-length", "host"}


class FaultProxy:
    """HTTP on 127.0.0.1 forwarding every request to ``upstream``; ``fail(...)`` arms one rule:
    the next request matching (method, path substring) is answered with HTTP 500, after being
    forwarded (``forward_first``: the server did the work, the client sees a failure) or not."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.rule: Optional[Dict[str, Any]] = None
        self.failed: List[Tuple[str, str]] = []
        self.seen: List[Tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *a: Any) -> None:
                pass

            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                proxy.seen.append((self.command, self.path))
                rule = proxy.rule
                hit = (rule is not None and self.command == rule["method"] and rule["path_contains"] in self.path)
                if hit:
                    proxy.rule = None
                    proxy.failed.append((self.command, self.path))
                if not hit or rule["forward_first"]:
                    status, headers, data = proxy._forward(self.command, self.path, dict(self.headers), body)
                if hit:
                    status, headers, data = 500, [("Content-Type", "application/json")], \
                        b'{"detail": "Internal Server Error (planted by the test proxy)"}'
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _forward(self, method: str, path: str, headers: Dict[str, str], body: Optional[bytes]):
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=120)
        try:
            hdrs = {k: v for k, v in headers.items() if k.lower() not in _HOP}
            hdrs["Host"] = f"127.0.0.1:{self.upstream_port}"
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            return r.status, r.getheaders(), r.read()
        finally:
            conn.close()

    def fail(self, rule: Dict[str, Any]) -> None:
        self.rule = dict(rule)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def _rows(path: Path) -> List[Dict[str, Any]]:
    files = sorted(path.glob("*.parquet"))
    assert files, f"no Parquet in {path}"
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()


def _quarantine(w: Path) -> List[Dict[str, Any]]:
    return [r for f in sorted((w / "quarantine").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _selected(w: Path) -> List[Dict[str, Any]]:
    return pq.read_table(w / "select" / "shard-00000.parquet", columns=["sample_id", "image_id"]).to_pylist()


def _one_line(proc, code: int) -> str:
    assert proc.returncode == code, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refcoco-edit: error:"), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def _ok(proc) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stdout + proc.stderr


def _no_secret(flow: Dict[str, Any], *texts: str) -> None:
    for t in texts:
        assert OPENAI_KEY not in t and flow["ls_token"] not in t


def _build_args(corpus: Dict[str, Any], w: Path, url: str) -> List[str]:
    return ["build", "--out", str(w), "--refcoco", corpus["root"], "--images", corpus["images_dir"],
            "--num-images", "none", "--shard-size", "8", "--llm-model", "m", "--llm-base-url", url,
            "--llm-max-retries", "0", "--llm-timeout", "20"]


def _expected_build_quarantine(corpus: Dict[str, Any], selected: List[Dict[str, Any]]) -> Set[Tuple[str, str, str]]:
    out = set()
    for name, case in corpus["cases"].items():
        if case["expected_reason"] is None:
            continue
        if name in SELECT_CASES:
            out.add(("select", case["key"], case["expected_reason"]))
        else:
            sids = samples_of_image(selected, case["image_id"])
            assert sids, f"{name}: never visited"
            out |= {("generate", s, case["expected_reason"]) for s in sids}
    for name, case in corpus["stages"]["llm"].items():
        if case["expected_reason"] is None:
            continue
        sids = samples_of_image(selected, case["image_id"])
        assert sids, f"{name}: never visited"
        out |= {("prompts", s, case["expected_reason"]) for s in sids}
    return out


def _submit(ls, pid: int, task: Dict[str, Any], spec: cfg.ConfigSpec, decision: str) -> None:
    """An annotation as the labeling UI sends it: the pre-filled regions plus the decision."""
    result = [dict(r, origin="prediction") for r in task["predictions"][0]["result"]]
    result.append({"id": "d", "from_name": spec.decision, "to_name": spec.source, "type": "choices",
                   "value": {"choices": [decision]}, "origin": "manual"})
    if decision == cfg.REJECT:
        result.append({"id": "rr", "from_name": spec.reject_reason, "to_name": spec.source, "type": "choices",
                       "value": {"choices": [cfg.REJECT_REASONS[0]]}, "origin": "manual"})
    body = {"result": result, "was_cancelled": False, "ground_truth": False, "lead_time": 5.0, "task": task["id"],
            "project": pid, "parent_prediction": task["predictions"][0]["id"]}
    ls.api("POST", f"/api/tasks/{task['id']}/annotations/?project={pid}", body)


def _listing(d: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()} if d.exists() else {}


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Dict[str, Any]:
    return make_bad_corpus(tmp_path_factory.mktemp("corpus-all") / "data")


@pytest.fixture(scope="module")
def llm():
    with running() as srv:
        yield srv


@pytest.fixture(scope="module")
def flow(label_studio, corpus, llm, tmp_path_factory) -> Dict[str, Any]:  # noqa: F811
    """The shared state: the workspace lives below Label Studio's local-files root."""
    proxy = FaultProxy(label_studio.port)
    state = {"w": label_studio.files_root / "corpus-W", "tmp": tmp_path_factory.mktemp("corpus-all-runs"),
             "proxy": proxy, "ls_token": label_studio.token}
    yield state
    proxy.close()


# ----------------------------------------------------------------------------------------------
# build (with the LLM)
# ----------------------------------------------------------------------------------------------

def test_build_llm_500_stops_with_exit_1_then_resumes_without_asking_twice(corpus, llm, flow):
    w = flow["w"]
    st: Dict[str, Any] = {"fail_500": True}
    llm.reset()
    llm.script(llm_handler(corpus, good_rephrase, st))
    env = dict(ENV_PYTHONPATH, OPENAI_API_KEY=OPENAI_KEY)
    first = run_cli(*_build_args(corpus, w, llm.base_url), env=env, timeout=180)
    line = _one_line(first, 1)
    assert "HTTP 500" in line and "re-run" in line, line
    assert st["asked"].get("llm_http_500", 0) >= 1
    _no_secret(flow, first.stdout, first.stderr)
    done_before = sorted(p.name for p in (w / "prompts").glob("*.stats.json"))
    asked_good = set(st["good_bodies"])
    assert asked_good, "no request got a good answer before the failure"

    st["fail_500"] = False
    st["good_bodies"] = []
    second = run_cli(*_build_args(corpus, w, llm.base_url), env=env, timeout=180)
    _ok(second)
    _no_secret(flow, second.stdout, second.stderr)
    # finished shards kept, answers received before the failure never asked again
    assert set(done_before) <= {p.name for p in (w / "prompts").glob("*.stats.json")}
    assert not asked_good & set(st["good_bodies"]), "a resumed run asked the LLM again for a cached answer"
    assert "quarantined" in second.stdout
    flow["build_stdout"] = second.stdout


def test_build_quarantines_exactly_the_planted_cases(corpus, flow):
    w = flow["w"]
    got = _quarantine(w)
    triples = [(r["stage"], r["key"], r["reason"]) for r in got]
    assert len(triples) == len(set(triples)), "a record is quarantined twice"
    assert all(r["error"] for r in got)
    selected = _selected(w)
    assert set(triples) == _expected_build_quarantine(corpus, selected)
    reasons = {(s, r) for s, _, r in triples}
    assert {("prompts", "llm_span_missing"), ("prompts", "llm_bad_json"), ("prompts", "llm_refusal"),
            ("generate", "corrupt_image"), ("generate", "missing_image"), ("select", "bad_polygon"),
            ("select", "bad_rle"), ("select", "missing_annotation"), ("select", "empty_sentence")} == reasons
    flow["selected"] = selected
    flow["quarantined"] = {k for s, k, _ in triples if s != "select"}


def test_build_good_samples_equal_a_clean_run(corpus, llm, flow):
    """The same corpus built with an LLM that answers every request well: every sample of the
    faulty run is in it, cell for cell, and it holds exactly the LLM-quarantined samples more."""
    clean_w = flow["tmp"] / "clean-W"
    llm.reset()
    llm.script(good_rephrase)
    _ok(run_cli(*_build_args(corpus, clean_w, llm.base_url), env=dict(ENV_PYTHONPATH, OPENAI_API_KEY=OPENAI_KEY),
                timeout=180))
    clean = {r["sample_id"]: r for r in _rows(clean_w / "export")}
    bad = {r["sample_id"]: r for r in _rows(flow["w"] / "export")}
    llm_failed = {k for s, k, r in ((q["stage"], q["key"], q["reason"]) for q in _quarantine(flow["w"]))
                  if s == "prompts"}
    assert set(bad) == set(clean) - llm_failed and llm_failed <= set(clean)
    assert set(bad) == {r["sample_id"] for r in flow["selected"]} - flow["quarantined"]
    for sid, row in bad.items():
        assert row == clean[sid], f"{sid}: differs from the clean run"
        assert row["prompt_source"] == "llm:m"
    # every untouched image and every converted image is exported
    images = {r["image_id"] for r in bad.values()}
    for name in ("exif_rotated_jpeg", "cmyk_jpeg", "grayscale_png", "palette_png"):
        assert corpus["cases"][name]["image_id"] in images, name
    assert set(corpus["stages"]["untouched_image_ids"]) <= images
    assert corpus["stages"]["llm"]["llm_http_500"]["image_id"] in images  # it only failed the service
    flow["exported"] = bad


def test_export_cli_writes_the_builds_export_again(flow):
    """`refcoco-edit export` of the workspace (every status): the same files as the build's own
    export, byte for byte, and nothing quarantined in it."""
    out = flow["tmp"] / "export-all"
    _ok(run_cli("export", "--workdir", str(flow["w"]), "--out", str(out), env=ENV_PYTHONPATH))
    built = flow["w"] / "export"
    names = sorted(p.name for p in built.glob("*.parquet"))
    assert names and names == sorted(p.name for p in out.glob("*.parquet"))
    for n in names:
        assert (out / n).read_bytes() == (built / n).read_bytes(), n
    assert not {r["sample_id"] for r in _rows(out)} & flow["quarantined"]


# ----------------------------------------------------------------------------------------------
# review: push / pull through a proxy that answers 500 once
# ----------------------------------------------------------------------------------------------

def _review(flow, monkeypatch, action: str, *extra: str) -> subprocess.CompletedProcess:
    """`refcoco-edit review ACTION ...` through the CLI's main() in this process (the SDK's import
    costs seconds per subprocess); returns what a subprocess run would."""
    import refcoco_edit.cli as rc

    argv = ["review", action, "--workdir", str(flow["w"]), "--url", flow["proxy"].url, *extra]
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", flow["ls_token"])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = rc.main(argv)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def test_review_push_500_exit_1_then_resumes_without_duplicates(label_studio, corpus, flow, monkeypatch):  # noqa: F811
    ls, proxy = label_studio, flow["proxy"]
    rule = corpus["stages"]["review"]["push_500"]
    proxy.fail(rule)
    first = _review(flow, monkeypatch, "push", "--document-root", str(ls.files_root))
    line = _one_line(first, rule["expected_exit"])
    assert rule["expected_message"] in line and "importing tasks" in line, line
    assert proxy.failed and proxy.failed[-1][0] == "POST"
    _no_secret(flow, first.stdout, first.stderr)
    # the server did import (the 500 came after it): the resumed push must find those tasks
    got = ls.api("GET", "/api/projects/?page_size=100")
    pid = next(p["id"] for p in (got["results"] if isinstance(got, dict) else got) if p["title"].endswith(flow["w"].name))
    n = len(flow["exported"])
    assert len(all_tasks(ls, pid)) == n
    second = _review(flow, monkeypatch, "push", "--document-root", str(ls.files_root))
    _ok(second)
    assert f"0 imported, 0 updated, {n} unchanged" in second.stdout, second.stdout
    _no_secret(flow, second.stdout, second.stderr)
    tasks = all_tasks(ls, pid)
    assert sorted(t["data"][cfg.KEY_SAMPLE_ID] for t in tasks) == sorted(flow["exported"])  # no duplicate
    flow["pid"] = pid


def test_review_pull_500_exit_1_leaves_workspace_then_resumes(label_studio, corpus, flow, monkeypatch):  # noqa: F811
    ls, proxy, pid = label_studio, flow["proxy"], flow["pid"]
    spec = cfg.parse_label_config(ls.api("GET", f"/api/projects/{pid}")["label_config"])
    reject_image = corpus["stages"]["review"]["reject_image_id"]
    image_of = {sid: r["image_id"] for sid, r in flow["exported"].items()}
    rejected = set()
    for t in all_tasks(ls, pid):
        sid = t["data"][cfg.KEY_SAMPLE_ID]
        if image_of[sid] == reject_image:
            _submit(ls, pid, t, spec, cfg.REJECT)
            rejected.add(sid)
        else:
            _submit(ls, pid, t, spec, cfg.decision_value(0))
    assert rejected
    review_dir = flow["w"] / "review"
    before = _listing(review_dir)
    rule = corpus["stages"]["review"]["pull_500"]
    proxy.fail(rule)
    first = _review(flow, monkeypatch, "pull")
    line = _one_line(first, rule["expected_exit"])
    assert rule["expected_message"] in line and "downloading" in line, line
    assert _listing(review_dir) == before  # nothing half-written
    second = _review(flow, monkeypatch, "pull")
    _ok(second)
    _no_secret(flow, first.stdout, first.stderr, second.stdout, second.stderr)
    table = {r["sample_id"]: r for r in pq.read_table(review_dir / "reviews.parquet").to_pylist()}
    assert set(table) == set(flow["exported"])
    assert {s for s, r in table.items() if r["status"] == "rejected"} == rejected
    assert all(r["status"] == "accepted" and r["chosen_candidate"] == 0 for s, r in table.items() if s not in rejected)
    flow["rejected"] = rejected


def test_export_accepted_holds_every_accepted_good_sample_intact(flow):
    acc = flow["tmp"] / "accepted"
    proc = run_cli("export", "--workdir", str(flow["w"]), "--out", str(acc), "--status", "accepted",
                   env=ENV_PYTHONPATH)
    _ok(proc)
    rows = {r["sample_id"]: r for r in _rows(acc)}
    assert set(rows) == set(flow["exported"]) - flow["rejected"]
    for sid, row in rows.items():
        before = flow["exported"][sid]
        assert row["review"]["status"] == "accepted"
        for col in ("source_image", "reference_image", "source_mask", "edit_mask", "prompt", "referring_span",
                    "edit_span", "candidates", "exemplar_image"):
            assert row[col] == before[col], (sid, col)
    flow["accepted_dir"] = acc
    flow["accepted"] = rows


# ----------------------------------------------------------------------------------------------
# score: three misbehaving editors against a clean identity run
# ----------------------------------------------------------------------------------------------

def _score(flow, name: str, model: str, *extra: str):
    out = flow["tmp"] / "results" / name
    proc = run_cli("score", "--model", model, "--data", str(flow["accepted_dir"]), "--out", str(out),
                   "--bootstrap", "20", "--no-plots", "--no-gallery", *extra, env=ENV_PYTHONPATH, timeout=240)
    _ok(proc)
    return out


def _samples(out: Path) -> Dict[str, Dict[str, Any]]:
    return {r["sample_id"]: r for r in pq.read_table(out / "samples.parquet").to_pylist()}


def _same_number(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return a == b


def test_score_planted_editor_faults_fail_their_samples_and_the_rest_equals_a_clean_run(corpus, flow):
    rows = list(flow["accepted"].values())
    plans = editor_plans(corpus, rows)
    assert all(plans.values()), plans
    expected_reason = {c["fault"]: c["expected_reason"] for c in corpus["stages"]["editor"].values()}

    clean = _score(flow, "identity", "identity")
    clean_res = json.loads((clean / "results.json").read_text())
    assert clean_res["counts"]["failed"] == 0 and clean_res["counts"]["scored"] == len(rows)
    clean_samples = _samples(clean)

    plan_dir = flow["tmp"] / "plans"
    plan_dir.mkdir(exist_ok=True)
    for adapter, plan in plans.items():
        (plan_dir / f"{adapter}.json").write_text(json.dumps(plan))
    runs = {
        "python": ("support.make_bad_corpus:PlannedEditor", "--editor-arg", f"plan={plan_dir / 'python.json'}"),
        "dir": ("dir:" + str(write_dir_outputs(rows, plans["dir"], flow["tmp"] / "dir-outputs")),),
        "cmd": (f"cmd:{sys.executable} {corpus['stages']['editor_cmd']} {{input}} {{output}} {{sample_id}} "
                f"{plan_dir / 'cmd.json'}",),
    }
    metric_cols = None
    for adapter, (model, *extra) in runs.items():
        out = _score(flow, adapter, model, *extra)
        res = json.loads((out / "results.json").read_text())
        plan = plans[adapter]
        fails = {f["sample_id"]: f for f in res["failures"]}
        assert {s: f["reason"] for s, f in fails.items()} == {s: expected_reason[f] for s, f in plan.items()}, adapter
        assert all(f["error"] for f in fails.values())
        assert res["counts"]["failed"] == len(plan) and res["counts"]["scored"] == len(rows) - len(plan)
        samples = _samples(out)
        assert {s for s, r in samples.items() if r["status"] == "failed"} == set(plan)
        metric_cols = metric_cols or [k for k, v in next(iter(clean_samples.values())).items()
                                      if isinstance(v, float) and k not in ("seconds", "edit_seconds")]
        for sid in set(rows_id for rows_id in flow["accepted"]) - set(plan):
            # the good samples: the same output file, byte for byte, and the same numbers as the clean run
            assert (out / "outputs" / f"{sid}.png").read_bytes() == (clean / "outputs" / f"{sid}.png").read_bytes(), (adapter, sid)
            for k in metric_cols:
                assert _same_number(samples[sid][k], clean_samples[sid][k]), (adapter, sid, k)
        for sid in plan:
            assert not (out / "outputs" / f"{sid}.png").exists()


def test_no_token_in_any_file_the_stages_wrote(flow):
    """The OpenAI key and the Label Studio token were in the environment of every stage: neither
    is in any file of the workspace, the accepted export or the score results."""
    toks = (OPENAI_KEY.encode(), flow["ls_token"].encode())
    n = 0
    for root in (flow["w"], flow["tmp"]):
        for p in sorted(root.rglob("*")):
            if not p.is_file():
                continue
            data = p.read_bytes()
            if p.suffix == ".parquet":  # pages may be compressed: look at the decoded rows too
                data += json.dumps(pq.read_table(p).to_pylist(), default=repr).encode()
            assert not any(t in data for t in toks), p
            n += 1
    assert n > 100
