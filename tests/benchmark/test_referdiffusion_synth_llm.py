"""Stage-1 prompts ("Paint a {subject} on the {colour} mask") through the LLM rephrasing stage:
the real ``openai`` client against tests/support/fake_openai.py on 127.0.0.1 (no torch needed)."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest

from support.fake_openai import Reply, running

from refcoco_edit.benchmark.referdiffusion.synth import Stage1Rephraser, stage1_prompt, synthesize
from refcoco_edit.errors import RunError


def _user(body):
    return json.loads([m for m in body["messages"] if m["role"] == "user"][0]["content"])


def good(body):
    """Rewrites the wording, keeps both phrases verbatim."""
    u = _user(body)
    text = f"Please {u['edit_phrase']} should be painted over {u['referring_phrase']} here."
    return Reply(content=json.dumps({"prompt": text, "referring_phrase": u["referring_phrase"],
                                     "edit_phrase": u["edit_phrase"]}))


def refuse_giraffes(body):
    u = _user(body)
    if "giraffe" in u["edit_phrase"]:
        return Reply(content="I'm sorry, I can't help with that.")
    if "horse" in u["edit_phrase"]:
        return Reply(content="<<< not json at all")
    if "zebra" in u["edit_phrase"]:  # drops the subject: not a valid rephrase
        text = f"Paint an animal on {u['referring_phrase']}."
        return Reply(content=json.dumps({"prompt": text, "referring_phrase": u["referring_phrase"],
                                         "edit_phrase": "an animal"}))
    return good(body)


@pytest.fixture()
def srv():
    os.environ.setdefault("OPENAI_API_KEY", "sk-test-stage1")
    with running() as s:
        s.script(good)
        yield s


def _opts(srv, **kw):
    return dict({"model": "m", "base_url": srv.base_url, "max_retries": 0, "timeout": 5.0, "attempts": 2}, **kw)


def _scene(seed=0, size=48):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    m = np.zeros((size, size), bool)
    m[10:30, 12:34] = True
    return img, m


def test_rephrased_prompts_are_used_with_valid_spans_and_cached(srv, tmp_path):
    rp = Stage1Rephraser(_opts(srv), cache=tmp_path / "cache.sqlite")
    img, m = _scene()
    a = synthesize(img, m, "the dog on the left", "dog", seed=3, llm_rephrase=rp)
    assert a.prompt.source == "llm:m" and a.prompt_fallback is None
    assert a.prompt.text.startswith("Please a dog should be painted over the ")
    assert a.prompt.edit_phrase == "a dog" and a.prompt.referring_phrase == f"the {a.colour} mask"
    # the rest of the sample is the template-only sample of the same seed
    t = synthesize(img, m, "the dog on the left", "dog", seed=3)
    assert t.prompt == stage1_prompt("dog", a.colour) and t.colour == a.colour
    assert np.array_equal(t.source, a.source) and np.array_equal(t.edit_mask, a.edit_mask)
    assert srv.count() == 1 and rp.requests == 1
    # same seed, same prompt, no new request
    b = synthesize(img, m, "the dog on the left", "dog", seed=3, llm_rephrase=rp)
    assert b.prompt == a.prompt and srv.count() == 1
    # a new process (new rephraser) on the same cache: zero requests, the same prompts
    rp2 = Stage1Rephraser(_opts(srv), cache=tmp_path / "cache.sqlite")
    c = synthesize(img, m, "the dog on the left", "dog", seed=3, llm_rephrase=rp2)
    assert c.prompt == a.prompt and rp2.requests == 0 and rp2.cache_hits == 1 and srv.count() == 1
    body = srv.requests[-1]["body"]
    assert _user(body)["instruction"] == stage1_prompt("dog", a.colour).text


def test_variants_are_picked_by_the_sample_seed(srv, tmp_path):
    rp = Stage1Rephraser(_opts(srv, variants=3), cache=tmp_path / "c.sqlite")
    img, m = _scene()
    texts = set()
    for seed in range(12):
        s = synthesize(img, m, "cat", "cat", seed=seed, llm_rephrase=rp, colours=["red"])
        texts.add(s.prompt.text)
        again = synthesize(img, m, "cat", "cat", seed=seed, llm_rephrase=rp, colours=["red"])
        assert again.prompt == s.prompt
    assert srv.count() == 3  # one request per (subject, colour, variant)
    assert all(t.startswith("Please a cat") for t in texts)
    seeds = sorted(r["body"]["seed"] for r in srv.requests)
    assert seeds == [0, 1, 2]


def test_refusal_and_lost_subject_fall_back_to_the_template_with_a_reason(srv, tmp_path):
    srv.script(refuse_giraffes)
    rp = Stage1Rephraser(_opts(srv), cache=tmp_path / "c.sqlite")
    img, m = _scene()
    g = synthesize(img, m, "the giraffe", "giraffe", seed=1, llm_rephrase=rp)
    assert g.prompt == stage1_prompt("giraffe", g.colour) and g.prompt.source == "template"
    assert g.prompt_fallback.startswith("llm_refusal")
    z = synthesize(img, m, "zebra in back", "zebra", seed=1, llm_rephrase=rp)
    assert z.prompt == stage1_prompt("zebra", z.colour) and z.prompt_fallback.startswith("llm_target_changed")
    h = synthesize(img, m, "horse", "horse", seed=1, llm_rephrase=rp)
    assert h.prompt == stage1_prompt("horse", h.colour) and h.prompt_fallback.startswith("llm_bad_json")
    d = synthesize(img, m, "dog", "dog", seed=1, llm_rephrase=rp)
    assert d.prompt.source == "llm:m"
    summary = rp.summary()
    assert summary["fallback"] == 3 and summary["llm"] == 1
    assert summary["fallback_reasons"] == {"llm_refusal": 1, "llm_target_changed": 1, "llm_bad_json": 1}
    assert srv.count() == 1 + 2 + 2 + 2  # dog once; each rejected answer asked `attempts` (2) times
    recs = {r["subject"]: r for r in rp.records()}
    assert recs["giraffe"]["fallback"].startswith("llm_refusal") and recs["dog"]["fallback"] is None


def test_server_down_is_a_clear_run_error(tmp_path):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    os.environ.setdefault("OPENAI_API_KEY", "sk-test-stage1")
    rp = Stage1Rephraser({"model": "m", "base_url": f"http://127.0.0.1:{port}/v1", "max_retries": 0, "timeout": 2.0},
                         cache=tmp_path / "c.sqlite")
    img, m = _scene()
    with pytest.raises(RunError, match="cannot reach the LLM server"):
        synthesize(img, m, "dog", "dog", seed=0, llm_rephrase=rp)


def test_bad_options_are_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown option"):
        Stage1Rephraser({"model": "m", "temprature": 1}, cache=tmp_path / "c.sqlite")
    with pytest.raises(ValueError, match="needs a model"):
        Stage1Rephraser({}, cache=tmp_path / "c.sqlite")


def _bench_samples():
    from PIL import Image

    from refcoco_edit.benchmark.data import BenchSample
    from refcoco_edit import rle

    out = []
    for i, (expr, cat) in enumerate([("the dog on the left", "dog"), ("man in red", "person"), ("dog", "dog")]):
        img, m = _scene(i, 32)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        text = f"replace {expr} with a cat"
        out.append(BenchSample(sample_id=f"s{i}", split="val", image_id=i, category=cat, edit_type="replace",
                               edit_target="a cat", prompt=text, referring_span=(8, 8 + len(expr)),
                               edit_span=(len(text) - 5, len(text)), source_bytes=buf.getvalue(),
                               reference_bytes=buf.getvalue(), edit_mask=rle.encode(m), source_mask=rle.encode(m),
                               distractor_masks=[]))
    return out


def test_trainer_asks_every_prompt_up_front_and_uses_them(srv, tmp_path):
    from refcoco_edit.benchmark.referdiffusion.train import SampleSource, TrainConfig, load_config

    samples = _bench_samples()
    out = tmp_path / "run"
    cfg = TrainConfig(output_dir=str(out), stage="stage1", resolution=32,
                      synth={"llm_rephrase": _opts(srv), "colours": ["red", "blue"]})
    src = SampleSource(samples, cfg)
    # subjects dog, man x colours red, blue: 4 requests before any sample is drawn
    assert srv.count() == 4
    rec = json.loads((out / "llm" / "stage1_prompts.json").read_text())
    assert rec["summary"]["llm"] == 4 and rec["summary"]["requests"] == 4
    assert {(r["subject"], r["colour"]) for r in rec["prompts"]} == {("dog", "red"), ("dog", "blue"),
                                                                     ("man", "red"), ("man", "blue")}
    assert (out / "llm" / "cache.sqlite").is_file()
    for i in range(3):
        ex = src.get(i, 0)
        assert ex["prompt"].startswith("Please ") and ex["prompt"][slice(*ex["edit_span"])] in ("a dog", "a man")
    assert srv.count() == 4
    # the same config from YAML + command line overrides, resumed in a new "process": no request
    from refcoco_edit.benchmark.referdiffusion import synth

    synth._REGISTRY.clear()
    cfg2 = load_config(None, ["--stage", "stage1", "--output_dir", str(out), "--resolution", "32",
                              "--synth.colours", "[red, blue]", "--synth.llm_rephrase.model", "m",
                              "--synth.llm_rephrase.base_url", srv.base_url, "--synth.llm_rephrase.attempts", "2",
                              "--synth.llm_rephrase.max_retries", "0", "--synth.llm_rephrase.timeout", "5"])
    src2 = SampleSource(samples, cfg2)
    assert srv.count() == 4 and [src2.get(i, 0)["prompt"] for i in range(3)] == [src.get(i, 0)["prompt"] for i in range(3)]


def test_server_down_stops_training_before_anything_is_loaded_or_trained(tmp_path):
    pytest.importorskip("accelerate")
    import socket

    from refcoco_edit.benchmark.referdiffusion.train import TrainConfig, train

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    os.environ.setdefault("OPENAI_API_KEY", "sk-test-stage1")
    out = tmp_path / "run"
    cfg = TrainConfig(pretrained=str(tmp_path / "no-such-model"), output_dir=str(out), stage="stage1", resolution=32,
                      mixed_precision=False,  # as YAML reads `mixed_precision: no`
                      synth={"llm_rephrase": {"model": "m", "base_url": f"http://127.0.0.1:{port}/v1",
                                              "max_retries": 0, "timeout": 2.0}})
    assert cfg.mixed_precision == "no"
    with pytest.raises(RunError, match="cannot reach the LLM server"):
        train(cfg, _bench_samples())  # the model path does not exist: it was never loaded
    assert not (out / "log.jsonl").exists()
