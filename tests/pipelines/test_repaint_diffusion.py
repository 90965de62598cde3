"""The diffusion second repaint (``sd-inpaint-surround``) with a tiny random SD inpainting model
saved to disk and loaded back through the user path (``--repaint-model PATH``): the object's
pixels are kept exactly, everything around it is new."""
from __future__ import annotations

import json

import numpy as np
import pytest

from support.tiny_models import tiny  # noqa: E402  (sets HF_HUB_OFFLINE before any hub import)

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from conftest import run_cli  # noqa: E402
from refcoco_edit import rle  # noqa: E402
from refcoco_edit.imageio import decode_image_bytes  # noqa: E402
from refcoco_edit.models import ModelError, Runtime  # noqa: E402
from refcoco_edit.pipelines.repaint_surround import SDSurroundRepainter  # noqa: E402

RT = Runtime(device="cpu")


def _scene():
    rng = np.random.default_rng(1)
    img = (rng.integers(60, 200, (70, 90, 3))).astype(np.uint8)
    m = np.zeros((70, 90), bool)
    m[25:50, 35:55] = True
    img[m] = (200, 40, 30)
    return img, m


def test_surround_repaint_keeps_the_object_and_repaints_the_rest():
    img, m = _scene()
    rp = SDSurroundRepainter(str(tiny("sd-inpaint")), RT, num_inference_steps=2, resolution=32)
    a = rp.repaint(img, m, "cup", 7)
    assert a.image.shape == (32, 32, 3) and a.image.dtype == np.uint8 and a.mask.shape == (32, 32)
    x0, y0, x1, y1 = a.params["window"]
    from PIL import Image

    crop = np.asarray(Image.fromarray(img[y0:y1, x0:x1]).resize((32, 32), Image.BICUBIC))
    assert np.array_equal(a.image[a.mask], crop[a.mask])  # identity: the object's pixels exactly
    outside = ~a.mask
    diff = np.abs(a.image.astype(int) - crop.astype(int))[outside]
    assert diff.mean() > 20 and (diff.max(axis=1) <= 2).mean() < 0.05  # no context kept
    b = rp.repaint(img, m, "cup", 7)
    assert np.array_equal(a.image, b.image)                    # seeded
    assert not np.array_equal(a.image, rp.repaint(img, m, "cup", 8).image)
    assert rp.describe()["repainter"] == "sd-inpaint-surround"


def test_surround_repainter_checks_settings_and_model(tmp_path):
    with pytest.raises(ValueError, match="resolution"):
        SDSurroundRepainter("x", RT, resolution=30)
    with pytest.raises(ValueError, match="context"):
        SDSurroundRepainter("x", RT, context=0.5)
    img, m = _scene()
    with pytest.raises(ModelError):
        SDSurroundRepainter(str(tmp_path / "nothing"), RT, resolution=32).repaint(img, m, "cup", 0)
    with pytest.raises(ModelError):  # a text-to-image model is not an inpainting one
        SDSurroundRepainter(str(tiny("sd")), RT, resolution=32).repaint(img, m, "cup", 0)


def test_export_cli_repaints_exemplars_with_the_model(demo_dir, tmp_path):
    w = tmp_path / "w"
    p = run_cli("build", "--out", str(w), "--refcoco", str(demo_dir), "--images", str(demo_dir / "images"),
                "--num-images", "2", "--no-progress")
    assert p.returncode == 0, p.stderr
    out = tmp_path / "rb"
    p = run_cli("export", "--workdir", str(w), "--out", str(out), "--view", "reference-based",
                "--repaint-model", str(tiny("sd-inpaint")), "--repaint-steps", "2", "--repaint-resolution", "32",
                "--device", "cpu")
    assert p.returncode == 0, p.stderr
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pa.concat_tables([pq.read_table(f) for f in sorted(out.glob("*.parquet"))]).to_pylist()
    assert rows
    for r in rows:
        rep = json.loads(r["repaint"])
        assert rep["exemplar"]["repainter"] == "sd-inpaint-surround" and rep["exemplar"]["repaint"] == "second"
        assert rep["before"]["pipeline"].startswith("classical-")
        ex = decode_image_bytes(r["exemplar_image"]["bytes"])
        assert ex.shape == (32, 32, 3) and rle.decode(r["exemplar_mask"]).shape == (32, 32)
    assert '"repainter": "sd-inpaint-surround"' in (out / "README.md").read_text()
    bad = run_cli("export", "--workdir", str(w), "--out", str(tmp_path / "x"), "--repaint-model", "m")
    assert bad.returncode == 2 and "reference-based" in bad.stderr
