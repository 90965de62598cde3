"""`refcoco-edit study push|pull` against a real Label Studio server (the session fixture).

Score runs of the demo data (identity, oracle; later a third, module:Class editor) are pushed as
a blind study; three raters (users made through the API) post ratings with known values through
the API - one of them disagreeing, one skip, one revised annotation - and the pull's per-method
means, Krippendorff's alpha and metric correlations are checked against values computed here
independently (tests/support/study_reference.py, scipy). Also: a second pull gives the same
bytes; no method identity in any task's data, the project, or the pages and API answers a
rater's browser gets; a re-push with a third run updates tasks in place and keeps the ratings
on their methods; a bad token exits 2 in one line; a server stopped mid-pull exits 1 and leaves
the study as it was, and the next pull completes; `report --study` shows the study.

The tests run in file order and share one study.
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
import urllib.request
from typing import Any, Dict, List, Optional

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import stats as sps

from conftest import REPO
from support.labelstudio import all_tasks
from support.study_reference import interval_alpha, pairwise_rate

from refcoco_edit.annotation.client import ServerUnreachable
from refcoco_edit.annotation.study.pull import pull
from refcoco_edit.benchmark.editors import Editor
from refcoco_edit.benchmark.harness import ScoreConfig, run_score
from refcoco_edit.build import BuildConfig, build

NUM_IMAGES = 3   # 6 samples
N_SAMPLES = 5
SEED = 7
Q = {"m1": [2, 1, 3, 2, 1], "m2": [5, 4, 4, 5, 3]}            # rater r1's quality per sample
C = {"m1": [3, 2, 2, 3, 1], "m2": [4, 5, 5, 4, 4]}            # and consistency
FILES = ("study.json", "study.md", "ratings.parquet", "plots/table3.png", "plots/alignment.png")


class ZebraBlend(Editor):
    """A third method for the re-push: darkens the image (a distinctive name to look for)."""

    name = "zebrablend-editor"

    def edit(self, images, prompts, seeds, extras):
        return [(np.asarray(im).astype(np.float32) * 0.8).astype(np.uint8) for im in images]


def run_cli(monkeypatch, argv: List[str], token: str) -> tuple:
    """`refcoco-edit <argv>` in process; (exit code, stdout, stderr)."""
    import refcoco_edit.cli as rc

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = rc.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def flow(label_studio, demo_dir, tmp_path_factory) -> Dict[str, Any]:  # noqa: F811
    root = tmp_path_factory.mktemp("study")
    res = build(BuildConfig.of(out=str(root / "w"), refcoco=str(demo_dir), images=str(demo_dir / "images"),
                               num_images=NUM_IMAGES, progress=False), log=lambda s: None)
    runs = {}
    for key, model in (("identity", "identity"), ("oracle", "oracle")):
        runs[key] = run_score(ScoreConfig(model=model, data=str(res.export_dir), out=str(root / f"run-{key}-qx7"),
                                          bootstrap=20, plots=False, gallery=False), log=lambda s: None).out
    third = run_score(ScoreConfig(model="tests:ZebraBlend", data=str(res.export_dir), out=str(root / "run-third-qx7"),
                                  bootstrap=20, plots=False, gallery=False), editor=ZebraBlend(), log=lambda s: None).out
    return {"root": root, "runs": runs, "third": third, "study": label_studio.files_root / "study-main", "times": {}}


def _push_args(ls, flow, runs, *extra: str) -> List[str]:
    return ["study", "push", "--out", str(flow["study"]), "--url", ls.url, "--document-root", str(ls.files_root),
            "--runs", *[str(r) for r in runs], *extra]


def _state(flow) -> Dict[str, Any]:
    return json.loads((flow["study"] / "study_state.json").read_text())


def _identities(flow, with_third: bool = False) -> List[str]:
    """What would tell a rater which method made an output."""
    runs = list(flow["runs"].values()) + ([flow["third"]] if with_third else [])
    out = ["IdentityEditor", "OracleEditor", "ZebraBlend", "zebrablend", "builtin:"]
    for r in runs:
        doc = json.loads((r / "results.json").read_text())
        out += [r.name, str(r), doc["editor"]["spec"], doc["editor"]["class"]]
    return out


def _words(flow, with_third: bool = False) -> List[str]:
    """The editors' plain names: looked for in what the server stores of the study."""
    return ["identity", "oracle"] + (["zebrablend"] if with_third else [])


def _session_get(ls, path: str, cookies: Dict[str, str]) -> str:
    """GET as a logged-in browser; "" for a 404 (``/next`` once every task has its annotations)."""
    import urllib.error

    req = urllib.request.Request(ls.url + path, headers={"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return ""
        raise


def check_blind(ls, flow, with_third: bool = False) -> None:
    """No method identity in any task's data, the project, or what a rater's browser is served."""
    sys.path.insert(0, str(REPO / "tools"))
    from screenshot_labeling import login

    state = _state(flow)
    pid = state["project_id"]
    project = ls.api("GET", f"/api/projects/{pid}")
    stored = json.dumps([project["title"], project["description"], project["label_config"]]
                        + [t["data"] for t in all_tasks(ls, pid)]).lower()
    for w in _identities(flow, with_third) + _words(flow, with_third):
        assert w.lower() not in stored, w
    cookies = login(ls.url, ls.username, ls.password)
    tid = min(t["task_id"] for t in state["tasks"].values())
    served = [_session_get(ls, f"/projects/{pid}/data?task={tid}", cookies),
              _session_get(ls, f"/api/projects/{pid}", cookies),
              _session_get(ls, f"/api/tasks/{tid}?project={pid}", cookies),
              _session_get(ls, f"/api/projects/{pid}/next", cookies)]
    sid = next(s for s, t in state["tasks"].items() if t["task_id"] == tid)
    assert sid in served[2] and "out_0_image" in served[2]  # the session really got the task
    for w in _identities(flow, with_third):
        assert all(w not in page for page in served), w
    # the mapping lies beside the media folder, outside the local storage: the server will not serve it
    rel = (flow["study"] / "study_state.json").relative_to(ls.files_root).as_posix()
    import urllib.error

    req = urllib.request.Request(f"{ls.url}/data/local-files/?d={rel}",
                                 headers={"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=60)
    assert refused.value.code in (403, 404)
    for t in state["tasks"].values():  # media file names say nothing either
        assert all(".png" in u and "out_" in u or "source" in u for u in
                   [v for k, v in ls.api("GET", f"/api/tasks/{t['task_id']}")["data"].items() if k.endswith("image")])


# ----------------------------------------------------------------------------------------------
# push
# ----------------------------------------------------------------------------------------------

def test_push_two_runs_is_blind_shuffled_and_idempotent(label_studio, flow, monkeypatch):  # noqa: F811
    ls = label_studio
    runs = [flow["runs"]["identity"], flow["runs"]["oracle"]]
    code, out, err = run_cli(monkeypatch, _push_args(ls, flow, runs, "--samples", str(N_SAMPLES), "--seed", str(SEED)),
                             ls.token)
    assert code == 0, err
    assert f"{N_SAMPLES} imported, 0 updated, 0 unchanged" in out and ls.token not in out + err
    state = _state(flow)
    assert ls.api("GET", f"/api/projects/{state['project_id']}")["maximum_annotations"] == 3  # --raters-per-task
    assert list(state["methods"]) == ["m1", "m2"]
    assert state["methods"]["m1"]["run"] == str(runs[0].resolve())
    assert len(state["tasks"]) == N_SAMPLES
    tasks = all_tasks(ls, state["project_id"])
    assert sorted(t["data"]["sample_id"] for t in tasks) == sorted(state["tasks"])
    orders = {tuple(t["slots"]) for t in state["tasks"].values()}
    assert orders == {("m1", "m2"), ("m2", "m1")}  # shuffled per task
    # every slot shows its method's output (re-encoded, same pixels), served by Label Studio
    by_key = {"m1": runs[0], "m2": runs[1]}
    t = tasks[0]
    slots = state["tasks"][t["data"]["sample_id"]]["slots"]
    for k, key in enumerate(slots):
        req = urllib.request.Request(ls.url + t["data"][f"out_{k}_image"], headers={"Authorization": f"Token {ls.token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            served = np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))
        original = np.asarray(Image.open(by_key[key] / "outputs" / f"{t['data']['sample_id']}.png").convert("RGB"))
        assert np.array_equal(served, original)
    # again: nothing changes
    code, out, err = run_cli(monkeypatch, _push_args(ls, flow, runs), ls.token)
    assert code == 0 and f"0 imported, 0 updated, {N_SAMPLES} unchanged" in out, err
    assert len(all_tasks(ls, state["project_id"])) == N_SAMPLES
    check_blind(ls, flow)
    flow["pid"] = state["project_id"]


# ----------------------------------------------------------------------------------------------
# three raters
# ----------------------------------------------------------------------------------------------

def _user(ls, name: str) -> int:
    for u in ls.api("GET", "/api/users/"):
        if u["email"] == f"{name}@study.test":
            return int(u["id"])
    return int(ls.api("POST", "/api/users/", {"email": f"{name}@study.test", "username": name})["id"])


def submit(ls, pid: int, task_id: int, user: int, ratings: Dict[int, tuple], preference: Optional[str] = None,
           cancelled: bool = False) -> Dict[str, Any]:
    """POST an annotation as the labeling UI does on Submit (or Skip), completed by ``user``.
    ``ratings``: slot -> (quality, consistency)."""
    result = []
    for slot, (q, c) in ratings.items():
        result += [{"id": f"q{slot}", "from_name": f"quality_{slot}", "to_name": f"out_{slot}", "type": "rating",
                    "value": {"rating": q}, "origin": "manual"},
                   {"id": f"c{slot}", "from_name": f"consistency_{slot}", "to_name": f"out_{slot}", "type": "rating",
                    "value": {"rating": c}, "origin": "manual"}]
    if preference is not None:
        result.append({"id": "p", "from_name": "preference", "to_name": "source", "type": "choices",
                       "value": {"choices": [preference]}, "origin": "manual"})
    body = {"result": [] if cancelled else result, "was_cancelled": cancelled, "lead_time": 12.0, "task": task_id,
            "project": pid, "completed_by": user, "started_at": "2026-11-22T10:00:00.000Z"}
    return ls.api("POST", f"/api/tasks/{task_id}/annotations/?project={pid}", body)


def known_ratings() -> Dict[str, Dict[str, List[Optional[tuple]]]]:
    """rater -> method -> per sample (quality, consistency), None where the rater skipped."""
    r1 = {m: [(Q[m][i], C[m][i]) for i in range(N_SAMPLES)] for m in Q}
    r2 = {m: [(min(5, q + (1 if (i + (m == "m2")) % 3 == 0 else 0)), c) for i, (q, c) in enumerate(r1[m])] for m in Q}
    r3 = {m: [(6 - q, 6 - c) for q, c in r1[m][:-1]] + [None] for m in Q}   # disagrees; skips the last
    return {"r1": r1, "r2": r2, "r3": r3}


def test_three_raters_pull_means_alpha_and_correlations(label_studio, flow, monkeypatch):  # noqa: F811
    ls, pid = label_studio, flow["pid"]
    state = _state(flow)
    sids = sorted(state["tasks"])
    known = known_ratings()
    users = {r: _user(ls, r) for r in known}
    for i, sid in enumerate(sids):
        tid, slots = state["tasks"][sid]["task_id"], state["tasks"][sid]["slots"]
        for rater, table in known.items():
            if table["m1"][i] is None:
                submit(ls, pid, tid, users[rater], {}, cancelled=True)
                continue
            if rater == "r1" and i == 0:  # a first try, revised below: only the latest counts
                submit(ls, pid, tid, users[rater], {k: (1, 1) for k in range(2)}, preference="0")
            pref = {"r1": "m2", "r2": "m2" if i else "tie", "r3": "m1"}[rater]
            submit(ls, pid, tid, users[rater], {k: table[m][i] for k, m in enumerate(slots)},
                   preference="tie" if pref == "tie" else str(slots.index(pref)))

    study = flow["study"]
    code, out, err = run_cli(monkeypatch, ["study", "pull", "--out", str(study), "--url", ls.url, "--bootstrap", "200"],
                             ls.token)
    assert code == 0, err
    doc = json.loads((study / "study.json").read_text())
    assert doc["counts"]["raters"] == 3 and doc["counts"]["skipped"] == 1 and doc["counts"]["tasks"] == N_SAMPLES
    assert doc["counts"]["annotations"] == 3 * N_SAMPLES - 1 + 1  # r3's skip is not counted; r1's first try is
    assert doc["problems"] == []

    # Table 3: the mean of every final rating, per method
    for m in ("m1", "m2"):
        for j, crit in enumerate(("quality", "consistency")):
            vals = [v[j] for r in known.values() for v in r[m] if v is not None]
            got = doc["table"][m][crit]
            assert got["n"] == len(vals) and got["mean"] == pytest.approx(np.mean(vals))
            assert got["ci95"][0] <= got["mean"] <= got["ci95"][1]
    assert doc["table"]["m2"]["preferred"] == {"n": 14, "wins": 9, "rate": pytest.approx(9 / 14)}  # r1 5, r2 4 (+1 tie)
    assert doc["table"]["m1"]["preferred"]["wins"] == 4

    # Krippendorff's alpha (interval) from its definition
    for j, crit in enumerate(("quality", "consistency")):
        units = [[r[m][i][j] if r[m][i] is not None else None for r in known.values()] for m in Q for i in range(N_SAMPLES)]
        assert doc["agreement"][crit]["alpha"] == pytest.approx(interval_alpha(units), abs=1e-9)
        assert doc["agreement"][crit]["raters"] == 3
    assert doc["agreement"]["quality"]["alpha"] < 0.667  # one rater disagrees: not reliable

    # metric-human alignment: each metric column vs the mean human rating, recomputed here
    metric_rows = {m: {r["sample_id"]: r for r in pq.read_table(run / "samples.parquet").to_pylist()}
                   for m, run in (("m1", flow["runs"]["identity"]), ("m2", flow["runs"]["oracle"]))}
    hib = {n: v["higher_is_better"] for n, v in json.loads((flow["runs"]["identity"] / "results.json").read_text())["metrics"].items()}
    checked = 0
    for a in doc["alignment"]:
        j = 0 if a["criterion"] == "quality" else 1
        sign = -1.0 if hib.get(a["metric"]) is False else 1.0
        xs, ys, pairs = [], [], {}
        for m in Q:
            for i, sid in enumerate(sids):
                value = metric_rows[m][sid][a["metric"]]
                if value is None or not np.isfinite(value):  # e.g. distractor metrics of a sample without one
                    continue
                vals = [r[m][i][j] for r in known.values() if r[m][i] is not None]
                xs.append(sign * value)
                ys.append(float(np.mean(vals)))
                pairs.setdefault(sid, []).append((xs[-1], ys[-1]))
        assert a["n"] == len(xs) and a["higher_is_better"] == hib.get(a["metric"])
        if np.ptp(xs) == 0:
            assert a["spearman"]["value"] is None and a["kendall"]["value"] is None
            continue
        assert a["spearman"]["value"] == pytest.approx(sps.spearmanr(xs, ys).statistic)
        assert a["kendall"]["value"] == pytest.approx(sps.kendalltau(xs, ys).statistic)
        if a["higher_is_better"] is not None:
            rate, n = pairwise_rate(pairs)
            assert a["pairwise"]["rate"] == pytest.approx(rate) and a["pairwise"]["n_pairs"] == n
        checked += 1
    assert checked >= 4

    # the ratings table is de-blinded: r3's rating of sample 0 by method
    rows = pq.read_table(study / "ratings.parquet").to_pylist()
    assert len(rows) == 2 * (3 * N_SAMPLES - 1)
    r3 = [r for r in rows if r["rater"] == "r3@study.test" and r["sample_id"] == sids[0]]
    assert {r["method"]: (r["quality"], r["consistency"]) for r in r3} == {m: known["r3"][m][0] for m in Q}

    # a second pull gives the same bytes and rewrites nothing
    before = {f: (study / f).read_bytes() for f in FILES}
    mtimes = {f: (study / f).stat().st_mtime_ns for f in FILES}
    res = pull(study, ls.url, token=ls.token, resamples=200, log=lambda s: None)
    assert res.changed == []
    assert {f: (study / f).read_bytes() for f in FILES} == before
    assert {f: (study / f).stat().st_mtime_ns for f in FILES} == mtimes
    flow["table"] = doc["table"]
    flow["times"]["pull_s"] = res.seconds


# ----------------------------------------------------------------------------------------------
# a third run
# ----------------------------------------------------------------------------------------------

def test_repush_with_a_third_run_updates_in_place_and_keeps_ratings(label_studio, flow, monkeypatch):  # noqa: F811
    ls, pid = label_studio, flow["pid"]
    before = {t["data"]["sample_id"]: (t["id"], t["total_annotations"], t["cancelled_annotations"])
              for t in all_tasks(ls, pid)}
    old = _state(flow)
    runs = [flow["runs"]["identity"], flow["runs"]["oracle"], flow["third"]]
    code, out, err = run_cli(monkeypatch, _push_args(ls, flow, runs), ls.token)
    assert code == 0, err
    assert f"0 imported, {N_SAMPLES} updated, 0 unchanged" in out
    state = _state(flow)
    assert list(state["methods"]) == ["m1", "m2", "m3"]
    for sid, t in state["tasks"].items():  # methods keep their slots; the new one takes the next
        assert t["slots"][:2] == old["tasks"][sid]["slots"] and t["slots"][2] == "m3"
        assert t["task_id"] == old["tasks"][sid]["task_id"]
    after = {t["data"]["sample_id"]: (t["id"], t["total_annotations"], t["cancelled_annotations"])
             for t in all_tasks(ls, pid)}
    assert after == before  # same tasks, updated in place, their annotations still attached
    task = ls.api("GET", f"/api/tasks/{min(v[0] for v in after.values())}")
    assert task["data"]["out_2_image"].endswith("out_2.png")
    check_blind(ls, flow, with_third=True)

    # dropping a run is refused (exit 2): the project would lose the meaning of its ratings
    code, out, err = run_cli(monkeypatch, _push_args(ls, flow, runs[:2]), ls.token)
    assert code == 2 and "can add runs, not drop" in err

    res = pull(flow["study"], ls.url, token=ls.token, resamples=200, log=lambda s: None)
    doc = json.loads((flow["study"] / "study.json").read_text())
    assert {m: doc["table"][m] for m in ("m1", "m2")} == flow["table"]  # the old ratings stay on their methods
    assert doc["table"]["m3"]["quality"]["n"] == 0
    # r1 rates the new output of the first sample too (a new annotation: the latest counts)
    sid = sorted(state["tasks"])[0]
    slots = state["tasks"][sid]["slots"]
    r1 = known_ratings()["r1"]
    submit(ls, pid, state["tasks"][sid]["task_id"], _user(ls, "r1"),
           {k: (r1[m][0] if m in r1 else (2, 5)) for k, m in enumerate(slots)}, preference=str(slots.index("m2")))
    res = pull(flow["study"], ls.url, token=ls.token, resamples=200, log=lambda s: None)
    assert "study.json" in res.changed
    doc = json.loads((flow["study"] / "study.json").read_text())
    assert (doc["table"]["m3"]["quality"]["n"], doc["table"]["m3"]["quality"]["mean"]) == (1, 2.0)
    assert {m: doc["table"][m]["quality"]["mean"] for m in ("m1", "m2")} == \
        {m: flow["table"][m]["quality"]["mean"] for m in ("m1", "m2")}


# ----------------------------------------------------------------------------------------------
# failures
# ----------------------------------------------------------------------------------------------

def test_bad_token_exit_2_in_one_line(label_studio, flow, monkeypatch):  # noqa: F811
    ls = label_studio
    wrong = "0123456789abcdef" * 2 + "deadbeef"
    runs = [flow["runs"]["identity"], flow["runs"]["oracle"], flow["third"]]
    for argv in (_push_args(ls, flow, runs), ["study", "pull", "--out", str(flow["study"]), "--url", ls.url]):
        code, out, err = run_cli(monkeypatch, argv, wrong)
        assert code == 2, (out, err)
        assert "refused the API token" in err and wrong not in out + err and ls.token not in out + err
        assert err.count("\n") == 1


def test_server_stopped_mid_pull_writes_nothing_then_resumes(label_studio, flow, monkeypatch):  # noqa: F811
    ls, pid, study = label_studio, flow["pid"], flow["study"]
    state = _state(flow)
    sid = sorted(state["tasks"])[-1]  # r3 skipped it; now rates it
    slots = state["tasks"][sid]["slots"]
    submit(ls, pid, state["tasks"][sid]["task_id"], _user(ls, "r3"), {k: (3, 3) for k in range(len(slots))})
    listing = sorted(str(p.relative_to(study)) for p in study.rglob("*") if p.is_file())
    before = {f: (study / f).read_bytes() for f in FILES}

    def stop(step: str) -> None:
        if step == "snapshot-created":
            ls.stop()

    with pytest.raises(ServerUnreachable):
        pull(study, ls.url, token=ls.token, resamples=200, log=lambda s: None, on_step=stop)
    assert {f: (study / f).read_bytes() for f in FILES} == before
    assert sorted(str(p.relative_to(study)) for p in study.rglob("*") if p.is_file()) == listing
    code, out, err = run_cli(monkeypatch, ["study", "pull", "--out", str(study), "--url", ls.url], ls.token)
    assert code == 1 and "did not answer" in err and err.count("\n") == 1
    assert {f: (study / f).read_bytes() for f in FILES} == before
    ls.start()
    res = pull(study, ls.url, token=ls.token, resamples=200, log=lambda s: None)
    assert "study.json" in res.changed
    rows = pq.read_table(study / "ratings.parquet").to_pylist()
    assert any(r["sample_id"] == sid and r["rater"] == "r3@study.test" for r in rows)


def test_report_includes_the_study(label_studio, flow, monkeypatch, tmp_path):  # noqa: F811
    runs = [flow["runs"]["identity"], flow["runs"]["oracle"]]
    code, out, err = run_cli(monkeypatch, ["report", *map(str, runs), "--study", str(flow["study"]),
                                           "--out", str(tmp_path / "rep"), "--no-gallery", "--no-plots"], "")
    assert code == 0, err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Table 3: human ratings" in md and "Krippendorff" in md and "Which metric agrees with people" in md
    comp = json.loads((tmp_path / "rep" / "comparison.json").read_text())
    assert [m["in_report"] for m in comp["study"]["methods"]] == [True, True, False]
    assert comp["study"]["table"]["m1"]["quality"]["n"] > 0
    # the ratings by difficulty bucket, joined on sample_id with the runs' attr_* columns
    by = comp["study"]["by_attribute"]["quality"]["m1"]["attr_distractors"]
    assert by and sum(c["n"] for c in by.values()) == comp["study"]["table"]["m1"]["quality"]["n"]
    assert "Human ratings by difficulty" in md and "quality: distractors" in md
    code, out, err = run_cli(monkeypatch, ["report", str(runs[0]), "--study", str(tmp_path), "--out",
                                           str(tmp_path / "rep2")], "")
    assert code == 2 and "study.json" in err
