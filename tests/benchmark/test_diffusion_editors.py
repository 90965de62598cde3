"""The diffusion editors (instruct-pix2pix, magicbrush, blended-latent, inpaint-anything) with tiny
random pipelines saved to disk and loaded back through the editors' own ``load()`` (the path of
``--editor-arg model=PATH``): they really denoise (the output depends on seed and prompt), return
the source's size and dtype, keep the background of mask-based edits bit-exact, fail clearly on
missing or wrong models, and run end to end through ``refcoco-edit score``. No network."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from refcoco_edit.benchmark.editors import get_editor
from refcoco_edit.benchmark.editors.diffusion import PAPER_SUFFIX, instruction, working_size
from refcoco_edit.benchmark.editors.registry import EDITORS, PLANNED
from conftest import run_cli
from refcoco_edit.errors import InputError
from support.tiny_bench_models import tiny_bench

pytest.importorskip("torch")
pytest.importorskip("diffusers")

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
FAST = {"steps": 2, "resolution": 32, "device": "cpu"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)


@pytest.fixture(scope="module")
def models():
    return {"instruct-pix2pix": tiny_bench("ip2p"), "magicbrush": tiny_bench("ip2p"), "blended-latent": tiny_bench("sd"),
            "inpaint-anything": tiny_bench("sd-inpaint")}


def _image(h=50, w=70, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 10 + 1, w // 10 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(base, np.ones((10, 10, 1), np.uint8))[:h, :w])


def _mask(h=50, w=70):
    m = np.zeros((h, w), bool)
    m[12:34, 20:48] = True
    return m


@pytest.fixture(scope="module")
def editors(models):
    out = {}
    for name, path in models.items():
        e = get_editor(name, dict(FAST, model=str(path)))
        e.ensure_loaded()
        out[name] = e
    return out


def _edit(e, img, prompt, seed, mask=None, phrase="a panda"):
    mask = _mask(*img.shape[:2]) if mask is None else mask
    extras = {"sample_id": "s", "gt_mask": mask, "edit_phrase": phrase}
    return e.edit([img], [prompt], [seed], [{k: v for k, v in extras.items() if k == "sample_id" or k in e.protocol}])[0]


# ----------------------------------------------------------------------------------------------
# registry and options
# ----------------------------------------------------------------------------------------------


def test_registered_lazily_and_no_longer_planned():
    for name in ("instruct-pix2pix", "magicbrush", "blended-latent", "inpaint-anything"):
        assert EDITORS[name].startswith("refcoco_edit.benchmark.editors.diffusion:") and name not in PLANNED
    assert "referdiffusion" not in PLANNED  # registered by benchmark/referdiffusion/infer.py
    assert get_editor("ip2p").name == "instruct-pix2pix"  # an alias
    e = get_editor("magicbrush")  # built, not loaded: no torch work, no model lookup yet
    assert e.config["model"] == "vinesmsuic/magicbrush-jul7" and e.config["suffix"] == PAPER_SUFFIX
    assert get_editor("instruct-pix2pix").config["model"] == "timbrooks/instruct-pix2pix"
    assert get_editor("blended-latent").protocol == {"gt_mask", "edit_phrase"}
    assert get_editor("inpaint-anything").protocol == {"gt_mask"}
    assert get_editor("inpaint-anything", {"text": "edit_phrase"}).protocol == {"gt_mask", "edit_phrase"}
    with pytest.raises(InputError, match="bad editor options"):
        get_editor("instruct-pix2pix", {"stepz": 3})
    with pytest.raises(InputError, match="steps must be >= 1"):
        get_editor("instruct-pix2pix", {"steps": 0})
    with pytest.raises(InputError, match="dtype"):
        get_editor("blended-latent", {"dtype": "fp8"})


def test_instruction_suffix_and_working_size():
    assert instruction("Replace the cow with a panda.", PAPER_SUFFIX) == \
        "Replace the cow with a panda and do not change any pixel else"
    assert instruction("make it red ", "") == "make it red " and instruction("x", None) == "x"
    assert working_size(480, 640, 512, 64) == (384, 512)
    assert working_size(500, 333, 512, 64) == (512, 320)
    assert working_size(10, 1000, 512, 64) == (64, 512)  # at least one unit
    assert working_size(50, 70, 32, 4) == (24, 32)


# ----------------------------------------------------------------------------------------------
# each editor really edits
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["instruct-pix2pix", "magicbrush", "blended-latent", "inpaint-anything"])
def test_editor_denoises_and_keeps_the_contract(editors, name):
    e = editors[name]
    img = _image()
    a = _edit(e, img, "replace the cow with a panda", 1)
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, _edit(e, img, "replace the cow with a panda", 1))  # seeded: reproducible
    assert not np.array_equal(a, _edit(e, img, "replace the cow with a panda", 2))  # the seed's noise matters
    other = _edit(e, img, "make the cow bright green", 1, phrase="bright green")
    assert not np.array_equal(a, other)  # the text conditions the result
    assert not np.array_equal(a, img)
    if "gt_mask" in e.protocol:  # mask-based: the background is the source, bit for bit
        m = _mask()
        assert np.array_equal(a[~m], img[~m]) and not np.array_equal(a[m], img[m])
    # a batch gives each sample what it gets alone (one generator per sample)
    img2 = _image(41, 29, seed=5)
    extras = [{"sample_id": "a", "gt_mask": _mask(), "edit_phrase": "a panda"},
              {"sample_id": "b", "gt_mask": _mask(41, 29), "edit_phrase": "a cat"}]
    extras = [{k: v for k, v in x.items() if k == "sample_id" or k in e.protocol} for x in extras]
    both = e.edit([img, img2], ["replace the cow with a panda", "replace the dog with a cat"], [1, 3], extras)
    assert np.array_equal(both[0], a) and both[1].shape == img2.shape


def test_ip2p_suffix_is_used_and_recorded(models, editors):
    plain = get_editor("instruct-pix2pix", dict(FAST, model=str(models["instruct-pix2pix"]), suffix=""))
    plain.ensure_loaded()
    img = _image()
    assert not np.array_equal(_edit(plain, img, "replace the cow with a panda", 1),
                              _edit(editors["instruct-pix2pix"], img, "replace the cow with a panda", 1))
    d = editors["instruct-pix2pix"].describe()
    assert d["config"]["suffix"] == PAPER_SUFFIX and "suffix" in d["instruction_rule"]
    assert plain.describe()["config"]["suffix"] == "" and "size_rule" in d


def test_empty_mask_is_a_per_sample_failure(editors):
    from refcoco_edit.benchmark.editors import EditFailure

    img = _image()
    for name in ("blended-latent", "inpaint-anything"):
        out = _edit(editors[name], img, "replace the cow", 1, mask=np.zeros(img.shape[:2], bool))
        assert isinstance(out, EditFailure) and out.reason == "editor_error" and "empty" in out.message


# ----------------------------------------------------------------------------------------------
# loading failures
# ----------------------------------------------------------------------------------------------


def test_missing_or_wrong_models_are_input_errors(models, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    with pytest.raises(InputError, match="not 8"):  # a text-to-image SD model is not InstructPix2Pix
        get_editor("instruct-pix2pix", dict(FAST, model=str(models["blended-latent"]))).ensure_loaded()
    with pytest.raises(InputError, match="no such file or folder"):
        get_editor("magicbrush", dict(FAST, model=str(tmp_path / "nope"))).ensure_loaded()
    with pytest.raises(InputError, match="9 input channels|not 9|expected"):
        get_editor("inpaint-anything", dict(FAST, model=str(models["blended-latent"]))).ensure_loaded()
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(InputError, match="not in the local Hugging Face cache"):
        get_editor("magicbrush", {"device": "cpu"}).ensure_loaded()  # the default hub id, never downloaded


# ----------------------------------------------------------------------------------------------
# end to end
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export(demo_dir, tmp_path_factory):
    from refcoco_edit.build import BuildConfig, build

    out = tmp_path_factory.mktemp("de-build")
    return build(BuildConfig.of(out=str(out), refcoco=str(demo_dir), images=str(demo_dir / "images"), num_images=2,
                             progress=False), log=lambda s: None).export_dir


def test_score_cli_with_instruct_pix2pix(export, models, tmp_path):
    out = tmp_path / "ip2p"
    clip = tiny_bench("clip")
    aes = tiny_bench("aesthetic")
    r = run_cli("score", "--model", "instruct-pix2pix", "--editor-arg", f"model={models['instruct-pix2pix']}",
                "--editor-arg", "steps=2", "--editor-arg", "resolution=32", "--editor-arg", "device=cpu",
                "--data", str(export), "--out", str(out), "--limit", "2", "--metrics", "paper,l1",
                "--clip-model", str(clip), "--aesthetic-weights", str(aes), "--device", "cpu",
                "--no-plots", "--bootstrap", "20", env=OFFLINE)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["counts"]["scored"] == 2 and res["counts"]["failed"] == 0
    from refcoco_edit.benchmark.report import validate_results

    validate_results(res)
    ed = res["editor"]
    assert ed["name"] == "instruct-pix2pix" and ed["protocol"] == []
    assert ed["config"]["suffix"] == PAPER_SUFFIX and ed["config"]["steps"] == 2
    assert ed["config"]["model"] == str(models["instruct-pix2pix"])
    for n in ("ap", "l2_bg", "clip_sim_fg_pr", "l1"):
        assert res["metrics"][n]["n"] >= 1
    assert res["metrics"]["l2_bg"]["mean"] > 0  # it edited (and the background moved: no mask)
    from PIL import Image

    from refcoco_edit.benchmark.data import decode_sample, load_dataset

    for s in load_dataset(str(export), limit=2).samples:
        d = decode_sample(s)
        assert Image.open(out / "outputs" / f"{s.sample_id}.png").size == (d.hw[1], d.hw[0])


def test_score_blended_latent_records_its_protocol(export, models, tmp_path):
    from refcoco_edit.benchmark.harness import ScoreConfig, run_score

    res = run_score(ScoreConfig(model="blended-latent", data=str(export), out=str(tmp_path / "bld"), limit=2,
                                metrics=["l2_bg", "referring"], editor_args=dict(FAST, model=str(models["blended-latent"])),
                                plots=False, gallery=False, bootstrap=20), log=lambda s: None)
    r = res.results
    assert r["editor"]["protocol"] == ["edit_phrase", "gt_mask"] and r["counts"]["scored"] == 2
    assert r["metrics"]["l2_bg"]["mean"] == 0.0  # pasted through M_e: nothing outside it moved
    assert r["metrics"]["change_target"]["mean"] > 0
    assert res.timing["outputs_edited"] == 2
    again = run_score(ScoreConfig(model="blended-latent", data=str(export), out=str(tmp_path / "bld"), limit=2,
                                  metrics=["l2_bg", "referring"], editor_args=dict(FAST, model=str(models["blended-latent"])),
                                  plots=False, gallery=False, bootstrap=20), log=lambda s: None)
    assert again.timing["outputs_reused"] == 2 and again.timing.get("editor_load_s") is None  # cached: nothing loaded
    assert (Path(again.out) / "results.json").read_bytes() == (Path(res.out) / "results.json").read_bytes()
