"""The VLM judge of `refcoco-edit score --judge` / `refcoco-edit judge RESULTS`, through the real
openai client against a loopback server whose "model" looks at the images it receives
(``support.fake_judge``): acceptance (identity, oracle, an editor that edits a distractor), answer
validation and re-asks, service failures, the cache (zero requests on a re-run, SIGKILL then
resume), passes, reports."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import REPO, nan_eq
from refcoco_edit.export import load_export
from refcoco_edit.benchmark.data import decode_sample, load_dataset
from refcoco_edit.benchmark.harness import ScoreConfig, run_score
from refcoco_edit.build import BuildConfig, build
from refcoco_edit.cli import main
from support.fake_judge import JudgeOracle
from support.fake_openai import Reply, running

N = 12  # samples of the 6-image demo build


@pytest.fixture(scope="module")
def export(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("judge-build")
    return build(BuildConfig.of(out=str(out), refcoco=str(demo_dir), images=str(demo_dir / "images"), num_images=6,
                                progress=False), log=lambda s: None).export_dir


@pytest.fixture(scope="module")
def samples(export):
    return load_dataset(export).samples


@pytest.fixture
def srv(samples):
    with running() as s:
        s.oracle = JudgeOracle(samples)
        s.script(s.oracle)
        yield s
    assert not s.oracle.errors, s.oracle.errors[:3]  # every image that reached the judge was the right one


def _score(export, out, srv=None, model="identity", **kw):
    kw.setdefault("plots", False)
    kw.setdefault("bootstrap", 100)
    if srv is not None:
        kw.setdefault("judge", "fake-vlm")
        kw.setdefault("judge_base_url", srv.base_url)
        kw.setdefault("judge_max_retries", 0)
    return run_score(ScoreConfig(model=model, data=str(export), out=str(out), **kw), log=lambda s: None)


def _rows(out):
    return pq.read_table(Path(out) / "samples.parquet").to_pylist()


def _mean(res, name):
    return res.results["judge"]["metrics"][name]["mean"]


# ----------------------------------------------------------------------------------------------
# acceptance: the right images reach the judge
# ----------------------------------------------------------------------------------------------


def test_identity_gets_the_minimum_and_oracle_the_maximum(export, srv, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-judge-key-123")
    ident = _score(export, tmp_path / "identity", srv, judge_api_key_env="JUDGE_TEST_KEY")
    j = ident.results["judge"]
    assert j["counts"] == {"samples": N, "answers": 4 * N, "valid": 4 * N, "failed": 0, "failed_by_reason": {}}
    assert _mean(ident, "vie_sc") == 0.0 and _mean(ident, "vie_o") == 0.0  # SC at its minimum
    for p in ("blind", "marked"):
        assert _mean(ident, f"judge_ref_acc_{p}") == 0.0 and _mean(ident, f"judge_target_edited_{p}") == 0.0
        assert _mean(ident, f"judge_distr_pres_{p}") == 1.0 and _mean(ident, f"judge_agree_{p}") == 1.0
    oracle = _score(export, tmp_path / "oracle", srv, model="oracle")
    assert _mean(oracle, "vie_sc") == 10.0  # the maximum
    for p in ("blind", "marked"):
        assert _mean(oracle, f"judge_ref_acc_{p}") == 1.0 and _mean(oracle, f"judge_distr_pres_{p}") == 1.0
        a = oracle.results["judge"]["agreement"][p]["referring_accuracy"]
        # the pixel metric needs a same-category distractor (the demo keeps some samples by
        # visual likeness alone): agreement is counted where both answered
        n_same = sum(1 for r in load_export(export).to_pylist() if r["category"] in (r["distractor_categories"] or []))
        assert 0 < n_same <= N
        assert a["n"] == n_same and a["agreement"] == 1.0 and a["confusion"]["judge_1_pixel_1"] == n_same
    # every question of every sample was asked, each with its images checked by the server
    seen = {(k, sid) for k, sid in srv.oracle.seen if sid}
    assert {k for k, _ in seen} == {"sc", "ref_blind", "ref_marked"} and len(seen) == 3 * N
    # what results.json records of the judge: model, host class, prompt version, params; never the key
    assert j["model"] == "fake-vlm" and j["base_url_class"] == "loopback"
    assert j["prompt_version"] == "refcoco-edit-judge-2" and j["params"]["passes"] == 1
    assert j["params"]["protocols"] == ["blind", "marked"] and j["params"]["temperature"] == 0.0
    assert srv.requests[0]["headers"]["authorization"] == "Bearer sk-secret-judge-key-123"
    for f in [p for p in (tmp_path / "identity").rglob("*") if p.is_file()]:
        assert b"sk-secret-judge-key-123" not in f.read_bytes(), f
    # the per-edit-type breakdown and the columns of samples.parquet
    assert set(j["metrics"]["vie_sc"]["by_edit_type"]) == {"replace", "remove", "attribute"}
    rows = _rows(ident.out)
    assert all(r["vie_sc"] == 0.0 and r["judge_ref_acc_blind"] == 0.0 for r in rows)
    ans = json.loads(rows[0]["judge_answers"])
    assert set(ans) == {"sc", "pq", "ref_blind", "ref_marked"} and ans["ref_blind"][0]["target_edited"] is False
    raw = pq.read_table(ident.out / "judge" / "answers.parquet").to_pylist()
    assert len(raw) == 4 * N and all(r["valid"] and r["content"] for r in raw)  # the raw judge text is kept


class _DistractorEditor:
    """Writes, for each sample, the source with its same-category distractors inverted (the
    referred object untouched): outputs for the dir: adapter."""

    @staticmethod
    def write(samples, folder: Path) -> None:
        from refcoco_edit.imageio import encode_png

        folder.mkdir(parents=True, exist_ok=True)
        for s in samples:
            d = decode_sample(s, reference=False)
            out = d.source.copy()
            for m in d.distractor_masks:
                sel = m.astype(bool) & ~d.target_mask.astype(bool)
                out[sel] = 255 - out[sel]
            (folder / f"{s.sample_id}.png").write_bytes(encode_png(out))


def test_an_editor_that_edits_a_distractor_is_caught(export, samples, srv, tmp_path):
    _DistractorEditor.write(samples, tmp_path / "wrong")
    res = _score(export, tmp_path / "r", srv, model=f"dir:{tmp_path / 'wrong'}")
    m = res.results["metrics"]
    assert m["referring_accuracy"]["mean"] == 0.0 and m["distractor_preservation"]["mean"] == 0.0
    for p in ("blind", "marked"):
        assert _mean(res, f"judge_ref_acc_{p}") == 0.0
        assert _mean(res, f"judge_distr_pres_{p}") == 0.0  # the judge saw the look-alike change
        assert _mean(res, f"judge_target_edited_{p}") == 0.0
        assert _mean(res, f"judge_agree_{p}") == 1.0
    assert _mean(res, "vie_sc") < 3.0


# ----------------------------------------------------------------------------------------------
# the cache: a re-run pays nothing, a killed run never pays twice
# ----------------------------------------------------------------------------------------------


def test_a_rerun_makes_zero_requests_and_writes_the_same_bytes(export, srv, tmp_path):
    first = _score(export, tmp_path / "r", srv, model="oracle")
    sent = srv.count()
    assert sent == 4 * N and first.timing["judge"]["requests"] == sent
    again = _score(export, tmp_path / "r", srv, model="oracle")
    assert srv.count() == sent  # zero requests: the server counts
    assert again.timing["judge"] == {**again.timing["judge"], "requests": 0, "cache_hits": 4 * N}
    assert nan_eq(again.results, first.results) and nan_eq(_rows(again.out), _rows(first.out))


def test_the_judge_command_equals_score_with_judge(export, srv, tmp_path, capsys):
    plain = _score(export, tmp_path / "plain", model="oracle")
    assert "judge" not in plain.results and not any(k.startswith(("vie_", "judge_")) for k in _rows(plain.out)[0])
    judged = _score(export, tmp_path / "judged", srv, model="oracle")
    assert main(["judge", str(plain.out), "--judge", "fake-vlm", "--judge-base-url", srv.base_url,
                 "--judge-cache", str(tmp_path / "judged" / "judge" / "cache.sqlite"), "--no-progress"]) == 0
    assert srv.count() == 4 * N  # the shared cache answered everything
    assert (plain.out / "results.json").read_bytes() == (judged.out / "results.json").read_bytes()
    assert nan_eq(_rows(plain.out), _rows(judged.out))
    assert "vie_sc" in capsys.readouterr().out


SLOW = "import sys; from refcoco_edit.cli import main; sys.exit(main(sys.argv[1:]))"


def test_sigkill_during_judging_then_rerun_equals_an_uninterrupted_run(export, samples, tmp_path):
    base = _score(export, tmp_path / "base", model="oracle")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    shutil.copytree(base.out, killed)
    shutil.copytree(base.out, clean)
    oracle = JudgeOracle(samples)
    with running() as srv:
        srv.script(lambda body: (time.sleep(0.15), oracle(body))[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.Popen([sys.executable, "-c", SLOW, "judge", str(killed), "--judge", "fake-vlm",
                                 "--judge-base-url", srv.base_url, "--judge-concurrency", "2", "--no-progress"],
                                env=env, cwd=str(tmp_path))
        deadline = time.time() + 60
        while time.time() < deadline and srv.count() < 14:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with sqlite3.connect(str(killed / "judge" / "cache.sqlite")) as db:
            cached = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        assert 10 <= cached < 4 * N, cached
        before = srv.count()
        srv.script(oracle)
        assert main(["judge", str(killed), "--judge", "fake-vlm", "--judge-base-url", srv.base_url,
                     "--no-progress"]) == 0
        assert srv.count() - before == 4 * N - cached  # only what the killed run had not received
        assert main(["judge", str(clean), "--judge", "fake-vlm", "--judge-base-url", srv.base_url,
                     "--no-progress"]) == 0
    assert not oracle.errors
    assert (killed / "results.json").read_bytes() == (clean / "results.json").read_bytes()
    assert nan_eq(_rows(killed), _rows(clean))


# ----------------------------------------------------------------------------------------------
# answers that cannot be used: re-asked once with the reason, then a judge failure (never a zero)
# ----------------------------------------------------------------------------------------------


def test_bad_answers_are_reasked_then_recorded_as_failures(export, samples, tmp_path):
    ids = [s.sample_id for s in samples]
    plan = {
        (ids[0], "sc"): lambda reask: Reply(content="the edit looks fine, 8/10"),
        (ids[1], "ref_blind"): lambda reask: Reply(content=None, refusal="I can't help with that."),
        (ids[2], "sc"): lambda reask: Reply(content='{"score": [11, 5], "reasoning": "x"}'),
        (ids[3], "ref_marked"): lambda reask: Reply(content='{"target_edited": true, "distractors_changed": 5, '
                                                            '"other_changed": false}'),
        (ids[4], "sc"): lambda reask: None if reask else Reply(content="```json\n{\"score\": [3]}\n```"),
        (ids[5], "ref_blind"): lambda reask: Reply(content='{"target_edited": tr', finish_reason="length"),
        (ids[6], "ref_marked"): lambda reask: Reply(content="I'm sorry, but I cannot assess these images."),
        (ids[7], "sc"): lambda reask: Reply(content="   "),
    }
    oracle = JudgeOracle(samples, fault=lambda kind, sid, reask: plan[(sid, kind)](reask) if (sid, kind) in plan else None)
    with running() as srv:
        srv.script(oracle)
        res = _score(export, tmp_path / "r", srv, model="oracle", judge_concurrency=2)
        reasks = [r for r in srv.requests if len(r["body"]["messages"]) == 4]
    assert not oracle.errors
    j = res.results["judge"]
    assert j["counts"]["failed_by_reason"] == {"judge_bad_json": 1, "judge_empty": 1, "judge_out_of_range": 2,
                                               "judge_refusal": 2, "judge_truncated": 1}
    assert {(f["sample_id"], f["question"]) for f in j["failures"]} == set(plan) - {(ids[4], "sc")}
    assert len(reasks) == len(plan)  # each bad answer was asked again once, with the reason
    assert all("could not be used" in r["body"]["messages"][3]["content"] for r in reasks)
    rows = {r["sample_id"]: r for r in _rows(res.out)}
    assert math.isnan(rows[ids[0]]["vie_sc"]) and math.isnan(rows[ids[0]]["vie_o"])  # not a zero
    assert rows[ids[4]]["vie_sc"] == 10.0  # recovered on the re-ask
    assert math.isnan(rows[ids[1]]["judge_ref_acc_blind"]) and rows[ids[1]]["judge_ref_acc_marked"] == 1.0
    m = j["metrics"]
    assert m["vie_sc"]["n"] == N - 3 and m["vie_sc"]["n_failed"] == 3 and m["vie_sc"]["mean"] == 10.0
    assert m["judge_ref_acc_marked"]["n_failed"] == 2 and m["judge_ref_acc_blind"]["n_failed"] == 2
    raw = pq.read_table(res.out / "judge" / "answers.parquet").to_pylist()
    first = [r for r in raw if r["sample_id"] == ids[4] and r["question"] == "sc"]
    assert [(r["attempt"], r["valid"], r["reason"]) for r in first] == [(0, False, "judge_bad_json"), (1, True, None)]
    md = (res.out / "report.md").read_text()
    assert "### Judge failures" in md and "`judge_out_of_range` | 2" in md


# ----------------------------------------------------------------------------------------------
# the service: 429 + Retry-After, 500s, timeouts, a bad key, a dead server
# ----------------------------------------------------------------------------------------------


def test_rate_limits_server_errors_and_timeouts_are_retried(export, srv, tmp_path):
    clean = _score(export, tmp_path / "clean", srv, model="oracle", limit=2)
    n = srv.count()
    srv.enqueue(Reply(status=429, headers={"Retry-After": "1"}))
    t0 = time.monotonic()
    a = _score(export, tmp_path / "429", srv, model="oracle", limit=2, judge_concurrency=1,
               judge_cache=str(tmp_path / "c429.sqlite"))
    assert time.monotonic() - t0 >= 1.0 and srv.count() - n == 9  # waited out, asked again
    n = srv.count()
    srv.enqueue(Reply(status=500), Reply(status=503))
    b = _score(export, tmp_path / "500", srv, model="oracle", limit=2, judge_concurrency=1, judge_max_retries=2,
               judge_cache=str(tmp_path / "c500.sqlite"))
    assert srv.count() - n == 10
    n = srv.count()
    srv.enqueue(Reply(delay=2.0))
    c = _score(export, tmp_path / "slow", srv, model="oracle", limit=2, judge_concurrency=1, judge_max_retries=1,
               judge_timeout=0.5, judge_cache=str(tmp_path / "cslow.sqlite"))
    assert srv.count() - n == 9
    for r in (a, b, c):
        assert r.results["judge"] == clean.results["judge"]  # nothing was scored differently or lost


def test_a_server_that_keeps_failing_stops_the_run_and_it_resumes(export, srv, tmp_path, capsys):
    failing = {"n": 0}

    def flaky(body):
        failing["n"] += 1
        return Reply(status=500) if failing["n"] > 3 else srv.oracle(body)

    srv.script(flaky)
    out = tmp_path / "r"
    args = ["score", "--model", "oracle", "--data", str(export), "--out", str(out), "--limit", "2", "--no-plots",
            "--no-progress", "--judge", "fake-vlm", "--judge-base-url", srv.base_url, "--judge-max-retries", "0",
            "--judge-concurrency", "1"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HTTP 500" in err[0] and "re-run" in err[0]
    assert not (out / "results.json").exists()
    srv.script(srv.oracle)
    n = srv.count()
    assert main(args) == 0
    assert srv.count() - n == 8 - 3  # the three answers received before are not asked again
    srv.stop()  # a dead server
    assert main(["judge", str(out), "--judge", "other-vlm", "--judge-base-url", srv.base_url,
                 "--judge-max-retries", "0"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach" in err and "re-run" in err


def test_a_rejected_key_is_exit_2(export, srv, tmp_path, capsys):
    srv.script(lambda body: Reply(status=401))
    assert main(["score", "--model", "identity", "--data", str(export), "--out", str(tmp_path / "r"), "--limit", "1",
                 "--no-plots", "--no-progress", "--judge", "fake-vlm", "--judge-base-url", srv.base_url]) == 2
    assert "rejected the API key" in capsys.readouterr().err


def test_unusable_judge_settings_stop_before_editing(export, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    from refcoco_edit.errors import InputError

    with pytest.raises(InputError, match="needs an API key"):
        _score(export, tmp_path / "a", model="identity", judge="gpt-x")
    assert not list((tmp_path / "a" / "outputs").glob("*.png"))
    with pytest.raises(InputError, match="--judge-protocols"):
        _score(export, tmp_path / "b", model="identity", judge="x", judge_base_url="http://127.0.0.1:9/v1",
               judge_protocols=["sideways"])
    with pytest.raises(InputError, match="--judge-passes"):
        _score(export, tmp_path / "c", model="identity", judge="x", judge_base_url="http://127.0.0.1:9/v1",
               judge_passes=0)


# ----------------------------------------------------------------------------------------------
# passes, reports, pieces
# ----------------------------------------------------------------------------------------------


def test_passes_are_separate_requests_and_their_spread_is_reported(export, srv, tmp_path):
    res = _score(export, tmp_path / "r", srv, model="oracle", limit=3, judge_passes=3, judge_temperature=0.7)
    assert srv.count() == 3 * 4 * 3
    assert sorted({r["body"]["seed"] for r in srv.requests}) == [0, 1, 2]
    j = res.results["judge"]
    assert j["params"]["passes"] == 3 and j["metrics"]["vie_sc_spread"]["mean"] == 0.0  # a deterministic judge
    assert j["pass_agreement"]["blind"] == {"n": 3, "unanimous": 1.0}
    assert len(json.loads(_rows(res.out)[0]["judge_answers"])["sc"]) == 3
    assert "self-consistency" in (res.out / "report.md").read_text()


def test_report_and_gallery_show_the_judge(export, srv, tmp_path):
    judged = _score(export, tmp_path / "j", srv, model="oracle")
    plain = _score(export, tmp_path / "p", model="identity")
    md = (judged.out / "report.md").read_text()
    assert "## VLM judge" in md and "| VIE-SC ↑ |" in md and "J-Ref-Acc (blind)" in md and "Ref-Acc (pixel)" in md
    assert "10.00 [10.00, 10.00]" in md and "### Judge by edit type" in md and "Cohen's kappa" in md
    page = (judged.out / "gallery.html").read_text()
    assert page.count('class="m judge"') == N and "target edited, 0 distractor(s) changed" in page
    assert "## VLM judge" not in (plain.out / "report.md").read_text()
    assert main(["report", str(judged.out), str(plain.out), "--out", str(tmp_path / "cmp"), "--no-plots"]) == 0
    cmp = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert "judge" in cmp["runs"][0] and "judge" not in cmp["runs"][1]
    assert "## VLM judge" in (tmp_path / "cmp" / "report.md").read_text()


def test_answer_validation_and_host_classes():
    from refcoco_edit.benchmark.judge.client import host_class
    from refcoco_edit.benchmark.judge.protocol import JudgeRejected, Question, parse_answer

    q = Question("sc", "p", "r", "e", "cow", 1)
    assert parse_answer(q, '```json\n{"score": [7, 10], "reasoning": "ok"}\n```', None, "stop")["score"] == [7, 10]
    for content, reason in (('{"score": [7]}', "judge_bad_json"), ('{"score": [-1, 3]}', "judge_out_of_range"),
                            ('{"score": ["7", 3]}', "judge_bad_json"), ("[1, 2]", "judge_bad_json")):
        with pytest.raises(JudgeRejected) as e:
            parse_answer(q, content, None, "stop")
        assert e.value.reason == reason, content
    r = Question("ref_blind", "p", "r", "e", "cow", 0)
    with pytest.raises(JudgeRejected, match="above the maximum"):
        parse_answer(r, '{"target_edited": true, "distractors_changed": 1, "other_changed": false}', None, "stop")
    assert host_class(None) == "openai" and host_class("https://api.openai.com/v1") == "openai"
    assert host_class("http://127.0.0.1:8000/v1") == "loopback" and host_class("http://localhost:1/v1") == "loopback"
    assert host_class("http://10.1.2.3:8000/v1") == "private" and host_class("http://gpu-box:8000/v1") == "private"
    assert host_class("https://example.com/v1") == "public"


def test_the_marked_source_outlines_only_the_referred_object(samples):
    from refcoco_edit.benchmark.judge.images import marked_source
    from refcoco_edit.imageio import decode_image_bytes

    d = decode_sample(samples[0], reference=False)
    marked = decode_image_bytes(marked_source(d.source, d.target_mask))
    diff = np.any(marked != d.source, axis=2)
    assert diff.any() and np.all(marked[diff] == (255, 0, 255))
    ys, xs = np.nonzero(d.target_mask)
    dy, dx = np.nonzero(diff)
    assert dy.min() >= ys.min() - 5 and dy.max() <= ys.max() + 5 and dx.min() >= xs.min() - 5 and dx.max() <= xs.max() + 5

