"""Reports: results.json against its schema, report.md in the paper's Table 1 layout, the HTML
gallery's escaping, plots, and `report RUN1 RUN2` side by side."""
from __future__ import annotations

import argparse
import json
import re
from urllib.parse import unquote

import numpy as np
import pytest

from refcoco_edit.benchmark.cli import add_report_parser
from refcoco_edit.benchmark.editors import Editor
from refcoco_edit.benchmark.harness import ScoreConfig, run_score
from refcoco_edit.benchmark.report import RESULTS_SCHEMA, compare_runs, load_run, schema_errors, validate_results
from refcoco_edit.build import BuildConfig, build
from refcoco_edit.errors import InputError
from refcoco_edit.export import load_export
from refcoco_edit.schema import rows_to_table
from refcoco_edit.workspace import atomic_write_table

XSS = "<script>alert(1)</script>"


class HostileEditor(Editor):
    """Fails one sample with HTML in its message; returns the source otherwise."""

    name = "hostile <b>editor</b>"
    victim = ""

    def edit(self, images, prompts, seeds, extras):
        out = []
        for img, e in zip(images, extras):
            if e["sample_id"] == self.victim:
                raise RuntimeError('<img src=x onerror="alert(2)">')
            out.append(np.array(img))
        return out


@pytest.fixture(scope="module")
def runs(demo_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    res = build(BuildConfig.of(out=str(root / "w"), refcoco=str(demo_dir), images=str(demo_dir / "images"), num_images=3,
                            progress=False), log=lambda s: None)
    rows = load_export(res.export_dir).to_pylist()
    r0 = rows[0]
    prefix = f"{XSS} | "
    r0["prompt"] = prefix + r0["prompt"]
    r0["referring_span"] = [a + len(prefix) for a in r0["referring_span"]]
    r0["edit_span"] = [a + len(prefix) for a in r0["edit_span"]]
    data = root / "data"
    atomic_write_table(data / "test-00000-of-00001.parquet", rows_to_table(rows))
    oracle = run_score(ScoreConfig(model="oracle", data=str(data), out=str(root / "oracle"), bootstrap=100),
                       log=lambda s: None)  # with plots
    HostileEditor.victim = rows[1]["sample_id"]
    hostile = run_score(ScoreConfig(model="tests:Hostile|<i>x</i>", data=str(data), out=str(root / "hostile"),
                                    bootstrap=100, plots=False), editor=HostileEditor(), log=lambda s: None)
    return {"root": root, "data": data, "oracle": oracle, "hostile": hostile, "rows": rows}


def test_results_json_follows_its_schema(runs):
    for key in ("oracle", "hostile"):
        doc = json.loads((runs[key].out / "results.json").read_text())
        assert schema_errors(doc) == []
        assert doc["results_schema_version"] == "1.1"
        assert doc["metrics"]["l2_bg"]["by_attribute"]["attr_distractors"]  # the difficulty breakdowns
        cfg = doc["config"]
        assert set(cfg["models"]) == {"clip_model", "aesthetic_weights", "dino_model", "lpips_weights"}
        assert cfg["image_size"] and cfg["crop_rule"] and cfg["mask_protocol"]["background"]
        assert doc["versions"]["python"] and doc["versions"]["numpy"]
        assert "git_revision" in doc["tool"]
    import jsonschema

    jsonschema.validate(json.loads((runs["oracle"].out / "results.json").read_text()), RESULTS_SCHEMA)


def test_a_results_json_of_schema_1_0_is_still_read(runs, tmp_path):
    """1.1 added by_attribute and data.subset; a 1.0 document (without them) is read and reported."""
    import shutil

    from refcoco_edit.benchmark.report import load_run

    old = tmp_path / "old"
    shutil.copytree(runs["oracle"].out, old)
    doc = json.loads((old / "results.json").read_text())
    doc["results_schema_version"] = "1.0"
    del doc["data"]["subset"]
    for m in doc["metrics"].values():
        del m["by_attribute"]
    (old / "results.json").write_text(json.dumps(doc))
    assert load_run(old)["results_schema_version"] == "1.0"
    doc["results_schema_version"] = "0.9"
    (old / "results.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="results schema version '0.9', this refcoco-edit reads 1.0, 1.1"):
        load_run(old)


def test_schema_catches_bad_documents(runs):
    doc = json.loads((runs["oracle"].out / "results.json").read_text())
    bad = dict(doc)
    del bad["counts"]
    bad["extra"] = 1
    bad["metrics"] = {"l2_bg": dict(doc["metrics"]["l2_bg"], mean="zero")}
    errs = schema_errors(bad)
    assert any("missing key 'counts'" in e for e in errs)
    assert any("unexpected key 'extra'" in e for e in errs)
    assert any("$.metrics.l2_bg.mean" in e for e in errs)
    with pytest.raises(InputError):
        validate_results(bad)
    assert schema_errors(dict(doc, results_schema_version="0.9"))


def test_results_json_counts_failures_with_reasons(runs):
    doc = runs["hostile"].results
    assert doc["counts"]["failed"] == 1 and doc["counts"]["failed_by_reason"] == {"editor_error": 1}
    assert doc["failures"][0]["error"] == 'RuntimeError: <img src=x onerror="alert(2)">'


def test_report_md_has_the_table1_layout(runs):
    md = (runs["oracle"].out / "report.md").read_text()
    table1 = md.split("## Table 1")[1].split("##")[0]
    header = [c.strip() for c in table1.strip().splitlines()[2].strip("|").split("|")]
    assert header == ["Method", "Protocol", "AP ↑", "L2_bg x10^3 ↓", "CLIP-Sim_fg (target) ↑", "CLIP-Sim_fg (P_r) ↑"]
    row = [c.strip() for c in table1.strip().splitlines()[4].strip("|").split("|")]
    assert row[0] == "oracle" and row[1] == "image+prompt+reference" and row[2] == "—" and row[3].startswith("0.000")
    for col in ("PSNR_bg ↑", "MSE_bg x10^4 ↓", "SSIM_bg x10^2 ↑", "LPIPS_bg x10^3 ↓", "L1 ↓", "L2 ↓", "CLIP-I ↑",
                "DINO ↑", "Ref-Acc ↑", "Distr-Pres ↑"):
        assert col in md
    assert "## By edit type" in md and "## Not computed" in md and "needs --clip-model" in md
    hostile = (runs["hostile"].out / "report.md").read_text()
    assert "<i>" not in hostile and "&lt;i&gt;" in hostile and "\\|" in hostile  # cells escaped
    assert "editor_error" in hostile


def test_gallery_escapes_every_text(runs):
    page = (runs["hostile"].out / "gallery.html").read_text()
    assert XSS not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page
    assert "<i>x</i>" not in page
    assert re.findall(r"<script", page, flags=re.I) == []
    ref = runs["rows"][0]
    assert f'<span class="ref">{ref["referring_expression"]}</span>' in page  # spans survive the shift


def test_gallery_links_resolve(runs):
    out = runs["oracle"].out
    page = (out / "gallery.html").read_text()
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) == 3 * len(runs["rows"])
    for s in srcs:
        assert not s.startswith("/") and (out / unquote(s)).is_file(), s


def test_plots_are_pngs(runs):
    plots = sorted((runs["oracle"].out / "plots").glob("*.png"))
    assert [p.name for p in plots] == ["by_difficulty.png", "by_edit_type.png", "distributions.png"]
    for p in plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000


def test_report_puts_runs_side_by_side(runs, tmp_path):
    ap = argparse.ArgumentParser()
    add_report_parser(ap.add_subparsers())
    out = tmp_path / "cmp"
    args = ap.parse_args(["report", str(runs["oracle"].out), str(runs["hostile"].out), "--out", str(out)])
    assert args.func(args) == 0
    md = (out / "report.md").read_text()
    table1 = md.split("## Table 1")[1].split("##")[0].strip().splitlines()
    assert len(table1) == 6 and table1[4].startswith("| oracle |") and "Hostile" in table1[5]
    comp = json.loads((out / "comparison.json").read_text())
    assert [r["label"] for r in comp["runs"]][0] == "oracle" and len(comp["runs"]) == 2
    page = (out / "gallery.html").read_text()
    assert XSS not in page
    for s in re.findall(r'src="([^"]+)"', page):
        assert (out / unquote(s)).is_file(), s
    assert page.count("<th>") == 6  # sample, prompt, source, reference, two runs
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == ["by_difficulty.png", "by_edit_type.png", "distributions.png"]


def test_report_warns_about_different_sample_sets(runs, tmp_path):
    part = run_score(ScoreConfig(model="identity", data=str(runs["data"]), out=str(tmp_path / "part"), limit=2,
                                 bootstrap=50, plots=False, gallery=False), log=lambda s: None)
    compare_runs([runs["oracle"].out, part.out], tmp_path / "cmp", plots=False)
    assert "different sample sets" in (tmp_path / "cmp" / "report.md").read_text()


def test_report_refuses_unfinished_or_foreign_runs(tmp_path, runs):
    with pytest.raises(InputError, match="no results.json"):
        load_run(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    doc = json.loads((runs["oracle"].out / "results.json").read_text())
    (bad / "results.json").write_text(json.dumps(dict(doc, results_schema_version="9.9")))
    with pytest.raises(InputError, match="schema version"):
        load_run(bad)
