"""The ``referdiffusion`` editor (``refcoco_edit.benchmark.referdiffusion.infer``): the ``referdiffusion:CHECKPOINT``
spec, lazy loading, clear errors on a missing/wrong checkpoint, seed/prompt dependence, the
source size, and an end-to-end ``refcoco-edit score`` on the demo export. A tiny random
ReferDiffusion saved in code; CPU, no network."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from refcoco_edit.benchmark.editors import get_editor  # noqa: E402
from refcoco_edit.benchmark.editors.registry import EDITORS, PLANNED, parse_spec  # noqa: E402
from refcoco_edit.benchmark.metrics.referring import mask_iou  # noqa: E402
from conftest import run_cli  # noqa: E402
from refcoco_edit.errors import InputError  # noqa: E402
from support.torch_env import OFFLINE, one_torch_thread  # noqa: E402,F401 - an autouse fixture

# one intra-op thread in the subprocess too (2 busy cores: 2 threads thrash)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FAST = {"steps": 2, "resolution": 32, "device": "cpu"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny ReferDiffusion (random InstructPix2Pix + REM) saved as the trainer's final/ is."""
    from test_referdiffusion import TINY_CFG, save_tiny_ip2p

    from refcoco_edit.benchmark.referdiffusion.model import ReferDiffusion, ReferDiffusionConfig

    root = tmp_path_factory.mktemp("rd-infer")
    ip2p = save_tiny_ip2p(root)
    torch.manual_seed(3)
    model = ReferDiffusion.from_pretrained(ip2p, ReferDiffusionConfig(**TINY_CFG, zero_init_fusion=False))
    return model.save_pretrained(root / "final")


@pytest.fixture(scope="module")
def editor(tiny_ckpt):
    e = get_editor(f"referdiffusion:{tiny_ckpt}", FAST)
    e.ensure_loaded()
    return e


def _image(h=50, w=70, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 10 + 1, w // 10 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(base, np.ones((10, 10, 1), np.uint8))[:h, :w])


def _edit(e, img, prompt, seed):
    return e.edit([img], [prompt], [seed], [{"sample_id": "s"}])[0].image


def test_spec_registered_and_parsed(tiny_ckpt):
    assert EDITORS["referdiffusion"] == "refcoco_edit.benchmark.referdiffusion.infer:ReferDiffusionEditor"
    assert "referdiffusion" not in PLANNED
    assert parse_spec("referdiffusion:/x/y")[0] == "name_arg"
    assert parse_spec("refcoco_edit.benchmark.editors.builtin:IdentityEditor")[0] == "class"  # module:Class unchanged
    assert get_editor("refcoco_edit.benchmark.editors.builtin:IdentityEditor").name == "identity"
    e = get_editor(f"referdiffusion:{tiny_ckpt}", {"steps": 3})  # built, not loaded
    assert e.config["checkpoint"] == str(tiny_ckpt) and e.config["steps"] == 3 and e._model is None
    assert e.protocol == frozenset()
    assert get_editor("referdiffusion", {"checkpoint": str(tiny_ckpt)}).config["checkpoint"] == str(tiny_ckpt)
    with pytest.raises(InputError, match="checkpoint"):
        get_editor("referdiffusion")
    with pytest.raises(InputError, match="nothing after"):
        get_editor("referdiffusion:")
    with pytest.raises(InputError, match="takes no argument"):
        get_editor("identity:foo")
    with pytest.raises(InputError, match="given twice"):
        get_editor("referdiffusion:/a", {"checkpoint": "/b"})
    with pytest.raises(InputError, match="steps"):
        get_editor("referdiffusion:/a", {"steps": 0})


def test_missing_or_wrong_checkpoint_is_an_input_error(tmp_path, tiny_ckpt):
    with pytest.raises(InputError, match="no such folder"):
        get_editor(f"referdiffusion:{tmp_path / 'nope'}", FAST).ensure_loaded()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a ReferDiffusion checkpoint"):
        get_editor(f"referdiffusion:{tmp_path / 'empty'}", FAST).ensure_loaded()
    # a plain InstructPix2Pix folder (no REM files) is not a ReferDiffusion checkpoint
    with pytest.raises(InputError, match="referdiffusion_config.json"):
        get_editor(f"referdiffusion:{tiny_ckpt.parent / 'ip2p'}", FAST).ensure_loaded()


def test_output_size_seed_and_prompt_dependence(editor):
    img = _image()
    a = _edit(editor, img, "turn the dog on the left into a cat", 1)
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, _edit(editor, img, "turn the dog on the left into a cat", 1))  # deterministic
    assert not np.array_equal(a, _edit(editor, img, "turn the dog on the left into a cat", 2))  # seed
    assert not np.array_equal(a, _edit(editor, img, "paint the red car blue", 1))  # prompt
    m = editor.edit([img], ["turn the dog on the left into a cat"], [1], [{"sample_id": "s"}])[0].mask
    assert editor.returns_mask and m.shape == img.shape[:2] and 0.0 <= m.min() <= m.max() <= 1.0
    # a sample's output does not depend on its batch
    b = editor.edit([_image(seed=5), img], ["x", "turn the dog on the left into a cat"], [9, 1],
                    [{"sample_id": "t"}, {"sample_id": "s"}])
    assert np.abs(b[1].image.astype(int) - a.astype(int)).max() <= 1


def test_score_cli_on_demo_export(demo_dir, tiny_ckpt, tmp_path):
    from PIL import Image

    from refcoco_edit.benchmark.data import decode_sample, load_dataset
    from refcoco_edit.build import BuildConfig, build

    export = build(BuildConfig.of(out=str(tmp_path / "build"), refcoco=str(demo_dir), images=str(demo_dir / "images"),
                               num_images=2, progress=False), log=lambda s: None).export_dir
    out = tmp_path / "rd"
    r = run_cli("score", "--model", f"referdiffusion:{tiny_ckpt}", "--editor-arg", "steps=2",
                "--editor-arg", "resolution=32", "--editor-arg", "device=cpu", "--data", str(export), "--out", str(out),
                "--metrics", "l2_bg,l1,mask_iou", "--device", "cpu", "--no-plots", "--bootstrap", "20", env={**OFFLINE, **ONE_THREAD})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    samples = load_dataset(str(export)).samples
    assert res["counts"]["scored"] == len(samples) and res["counts"]["failed"] == 0
    ed = res["editor"]
    assert ed["name"] == "referdiffusion" and ed["protocol"] == [] and ed["config"]["checkpoint"] == str(tiny_ckpt)
    # the predicted masks are cached next to the outputs and mask IoU vs M is reported per sample
    assert res["not_computed"] == {} and res["metrics"]["mask_iou"]["n"] == len(samples)
    rows = {r["sample_id"]: r for r in pq.read_table(out / "samples.parquet").to_pylist()}
    for s in samples:
        d = decode_sample(s)
        assert Image.open(out / "outputs" / f"{s.sample_id}.png").size == (d.hw[1], d.hw[0])
        levels = np.asarray(Image.open(out / "outputs" / f"{s.sample_id}.mask.png"))
        assert levels.shape == d.hw and levels.dtype == np.uint8
        assert rows[s.sample_id]["mask_iou"] == pytest.approx(mask_iou(levels / 255.0, d.target_mask))
    bad = run_cli("score", "--model", f"referdiffusion:{tmp_path / 'missing'}", "--data", str(export),
                  "--out", str(tmp_path / "bad"), "--metrics", "l1", "--no-plots", env={**OFFLINE, **ONE_THREAD})
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "no such folder" in bad.stderr
