"""The reference-based track of `refcoco-edit score`: a reference-based export of the demo build
read by ``load_dataset`` (view from the export marker, exemplars kept), the ``reference_object``
protocol input (passed only when declared, part of the output-cache key, refused on rie data with
one line), the baselines ``copy-paste`` (weight-free), ``pbe-mask`` and ``grounded-pbe
exemplars=sample`` (tiny random Paint-by-Example / OWLv2 saved to disk and loaded back through the
editors' own ``load()``), and the judge's ``same_object`` question against the loopback server.
The export is built once per module."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from refcoco_edit.benchmark.data import decode_sample, load_dataset
from refcoco_edit.benchmark.editors import Editor, get_editor
from refcoco_edit.benchmark.harness import ScoreConfig, run_score
from refcoco_edit.benchmark.score.cache import input_key
from refcoco_edit.build import BuildConfig, build
from refcoco_edit.errors import InputError
from refcoco_edit.export import EXPORT_MARKER, export_workspace
from refcoco_edit.imageio import decode_image_bytes


@pytest.fixture(scope="module")
def built(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("track-build")
    return build(BuildConfig.of(out=str(out), refcoco=str(demo_dir), images=str(demo_dir / "images"), num_images=6,
                                progress=False), log=lambda s: None)


@pytest.fixture(scope="module")
def track(built, tmp_path_factory):
    out = tmp_path_factory.mktemp("track") / "rb"
    export_workspace(built.workdir, out=out, view="reference-based")
    return out


@pytest.fixture(scope="module")
def samples(track):
    return load_dataset(track).samples


def _score(data, out, model, **kw):
    kw.setdefault("plots", False)
    kw.setdefault("gallery", False)
    kw.setdefault("bootstrap", 50)
    editor = kw.pop("editor", None)
    return run_score(ScoreConfig(model=model, data=str(data), out=str(out), **kw), editor=editor, log=lambda s: None)


def _outputs(res):
    return {r["sample_id"]: decode_image_bytes((res.out / r["output"]).read_bytes())
            for r in res.records if r["status"] == "ok"}


def _box(mask):
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def test_load_dataset_reads_the_reference_based_view(track, built, samples, tmp_path):
    ds = load_dataset(track)
    assert ds.view == "reference-based" and ds.info["view"] == "reference-based" and not ds.skipped
    assert len(samples) >= 4 and {s.edit_type for s in samples} == {"add", "replace"}
    for s in samples:
        d = decode_sample(s)
        assert d.exemplar.dtype == np.uint8 and d.exemplar.ndim == 3 and d.exemplar.shape[2] == 3
        assert d.exemplar_mask.dtype == bool and d.exemplar_mask.shape == d.exemplar.shape[:2] and d.exemplar_mask.any()
        assert tuple(s.exemplar_mask["size"]) == d.exemplar.shape[:2]  # the exemplar's size, not the source's
        assert d.source.shape == d.reference.shape and d.edit_mask.shape == d.source.shape[:2]
        assert d.distractor_masks == [] and d.other_masks is None  # the view carries neither
    rie = load_dataset(built.export_dir)
    assert rie.view == "rie" and all(s.exemplar_bytes is None and s.exemplar_mask is None for s in rie.samples)
    assert decode_sample(rie.samples[0]).exemplar is None
    assert load_dataset(built.workdir).view == "rie"  # a workspace is never reference-based
    one = sorted(track.glob("*.parquet"))[0]
    assert load_dataset(one).view == "reference-based"  # a loose file: the view from its columns
    # a marker that contradicts the files is an input error
    bad = tmp_path / "bad"
    shutil.copytree(track, bad)
    marker = json.loads((bad / EXPORT_MARKER).read_text())
    (bad / EXPORT_MARKER).write_text(json.dumps(dict(marker, view="rie")))
    with pytest.raises(InputError, match="marker says view 'rie'"):
        load_dataset(bad)


def test_an_exemplar_mask_of_the_wrong_size_or_missing_is_skipped(samples):
    import dataclasses

    from refcoco_edit.errors import SampleError

    s = samples[0]
    wrong = dict(s.exemplar_mask, size=[int(v) + 1 for v in s.exemplar_mask["size"]])
    with pytest.raises(SampleError) as e:
        decode_sample(dataclasses.replace(s, exemplar_mask=wrong))
    assert e.value.reason in ("size_mismatch", "bad_rle")
    with pytest.raises(SampleError) as e:
        decode_sample(dataclasses.replace(s, exemplar_mask=None))
    assert e.value.reason == "no_exemplar"


# ----------------------------------------------------------------------------------------------
# protocol
# ----------------------------------------------------------------------------------------------


class _Spy(Editor):
    name = "spy"
    got: list = []

    def __init__(self, protocol=()):
        super().__init__()
        self.protocol = frozenset(protocol)

    def edit(self, images, prompts, seeds, extras):
        type(self).got.extend(extras)
        return [np.array(i, copy=True) for i in images]


def test_reference_object_is_passed_only_when_declared(track, samples, tmp_path):
    _Spy.got = []
    res = _score(track, tmp_path / "with", "spy", editor=_Spy({"reference_object"}))
    assert res.results["editor"]["protocol"] == ["reference_object"]
    assert res.results["data"]["view"] == "reference-based"
    by_id = {s.sample_id: s for s in samples}
    assert sorted(e["sample_id"] for e in _Spy.got) == sorted(by_id)
    for e in _Spy.got:
        assert set(e) == {"sample_id", "reference_object"}
        d = decode_sample(by_id[e["sample_id"]])
        ref = e["reference_object"]
        assert np.array_equal(ref["image"], d.exemplar) and np.array_equal(ref["mask"], d.exemplar_mask)
        assert not ref["image"].flags.writeable and not ref["mask"].flags.writeable
    _Spy.got = []
    _score(track, tmp_path / "without", "spy", editor=_Spy({"gt_mask"}))
    assert _Spy.got and all(set(e) == {"sample_id", "gt_mask"} for e in _Spy.got)
    # the exemplar is part of the output-cache key of an editor that sees it, and only of such an editor
    import dataclasses

    s = samples[0]
    other = dataclasses.replace(s, exemplar_bytes=samples[1].exemplar_bytes)
    assert input_key(s, 1, ["reference_object"]) != input_key(other, 1, ["reference_object"])
    assert input_key(s, 1, ["gt_mask"]) == input_key(other, 1, ["gt_mask"])
    moved = dataclasses.replace(s, exemplar_mask=samples[1].exemplar_mask)
    assert input_key(s, 1, ["reference_object"]) != input_key(moved, 1, ["reference_object"])


def test_an_rie_export_refuses_an_editor_that_needs_the_reference(built, tmp_path):
    p = run_cli("score", "--model", "copy-paste", "--data", str(built.export_dir), "--out", str(tmp_path / "r"),
                "--no-plots", "--no-gallery")
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "editor 'copy-paste' needs the reference object (protocol reference_object)" in lines[0]
    assert "refcoco-edit export --view reference-based" in lines[0]
    assert not (tmp_path / "r").exists()  # refused before anything was written
    with pytest.raises(InputError, match="needs the reference object"):
        _score(built.export_dir, tmp_path / "g", "grounded-pbe", editor_args={"exemplars": "sample"})


# ----------------------------------------------------------------------------------------------
# copy-paste: the naive floor
# ----------------------------------------------------------------------------------------------


def test_copy_paste_pastes_the_exemplar_into_the_box_and_nothing_else(track, samples, tmp_path):
    res = _score(track, tmp_path / "cp", "copy-paste")
    r = res.results
    assert r["counts"]["scored"] == len(samples) and r["editor"]["protocol"] == ["gt_mask", "reference_object"]
    md = (res.out / "report.md").read_text()
    assert "view reference-based" in md and "image+prompt+gt_mask+reference_object" in md
    outs = _outputs(res)
    for s in samples:
        d, out = decode_sample(s), outs[s.sample_id]
        x0, y0, x1, y1 = _box(d.edit_mask)
        inside = np.zeros(d.edit_mask.shape, bool)
        inside[y0:y1, x0:x1] = True
        assert np.array_equal(out[~inside], d.source[~inside])  # untouched outside the box, bit for bit
        changed = np.any(out != d.source, axis=2)
        assert changed.any()
        # the pasted object fills the box along one axis (scaled to fit, aspect kept) and is centred
        px0, py0, px1, py1 = _box(changed)
        ex0, ey0, ex1, ey1 = _box(d.exemplar_mask)
        fit_w, fit_h = (px1 - px0) / (x1 - x0), (py1 - py0) / (y1 - y0)
        assert max(fit_w, fit_h) > 0.9
        assert abs((px0 + px1) / 2 - (x0 + x1) / 2) <= 0.1 * (x1 - x0) + 1
        assert abs((py0 + py1) / 2 - (y0 + y1) / 2) <= 0.1 * (y1 - y0) + 1
        aspect_obj, aspect_pasted = (ex1 - ex0) / (ey1 - ey0), (px1 - px0) / (py1 - py0)
        assert abs(np.log(aspect_pasted / aspect_obj)) < 0.25
        # and it is the exemplar's object: its colours, not the before image's
        obj = d.exemplar[d.exemplar_mask].astype(float).mean(axis=0)
        pasted = out[changed].astype(float).mean(axis=0)
        assert np.abs(pasted - obj).max() < 25, (s.sample_id, pasted, obj)


# ----------------------------------------------------------------------------------------------
# pbe-mask and grounded-pbe with tiny random models, loaded through the real code path
# ----------------------------------------------------------------------------------------------

FAST = {"steps": 2, "resolution": 32, "device": "cpu"}


def test_pbe_mask_runs_on_the_track_with_the_sample_exemplar(track, samples, tmp_path):
    pytest.importorskip("diffusers")
    from support.tiny_bench_models import tiny_bench

    args = dict(FAST, model=str(tiny_bench("pbe")))
    res = _score(track, tmp_path / "pbe", "pbe-mask", editor_args=args, limit=2)
    r = res.results
    assert r["counts"]["scored"] == 2 and r["editor"]["protocol"] == ["gt_mask", "reference_object"]
    assert r["editor"]["config"]["model"] == args["model"]
    outs = _outputs(res)
    for s in samples[:2]:
        d, out = decode_sample(s), outs[s.sample_id]
        assert np.array_equal(out[~d.edit_mask], d.source[~d.edit_mask])  # pasted back through M_e only
        assert np.any(out[d.edit_mask] != d.source[d.edit_mask])  # really painted (denoised) inside
    # the exemplar reaches Paint-by-Example: another sample's exemplar, same seed, another result
    e = get_editor("pbe-mask", args)
    e.ensure_loaded()
    d0, d1 = decode_sample(samples[0]), decode_sample(samples[1])
    ex = [{"sample_id": "a", "gt_mask": d0.edit_mask, "reference_object": {"image": d.exemplar, "mask": d.exemplar_mask}}
          for d in (d0, d1)]
    a, b = e.edit([d0.source, d0.source], [samples[0].prompt] * 2, [7, 7], ex)
    assert np.any(a[d0.edit_mask] != b[d0.edit_mask])


def test_grounded_pbe_takes_the_sample_exemplar_on_the_track(track, samples, tmp_path):
    pytest.importorskip("diffusers")
    from support.tiny_bench_models import tiny_bench

    args = dict(FAST, model=str(tiny_bench("pbe")), grounder=str(tiny_bench("owlv2")), sam_checkpoint="none",
                exemplars="sample")
    res = _score(track, tmp_path / "gpbe", "grounded-pbe", editor_args=args, limit=4)
    r = res.results
    assert r["editor"]["protocol"] == ["reference_object"]  # mask-free: no gt_mask
    assert "the sample's own exemplar" in r["editor"]["exemplar_source"]
    kinds = {s.sample_id: s.edit_type for s in samples[:4]}
    assert set(kinds.values()) == {"add", "replace"}
    ok = [x for x in res.records if x["status"] == "ok"]
    failed = [x for x in res.records if x["status"] == "failed"]
    assert {kinds[x["sample_id"]] for x in ok} == {"replace"} and len(ok) == sum(k == "replace" for k in kinds.values())
    assert failed and all(kinds[x["sample_id"]] == "add" and "names no object to find" in x["error"] for x in failed)
    assert "mask_iou" in r["metrics"]  # it returns the mask it found
    # its rie behaviour is unchanged: exemplars from a folder, which it asks for on the track too
    folder = get_editor("grounded-pbe", dict(args, exemplars="folder"))
    assert folder.protocol == frozenset()
    with pytest.raises(InputError, match="exemplars=sample"):
        folder.ensure_loaded()
    with pytest.raises(InputError, match="exemplar_dir is not used"):
        get_editor("grounded-pbe", dict(args, exemplar_dir=str(tmp_path)))


# ----------------------------------------------------------------------------------------------
# the judge's same_object question
# ----------------------------------------------------------------------------------------------


class _SameObjectJudge:
    """The loopback judge's ``same_object`` answers, from the pixels it receives: the reference
    image must be the sample's exemplar (changed only on an outline around its object), the second
    image an output of the sample's size (changed only on an outline around M_e, checked against
    the cached output); same_object when the mean colour of the output inside M (eroded off the
    outline) is within 20 levels of the exemplar object's. Every other question goes to the
    pixel-based ``JudgeOracle``."""

    def __init__(self, samples, out_dirs):
        from support.fake_judge import JudgeOracle

        self.oracle = JudgeOracle(samples)
        self.by_prompt = {s.prompt: (s, decode_sample(s)) for s in samples}
        self.out_dirs = out_dirs
        self.errors = self.oracle.errors
        self.asked = []

    def __call__(self, body):
        import cv2

        from support.fake_judge import _decode_url
        from support.fake_openai import Reply

        user = next(m for m in body["messages"] if m["role"] == "user" and isinstance(m["content"], list))
        text = "".join(p.get("text", "") for p in user["content"] if p.get("type") == "text")
        if "same_object" not in text:
            return self.oracle(body)
        prompt = text.split('instruction:\n"', 1)[1].split('"\n', 1)[0]
        s, d = self.by_prompt[prompt]
        ex, out = [_decode_url(p["image_url"]["url"]) for p in user["content"] if p.get("type") == "image_url"]
        k = np.ones((15, 15), np.uint8)

        def band(m):  # around the outline of m, the image border included (a contour runs along it)
            padded = np.pad(m.astype(np.uint8), 1)
            edge = cv2.morphologyEx(padded, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
            return (cv2.dilate(edge, k) > 0)[1:-1, 1:-1]

        cached = [decode_image_bytes((o / "outputs" / f"{s.sample_id}.png").read_bytes())
                  for o in self.out_dirs if (o / "outputs" / f"{s.sample_id}.png").exists()]
        if ex.shape != d.exemplar.shape or (np.any(ex != d.exemplar, axis=2) & ~band(d.exemplar_mask)).any():
            self.errors.append(f"same_object {s.sample_id}: the first image is not the outlined exemplar")
        if out.shape != d.source.shape or not any(
                not (np.any(out != c, axis=2) & ~band(d.edit_mask)).any() for c in cached):
            self.errors.append(f"same_object {s.sample_id}: the second image is not an outlined output")
        self.asked.append(s.sample_id)
        inner = cv2.erode(d.target_mask.astype(np.uint8), k) > 0
        obj = cv2.erode(d.exemplar_mask.astype(np.uint8), k) > 0
        dist = float(np.abs(out[inner].astype(float).mean(0) - d.exemplar[obj].astype(float).mean(0)).max())
        return Reply(content=json.dumps({"same_object": dist < 20, "score": float(max(0.0, 10 - dist / 5)),
                                         "reasoning": f"colour distance {dist:.1f}"}))


def test_the_judge_asks_same_object_with_the_exemplar(track, samples, tmp_path):
    from support.fake_openai import running

    # the fake judge finds a sample by its prompt: the first samples by id whose prompts are unique
    prompts = [s.prompt for s in samples]
    n = next((k for k in range(len(samples), 0, -1) if len(set(prompts[:k])) == k), 0)
    assert n >= 4
    runs = {m: tmp_path / m for m in ("oracle", "identity")}
    with running() as srv:
        judge = _SameObjectJudge(samples[:n], list(runs.values()))
        srv.script(judge)
        res = {m: _score(track, out, m, judge="fake-vlm", judge_base_url=srv.base_url, judge_max_retries=0, limit=n)
               for m, out in runs.items()}
    assert not judge.errors, judge.errors[:3]
    assert sorted(judge.asked) == sorted([s.sample_id for s in samples[:n]] * 2)
    for r in res.values():
        j = r.results["judge"]
        assert j["prompt_version"] == "refcoco-edit-judge-2" and j["params"]["questions"][-1] == "same_object"
        assert j["counts"]["answers"] == 5 * n and j["counts"]["failed"] == 0
        assert "same_object" in j["params"]["images"]
        md = (r.out / "report.md").read_text()
        assert "J-Same-Object" in md and "J-Identity" in md
    oracle, ident = (res[m].results["judge"]["metrics"] for m in ("oracle", "identity"))
    assert oracle["judge_same_object"]["mean"] == 1.0 and oracle["judge_same_object"]["n"] == n
    assert ident["judge_identity"]["mean"] < oracle["judge_identity"]["mean"]
    assert ident["judge_same_object"]["mean"] < 1.0
