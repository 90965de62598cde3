"""The ``instructdiffusion`` editor: a tiny original-format (LDM) checkpoint with the released file's
key layout (``model.diffusion_model.*`` with an 8-channel UNet, ``first_stage_model.*``,
``cond_stage_model.transformer.*``, under ``state_dict``) is written by the test, converted offline
through the same code as the real file, checked tensor for tensor against the diffusers
components it was made from, and edits; a diffusers folder loads too. No network."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from refcoco_edit.benchmark.editors import get_editor
from refcoco_edit.benchmark.editors.diffusion import PAPER_SUFFIX
from refcoco_edit.benchmark.editors.instructdiffusion import UPSTREAM, instructdiffusion_size
from refcoco_edit.errors import InputError
from support.tiny_bench_models import save_tiny_instructdiffusion, tiny_bench

pytest.importorskip("torch")
pytest.importorskip("diffusers")

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
FAST = {"steps": 2, "resolution": 32, "device": "cpu"}


def _image(h=50, w=70, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 10 + 1, w // 10 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(base, np.ones((10, 10, 1), np.uint8))[:h, :w])


@pytest.fixture(scope="module")
def ckpt():
    return tiny_bench("instructdiffusion")


@pytest.fixture(scope="module")
def editor(ckpt):
    e = get_editor("instructdiffusion", dict(FAST, model=str(ckpt), tokenizer=str(ckpt.parent / "tokenizer")))
    e.ensure_loaded()
    return e


def test_defaults_follow_upstream_edit_cli():
    e = get_editor("instruct-diffusion")  # an alias; built, nothing loaded
    c = e.config
    assert (c["steps"], c["guidance_scale"], c["image_guidance_scale"], c["resolution"]) == (100, 5.0, 1.25, 512)
    assert c["suffix"] == PAPER_SUFFIX and c["model"] == "checkpoints/v1-5-pruned-emaonly-adaption-task.ckpt"
    d = e.describe()
    assert d["upstream"] == UPSTREAM and "0.5 (e_img + e_txt)" in d["guidance_rule"] and e.protocol == frozenset()
    # edit_cli.py's size rule: longer side 512, the shorter side rounded up, both floored to 64
    # (427 x 640: factor = 384 / 427, so 640 px -> 575.5 -> 512)
    assert instructdiffusion_size(480, 640, 512, 64) == (384, 512)
    assert instructdiffusion_size(427, 640, 512, 64) == (384, 512)
    assert instructdiffusion_size(640, 427, 512, 64) == (512, 384)
    assert instructdiffusion_size(300, 1000, 512, 64) == (192, 640)  # the long side may exceed resolution


def test_checkpoint_converts_exactly(ckpt):
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from refcoco_edit.models.ldm import convert_checkpoint, infer_original_config, load_tokenizer, read_checkpoint

    sd = read_checkpoint(ckpt)
    assert {k.split(".")[0] for k in sd} == {"model", "first_stage_model", "cond_stage_model", "model_ema"}
    assert sd["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 8
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in sd)
    unet_cfg = infer_original_config(sd)["model"]["params"]["unet_config"]["params"]
    assert (unet_cfg["in_channels"], unet_cfg["model_channels"], unet_cfg["channel_mult"], unet_cfg["num_res_blocks"],
            unet_cfg["attention_resolutions"], unet_cfg["context_dim"]) == (8, 32, [1, 2], 2, [2], 32)
    parts = convert_checkpoint(sd, None, load_tokenizer(str(ckpt.parent / "tokenizer")))
    ref = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(ckpt.parent / "diffusers"), safety_checker=None,
                                                                 requires_safety_checker=False)
    for name in ("unet", "vae", "text_encoder"):
        got, want = parts[name].state_dict(), getattr(ref, name).state_dict()
        assert set(got) == set(want)
        for k, v in want.items():
            assert torch.equal(got[k].reshape(v.shape), v), (name, k)


def test_edits_and_is_seeded(editor):
    img = _image()
    a = editor.edit([img], ["replace the cow with a panda"], [1], [{"sample_id": "s"}])[0]
    assert a.shape == img.shape and a.dtype == np.uint8 and not np.array_equal(a, img)
    assert np.array_equal(a, editor.edit([img], ["replace the cow with a panda"], [1], [{"sample_id": "s"}])[0])
    assert not np.array_equal(a, editor.edit([img], ["replace the cow with a panda"], [2], [{"sample_id": "s"}])[0])
    assert not np.array_equal(a, editor.edit([img], ["make the cow green"], [1], [{"sample_id": "s"}])[0])
    img2 = _image(41, 29, seed=3)
    both = editor.edit([img, img2], ["replace the cow with a panda", "remove the dog"], [1, 4],
                       [{"sample_id": "s"}, {"sample_id": "t"}])
    assert np.abs(both[0].astype(int) - a.astype(int)).max() <= 1 and both[1].shape == img2.shape
    assert editor.describe()["config"]["image_guidance_scale"] == 1.25


def test_safetensors_yaml_config_and_diffusers_folder_load_the_same(ckpt, editor, tmp_path):
    import yaml

    from refcoco_edit.models.ldm import infer_original_config, read_checkpoint

    st = save_tiny_instructdiffusion(tmp_path / "st", safetensors=True)
    cfg = tmp_path / "instruct_diffusion.yaml"
    cfg.write_text(yaml.safe_dump(infer_original_config(read_checkpoint(ckpt))))
    img = _image()
    want = editor.edit([img], ["turn the cow blue"], [5], [{"sample_id": "s"}])[0]
    e = get_editor("instructdiffusion", dict(FAST, model=str(st), original_config=str(cfg),
                                             tokenizer=str(st.parent / "tokenizer")))
    e.ensure_loaded()
    assert np.array_equal(e.edit([img], ["turn the cow blue"], [5], [{"sample_id": "s"}])[0], want)
    folder = get_editor("instructdiffusion", dict(FAST, model=str(ckpt.parent / "diffusers")))
    folder.ensure_loaded()
    got = folder.edit([img], ["turn the cow blue"], [5], [{"sample_id": "s"}])[0]
    assert got.shape == img.shape and not np.array_equal(got, img)


def test_bad_models_are_input_errors(ckpt, tmp_path):
    import torch

    with pytest.raises(InputError, match="download the released checkpoint"):
        get_editor("instructdiffusion", {"device": "cpu"}).ensure_loaded()
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"foo": torch.zeros(1)}}, str(bad))
    with pytest.raises(InputError, match="not an original-format"):
        get_editor("instructdiffusion", dict(FAST, model=str(bad), tokenizer=str(ckpt.parent / "tokenizer"))).ensure_loaded()
    with pytest.raises(InputError, match="not 8"):
        get_editor("instructdiffusion", dict(FAST, model=str(tiny_bench("sd")))).ensure_loaded()
    with pytest.raises(InputError, match="tokenizer"):
        get_editor("instructdiffusion", dict(FAST, model=str(ckpt), tokenizer=str(tmp_path / "none"))).ensure_loaded()


@pytest.fixture(scope="module")
def export(demo_dir, tmp_path_factory):
    from refcoco_edit.build import BuildConfig, build

    out = tmp_path_factory.mktemp("id-build")
    return build(BuildConfig.of(out=str(out), refcoco=str(demo_dir), images=str(demo_dir / "images"), num_images=2,
                             progress=False), log=lambda s: None).export_dir


def test_score_cli(export, ckpt, tmp_path):
    out = tmp_path / "id"
    r = run_cli("score", "--model", "instructdiffusion", "--editor-arg", f"model={ckpt}", "--editor-arg",
                f"tokenizer={ckpt.parent / 'tokenizer'}", "--editor-arg", "steps=2", "--editor-arg", "resolution=32",
                "--editor-arg", "device=cpu", "--data", str(export), "--out", str(out), "--limit", "2",
                "--metrics", "l2_bg,referring", "--no-plots", "--bootstrap", "20", env=OFFLINE)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["counts"]["scored"] == 2 and res["counts"]["failed"] == 0
    ed = res["editor"]
    assert ed["name"] == "instructdiffusion" and ed["upstream"]["cfg_text"] == 5.0
    assert ed["config"]["suffix"] == PAPER_SUFFIX and res["metrics"]["l2_bg"]["mean"] > 0
