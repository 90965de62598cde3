"""The ``freeedit`` editor (``refcoco_edit.benchmark.freeedit.infer``): registered with the
``reference_object`` protocol (mask-free: no gt_mask), ``model=DIR`` / ``freeedit:DIR``, clear errors
on a missing or wrong folder, the exemplar's preparation, output size / seed / reference dependence,
failures on an unusable exemplar, and an end-to-end ``refcoco-edit score --model freeedit`` on the
demo's reference-based export with a model the FreeEdit trainer has just trained on it. Tiny random
models saved in code; CPU, no network."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from conftest import run_cli  # noqa: E402
from support.tiny_freeedit import save_tiny_freeedit_base  # noqa: E402

from refcoco_edit.benchmark.editors import get_editor  # noqa: E402
from refcoco_edit.benchmark.editors.base import EditFailure  # noqa: E402
from refcoco_edit.benchmark.editors.registry import EDITORS, parse_spec  # noqa: E402
from refcoco_edit.benchmark.freeedit.reference import reference_image  # noqa: E402
from refcoco_edit.errors import InputError  # noqa: E402
from support.torch_env import OFFLINE, one_torch_thread  # noqa: E402,F401 - an autouse fixture

FAST = {"steps": 2, "resolution": 32, "device": "cpu"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny FreeEdit saved as the trainer's final/ is (DRRA scales non-zero, 32-px references)."""
    from refcoco_edit.benchmark.freeedit.model import FreeEdit, FreeEditConfig

    root = tmp_path_factory.mktemp("freeedit-editor")
    base = save_tiny_freeedit_base(root)
    torch.manual_seed(3)
    model = FreeEdit.from_pretrained(base["ip2p"], FreeEditConfig(drra_scale_init=0.5, reference_resolution=32),
                                     image_encoder=str(base["image_encoder"]))
    return model.save_pretrained(root / "final")


@pytest.fixture(scope="module")
def editor(ckpt):
    e = get_editor("freeedit", dict(FAST, model=str(ckpt)))
    e.ensure_loaded()
    return e


def _image(h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(base, np.ones((8, 8, 1), np.uint8))[:h, :w])


def _exemplar(seed=1):
    img = _image(30, 24, seed)
    mask = np.zeros(img.shape[:2], bool)
    mask[5:25, 4:20] = True
    return {"image": img, "mask": mask}


def test_registered_with_the_reference_protocol(ckpt):
    assert EDITORS["freeedit"] == "refcoco_edit.benchmark.freeedit.infer:FreeEditEditor"
    assert parse_spec("freeedit:/x")[0] == "name_arg"
    e = get_editor(f"freeedit:{ckpt}", {"steps": 3})  # built, not loaded
    assert e.config["model"] == str(ckpt) and e.config["steps"] == 3 and e._model is None
    assert e.protocol == frozenset({"reference_object"})  # mask-free: no gt_mask, no object_mask
    assert e.describe()["protocol"] == ["reference_object"]
    with pytest.raises(InputError, match="model=DIR"):
        get_editor("freeedit")
    for bad, match in (({"steps": 0}, "steps"), ({"reference_resolution": 30}, "reference_resolution"),
                       ({"exemplar_background": 300}, "exemplar_background"), ({"dtype": "fp8"}, "dtype")):
        with pytest.raises(InputError, match=match):
            get_editor("freeedit:/a", bad)


def test_missing_or_wrong_folder_is_an_input_error(tmp_path, ckpt):
    with pytest.raises(InputError, match="no such folder"):
        get_editor(f"freeedit:{tmp_path / 'nope'}", FAST).ensure_loaded()
    # the InstructPix2Pix base it was made from is not a FreeEdit folder
    with pytest.raises(InputError, match=r"not a FreeEdit folder \(missing detail_extractor"):
        get_editor(f"freeedit:{ckpt.parent / 'ip2p'}", FAST).ensure_loaded()


def test_reference_image_cuts_the_object_onto_a_square():
    ex = _exemplar()
    ref = reference_image(ex["image"], ex["mask"], 32, background=255)
    assert ref.shape == (32, 32, 3) and ref.dtype == np.uint8
    assert (ref[0] == 255).all() and (ref[:, 0] == 255).all()  # the margin is background
    whole = reference_image(ex["image"], None, 16)
    assert whole.shape == (16, 16, 3)
    with pytest.raises(ValueError, match="empty"):
        reference_image(ex["image"], np.zeros_like(ex["mask"]), 32)
    with pytest.raises(ValueError, match="not of the exemplar's size"):
        reference_image(ex["image"], np.ones((3, 3), bool), 32)


def test_output_size_seed_and_reference_dependence(editor):
    img, ex, other = _image(), _exemplar(1), _exemplar(7)

    def run(seed, obj):
        return editor.edit([img], ["put this hat on the dog"], [seed], [{"sample_id": "s", "reference_object": obj}])[0]

    a = run(1, ex)
    assert isinstance(a, np.ndarray) and a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, run(1, ex))  # deterministic
    assert not np.array_equal(a, run(2, ex))  # seed
    assert not np.array_equal(a, run(1, other))  # the exemplar reaches the output
    # a sample's output does not depend on its batch
    b = editor.edit([_image(seed=5), img], ["x", "put this hat on the dog"], [9, 1],
                    [{"sample_id": "t", "reference_object": other}, {"sample_id": "s", "reference_object": ex}])
    assert np.abs(b[1].astype(int) - a.astype(int)).max() <= 1


def test_an_unusable_exemplar_fails_that_sample_only(editor):
    img, ex = _image(), _exemplar()
    empty = {"image": ex["image"], "mask": np.zeros_like(ex["mask"])}
    out = editor.edit([img, img, img], ["a", "b", "c"], [1, 1, 1],
                      [{"sample_id": "a", "reference_object": empty}, {"sample_id": "b"},
                       {"sample_id": "c", "reference_object": ex}])
    assert isinstance(out[0], EditFailure) and out[0].reason == "editor_error" and "empty" in out[0].message
    assert isinstance(out[1], EditFailure) and "reference_object" in out[1].message
    assert isinstance(out[2], np.ndarray) and out[2].shape == img.shape


def test_score_cli_on_the_reference_based_export_with_a_trained_model(demo_dir, tmp_path, monkeypatch):
    """The acceptance path: the demo's reference-based export, FreeEdit trained on it for two short
    phases (the trainer's ``final/``), then ``refcoco-edit score --model freeedit --editor-arg
    model=DIR`` with every metric of the track (tiny random metric models)."""
    from support.tiny_bench_models import tiny_bench

    from refcoco_edit.benchmark.freeedit.train import FreeEditTrainConfig, train
    from refcoco_edit.build import BuildConfig, build
    from refcoco_edit.export import export_workspace

    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    built = build(BuildConfig.of(out=str(tmp_path / "w"), refcoco=str(demo_dir), images=str(demo_dir / "images"),
                                 num_images=4, progress=False), log=lambda s: None)
    track = tmp_path / "rb"
    export_workspace(built.workdir, out=track, view="reference-based")
    base = save_tiny_freeedit_base(tmp_path / "base")
    phases = [{"name": "base", "steps": 2, "modules": ["projection", "unet"]},
              {"name": "detail", "steps": 2, "modules": ["detail_extractor", "drra"]}]
    run = train(FreeEditTrainConfig(pretrained=str(base["ip2p"]), image_encoder=str(base["image_encoder"]),
                                    data=str(track), status="all", output_dir=str(tmp_path / "run"), resolution=32,
                                    batch_size=2, lr=1e-3, checkpoint_every=0, phases=phases,
                                    model={"reference_resolution": 32, "num_image_tokens": 4}))
    final = Path(run["final"])
    models = ["--clip-model", str(tiny_bench("clip")), "--aesthetic-weights", str(tiny_bench("aesthetic")),
              "--dino-model", str(tiny_bench("dino")), "--lpips-weights", str(tiny_bench("lpips"))]
    p = run_cli("score", "--model", "freeedit", "--editor-arg", f"model={final}", "--editor-arg", "steps=2",
                "--editor-arg", "resolution=32", "--editor-arg", "device=cpu", "--data", str(track), "--out",
                str(tmp_path / "fe"), "--no-plots", "--no-gallery", "--limit", "3", "--metrics", "all",
                "--device", "cpu", *models, env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    res = json.loads((tmp_path / "fe" / "results.json").read_text())
    assert res["editor"]["name"] == "freeedit" and res["editor"]["protocol"] == ["reference_object"]
    assert res["editor"]["config"]["model"] == str(final)
    assert res["data"]["view"] == "reference-based" and res["counts"]["scored"] == 3
    # every metric of the track is computed; only mask_iou is not (FreeEdit predicts no mask)
    assert set(res["not_computed"]) == {"mask_iou"}
    assert {"ref_dino", "ref_clip_i", "ref_clip_t", "obj_dino", "obj_clip_i", "l2_bg", "clip_i", "dino", "ap"} <= set(res["metrics"])
    assert set(res["metrics"]) == set(res["config"]["metrics_computed"])
    assert res["metrics"]["ref_dino"]["n"] == 3 and 0.0 < res["metrics"]["ref_dino"]["mean"] <= 1.0
