"""Benchmark: VLM judge throughput (`refcoco-edit judge RESULTS`) against the loopback
OpenAI-compatible server, with one request in flight vs ``--judge-concurrency N``, in the same run.

The data: the demo build (12 samples quick, 48 full), scored with ``--model oracle`` once (no
judge), so only judging is timed. The server is the test suite's (``tests/support/fake_openai``
with the image-reading judge of ``tests/support/fake_judge``): it decodes both images, checks them
and answers from their pixel difference, then waits ``latency_s`` per request, standing in for a
VLM's time to answer (a real one takes seconds; the ratio is what this measures).

* baseline: ``--judge-concurrency 1``;
* ours: ``--judge-concurrency N`` (N = 8);

each with its own empty cache, so every question is a request (4 per sample: sc, pq, ref_blind,
ref_marked). Reported: wall seconds of each, ``ratio`` = ours / baseline (below 1 is faster),
requests/s of each and their ratio ``throughput_ratio``; both runs' results.json must be equal.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

REPO = Path(__file__).resolve().parents[1]
FULL = dict(num_images=24, latency_s=0.1, concurrency=8)
QUICK = dict(num_images=6, latency_s=0.1, concurrency=8)


def _judge(run_dir: Path, url: str, concurrency: int) -> Dict[str, Any]:
    from refcoco_edit.benchmark.judge.api import judge_existing
    from refcoco_edit.benchmark.score.config import JudgeSettings

    s = JudgeSettings(judge="fake-vlm", judge_base_url=url, judge_concurrency=concurrency, judge_max_retries=0,
                      progress=False)
    t0 = time.perf_counter()
    res = judge_existing(run_dir, s, log=lambda m: None)
    return {"seconds": time.perf_counter() - t0, "requests": res.timing["requests"]}


def run(quick: bool = False) -> Dict[str, Any]:
    """Judge the same run with concurrency 1 and N; see the module docstring."""
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    from support.fake_judge import JudgeOracle
    from support.fake_openai import running

    from refcoco_edit.benchmark.data import load_dataset
    from refcoco_edit.benchmark.harness import ScoreConfig, run_score
    from refcoco_edit.build import BuildConfig, build
    from refcoco_edit.demo import write_demo

    p = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-judge-") as tmp:
        t = Path(tmp)
        write_demo(t / "demo")
        b = build(BuildConfig.of(out=str(t / "work"), refcoco=str(t / "demo"), images=str(t / "demo" / "images"),
                                 num_images=p["num_images"], progress=False), log=lambda s: None)
        base = run_score(ScoreConfig(model="oracle", data=str(b.export_dir), out=str(t / "base"), plots=False,
                                     gallery=False, bootstrap=200, progress=False), log=lambda s: None)
        samples = load_dataset(b.export_dir).samples
        oracle = JudgeOracle(samples)
        one, many = t / "one", t / "many"
        shutil.copytree(base.out, one)
        shutil.copytree(base.out, many)
        with running() as srv:
            srv.script(lambda body: (time.sleep(p["latency_s"]), oracle(body))[1])
            r1 = _judge(one, srv.base_url, 1)
            rn = _judge(many, srv.base_url, p["concurrency"])
        if oracle.errors:
            raise RuntimeError(f"the judge server rejected requests: {oracle.errors[:2]}")
        same = json.loads((one / "results.json").read_text()) == json.loads((many / "results.json").read_text())
        if not same:
            raise RuntimeError("results.json differs between concurrency 1 and N")
        rps1, rpsn = r1["requests"] / r1["seconds"], rn["requests"] / rn["seconds"]
        return {
            "name": "judge",
            "baseline": f"--judge-concurrency 1 ({len(samples)} samples, {r1['requests']} requests, "
                        f"{p['latency_s']:g} s server latency)",
            "baseline_s": round(r1["seconds"], 3),
            "value_s": round(rn["seconds"], 3),
            "ratio": round(rn["seconds"] / r1["seconds"], 3),
            "unit": "s/run",
            "better": "lower",
            "requests_per_s_1": round(rps1, 2),
            "requests_per_s_n": round(rpsn, 2),
            "throughput_ratio": round(rpsn / rps1, 2),
            "concurrency": p["concurrency"],
            "samples": len(samples),
            "notes": f"--judge-concurrency {p['concurrency']}: {rpsn:.1f} vs {rps1:.1f} requests/s "
                     f"({rpsn / rps1:.1f}x); same results.json",
        }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
