"""The human study's statistics and formats without a server: Krippendorff's alpha against its
definition, Table 3 means and CIs, the alignment figures against scipy and a hand count, the
labeling config read back, study.json against its schema (and jsonschema), and
`refcoco-edit report --study`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from support.study_reference import interval_alpha, pairwise_rate

from refcoco_edit.annotation.study import labeling as lab
from refcoco_edit.annotation.study import stats
from refcoco_edit.annotation.study.stats import Rating
from refcoco_edit.study_format import STUDY_SCHEMA, dumps, load_study, render_study_markdown, study_errors
from refcoco_edit.errors import InputError


def _ratings(seed: int = 0, n_samples: int = 12, methods=("m1", "m2", "m3"), raters=("a", "b", "c")):
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n_samples):
        for k, m in enumerate(methods):
            truth = 1 + (s + 2 * k) % 5
            for r in raters:
                if rng.random() < 0.15:  # some left empty
                    continue
                q = int(np.clip(truth + rng.integers(-1, 2), 1, 5))
                c = int(np.clip(6 - truth + rng.integers(-1, 2), 1, 5)) if rng.random() > 0.1 else None
                out.append(Rating(f"s{s:02d}", m, r, q, c))
    return out


def test_alpha_matches_its_definition_and_the_library():
    ratings = _ratings()
    for crit in ("quality", "consistency"):
        got = stats.krippendorff_alpha(ratings, [crit])
        units: dict = {}
        for r in ratings:
            if r.value(crit) is not None:
                units.setdefault((r.sample_id, r.method), []).append(float(r.value(crit)))
        assert got["alpha"] == pytest.approx(interval_alpha(list(units.values())), abs=1e-9)
        assert got["raters"] == 3 and got["units"] == sum(len(u) >= 2 for u in units.values())
    both = stats.krippendorff_alpha(ratings, ["quality", "consistency"])
    units = {}
    for r in ratings:
        for crit in ("quality", "consistency"):
            if r.value(crit) is not None:
                units.setdefault((r.sample_id, r.method, crit), []).append(float(r.value(crit)))
    assert both["alpha"] == pytest.approx(interval_alpha(list(units.values())), abs=1e-9)
    # perfect agreement -> 1; one rater only or one value only -> not computable
    same = [Rating("s", m, r, q, q) for m, q in (("m1", 2), ("m2", 5)) for r in ("a", "b")]
    assert stats.krippendorff_alpha(same, ["quality"])["alpha"] == pytest.approx(1.0)
    assert stats.krippendorff_alpha([x for x in same if x.rater == "a"], ["quality"])["alpha"] is None
    flat = [Rating("s", m, r, 3, 3) for m in ("m1", "m2") for r in ("a", "b")]
    assert stats.krippendorff_alpha(flat, ["quality"])["alpha"] is None


def test_table3_means_and_cluster_bootstrap():
    ratings = _ratings(1)
    t = stats.table3(ratings, ["m1", "m2", "m3"], seed=3, resamples=500)
    for m in ("m1", "m2", "m3"):
        vals = [r.quality for r in ratings if r.method == m and r.quality is not None]
        q = t[m]["quality"]
        assert q["n"] == len(vals) and q["mean"] == pytest.approx(np.mean(vals))
        assert q["std"] == pytest.approx(np.std(vals, ddof=1))
        assert q["ci95"][0] <= q["mean"] <= q["ci95"][1]
    assert stats.table3(ratings, ["m1"], seed=3, resamples=500) == {"m1": t["m1"]}  # seeded: same numbers
    assert stats.table3([], ["m1"], 0, 10)["m1"]["quality"] == {"n": 0, "n_samples": 0, "mean": None, "std": None,
                                                                "ci95": None}


def test_alignment_against_scipy_and_a_hand_count():
    ratings = _ratings(2)
    human = stats.human_scores(ratings, "quality")
    rng = np.random.default_rng(0)
    metric = {k: v * 0.3 + float(rng.normal()) for k, v in human.items()}
    metric[("s00", "m1")] = metric[("s00", "m2")]  # a metric tie
    for hib, sign in ((True, 1.0), (False, -1.0), (None, 1.0)):
        got = stats.alignment(human, metric, hib, 0, 300, "t")
        keys = sorted(human)
        x = np.array([sign * metric[k] for k in keys])
        y = np.array([human[k] for k in keys])
        assert got["n"] == len(keys) and got["n_samples"] == 12
        assert got["spearman"]["value"] == pytest.approx(sps.spearmanr(x, y).statistic)
        assert got["kendall"]["value"] == pytest.approx(sps.kendalltau(x, y).statistic)
        lo, hi = got["spearman"]["ci95"]
        assert lo <= got["spearman"]["value"] <= hi
        pairs: dict = {}
        for (s, m) in keys:
            pairs.setdefault(s, []).append((sign * metric[(s, m)], human[(s, m)]))
        rate, n = pairwise_rate(pairs)
        assert got["pairwise"]["n_pairs"] == n
        if hib is None:  # no direction: no pairwise rate
            assert got["pairwise"]["rate"] is None
        else:
            assert got["pairwise"]["rate"] == pytest.approx(rate)
            assert got["pairwise"]["ci95"][0] <= rate <= got["pairwise"]["ci95"][1]
    # a constant metric has no correlation
    flat = stats.alignment(human, {k: 1.0 for k in human}, True, 0, 50, "t")
    assert flat["spearman"] == {"value": None, "ci95": None} and flat["pairwise"]["rate"] == 0.5


def test_labeling_config_reads_back_and_names_no_method():
    xml = lab.study_config(3)
    spec = lab.parse_study_config(xml)
    assert spec.num_slots == 3 and spec.source == "source" and spec.preference == "preference"
    assert sorted(spec.ratings.values()) == sorted((c, k) for c in ("quality", "consistency") for k in range(3))
    assert spec.preference_slot == {"0": 0, "1": 1, "2": 2, lab.TIE: None}
    with pytest.raises(ValueError, match="not a refcoco-edit study config"):
        lab.parse_study_config(xml.replace('name="consistency_2"', 'name="other"'))
    with pytest.raises(ValueError):
        lab.study_config(1)


def _doc():
    from refcoco_edit.annotation.study.outputs import build_study
    from refcoco_edit.annotation.study.pull import Collected

    ratings = _ratings(4, methods=("m1", "m2"))
    c = Collected(ratings=ratings, raters={"a", "b", "c"}, annotations=30, tasks_annotated=12,
                  preferences=[{"sample_id": "s00", "rater": "a", "shown": ["m2", "m1"], "preferred": "m1"}])
    state = {"seed": 0, "title": "t", "tasks": {f"s{i:02d}": {} for i in range(12)},
             "methods": {"m1": {"run": "/nowhere/a", "label": "A", "editor": "a"},
                         "m2": {"run": "/nowhere/b", "label": "B", "editor": "b"}}}
    doc, table = build_study(state, c, "http://x", 1, 100)
    return doc, table


def test_study_json_schema_and_markdown(tmp_path):
    import jsonschema

    doc, table = _doc()
    assert study_errors(doc) == []
    jsonschema.validate(json.loads(dumps(doc)), STUDY_SCHEMA)
    assert any("cannot be read" in p for p in doc["problems"])  # the runs are gone: no alignment, said so
    md = render_study_markdown(doc)
    assert "Table 3" in md and "| A |" in md and "Krippendorff" in md
    assert doc["table"]["m1"]["preferred"] == {"n": 1, "wins": 1, "rate": 1.0}
    (tmp_path / "study.json").write_bytes(dumps(doc))
    assert load_study(tmp_path) == json.loads(dumps(doc))
    bad = dict(doc, study_schema_version="0.1")
    (tmp_path / "study.json").write_bytes(dumps(bad))
    with pytest.raises(InputError, match="study schema version"):
        load_study(tmp_path)
    del doc["agreement"]
    assert any("agreement" in e for e in study_errors(doc))


def _run(tmp_path, name: str, ok=("a", "b", "c", "d")):
    from refcoco_edit.annotation.study.runs import ScoreRun

    root = tmp_path / name
    (root / "outputs").mkdir(parents=True)
    rows = {}
    for sid in ("a", "b", "c", "d"):
        (root / "outputs" / f"{sid}.png").write_bytes(b"x")
        rows[sid] = {"sample_id": sid, "status": "ok" if sid in ok else "failed", "output": f"outputs/{sid}.png"}
    return ScoreRun(root.resolve(), name, name, "/data", "export", "h", rows, [])


def test_push_choices_without_a_server(tmp_path):
    from refcoco_edit.annotation.study.push import assign_slots, push, register_methods, select_samples
    from refcoco_edit.annotation.study.runs import load_run

    a, b, c = _run(tmp_path, "A"), _run(tmp_path, "B", ok=("a", "b", "c")), _run(tmp_path, "C")
    state: dict = {}
    assert list(register_methods(state, [a, b])) == ["m1", "m2"]
    assert list(register_methods(state, [b, a, c])) == ["m2", "m1", "m3"]  # a run keeps its key
    with pytest.raises(InputError, match="can add runs, not drop"):
        register_methods(state, [a, c])
    runs = {"m1": a, "m2": b}
    assert select_samples(runs, [], None, 0) == ["a", "b", "c"]  # d: failed in B
    two = select_samples(runs, [], 2, 0)
    assert len(two) == 2 and set(two) <= set(select_samples(runs, [], 3, 0))
    assert set(two) <= set(select_samples(runs, two, 3, 5))  # kept samples stay, whatever the seed
    # slots: a fresh task is shuffled by (seed, sample); old slots never move, new methods go after
    orders = {tuple(assign_slots(s, [], ["m1", "m2", "m3"], 0)) for s in "abcdefgh"}
    assert len(orders) > 1 and all(sorted(o) == ["m1", "m2", "m3"] for o in orders)
    assert assign_slots("a", ["m2", "m1"], ["m1", "m2", "m3"], 0) == ["m2", "m1", "m3"]
    # the escape of an output path out of its run folder is refused
    a.rows["a"]["output"] = "../B/outputs/a.png"
    with pytest.raises(InputError, match="outside the run folder"):
        a.output_path("a")
    with pytest.raises(InputError, match="not a finished"):
        load_run(tmp_path / "A")
    with pytest.raises(InputError, match="at least two"):
        push(tmp_path / "study", [tmp_path / "A"], "http://127.0.0.1:9", token="t")
