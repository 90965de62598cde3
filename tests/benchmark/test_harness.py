"""The score harness on a demo export: identity/oracle acceptance, determinism, resume after a
kill, failures, adapters end to end, input handling and the CLI handlers."""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from refcoco_edit.benchmark.cli import add_report_parser, add_score_parser, parse_editor_args
from refcoco_edit.benchmark.data import load_dataset
from refcoco_edit.benchmark.editors import Editor
from refcoco_edit.benchmark.harness import ScoreConfig, run_score
from conftest import REPO, nan_eq
from refcoco_edit.build import BuildConfig, build
from refcoco_edit.errors import InputError
from refcoco_edit.export import load_export
from refcoco_edit.schema import rows_to_table
from refcoco_edit.workspace import atomic_write_table


@pytest.fixture(scope="module")
def built(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("score-build")
    return build(BuildConfig.of(out=str(out), refcoco=str(demo_dir), images=str(demo_dir / "images"), num_images=6,
                             progress=False), log=lambda s: None)


@pytest.fixture(scope="module")
def export(built):
    return built.export_dir


def _score(export, out, model="identity", **kw):
    kw.setdefault("plots", False)
    kw.setdefault("bootstrap", 200)
    return run_score(ScoreConfig(model=model, data=str(export), out=str(out), **kw), log=lambda s: None)


def _rows(out):
    return pq.read_table(Path(out) / "samples.parquet").to_pylist()


@pytest.fixture(scope="module")
def identity_run(export, tmp_path_factory):
    return _score(export, tmp_path_factory.mktemp("identity") / "r")


@pytest.fixture(scope="module")
def oracle_run(export, tmp_path_factory):
    return _score(export, tmp_path_factory.mktemp("oracle") / "r", model="oracle")


# ----------------------------------------------------------------------------------------------
# acceptance
# ----------------------------------------------------------------------------------------------


def _with_same_category_distractor(export) -> int:
    """Samples the distractor metrics apply to (the demo keeps some by visual likeness alone)."""
    return sum(1 for r in load_export(export).to_pylist() if r["category"] in (r["distractor_categories"] or []))


def test_identity_scores(identity_run, export):
    r = identity_run.results
    assert r["counts"]["samples"] == r["counts"]["scored"] == 12 and r["counts"]["failed"] == 0
    m = r["metrics"]
    assert m["l2_bg"]["mean"] == 0.0 and m["l2_bg"]["ci95"] == [0.0, 0.0]
    n_same = _with_same_category_distractor(export)
    assert 0 < n_same < 12  # both kinds in the 6-image demo build
    assert m["referring_accuracy"]["mean"] == 0.0 and m["referring_accuracy"]["n"] == n_same
    assert m["psnr_bg"]["mean"] == 100.0 and m["ssim_bg"]["mean"] == 1.0
    assert m["change_target"]["mean"] == 0.0 and m["distractor_preservation"]["mean"] == 1.0
    assert m["l1"]["mean"] > 0  # the reference differs from the source
    assert set(r["not_computed"]) == {"ap", "clip_sim_fg", "clip_sim_fg_pr", "lpips_bg", "clip_whole", "clip_edited",
                                      "clip_i", "dino", "clip_t", "mask_iou", "ref_dino", "ref_clip_i", "ref_clip_t",
                                      "obj_dino", "obj_clip_i"}
    assert r["not_computed"]["ap"]["reason"] == "needs --clip-model and --aesthetic-weights"
    assert r["editor"]["protocol"] == []
    assert set(r["metrics"]["l2_bg"]["by_edit_type"]) == {"replace", "remove", "attribute"}


def test_oracle_scores(oracle_run):
    r = oracle_run.results
    m = r["metrics"]
    assert m["l2_bg"]["mean"] == 0.0
    assert m["referring_accuracy"]["mean"] >= 0.95
    assert m["l1"]["mean"] == 0.0 and m["l2"]["mean"] == 0.0
    assert m["ssim_bg"]["mean"] == 1.0  # exact background: the windows see the source inside M_e on both sides
    assert r["editor"]["protocol"] == ["reference"]


def test_outputs_are_cached_losslessly(export, oracle_run):
    from PIL import Image

    rows = {r["sample_id"]: r for r in load_export(export).to_pylist()}
    for rec in _rows(oracle_run.out):
        got = np.asarray(Image.open(oracle_run.out / rec["output"]))
        ref = np.asarray(Image.open(__import__("io").BytesIO(rows[rec["sample_id"]]["reference_image"]["bytes"])).convert("RGB"))
        assert np.array_equal(got, ref)
        meta = json.loads((oracle_run.out / "outputs" / f"{rec['sample_id']}.json").read_text())
        assert meta["status"] == "ok" and meta["resized"] is False


def test_two_runs_are_identical(export, tmp_path, identity_run):
    again = _score(export, tmp_path / "again")
    assert (again.out / "results.json").read_bytes() == (identity_run.out / "results.json").read_bytes()
    assert nan_eq(_rows(again.out), _rows(identity_run.out))
    assert (again.out / "report.md").read_bytes() == (identity_run.out / "report.md").read_bytes()
    assert (again.out / "gallery.html").read_bytes() == (identity_run.out / "gallery.html").read_bytes()
    timing = json.loads((again.out / "timing.json").read_text())
    assert timing["outputs_edited"] == 12 and "total_s" in timing


def test_samples_parquet_columns(identity_run):
    rows = _rows(identity_run.out)
    assert len(rows) == 12 and [r["sample_id"] for r in rows] == sorted(r["sample_id"] for r in rows)
    r = rows[0]
    for col in ("sample_id", "split", "edit_type", "prompt", "status", "reason", "seed", "output", "l2_bg",
                "referring_accuracy", "referring_span", "edit_span"):
        assert col in r
    assert "ap" not in r  # not computed: no column
    assert all(x["status"] == "ok" and x["output"] == f"outputs/{x['sample_id']}.png" for x in rows)
    assert len({x["seed"] for x in rows}) == 12


# ----------------------------------------------------------------------------------------------
# resume
# ----------------------------------------------------------------------------------------------


def test_resume_after_deleting_outputs(export, tmp_path, oracle_run):
    out = tmp_path / "r"
    first = _score(export, out, model="oracle")
    assert first.timing["outputs_edited"] == 12
    cached = sorted((out / "outputs").glob("*.png"))
    for p in cached[:3]:
        p.unlink()  # a PNG without... (its marker stays: the sample must be redone)
    (out / "outputs" / (cached[4].stem + ".json")).unlink()  # a marker lost: redone
    (out / "outputs" / "stray.png.tmp-abc").write_bytes(b"half")  # a killed write
    (out / "outputs" / (cached[5].stem + ".png")).write_bytes(b"garbage")  # a damaged cache file
    again = _score(export, out, model="oracle")
    assert again.timing["outputs_edited"] == 5 and again.timing["outputs_reused"] == 7
    assert not list((out / "outputs").glob("*.tmp-*"))
    assert (out / "results.json").read_bytes() == (oracle_run.out / "results.json").read_bytes()
    third = _score(export, out, model="oracle")
    assert third.timing["outputs_edited"] == 0


SLOW_EDITOR = textwrap.dedent("""
    import time
    import numpy as np
    from refcoco_edit.benchmark.editors import Editor

    class SlowIdentity(Editor):
        name = "slow-identity"
        batch_size = 1

        def edit(self, images, prompts, seeds, extras):
            time.sleep(0.05)
            return [np.array(img[::-1], copy=True) for img in images]
""")


def test_resume_after_sigkill(export, tmp_path, monkeypatch):
    (tmp_path / "slow_editor_mod.py").write_text(SLOW_EDITOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "killed"
    code = ("import sys; from refcoco_edit.benchmark.harness import ScoreConfig, run_score; "
            f"run_score(ScoreConfig(model='slow_editor_mod:SlowIdentity', data={str(export)!r}, out={str(out)!r}, "
            "plots=False, bootstrap=200, workers=2), log=lambda s: None)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=str(tmp_path))
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "outputs").glob("*.json"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "outputs").glob("*.json")))
    assert 3 <= done < 12, done
    assert not (out / "results.json").exists()
    resumed = _score(export, out, model="slow_editor_mod:SlowIdentity", workers=2)
    assert resumed.timing["outputs_reused"] >= 3 and resumed.timing["outputs_edited"] == 12 - resumed.timing["outputs_reused"]
    clean = _score(export, tmp_path / "clean", model="slow_editor_mod:SlowIdentity", workers=2)
    assert (out / "results.json").read_bytes() == (clean.out / "results.json").read_bytes()
    assert nan_eq(_rows(out), _rows(clean.out))
    assert resumed.results["metrics"]["l2_bg"]["mean"] > 0  # flipped images: a real change


def test_changed_inputs_invalidate_cached_outputs(export, tmp_path):
    rows = load_export(export).to_pylist()
    data = tmp_path / "data.parquet"
    atomic_write_table(data, rows_to_table(rows))
    out = tmp_path / "r"
    assert _score(data, out, model="oracle", gallery=False).timing["outputs_edited"] == 12
    rows[5]["prompt"] = rows[5]["prompt"] + " Please."  # a corrected prompt, same sample_id
    from refcoco_edit.imageio import decode_image_bytes, encode_png

    ref = decode_image_bytes(rows[7]["reference_image"]["bytes"]).copy()
    ref[0, 0] ^= 1
    rows[7]["reference_image"] = {"bytes": encode_png(ref), "path": "x.png"}  # the oracle sees it: key changes
    atomic_write_table(data, rows_to_table(rows))
    again = _score(data, out, model="oracle", gallery=False)
    assert again.timing["outputs_edited"] == 2 and again.timing["outputs_reused"] == 10


def test_other_settings_need_overwrite(export, tmp_path):
    out = tmp_path / "r"
    _score(export, out, model="identity", limit=2)
    with pytest.raises(InputError, match="outputs of another run"):
        _score(export, out, model="oracle", limit=2)
    with pytest.raises(InputError, match="seed: 0 -> 1"):
        _score(export, out, model="identity", limit=2, seed=1)
    res = _score(export, out, model="oracle", limit=2, overwrite=True)
    assert res.timing["outputs_edited"] == 2 and res.results["editor"]["name"] == "oracle"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("x")
    with pytest.raises(InputError, match="not a refcoco-edit results folder"):
        _score(export, foreign)


# ----------------------------------------------------------------------------------------------
# failures
# ----------------------------------------------------------------------------------------------


class FaultyEditor(Editor):
    """Fails in chosen ways on chosen samples (``plan``: sample_id -> fault)."""

    name = "faulty"
    batch_size = 4
    plan: dict = {}
    seen_extras: list = []

    def edit(self, images, prompts, seeds, extras):
        FaultyEditor.seen_extras.extend(sorted(e) for e in extras)
        outs = []
        for img, e in zip(images, extras):
            fault = self.plan.get(e["sample_id"])
            if fault == "crash":
                raise RuntimeError("CUDA out of <memory> & co")
            if fault == "nan":
                outs.append(np.full(img.shape, np.nan))
            elif fault == "small":
                outs.append(np.zeros((img.shape[0] // 2, img.shape[1] // 2, 3), np.uint8))
            elif fault == "gray":
                outs.append(np.zeros(img.shape[:2], np.uint8))
            elif fault == "float":
                outs.append(img.astype(np.float32) / 255.0)
            else:
                outs.append(np.array(img))
        return outs


def test_failures_are_recorded_and_the_run_goes_on(export, tmp_path):
    ids = [s.sample_id for s in load_dataset(export).samples]
    FaultyEditor.plan = {ids[0]: "crash", ids[1]: "nan", ids[2]: "small", ids[3]: "gray", ids[4]: "float"}
    FaultyEditor.seen_extras = []
    res = run_score(ScoreConfig(model="faulty", data=str(export), out=str(tmp_path / "f"), plots=False, bootstrap=50),
                    editor=FaultyEditor(), log=lambda s: None)
    c = res.results["counts"]
    assert c["failed"] == 4 and c["scored"] == 8
    assert c["failed_by_reason"] == {"bad_channels": 1, "editor_error": 1, "non_finite": 1, "wrong_size": 1}
    fails = {f["sample_id"]: f for f in res.results["failures"]}
    assert fails[ids[0]]["error"] == "RuntimeError: CUDA out of <memory> & co"
    assert res.results["metrics"]["l2_bg"]["n"] == 8 and res.results["metrics"]["l2_bg"]["mean"] == 0.0
    rows = {r["sample_id"]: r for r in _rows(res.out)}
    assert rows[ids[2]]["status"] == "failed" and rows[ids[2]]["reason"] == "wrong_size"
    assert math.isnan(rows[ids[2]]["l2_bg"])
    assert all(keys == ["sample_id"] for keys in FaultyEditor.seen_extras)  # no undeclared information
    # failures are cached: a rerun does not call the editor for them, --retry-failed does
    again = run_score(ScoreConfig(model="faulty", data=str(export), out=str(tmp_path / "f"), plots=False, bootstrap=50),
                      editor=FaultyEditor(), log=lambda s: None)
    assert again.timing["outputs_edited"] == 0 and again.results == res.results
    FaultyEditor.plan = {}
    retried = run_score(ScoreConfig(model="faulty", data=str(export), out=str(tmp_path / "f"), plots=False, bootstrap=50,
                                    retry_failed=True), editor=FaultyEditor(), log=lambda s: None)
    assert retried.timing["outputs_edited"] == 4 and retried.results["counts"]["failed"] == 0


def test_resize_outputs_is_opt_in_and_recorded(export, tmp_path):
    ids = [s.sample_id for s in load_dataset(export).samples]
    FaultyEditor.plan = {ids[2]: "small"}
    res = run_score(ScoreConfig(model="faulty", data=str(export), out=str(tmp_path / "f"), plots=False, bootstrap=50,
                                resize_outputs=True), editor=FaultyEditor(), log=lambda s: None)
    assert res.results["counts"]["failed"] == 0 and res.results["counts"]["resized"] == 1
    assert res.results["config"]["resize_outputs"] is True
    rows = {r["sample_id"]: r for r in _rows(res.out)}
    assert rows[ids[2]]["resized"] is True and rows[ids[2]]["l2_bg"] > 0
    assert sum(r["resized"] for r in rows.values()) == 1
    FaultyEditor.plan = {}


class CrashyBatchEditor(Editor):
    name = "crashy-batch"
    batch_size = 6
    bad = ""

    def edit(self, images, prompts, seeds, extras):
        if any(e["sample_id"] == self.bad for e in extras):
            raise ValueError("one bad sample in the batch")
        return [np.array(i) for i in images]


def test_a_crash_fails_only_its_sample_not_the_batch(export, tmp_path):
    CrashyBatchEditor.bad = load_dataset(export).samples[3].sample_id
    res = run_score(ScoreConfig(model="x", data=str(export), out=str(tmp_path / "c"), plots=False, gallery=False,
                                bootstrap=50), editor=CrashyBatchEditor(), log=lambda s: None)
    assert res.results["counts"]["failed"] == 1 and res.results["counts"]["scored"] == 11


class SpyEditor(Editor):
    name = "spy"
    protocol = frozenset({"gt_mask", "edit_phrase", "referring_phrase", "object_mask", "edit_type"})
    got: list = []

    def edit(self, images, prompts, seeds, extras):
        SpyEditor.got.extend(zip(images, prompts, seeds, extras))
        for img in images:
            with pytest.raises(ValueError):
                img[0, 0, 0] = 1  # inputs are read-only
        return [np.array(i) for i in images]


def test_editor_sees_what_its_protocol_declares(export, tmp_path):
    SpyEditor.got = []
    res = run_score(ScoreConfig(model="spy", data=str(export), out=str(tmp_path / "s"), plots=False, gallery=False,
                                bootstrap=50, limit=3), editor=SpyEditor(), log=lambda s: None)
    assert res.results["editor"]["protocol"] == ["edit_phrase", "edit_type", "gt_mask", "object_mask",
                                                 "referring_phrase"]
    samples = {s.sample_id: s for s in load_dataset(export).samples}
    for img, prompt, seed, e in SpyEditor.got:
        s = samples[e["sample_id"]]
        assert prompt == s.prompt and e["edit_phrase"] == s.prompt[s.edit_span[0]:s.edit_span[1]]
        assert e["referring_phrase"] == s.prompt[s.referring_span[0]:s.referring_span[1]]
        assert e["gt_mask"].shape == img.shape[:2] and e["gt_mask"].dtype == bool and e["gt_mask"].any()
        assert "reference" not in e and 0 <= seed < 2 ** 31 - 1


# ----------------------------------------------------------------------------------------------
# adapters end to end
# ----------------------------------------------------------------------------------------------


def test_dir_adapter_end_to_end(export, tmp_path, oracle_run):
    outs = tmp_path / "precomputed"
    outs.mkdir()
    pngs = sorted((oracle_run.out / "outputs").glob("*.png"))
    for p in pngs[1:]:
        (outs / p.name).write_bytes(p.read_bytes())
    res = _score(export, tmp_path / "d", model=f"dir:{outs}", editor_args={"protocol": "reference"})
    assert res.results["counts"]["failed_by_reason"] == {"missing_output": 1}
    assert res.results["metrics"]["referring_accuracy"]["mean"] >= 0.95
    assert res.results["editor"]["protocol"] == ["reference"]


def test_cmd_adapter_end_to_end(export, tmp_path):
    script = tmp_path / "copy.py"
    script.write_text("import shutil, sys\nshutil.copyfile(sys.argv[1], sys.argv[2])\n")
    import shlex

    res = _score(export, tmp_path / "c", model=f"cmd:{shlex.quote(sys.executable)} {shlex.quote(str(script))} {{input}} {{output}}",
                 limit=2, cmd_timeout=60)
    assert res.results["counts"]["scored"] == 2 and res.results["metrics"]["l2_bg"]["mean"] == 0.0
    with pytest.raises(InputError, match="only apply to"):
        _score(export, tmp_path / "c2", model="identity", cmd_shell=True)


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def test_workspace_input_equals_export_input(built, tmp_path, oracle_run):
    res = _score(built.workdir, tmp_path / "w", model="oracle")
    assert res.results["data"]["kind"] == "workspace"
    assert res.results["metrics"] == oracle_run.results["metrics"]


def test_split_filter_and_unknown_split(export, tmp_path):
    res = _score(export, tmp_path / "v", split="val")
    assert {r["split"] for r in _rows(res.out)} == {"val"} and res.results["data"]["split"] == "val"
    with pytest.raises(InputError, match="has split"):
        _score(export, tmp_path / "x", split="testB")


def test_metric_selection(export, tmp_path):
    res = _score(export, tmp_path / "m", metrics=["referring", "pie"], limit=3)
    assert set(res.results["metrics"]) == {"referring_accuracy", "distractor_preservation", "change_target",
                                           "change_distractor_max", "change_distractor_mean", "referring_margin",
                                           "others_preservation", "change_others_max", "change_others_mean",
                                           "psnr_bg", "mse_bg", "ssim_bg"}
    assert set(res.results["not_computed"]) == {"lpips_bg", "clip_whole", "clip_edited", "mask_iou"}
    with pytest.raises(InputError, match="did you mean"):
        _score(export, tmp_path / "m2", metrics=["refering"])


def test_unscorable_rows_are_skipped_with_reasons(export, tmp_path):
    rows = load_export(export).to_pylist()
    rows[0]["reference_image"] = {"bytes": b"\x89PNG garbage", "path": "x.png"}
    rows[1]["edit_mask"] = {"size": rows[1]["edit_mask"]["size"], "counts": "!!"}  # bad characters
    rows[2]["reference_image"] = None
    rows[3]["sample_id"] = "../../escape"
    bad = tmp_path / "bad.parquet"
    atomic_write_table(bad, rows_to_table(rows))
    res = _score(bad, tmp_path / "b")
    c = res.results["counts"]
    assert c["skipped_by_reason"] == {"bad_rle": 1, "bad_sample_id": 1, "corrupt_image": 1, "no_reference": 1}
    assert c["scored"] == 8 and c["samples"] == 10  # 10 loaded, 2 skipped at decode time
    statuses = [r["status"] for r in _rows(res.out)]
    assert statuses.count("skipped") == 4 and len(statuses) == 12
    assert not (tmp_path / "escape.png").exists()


def test_data_errors_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither an export"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError):
        load_dataset(tmp_path / "x.parquet")


def test_distractors_are_filtered_by_category(export):
    from refcoco_edit.benchmark.data import _to_sample

    row = load_export(export).to_pylist()[0]
    row = dict(row, distractor_masks=row["distractor_masks"] * 2,
               distractor_categories=[row["category"]] * len(row["distractor_masks"]) + ["zebra"] * len(row["distractor_masks"]))
    s = _to_sample(row)
    assert len(s.distractor_masks) == len(row["distractor_masks"]) // 2 and s.n_distractors_all == len(row["distractor_masks"])


# ----------------------------------------------------------------------------------------------
# CLI handlers (wired into refcoco_edit.cli by the lead)
# ----------------------------------------------------------------------------------------------


def _parser():
    ap = argparse.ArgumentParser(prog="refcoco-edit")
    sub = ap.add_subparsers(dest="command")
    add_score_parser(sub)
    add_report_parser(sub)
    return ap


def test_cli_score_handler(export, tmp_path, capsys):
    args = _parser().parse_args(["score", "--model", "oracle", "--data", str(export), "--out", str(tmp_path / "o"),
                                 "--metrics", "paper,referring", "--no-plots", "--bootstrap", "100"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "scored 12 of 12" in text and "referring_accuracy" in text and "needs --clip-model" in text
    args = _parser().parse_args(["score", "--data", str(export)])
    with pytest.raises(InputError, match="--model is required"):
        args.func(args)
    args = _parser().parse_args(["score", "--list-editors"])
    assert args.func(args) == 0
    assert "identity" in capsys.readouterr().out
    args = _parser().parse_args(["score", "--model", "identity", "--editor-arg", "nope=1", "--data", str(export),
                                 "--out", str(tmp_path / "e")])
    with pytest.raises(InputError, match="bad editor options"):
        args.func(args)


def test_parse_editor_args():
    assert parse_editor_args(["steps=20", "guidance=7.5", "name=x y", "flag=true", "protocol=gt_mask,edit_phrase",
                              "none=null", "empty="]) == {
        "steps": 20, "guidance": 7.5, "name": "x y", "flag": True, "protocol": "gt_mask,edit_phrase", "none": None,
        "empty": ""}
    with pytest.raises(InputError):
        parse_editor_args(["novalue"])


def test_cli_module_imports_nothing_heavy():
    code = ("import sys, argparse\n"
            "from refcoco_edit.benchmark.cli import add_score_parser, add_report_parser\n"
            "ap = argparse.ArgumentParser(); sub = ap.add_subparsers()\n"
            "add_score_parser(sub); add_report_parser(sub)\n"
            "heavy = [m for m in ('torch', 'cv2', 'pyarrow', 'numpy', 'matplotlib', 'PIL') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def test_score_help_lists_every_cmd_placeholder():
    from refcoco_edit.benchmark.cli import CMD_PLACEHOLDERS
    from refcoco_edit.benchmark.editors.adapters import SAMPLE_PLACEHOLDERS

    assert set(CMD_PLACEHOLDERS) == set(SAMPLE_PLACEHOLDERS)


# ----------------------------------------------------------------------------------------------
# predicted masks (Editor.returns_mask) and mask IoU
# ----------------------------------------------------------------------------------------------


class MaskingEditor(Editor):
    """Returns the source and a predicted mask: the object mask itself, its left half, or a
    malformed one, per sample (``plan``: sample_id -> kind)."""

    name = "masking"
    protocol = frozenset({"object_mask"})
    returns_mask = True
    batch_size = 3
    plan: dict = {}
    calls: list = []

    def edit(self, images, prompts, seeds, extras):
        from refcoco_edit.benchmark.editors.base import EditOutput

        outs = []
        for img, e in zip(images, extras):
            MaskingEditor.calls.append(e["sample_id"])
            m = e["object_mask"]
            kind = self.plan.get(e["sample_id"])
            if kind == "left_half":
                cols = np.nonzero(m.any(axis=0))[0]
                mid = (cols.min() + cols.max() + 1) // 2
                half = m.copy()
                half[:, mid:] = False
                outs.append(EditOutput(np.array(img), half.astype(np.float32) * 0.9))
            elif kind == "no_mask":
                outs.append(np.array(img))  # a bare image from an editor that promised masks
            elif kind == "small_mask":
                outs.append(EditOutput(np.array(img), m[::2, ::2]))
            elif kind == "nan_mask":
                outs.append(EditOutput(np.array(img), np.full(m.shape, np.nan, np.float32)))
            else:
                outs.append(EditOutput(np.array(img), m))
        return outs


def test_predicted_masks_are_cached_and_scored_as_mask_iou(export, tmp_path):
    from refcoco_edit.benchmark.metrics.referring import mask_iou

    samples = load_dataset(export).samples
    ids = [s.sample_id for s in samples]
    MaskingEditor.plan = {ids[0]: "left_half", ids[1]: "no_mask", ids[2]: "small_mask", ids[3]: "nan_mask"}
    MaskingEditor.calls = []
    cfg = dict(model="masking", data=str(export), out=str(tmp_path / "m"), plots=False, bootstrap=50,
               metrics=["mask_iou", "l2_bg"])
    res = run_score(ScoreConfig(**cfg), editor=MaskingEditor(), log=lambda s: None)
    r = res.results
    assert r["not_computed"] == {} and r["editor"]["returns_mask"] is True
    assert r["counts"]["failed_by_reason"] == {"bad_mask": 3}
    rows = {x["sample_id"]: x for x in _rows(res.out)}
    assert rows[ids[1]]["reason"] == "bad_mask" and "gave no mask" in rows[ids[1]]["error"]
    assert "is " in rows[ids[2]]["error"] and "NaN" in rows[ids[3]]["error"]
    # IoU against M computed independently: 1.0 for the exact mask, |left half| / |M| for the half
    from refcoco_edit.benchmark.data import decode_sample

    d0 = decode_sample(samples[0])
    m = d0.target_mask
    cols = np.nonzero(m.any(axis=0))[0]
    half = m.copy()
    half[:, (cols.min() + cols.max() + 1) // 2:] = False
    assert rows[ids[0]]["mask_iou"] == pytest.approx(half.sum() / m.sum())
    assert rows[ids[0]]["mask_iou"] == pytest.approx(mask_iou(half * 0.9, m))
    for sid in ids[4:]:
        assert rows[sid]["mask_iou"] == 1.0
        assert (res.out / "outputs" / f"{sid}.mask.png").exists()
    assert not (res.out / "outputs" / f"{ids[1]}.mask.png").exists()
    n_ok = len(ids) - 3
    assert r["metrics"]["mask_iou"]["n"] == n_ok
    assert r["metrics"]["mask_iou"]["mean"] == pytest.approx((n_ok - 1 + rows[ids[0]]["mask_iou"]) / n_ok)
    # a rerun reads the cached masks (no editing); a lost mask file re-edits only its sample
    MaskingEditor.calls = []
    again = run_score(ScoreConfig(**cfg), editor=MaskingEditor(), log=lambda s: None)
    assert MaskingEditor.calls == [] and again.results == r
    (res.out / "outputs" / f"{ids[5]}.mask.png").unlink()
    third = run_score(ScoreConfig(**cfg), editor=MaskingEditor(), log=lambda s: None)
    assert MaskingEditor.calls == [ids[5]] and third.results == r


def test_mask_iou_is_not_computed_for_editors_without_masks(export, tmp_path):
    res = _score(export, tmp_path / "i", metrics=["mask_iou", "l1"], limit=2)
    assert "mask_iou" not in res.results["metrics"]
    assert "returns no predicted mask" in res.results["not_computed"]["mask_iou"]["reason"]


class DyingEditor(Editor):
    """Identity in batches of 2; the process "dies" (SystemExit, not an editor error) on batch 3."""

    name = "dying"
    batch_size = 2
    calls = 0

    def edit(self, images, prompts, seeds, extras):
        DyingEditor.calls += 1
        if DyingEditor.calls == 3:
            raise SystemExit(9)
        return [np.array(img) for img in images]


def test_each_batch_is_cached_as_soon_as_it_returns(export, tmp_path):
    """A run stopped in the middle of a chunk keeps the batches that finished before it."""
    DyingEditor.calls = 0
    cfg = ScoreConfig(model="dying", data=str(export), out=str(tmp_path / "d"), plots=False, bootstrap=20,
                      chunk_size=64)
    with pytest.raises(SystemExit):
        run_score(cfg, editor=DyingEditor(), log=lambda s: None)
    assert len(list((tmp_path / "d" / "outputs").glob("*.json"))) == 4  # batches 1 and 2 of the first chunk
    DyingEditor.calls = 10
    res = run_score(cfg, editor=DyingEditor(), log=lambda s: None)
    assert res.timing["outputs_reused"] == 4 and res.timing["outputs_edited"] == res.results["counts"]["scored"] - 4


def test_dir_adapter_with_predicted_masks(export, tmp_path, oracle_run):
    """``dir:PATH`` + ``masks=true``: ``{sample_id}.mask.png`` next to each output is the method's
    predicted mask, scored as mask_iou; a missing one fails its sample as bad_mask."""
    from PIL import Image

    from refcoco_edit.benchmark.data import decode_sample

    samples = load_dataset(export).samples
    outs = tmp_path / "precomputed"
    outs.mkdir()
    for i, s in enumerate(samples):
        sid = s.sample_id
        (outs / f"{sid}.png").write_bytes((oracle_run.out / "outputs" / f"{sid}.png").read_bytes())
        if i == 0:
            continue  # no mask for the first sample
        m = decode_sample(s).target_mask
        if i == 1:
            m = np.zeros_like(m)  # an empty prediction: IoU 0
        Image.fromarray((m * 255).astype(np.uint8)).save(outs / f"{sid}.mask.png")
    res = _score(export, tmp_path / "d", model=f"dir:{outs}", editor_args={"masks": "true"},
                 metrics=["mask_iou", "l1"])
    r = res.results
    assert r["editor"]["returns_mask"] is True and r["editor"]["config"]["masks"] is True
    assert r["counts"]["failed_by_reason"] == {"bad_mask": 1}
    rows = {x["sample_id"]: x for x in _rows(res.out)}
    assert "no " in rows[samples[0].sample_id]["error"] and rows[samples[1].sample_id]["mask_iou"] == 0.0
    assert all(rows[s.sample_id]["mask_iou"] == 1.0 for s in samples[2:])
    # without masks=true the same folder scores as before, with mask_iou not computed
    plain = _score(export, tmp_path / "p", model=f"dir:{outs}", metrics=["mask_iou", "l1"])
    assert plain.results["counts"]["failed"] == 0 and "mask_iou" in plain.results["not_computed"]
    assert "masks" not in plain.results["editor"]["config"]
    with pytest.raises(InputError, match="masks"):
        _score(export, tmp_path / "x", model=f"dir:{outs}", editor_args={"masks": "maybe"})


def test_cmd_adapter_with_predicted_masks(export, tmp_path):
    """``{output_mask}`` (per sample) and ``masks=true`` with ``{batch}``: the program writes its
    predicted mask next to its output; here it copies M (``{object_mask}``), so mask_iou is 1."""
    import shlex

    py = shlex.quote(sys.executable)
    one = tmp_path / "one.py"
    one.write_text("import shutil, sys\nshutil.copyfile(sys.argv[1], sys.argv[2])\n"
                   "shutil.copyfile(sys.argv[3], sys.argv[4])\n")
    res = _score(export, tmp_path / "c", model=f"cmd:{py} {shlex.quote(str(one))} {{input}} {{output}} "
                 "{object_mask} {output_mask}", limit=3, cmd_timeout=60, metrics=["mask_iou", "l2_bg"])
    r = res.results
    assert r["editor"]["returns_mask"] is True and r["counts"]["scored"] == 3
    assert r["metrics"]["mask_iou"]["mean"] == 1.0 and r["metrics"]["mask_iou"]["n"] == 3

    batch = tmp_path / "batch.py"
    batch.write_text("import json, shutil, sys\n"
                     "for i, line in enumerate(open(sys.argv[1])):\n"
                     "    v = json.loads(line)\n"
                     "    shutil.copyfile(v['input'], v['output'])\n"
                     "    if i: shutil.copyfile(v['object_mask'], v['output_mask'])\n")
    res = _score(export, tmp_path / "b", model=f"cmd:{py} {shlex.quote(str(batch))} {{batch}}", limit=3,
                 cmd_timeout=60, metrics=["mask_iou"], editor_args={"masks": "true", "protocol": "object_mask"})
    r = res.results
    assert r["editor"]["config"]["masks"] is True
    assert r["counts"]["failed_by_reason"] == {"bad_mask": 1} and r["metrics"]["mask_iou"]["mean"] == 1.0
    assert "no {output_mask} file" in r["failures"][0]["error"]


# ----------------------------------------------------------------------------------------------
# every other annotated object (others_* metrics)
# ----------------------------------------------------------------------------------------------


def test_oracle_and_identity_preserve_every_other_object(oracle_run, identity_run):
    for run in (oracle_run, identity_run):
        m = run.results["metrics"]
        assert m["others_preservation"]["mean"] == 1.0 and m["others_preservation"]["n"] == 12
        assert m["change_others_max"]["mean"] == 0.0  # the references leave every other object bit-exact
    assert "others" in oracle_run.results["config"]["mask_protocol"]


class ScribbleEditor(Editor):
    """The oracle's output with a thick black scribble across one other annotated object of
    another category than the target (``plan``: sample_id -> (x0, y0, x1, y1) of that object)."""

    name = "scribble"
    protocol = frozenset({"reference"})
    plan: dict = {}

    def edit(self, images, prompts, seeds, extras):
        import cv2

        outs = []
        for e in extras:
            out = np.array(e["reference"])
            box = self.plan.get(e["sample_id"])
            if box is not None:
                x0, y0, x1, y1 = box
                cv2.line(out, (x0, y0), (x1 - 1, y1 - 1), (0, 0, 0), max(3, (y1 - y0) // 3))
                cv2.line(out, (x0, y1 - 1), (x1 - 1, y0), (0, 0, 0), max(3, (y1 - y0) // 3))
            outs.append(out)
        return outs


def test_a_scribble_on_another_category_is_caught(export, tmp_path):
    from refcoco_edit import rle

    plan = {}
    for r in load_export(export).to_pylist():
        other = [(m, c) for m, c in zip(r["other_masks"], r["other_categories"]) if c != r["category"]]
        if other:
            x, y, w, h = rle.to_bbox(other[0][0])
            plan[r["sample_id"]] = (int(x), int(y), int(x + w), int(y + h))
    assert len(plan) >= 6
    ScribbleEditor.plan = plan
    res = run_score(ScoreConfig(model="scribble", data=str(export), out=str(tmp_path / "s"), plots=False, bootstrap=50,
                                metrics=["referring"]), editor=ScribbleEditor(), log=lambda s: None)
    rows = {x["sample_id"]: x for x in _rows(res.out)}
    for sid, x in rows.items():
        if sid in plan:
            assert x["others_preservation"] < 1.0 and x["change_others_max"] > 0.05, sid
            # the same-category check does not see it (NaN: a sample without a same-category distractor)
            assert x["distractor_preservation"] == 1.0 or math.isnan(x["distractor_preservation"]), sid
        else:
            assert x["others_preservation"] == 1.0
    assert res.results["metrics"]["others_preservation"]["mean"] < 1.0


def test_an_export_without_other_objects_still_scores(export, tmp_path):
    import pyarrow as pa

    table = load_export(export)
    old = table.drop_columns(["other_ann_ids", "other_categories", "other_masks"])
    meta = dict(old.schema.metadata)
    meta[b"refcoco_edit.schema_version"] = b"1.0"
    (tmp_path / "old").mkdir()
    pa.parquet.write_table(old.replace_schema_metadata(meta), tmp_path / "old" / "train-00000.parquet")
    back = load_export(tmp_path / "old")
    assert back.column("other_masks").null_count == back.num_rows
    res = _score(tmp_path / "old", tmp_path / "r", model="oracle", metrics=["referring"])
    m = res.results["metrics"]
    assert m["others_preservation"]["n"] == 0 and m["others_preservation"]["mean"] is None  # all NaN: no mean
    assert m["referring_accuracy"]["n"] > 0
