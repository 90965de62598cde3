"""LLM rephrasing against a real HTTP server on 127.0.0.1 speaking the OpenAI protocol
(tests/support/fake_openai.py), through the real ``openai`` client: validation, retries, cache,
resilience, batch mode, and the build end to end."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_cli
from support.fake_openai import Reply, running
from refcoco_edit.pipelines.rephrase import (
    BatchRunner,
    LLMCache,
    LLMRephraser,
    RephraseConfig,
    RephraseRejected,
    key_words,
    validate,
)
from refcoco_edit.build import BuildConfig, build
from refcoco_edit.errors import InputError, RunError
from refcoco_edit.export import load_export
from refcoco_edit.prompts import make_prompt

import numpy as np

SECRET = "sk-test-0123456789abcdef-secret"


def _user(body):
    """The JSON the stage sent as the first user message."""
    return json.loads([m for m in body["messages"] if m["role"] == "user"][0]["content"])


def good_rephrase(body):
    """A well-behaved model: rewrites the wording, keeps both phrases verbatim."""
    u = _user(body)
    if "instruction" in u:
        text = f"In this photo, {u['instruction'][0].lower()}{u['instruction'][1:]}".rstrip(".?!") + "."
        return Reply(content=json.dumps({"prompt": text, "referring_phrase": u["referring_phrase"],
                                         "edit_phrase": u["edit_phrase"]}))
    # propose mode
    ref = u["object_description"]
    if u["edit_type"] == "remove":
        return Reply(content=json.dumps({"prompt": f"Please remove {ref}.", "referring_phrase": ref,
                                         "edit_phrase": "remove", "edit_target": ""}))
    target = (u.get("allowed_targets") or ["a dragon"])[-1]
    verb = "replace" if u["edit_type"] == "replace" else "make"
    text = f"Please {verb} {ref} with {target}." if verb == "replace" else f"Please make {ref} {target}."
    return Reply(content=json.dumps({"prompt": text, "referring_phrase": ref, "edit_phrase": target,
                                     "edit_target": target}))


def _item(expr="the zebra on the left", target="giraffe", etype="replace", category="zebra", seed=1):
    p = make_prompt(etype, expr, target, np.random.default_rng(seed))
    return {"sample_id": f"s{seed}", "edit_type": etype, "edit_target": target, "referring_expression": expr,
            "category": category, "prompt": p, "seed": seed}


def _rephraser(srv, tmp_path, **kw):
    kw.setdefault("max_retries", 2)
    kw.setdefault("timeout", 5.0)
    cfg = RephraseConfig(model="m", base_url=srv.base_url, **kw)
    return LLMRephraser(cfg, LLMCache(tmp_path / "cache.sqlite"))


@pytest.fixture()
def srv():
    os.environ.setdefault("OPENAI_API_KEY", SECRET)
    with running() as s:
        s.script(good_rephrase)
        yield s


# -- validation ----------------------------------------------------------------------------------

def test_key_words_keep_head_noun_and_spatial_colour_words():
    assert key_words("the red cup on the left", "cup") == ["red", "left", "cup"]
    assert "guy" in key_words("guy in red shirt", "person")
    assert key_words("closest teddy", "teddy bear") == ["closest", "teddy"]


def test_validate_recomputes_spans_and_rejects_each_defect():
    item = _item()
    cfg = RephraseConfig(model="m")
    good = {"prompt": "Swap the zebra on the left for a giraffe.", "referring_phrase": "the zebra on the left",
            "edit_phrase": "a giraffe"}
    p = validate(good, item, cfg)
    assert p.text[p.referring_span[0]:p.referring_span[1]] == "the zebra on the left"
    assert p.text[p.edit_span[0]:p.edit_span[1]] == "a giraffe" and p.source == "llm:m"
    cases = {
        "llm_span_missing": dict(good, edit_phrase="a tall giraffe"),
        "llm_lost_referent": dict(good, prompt="Swap the zebra for a giraffe.", referring_phrase="the zebra"),
        "llm_target_changed": dict(good, prompt="Swap the zebra on the left for a horse.", edit_phrase="a horse"),
        "llm_empty": dict(good, prompt="   "),
        "llm_too_long": dict(good, prompt="Swap the zebra on the left for a giraffe. Then go home. " * 5),
        "llm_bad_json": {"prompt": "x"},
    }
    for reason, obj in cases.items():
        with pytest.raises(RephraseRejected) as e:
            validate(obj, item, cfg)
        assert e.value.reason == reason, (reason, str(e.value))


# -- against the server ------------------------------------------------------------------------------

def test_good_answer(srv, tmp_path):
    rp = _rephraser(srv, tmp_path)
    (p,) = rp.write([_item()])
    assert p.source == "llm:m" and p.text.startswith("In this photo, ")
    assert p.text[p.referring_span[0]:p.referring_span[1]] == "the zebra on the left"
    assert srv.count() == 1 and rp.calls == 1
    body = srv.requests[-1]["body"]
    assert body["model"] == "m" and body["response_format"] == {"type": "json_object"}
    assert srv.requests[-1]["headers"]["authorization"] == f"Bearer {os.environ['OPENAI_API_KEY']}"


@pytest.mark.parametrize("bad,reason", [
    (Reply(content="this is not json"), "llm_bad_json"),
    (Reply(content=json.dumps({"prompt": "Swap the zebra for a giraffe.", "referring_phrase": "the zebra",
                               "edit_phrase": "a giraffe"})), "llm_lost_referent"),
    (Reply(content="I'm sorry, but I can't help with that."), "llm_refusal"),
    (Reply(content=None, refusal="I cannot assist with this request."), "llm_refusal"),
])
def test_rejected_answer_is_asked_again_then_quarantined(srv, tmp_path, bad, reason):
    # first: one bad answer, then a good one -> accepted on the second attempt, with feedback
    srv.enqueue(bad)
    rp = _rephraser(srv, tmp_path)
    (p,) = rp.write([_item()])
    assert p.source == "llm:m" and srv.count() == 2
    feedback = srv.requests[-1]["body"]["messages"][-1]["content"]
    assert "rejected" in feedback
    # then: always bad -> quarantined with the reason after `attempts` answers
    srv.reset()
    srv.script(lambda body: bad)
    rp = _rephraser(srv, tmp_path / "b", attempts=3)
    (err,) = rp.write([_item()])
    assert isinstance(err, RephraseRejected) and err.reason == reason
    assert srv.count() == 3


def test_429_with_retry_after_is_honoured(srv, tmp_path):
    srv.enqueue(Reply(status=429, headers={"Retry-After": "1"}))
    rp = _rephraser(srv, tmp_path)
    t0 = time.monotonic()
    (p,) = rp.write([_item()])
    assert time.monotonic() - t0 >= 0.9
    assert p.source == "llm:m" and srv.count() == 2


def test_long_retry_after_is_waited_out_by_us(srv, tmp_path):
    # the client gives up at once on Retry-After > 120 s; we wait it out when max_wait allows
    srv.enqueue(Reply(status=429, headers={"retry-after-ms": "150000", "Retry-After": "150"}))
    rp = _rephraser(srv, tmp_path, max_wait=0.1)
    with pytest.raises(RunError, match="429"):
        rp.write([_item()])


def test_500_then_success(srv, tmp_path):
    srv.enqueue(Reply(status=500), Reply(status=503))
    rp = _rephraser(srv, tmp_path)
    (p,) = rp.write([_item()])
    assert p.source == "llm:m" and srv.count() == 3


def test_persistent_500_stops_the_run_with_a_clear_message(srv, tmp_path):
    srv.script(lambda body: Reply(status=500))
    rp = _rephraser(srv, tmp_path, max_retries=1)
    with pytest.raises(RunError, match=r"answered HTTP 500 after 1 retries.*re-run"):
        rp.write([_item()])


def test_timeout(srv, tmp_path):
    srv.enqueue(Reply(delay=2.0, content="{}"))
    rp = _rephraser(srv, tmp_path, timeout=0.3, max_retries=0)
    with pytest.raises(RunError, match="did not answer within 0.3s"):
        rp.write([_item()])


def test_server_down(tmp_path):
    cfg = RephraseConfig(model="m", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout=2)
    rp = LLMRephraser(cfg, LLMCache(tmp_path / "c.sqlite"))
    with pytest.raises(RunError, match="cannot reach the LLM server at http://127.0.0.1:9/v1"):
        rp.write([_item()])


def test_bad_key_is_usage_error_without_the_key(srv, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    srv.script(lambda body: Reply(status=401))
    rp = _rephraser(srv, tmp_path)
    with pytest.raises(InputError) as e:
        rp.write([_item()])
    assert "rejected the API key" in str(e.value) and SECRET not in str(e.value)


def test_rerun_makes_zero_calls_and_cache_survives_reopen(srv, tmp_path):
    items = [_item(seed=k) for k in range(5)]
    first = _rephraser(srv, tmp_path).write(items)
    assert srv.count() == 5
    srv.reset()
    srv.script(lambda body: Reply(status=500))  # any request now would fail the test
    again = _rephraser(srv, tmp_path)  # a new process: new client, cache reopened from disk
    second = again.write(items)
    assert srv.count() == 0 and again.calls == 0 and again.cache_hits == 5
    assert [p.text for p in first] == [p.text for p in second]


def test_propose_mode_validates_targets(srv, tmp_path):
    rp = _rephraser(srv, tmp_path, mode="propose")
    item = dict(_item(), allowed_targets=["cow", "zebra"])
    srv.script(lambda body: Reply(content=json.dumps({"prompt": "Replace the zebra on the left with zebra.",
                                                      "referring_phrase": "the zebra on the left",
                                                      "edit_phrase": "zebra", "edit_target": "zebra"})))
    (err,) = rp.write([item])
    assert isinstance(err, RephraseRejected) and err.reason == "llm_target_changed"
    srv.script(good_rephrase)
    rp = _rephraser(srv, tmp_path / "p2", mode="propose")
    (p,) = rp.write([dict(item, allowed_targets=["zebra", "cow"])])
    assert p.edit_phrase == "cow" and rp.targets["s1"] == "cow"


def test_batch_mode_end_to_end_and_resume(tmp_path):
    items = [_item(seed=k) for k in range(6)]
    with running(batch_polls_until_done=1) as s:
        s.script(good_rephrase)
        s.enqueue(Reply(content="garbage"))  # one line needs a second round
        rp = _rephraser(s, tmp_path)
        runner = BatchRunner(rp, tmp_path / "batches.json", poll_interval=0.01, log=lambda m: None)
        info = runner.run(items)
        assert info["rounds"] == 2 and s.count() == 0 and s.batch_lines_processed == 7
        out = rp.write(items)
        assert all(p.source == "llm:m" for p in out) and s.count() == 0  # everything from the cache
        # merging again is idempotent: nothing new to ask
        assert BatchRunner(rp, tmp_path / "batches.json", poll_interval=0.01, log=lambda m: None).run(items)["rounds"] == 0


def _build_cfg(demo_dir, out, url, **kw):
    return BuildConfig.of(out=str(out), refcoco=str(demo_dir), images=str(demo_dir / "images"), num_images=kw.pop("num_images", 6),
                       progress=False, llm_model="m", llm_base_url=url, llm_max_retries=1, llm_timeout=5, **kw)


def test_build_rephrases_every_sample_or_quarantines_and_rerun_makes_zero_requests(srv, demo_dir, tmp_path):
    # every 5th request gets a refusal forever for its sample? no: one sample always refused
    refused = {}

    def handler(body):
        u = _user(body)
        if not refused:
            refused["instruction"] = u.get("instruction")
        if u.get("instruction") == refused["instruction"]:
            return Reply(content="I'm sorry, I can't help with that.")
        return good_rephrase(body)

    srv.script(handler)
    res = build(_build_cfg(demo_dir, tmp_path / "w", srv.base_url), log=lambda m: None)
    rows = load_export(res.export_dir).to_pylist()
    assert len(rows) == res.selection["samples"] - 1
    assert all(r["prompt_source"] == "llm:m" for r in rows)
    for r in rows:
        a, b = r["referring_span"]
        assert r["prompt"][a:b] == r["referring_expression"]
    assert res.quarantine == {"prompts": {"llm_refusal": 1}}
    calls = srv.count()
    assert res.counts["llm_calls"] == calls == res.selection["samples"] + 2  # the refused one was asked 3 times
    card = (res.export_dir / "README.md").read_text()
    assert "LLM `m`" in card
    # a second run, even one that redoes every stage, makes zero requests
    res2 = build(_build_cfg(demo_dir, tmp_path / "w", srv.base_url, overwrite=True), log=lambda m: None)
    assert srv.count() == calls and res2.counts["llm_calls"] == 0 and res2.counts["llm_cache_hits"] == calls
    assert load_export(res2.export_dir).to_pylist() == rows


def test_build_cli_service_failures_are_clear_and_resumable(srv, demo_dir, tmp_path):
    w = tmp_path / "w"
    args = ("build", "--out", str(w), "--refcoco", str(demo_dir), "--images", str(demo_dir / "images"),
            "--num-images", "4", "--shard-size", "2", "--llm-model", "m", "--llm-max-retries", "0")
    env = {"OPENAI_API_KEY": SECRET}
    # server down: exit 1, one line, nothing lost
    r = run_cli(*args, "--llm-base-url", "http://127.0.0.1:9/v1", env=env)
    assert r.returncode == 1 and "cannot reach the LLM server" in r.stderr and r.stderr.count("\n") == 1
    # 401: exit 2, the key never printed
    srv.script(lambda body: Reply(status=401))
    r = run_cli(*args, "--llm-base-url", srv.base_url, env=env)
    assert r.returncode == 2 and "rejected the API key" in r.stderr
    assert SECRET not in r.stderr and SECRET not in r.stdout
    # first shard works, then the server fails: the done shard is kept
    n = {"k": 0}

    def flaky(body):
        n["k"] += 1
        return good_rephrase(body) if n["k"] <= 2 else Reply(status=500)

    srv.script(flaky)
    r = run_cli(*args, "--llm-base-url", srv.base_url, env=env)
    assert r.returncode == 1 and "HTTP 500" in r.stderr
    assert (w / "prompts" / "shard-00000.stats.json").exists()
    srv.script(good_rephrase)
    before = srv.count()
    r = run_cli(*args, "--llm-base-url", srv.base_url, env=env)
    assert r.returncode == 0, r.stderr
    assert srv.count() - before == 8 - 2  # the first shard's two answers were not asked again
    assert SECRET not in r.stderr + r.stdout


def test_build_batch_mode_resumes_after_sigkill(demo_dir, tmp_path):
    w = tmp_path / "w"
    with running(batch_polls_until_done=10_000) as s:  # the batch stays in progress while we kill
        s.script(good_rephrase)
        cmd = [sys.executable, "-m", "refcoco_edit", "build", "--out", str(w), "--refcoco", str(demo_dir),
               "--images", str(demo_dir / "images"), "--num-images", "4", "--llm-model", "m",
               "--llm-base-url", s.base_url, "--llm-batch", "--llm-batch-poll", "0.05"]
        env = dict(os.environ, PYTHONPATH=str(REPO), OPENAI_API_KEY=SECRET)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        state = w / "llm" / "batches.json"
        deadline = time.monotonic() + 60
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        batch_id = json.loads(state.read_text())["batches"][0]["id"]
        s.batch_polls_until_done = 1
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        batches = [q for q in s.requests if q["method"] == "POST" and q["path"].endswith("/batches")]
        assert len(batches) == 1, "the resumed run submitted a second batch"
        assert json.loads(state.read_text())["batches"][0]["id"] == batch_id
        assert s.count() == 0 and s.batch_lines_processed == 8
        rows = load_export(w / "export").to_pylist()
        assert len(rows) == 8 and all(r["prompt_source"] == "llm:m" for r in rows)


def test_cache_entries_survive_sigkill_mid_stage(demo_dir, tmp_path):
    """Answers received before a kill -9 are not asked again (the shard was not finished)."""
    w = tmp_path / "w"
    with running() as s:
        s.script(lambda body: (time.sleep(0.15), good_rephrase(body))[1])
        cmd = [sys.executable, "-m", "refcoco_edit", "build", "--out", str(w), "--refcoco", str(demo_dir),
               "--images", str(demo_dir / "images"), "--num-images", "6", "--shard-size", "12",
               "--llm-model", "m", "--llm-base-url", s.base_url, "--llm-concurrency", "1"]
        env = dict(os.environ, PYTHONPATH=str(REPO), OPENAI_API_KEY=SECRET)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 60
        while s.count() < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        asked = s.count()
        assert 5 <= asked < 12 and not (w / "prompts" / "shard-00000.stats.json").exists()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        # at most the one request in flight at the kill is asked twice
        assert s.count() - asked <= 12 - asked + 1
        assert f"LLM m: {12 - asked}" in r.stdout or f"LLM m: {12 - asked + 1}" in r.stdout
