"""Difficulty breakdowns of `refcoco-edit score` (issue 27): the attributes reach every sample,
a planted effect is found where it was planted, --subset scores a slice and says so, and data
written before the attributes existed get them computed on the fly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from refcoco_edit.benchmark.data import load_dataset
from refcoco_edit.benchmark.editors import Editor
from refcoco_edit.benchmark.harness import ScoreConfig, run_score
from refcoco_edit.build import BuildConfig, build
from refcoco_edit.difficulty import BUCKETS, attributes
from refcoco_edit.export import load_export
from conftest import run_cli


@pytest.fixture(scope="module")
def built(demo_dir, tmp_path_factory) -> tuple:
    """(the export folder, the build's log)."""
    out = tmp_path_factory.mktemp("breakdown-build")
    # 8 images, seed 3: targets with 0, 1 and 2 same-category distractors (16 samples)
    log: list = []
    res = build(BuildConfig.of(out=str(out), refcoco=str(demo_dir), images=str(demo_dir / "images"), num_images=8,
                               seed=3, progress=False), log=log.append)
    return res.export_dir, "\n".join(log)


@pytest.fixture(scope="module")
def export(built) -> Path:
    return built[0]


class OneDistractorOnly(Editor):
    """Perfect (returns the reference) where the target has exactly one same-category distractor,
    does nothing where it has several: the planted effect."""

    name = "one-distractor-only"
    protocol = frozenset({"reference"})
    batch_size = 8

    def __init__(self, data: str) -> None:
        super().__init__(data=data)
        self.data = data

    def load(self) -> None:
        ds = load_dataset(self.data)
        self.n = {s.sample_id: (s.difficulty or {}).get("n_distractors") for s in ds.samples}

    def edit(self, images, prompts, seeds, extras):
        return [np.array(e["reference"], copy=True) if self.n[e["sample_id"]] == 1 else np.array(img, copy=True)
                for img, e in zip(images, extras)]


def test_every_sample_carries_its_attributes(export, built):
    rows = load_export(export).to_pylist()
    assert rows
    # the build report counts the buckets: "distractors          0 1, 1 7, 2 8"
    from refcoco_edit.difficulty import counts

    line = "    distractors          " + ", ".join(f"{k} {v}" for k, v in counts(rows)["attr_distractors"].items())
    assert "difficulty (refcoco_edit.difficulty):" in built[1] and line in built[1]
    for r in rows:
        d = r["difficulty"]
        assert d is not None and all(d[k] is not None for k in d), (r["sample_id"], d)
        # what the build stored is what a reader recomputes from the other columns
        assert attributes({k: v for k, v in r.items() if k != "difficulty"}) == d


def test_a_planted_effect_is_found_where_it_was_planted(export, tmp_path):
    ds = load_dataset(str(export))
    n = [(s.difficulty or {}).get("n_distractors") for s in ds.samples]
    assert n.count(1) and sum(1 for v in n if v and v >= 2), n  # both kinds in the build
    res = run_score(ScoreConfig(model="planted", data=str(export), out=str(tmp_path / "r"), plots=True, gallery=False,
                                bootstrap=50), editor=OneDistractorOnly(str(export)), log=lambda s: None)
    cells = res.results["metrics"]["referring_accuracy"]["by_attribute"]["attr_distractors"]
    assert cells["1"]["mean"] == 1.0 and cells["1"]["n"] == n.count(1)
    several = {k: v for k, v in cells.items() if k in ("2", "3+") and v["n"]}
    assert several and all(v["mean"] == 0.0 for v in several.values())
    # per-sample buckets in samples.parquet, and the section of report.md, and the plot
    t = pq.read_table(res.out / "samples.parquet")
    assert set(BUCKETS) <= set(t.column_names)
    rows = t.to_pylist()
    assert all(r["attr_distractors"] is not None for r in rows if r["status"] == "ok")
    md = (res.out / "report.md").read_text()
    assert "## By difficulty" in md and "### distractors" in md and "| Ref-Acc | planted | " in md
    assert (res.out / "plots" / "by_difficulty.png").stat().st_size > 1000


def test_subset_scores_a_slice_and_records_it(export, tmp_path):
    out = tmp_path / "s"
    p = run_cli("score", "--model", "identity", "--data", str(export), "--out", str(out), "--no-gallery", "--no-plots",
                "--no-progress", "--subset", "n_distractors >= 2 or edit_type == 'remove'")
    assert p.returncode == 0, p.stderr
    r = json.loads((out / "results.json").read_text())
    ds = load_dataset(str(export))
    want = sorted(s.sample_id for s in ds.samples
                  if s.difficulty["n_distractors"] >= 2 or s.edit_type == "remove")
    assert r["data"]["subset"] == {"expr": "n_distractors >= 2 or edit_type == 'remove'", "matched": len(want),
                                   "of": len(ds.samples)}
    got = sorted(x["sample_id"] for x in pq.read_table(out / "samples.parquet").to_pylist())
    assert got == want and r["results_schema_version"] == "1.1"
    bad = run_cli("score", "--model", "identity", "--data", str(export), "--out", str(tmp_path / "b"),
                  "--subset", "distractors > 1")
    assert bad.returncode == 2 and "unknown name 'distractors'" in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_data_without_the_column_get_attributes_on_the_fly(export, tmp_path):
    """An export written before schema 1.2 (no difficulty column) still reads, attributes computed."""
    old = tmp_path / "old"
    old.mkdir()
    for f in sorted(Path(export).glob("*.parquet")):
        t = pq.read_table(f)
        meta = dict(t.schema.metadata or {})
        meta[b"refcoco_edit.schema_version"] = b"1.1"
        t = t.drop_columns(["difficulty"])
        pq.write_table(t.replace_schema_metadata(meta), old / f.name)
    new = {s.sample_id: s.difficulty for s in load_dataset(str(export)).samples}
    got = {s.sample_id: s.difficulty for s in load_dataset(str(old)).samples}
    assert got == new and all(d is not None for d in got.values())
