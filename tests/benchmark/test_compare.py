"""`refcoco-edit compare`: paired statistics against direct numpy/scipy computations, the
oracle/identity acceptance, the self-comparison, sample-set refusal and --intersect, protocol
flags, difficulty buckets, determinism and the CLI end to end. One small demo build and a few
score runs, shared by the module."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import wilcoxon

from refcoco_edit.benchmark.editors import Editor
from refcoco_edit.benchmark.harness import ScoreConfig, run_score
from refcoco_edit.benchmark.report import compact_letters, holm, run_compare, win_tie_loss
from refcoco_edit.benchmark.report.compare import check_protocols, load_compare_run
from refcoco_edit.build import BuildConfig, build
from refcoco_edit.errors import InputError

XSS = "<i>x</i>"


class CoinOracle(Editor):
    """The reference on the samples whose editor seed falls below half the range, the source elsewhere."""

    name = "coin-oracle"
    protocol = frozenset({"reference"})
    batch_size = 16

    def edit(self, images, prompts, seeds, extras):
        return [np.array(e["reference"] if s < 2 ** 30 else img, copy=True) for img, s, e in zip(images, seeds, extras)]


class FailOne(Editor):
    """The source unchanged, except one sample that fails."""

    name = "fail-one"
    protocol = frozenset()
    batch_size = 16
    victim = ""

    def edit(self, images, prompts, seeds, extras):
        out = []
        for img, e in zip(images, extras):
            if e["sample_id"] == self.victim:
                raise RuntimeError("this sample fails")
            out.append(np.array(img, copy=True))
        return out


class MaskedIdentity(Editor):
    """Sees the ground-truth mask (a mask-aware protocol) and returns the source."""

    name = "masked-identity"
    protocol = frozenset({"gt_mask"})
    batch_size = 16

    def edit(self, images, prompts, seeds, extras):
        return [np.array(img, copy=True) for img in images]


@pytest.fixture(scope="module")
def runs(demo_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    res = build(BuildConfig.of(out=str(root / "w"), refcoco=str(demo_dir), images=str(demo_dir / "images"), num_images=6,
                            progress=False), log=lambda s: None)
    data = str(res.export_dir)

    def score(name, model, editor=None, **kw):
        run_score(ScoreConfig(model=model, data=data, out=str(root / name), bootstrap=10, plots=False, gallery=False,
                              **kw), editor=editor, log=lambda s: None)
        return root / name

    out = {"root": root, "oracle": score("oracle", "oracle"), "identity": score("identity", "identity"),
           "identity2": score("identity2", "identity"), "coin": score("coin", "tests:coin", CoinOracle())}
    ids = sorted(r["sample_id"] for r in pq.read_table(out["identity"] / "samples.parquet").to_pylist())
    FailOne.victim = ids[3]
    out["victim"] = ids[3]
    out["fail"] = score("fail", f"tests:fail|{XSS}", FailOne())
    out["masked"] = score("masked", "tests:masked", MaskedIdentity(), referring_eps=0.02)
    out["ids"] = ids
    return out


def _vectors(run: Path, metric: str, ids):
    rows = {r["sample_id"]: r for r in pq.read_table(run / "samples.parquet").to_pylist()}
    return np.array([rows[s][metric] for s in ids], dtype=np.float64)


def _holm_reference(p):
    """Holm, written as the step-down procedure: adjusted p_(k) = max over j <= k of (m - j + 1) p_(j)."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    for k in range(m):
        adj[order[k]] = min(1.0, max((m - j) * p[order[j]] for j in range(k + 1)))
    return adj


@pytest.fixture(scope="module")
def three(runs):
    out = runs["root"] / "cmp-three"
    doc = run_compare([runs["oracle"], runs["identity"], runs["coin"]], out, diagnostics=True, bootstrap=500, seed=7,
                      log=lambda s: None)
    return doc, out


# ----------------------------------------------------------------------------------------------
# the statistics against direct computations
# ----------------------------------------------------------------------------------------------


def test_pair_statistics_match_numpy_and_scipy(runs, three):
    doc, _ = three
    paths = {"oracle": runs["oracle"], "identity": runs["identity"], "tests:coin": runs["coin"]}
    ids = runs["ids"]
    assert doc["samples"]["n"] == len(ids) == 12
    checked = 0
    for pair in doc["pairs"]:
        names = list(pair["metrics"])
        for m in names:
            st = pair["metrics"][m]
            a, b = _vectors(paths[pair["a"]], m, ids), _vectors(paths[pair["b"]], m, ids)
            keep = np.isfinite(a) & np.isfinite(b)
            a, b = a[keep], b[keep]
            d = a - b
            assert st["n"] == len(d) and st["n_dropped"] == int((~keep).sum())
            assert st["diff"] == pytest.approx(d.mean(), abs=1e-12)
            assert st["mean_a"] == pytest.approx(a.mean()) and st["mean_b"] == pytest.approx(b.mean())
            # the paired bootstrap, redone from the recorded seed
            assert doc["seeds"]["bootstrap"][f"diff|{pair['a']}|{pair['b']}|{m}"] == st["bootstrap_seed"]
            rng = np.random.default_rng(st["bootstrap_seed"])
            idx = rng.integers(0, len(d), size=(500, len(d)))
            means = (a[idx] - b[idx]).mean(axis=1)  # the same indices for both runs
            assert st["ci95"] == pytest.approx(list(np.percentile(means, [2.5, 97.5])), abs=1e-12)
            # scipy's Wilcoxon on the same differences, the zeros dropped first (zero_method 'wilcox'
            # drops them too, but with a zero in the input scipy's method='auto' leaves the exact test)
            if np.any(d != 0):
                assert st["p"] == pytest.approx(wilcoxon(d[d != 0], zero_method="wilcox").pvalue, rel=1e-12)
            else:
                assert st["p"] == 1.0 and st["ci95"] == [0.0, 0.0]
            hib = doc["metrics"][m]["higher_is_better"]
            better = (a < b) if hib is False else (a > b)
            worse = (a > b) if hib is False else (a < b)
            assert (st["wins"], st["ties"], st["losses"]) == (int(better.sum()), int((a == b).sum()), int(worse.sum()))
            checked += 1
        # Holm over the metrics of the pair
        p = np.array([pair["metrics"][m]["p"] for m in names])
        assert [pair["metrics"][m]["p_holm"] for m in names] == pytest.approx(list(_holm_reference(p)), abs=1e-15)
    assert checked >= 3 * 10
    # the leaderboard's Holm is over the pairs, on its metric
    tests = doc["leaderboard"]["tests"]
    assert [t["p_holm"] for t in tests] == pytest.approx(list(_holm_reference(np.array([t["p"] for t in tests]))))


def test_holm_is_holm():
    rng = np.random.default_rng(0)
    for m in (1, 2, 5, 13):
        p = rng.uniform(0, 0.2, m) ** 2
        p[rng.integers(0, m)] = p.min()  # a tie
        assert holm(list(p)) == pytest.approx(list(_holm_reference(p)))
        try:
            from statsmodels.stats.multitest import multipletests
        except ImportError:
            continue
        assert holm(list(p)) == pytest.approx(list(multipletests(p, method="holm")[1]))
    assert holm([0.01, None, 0.04]) == [0.02, None, 0.04]  # None: not a test, not in the family
    adj = holm([0.001, 0.2, 0.011, 0.012])
    assert adj == pytest.approx([0.004, 0.2, 0.033, 0.033])  # monotone: 0.012 * 2 < 0.011 * 3


def test_win_tie_loss_orientation():
    a, b = np.array([1.0, 2.0, 3.0, 3.0]), np.array([2.0, 1.0, 1.0, 3.0])
    assert win_tie_loss(a, b, True) == (2, 1, 1)
    assert win_tie_loss(a, b, False) == (1, 1, 2)


def test_compact_letters():
    order = ["r1", "r2", "r3", "r4"]
    diff = {frozenset(p) for p in (("r1", "r3"), ("r1", "r4"), ("r2", "r4"))}
    assert compact_letters(order, diff) == {"r1": "a", "r2": "ab", "r3": "bc", "r4": "c"}
    assert compact_letters(order, set()) == dict.fromkeys(order, "a")
    every = {frozenset((x, y)) for x in order for y in order if x != y}
    assert compact_letters(order, every) == {"r1": "a", "r2": "b", "r3": "c", "r4": "d"}


# ----------------------------------------------------------------------------------------------
# acceptance
# ----------------------------------------------------------------------------------------------


def test_an_editor_against_itself_is_not_different(runs):
    doc = run_compare([runs["identity"], runs["identity2"]], runs["root"] / "cmp-self", diagnostics=True,
                      log=lambda s: None)
    (pair,) = doc["pairs"]
    assert len(pair["metrics"]) >= 10
    for m, st in pair["metrics"].items():
        assert st["p"] == 1.0 and st["p_holm"] == 1.0, m
        assert st["ci95"] == [0.0, 0.0] and st["diff"] == 0.0, m
        assert st["verdict"] == "not_different" and st["wins"] == st["losses"] == 0, m
    rows = doc["leaderboard"]["rows"]
    assert [r["group"] for r in rows] == ["a", "a"] and rows[0]["rank"] == rows[1]["rank"] == 1
    assert [r["label"] for r in rows] == ["identity (identity)", "identity (identity2)"]


def test_oracle_vs_identity_is_significant_wherever_they_differ(runs, three):
    doc, _ = three
    pair = next(p for p in doc["pairs"] if (p["a"], p["b"]) == ("oracle", "identity"))
    ids = runs["ids"]
    differing = []
    for m, st in pair["metrics"].items():
        a, b = _vectors(runs["oracle"], m, ids), _vectors(runs["identity"], m, ids)
        keep = np.isfinite(a) & np.isfinite(b)
        if np.any(a[keep] != b[keep]):
            differing.append(m)
            want = "a_higher" if st["diagnostic"] else "a_better"
            assert st["verdict"] == want and st["p_holm"] < 0.05, (m, st)
        else:
            assert st["verdict"] == "not_different" and st["p"] == 1.0
    assert {"l1", "l2", "change_target", "referring_accuracy", "referring_margin"} <= set(differing)
    assert pair["metrics"]["change_target"]["diagnostic"] and not pair["metrics"]["l1"]["diagnostic"]
    # the leaderboard: oracle first, identity last, in groups of their own
    rows = doc["leaderboard"]["rows"]
    assert doc["leaderboard"]["metric"] == "referring_accuracy"
    assert rows[0]["label"] == "oracle" and rows[-1]["label"] == "identity"
    assert rows[0]["group"] != rows[-1]["group"] and not set(rows[0]["group"]) & set(rows[-1]["group"])


def test_letters_follow_the_holm_adjusted_pairwise_tests(three):
    doc, _ = three
    lb = doc["leaderboard"]
    letters = {r["label"]: r["group"] for r in lb["rows"]}
    assert len(lb["tests"]) == 3
    for t in lb["tests"]:
        share = bool(set(letters[t["a"]]) & set(letters[t["b"]]))
        assert share == (not t["significant"]), t
        assert t["significant"] == (t["p_holm"] < 0.05)
    for r in lb["rows"]:
        assert r["not_different_from"] == [o["label"] for o in lb["rows"]
                                           if o["label"] != r["label"] and set(o["group"]) & set(r["group"])]
    means = [r["mean"] for r in lb["rows"]]
    assert means == sorted(means, reverse=True)  # higher is better: best first


def test_buckets_by_edit_type_and_attributes(runs, three):
    doc, _ = three
    (et,) = [a for a in doc["leaderboard"]["by_attribute"] if a["attribute"] == "edit_type"]
    assert sum(b["n"] for b in et["buckets"]) == len(runs["ids"])
    rows = {r["sample_id"]: r for r in pq.read_table(runs["coin"] / "samples.parquet").to_pylist()}
    for b in et["buckets"]:
        cell = next(c for c in b["runs"] if c["label"] == "tests:coin")
        x = np.array([rows[s]["referring_accuracy"] for s in runs["ids"] if rows[s]["edit_type"] == b["bucket"]])
        x = x[np.isfinite(x)]
        assert cell["n"] == len(x) and cell["mean"] == pytest.approx(x.mean())
        rng = np.random.default_rng(cell["bootstrap_seed"])
        idx = rng.integers(0, len(x), size=(500, len(x)))
        assert cell["ci95"] == pytest.approx(list(np.percentile(x[idx].mean(axis=1), [2.5, 97.5])))
    # attr_ columns (the difficulty buckets of samples.parquet) are broken down too
    copies = []
    for key in ("oracle", "identity"):
        dst = runs["root"] / f"attr-{key}"
        dst.mkdir(exist_ok=True)
        shutil.copy(runs[key] / "results.json", dst / "results.json")
        t = pq.read_table(runs[key] / "samples.parquet")
        t = t.select([c for c in t.column_names if not c.startswith("attr_")])  # only the two below
        nd = t.column("n_distractors").to_pylist()
        t = t.append_column("attr_distractors", pa.array([str(min(n, 3)) + ("+" if n >= 3 else "") for n in nd]))
        t = t.append_column("attr_size", pa.array([("small", "medium", "large")[i % 3] for i in range(t.num_rows)]))
        pq.write_table(t, dst / "samples.parquet")
        copies.append(dst)
    doc2 = run_compare(copies, runs["root"] / "cmp-attr", bootstrap=100, log=lambda s: None)
    attrs = {a["attribute"]: a for a in doc2["leaderboard"]["by_attribute"]}
    assert list(attrs) == ["edit_type", "attr_distractors", "attr_size"]
    assert [b["bucket"] for b in attrs["attr_size"]["buckets"]] == ["small", "medium", "large"]
    buckets = [b["bucket"] for b in attrs["attr_distractors"]["buckets"]]
    assert buckets == sorted(buckets, key=lambda s: int(s.rstrip("+")))
    assert sum(b["n"] for b in attrs["attr_size"]["buckets"]) == len(runs["ids"])
    md = (runs["root"] / "cmp-attr" / "leaderboard.md").read_text()
    assert "### attr_size" in md and "### attr_distractors" in md


# ----------------------------------------------------------------------------------------------
# sample sets, protocols
# ----------------------------------------------------------------------------------------------


def test_different_sample_sets_are_refused_in_one_line(runs):
    with pytest.raises(InputError) as e:
        run_compare([runs["identity"], runs["fail"]], runs["root"] / "cmp-refused", log=lambda s: None)
    msg = str(e.value)
    assert "\n" not in msg and "--intersect" in msg and "failed 1" in msg and "11 samples" in msg
    assert not (runs["root"] / "cmp-refused" / "compare.json").exists()


def test_intersect_compares_the_common_samples_and_reports_the_loss(runs):
    said = []
    doc = run_compare([runs["identity"], runs["fail"]], runs["root"] / "cmp-int", intersect=True, log=said.append)
    s = doc["samples"]
    assert s["n"] == 11 and s["union"] == 12 and s["intersected"] and s["excluded_sample_ids"] == [runs["victim"]]
    ident, fail = s["runs"]
    assert (ident["scored"], ident["used"], ident["lost"], ident["missing"]) == (12, 11, 1, 0)
    assert (fail["scored"], fail["lost"], fail["missing"], fail["missing_by_status"]) == (11, 0, 1, {"failed": 1})
    assert any("11 of 12" in line and "loses 1" in line for line in said)
    assert all(st["n"] <= 11 for st in doc["pairs"][0]["metrics"].values())
    md = (runs["root"] / "cmp-int" / "leaderboard.md").read_text()
    assert "--intersect: 1 of 12 left out" in md
    # every text of the page is escaped (the editor spec holds HTML)
    page = (runs["root"] / "cmp-int" / "leaderboard.html").read_text()
    assert XSS not in page and "&lt;i&gt;x&lt;/i&gt;" in page
    assert "<script" not in page and "http" not in page  # no script, no external asset


def test_protocol_differences_are_flagged_or_refused(runs, capsys):
    from refcoco_edit.cli import main

    a, b = str(runs["identity"]), str(runs["masked"])
    # the leaderboard metric measured with another eps: refused when named, passed over by default
    with pytest.raises(InputError, match="referring_accuracy.*referring_eps.*--metric"):
        run_compare([a, b], runs["root"] / "cmp-proto0", metric="referring_accuracy", log=lambda s: None)
    assert run_compare([a, b], runs["root"] / "cmp-proto0", log=lambda s: None)["leaderboard"]["metric"] == \
        "referring_margin"
    out = runs["root"] / "cmp-proto"
    assert main(["compare", a, b, "--out", str(out), "--metric", "l1", "--bootstrap", "200"]) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "compare.json").read_text())
    kinds = {f["kind"]: f["severity"] for f in doc["protocol"]["flags"]}
    assert kinds["editor_protocol"] == "warn" and kinds["metric_params"] == "exclude"
    assert doc["pairs"][0]["not_compared"]["referring_accuracy"].startswith("metric parameter referring_eps")
    assert "referring_accuracy" not in doc["pairs"][0]["metrics"]
    assert "distractor_preservation" in doc["pairs"][0]["metrics"]  # tau is the same: compared
    for text in (printed, (out / "leaderboard.md").read_text(), (out / "leaderboard.html").read_text()):
        assert "WARNING: editor protocols differ" in text and "image+prompt+gt_mask" in text
        assert "NOT COMPARED" in text and "referring_eps" in text
    # a different data view is refused outright
    view = runs["root"] / "view-rb"
    view.mkdir(exist_ok=True)
    shutil.copy(runs["identity"] / "samples.parquet", view / "samples.parquet")
    res = json.loads((runs["identity"] / "results.json").read_text())
    res["data"]["view"] = "reference-based"
    (view / "results.json").write_text(json.dumps(res))
    assert main(["compare", a, str(view), "--out", str(runs["root"] / "cmp-view")]) == 2
    err = capsys.readouterr().err
    assert "different data views" in err and len(err.strip().splitlines()) == 1


def test_judge_and_model_differences_exclude_their_metrics(runs):
    base = load_compare_run(str(runs["identity"]))
    from refcoco_edit.benchmark.report.compare import MetricInfo, _unique_labels

    def variant(judge_model, clip_sha, device="cpu"):
        r = copy.deepcopy(base)
        r.results["judge"] = {"model": judge_model, "prompt_version": "v1",
                              "params": {"temperature": 0.0, "passes": 1}, "metrics": {}}
        r.results["config"]["model_details"] = {"clip_model": {"spec": "clip", "weights_sha256": clip_sha,
                                                               "device": device, "dtype": "fp32"}}
        r.metrics["vie_o"] = MetricInfo("vie_o", "VIE-O", True, 1.0, "judge")
        r.metrics["clip_sim_fg"] = MetricInfo("clip_sim_fg", "CLIP-Sim_fg", True, 1.0, "pixel", ("clip_model",))
        return r

    r1, r2, r3 = variant("gpt-x", "aaa"), variant("gpt-y", "aaa", device="cuda"), variant("gpt-x", "bbb")
    _unique_labels([r1, r2, r3])
    flags, excl = check_protocols([r1, r2, r3])
    sev = {f["kind"]: f["severity"] for f in flags}
    assert sev["judge"] == "exclude" and sev["metric_model"] == "exclude" and sev["metric_model_device"] == "warn"
    assert set(excl[(0, 1)]) == {"vie_o"}  # another judge; the same CLIP (device only warns)
    assert set(excl[(0, 2)]) == {"clip_sim_fg"}  # the same judge; another CLIP
    assert set(excl[(1, 2)]) == {"vie_o", "clip_sim_fg"}
    assert "l1" not in excl[(1, 2)]


# ----------------------------------------------------------------------------------------------
# determinism, the CLI
# ----------------------------------------------------------------------------------------------


def test_outputs_are_byte_identical_on_a_second_run(runs, three):
    doc, first = three
    again = runs["root"] / "cmp-three-again"
    run_compare([runs["oracle"], runs["identity"], runs["coin"]], again, diagnostics=True, bootstrap=500, seed=7,
                log=lambda s: None)
    for name in ("compare.json", "leaderboard.md", "leaderboard.html"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
        assert str(first) not in (first / name).read_text()  # the output folder is not written into them
    assert doc["compare_schema_version"] == "1.0"
    assert set(doc) == {"compare_schema_version", "runs", "samples", "protocol", "metrics", "pairs", "leaderboard",
                        "seeds", "settings"}
    assert doc["settings"]["wilcoxon"]["zero_method"] == "wilcox" and doc["seeds"]["base"] == 7
    # every bootstrap seed recorded: one per pair and metric, per leaderboard row, per bucket cell
    n_diff = sum(len(p["metrics"]) for p in doc["pairs"])
    n_bucket = sum(len(b["runs"]) for a in doc["leaderboard"]["by_attribute"] for b in a["buckets"])
    assert len(doc["seeds"]["bootstrap"]) == n_diff + 3 + n_bucket
    # another seed: other CIs, the same p-values
    other = run_compare([runs["oracle"], runs["identity"], runs["coin"]], runs["root"] / "cmp-seed8", diagnostics=True,
                        bootstrap=500, seed=8, log=lambda s: None)
    pa_, pb_ = doc["pairs"][2]["metrics"]["l1"], other["pairs"][2]["metrics"]["l1"]
    assert pa_["p"] == pb_["p"] and pa_["bootstrap_seed"] != pb_["bootstrap_seed"]


def test_cli_end_to_end(runs, capsys):
    from refcoco_edit.cli import main

    out = runs["root"] / "cmp-cli"
    assert main(["compare", str(runs["oracle"]), str(runs["identity"]), str(runs["coin"]), "--out", str(out),
                 "--bootstrap", "300", "--seed", "3", "--metric", "referring_margin"]) == 0
    printed = capsys.readouterr().out
    assert "leaderboard on referring_margin" in printed and "oracle vs identity: oracle better on" in printed
    assert printed.splitlines()[-1].endswith("leaderboard.md, leaderboard.html, compare.json")
    doc = json.loads((out / "compare.json").read_text())
    assert doc["settings"]["bootstrap"] == 300 and doc["settings"]["metric"] == "referring_margin"
    assert [r["path"] for r in doc["runs"]] == [str(runs["oracle"]), str(runs["identity"]), str(runs["coin"])]
    md = (out / "leaderboard.md").read_text()
    assert md.startswith("# refcoco-edit compare: oracle, identity, tests:coin")
    assert "## Leaderboard: Ref-margin ↑ (referring_margin)" in md and "### oracle vs identity" in md
    html = (out / "leaderboard.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html
    # usage errors: exit 2, one line
    for argv in (["compare", str(runs["oracle"]), "--out", str(out)],
                 ["compare", str(runs["oracle"]), str(runs["identity"]), "--out", str(out), "--metric", "nope"],
                 ["compare", str(runs["oracle"]), str(runs["identity"]), "--out", str(out), "--metric", "change_target"],
                 ["compare", str(runs["oracle"]), str(runs["root"] / "missing"), "--out", str(out)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
