"""The review's labeling config, brush <-> COCO RLE conversion and reconciliation, without a server."""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from refcoco_edit.annotation import config as cfg
from refcoco_edit.annotation.client import Connection, TokenError, get_token, normalize_url, scrub
from refcoco_edit.annotation.pull import (_Ann, brush_to_mask, iso_utc, mask_to_brush_rle, reconcile_prompt, reconcile_task,
                             resolve, review_schema, reviews_table)
from refcoco_edit import rle
from refcoco_edit.errors import InputError
from refcoco_edit.export import apply_review

from conftest import REPO

# ----------------------------------------------------------------------------------------------
# labeling config
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 4])
def test_config_round_trips_its_tag_names(k):
    xml = cfg.label_config(k)
    spec = cfg.parse_label_config(xml)
    names = cfg.TagNames()
    assert (spec.source, spec.prompt, spec.decision, spec.reject_reason, spec.prompt_edit, spec.quality, spec.notes) == (
        names.source, names.prompt, names.decision, names.reject_reason, names.prompt_edit, names.quality, names.notes)
    assert spec.candidates == [names.candidate(i) for i in range(k)]
    assert spec.masks == {names.mask(i): i for i in range(k)}
    assert spec.choice_index == {**{cfg.decision_value(i): i for i in range(k)}, cfg.REJECT: None}
    root = ET.fromstring(xml)
    # every $variable is a task data key that push writes
    variables = {t.get("value")[1:] for t in root.iter() if (t.get("value") or "").startswith("$")}
    assert variables == {cfg.KEY_SOURCE, cfg.KEY_PROMPT_HTML, cfg.KEY_INFO} | {
        key(i) for i in range(k) for key in (cfg.key_cand_image, cfg.key_cand_title)}
    # the reject reasons show only when "Reject" is chosen
    rr = next(t for t in root.iter("Choices") if t.get("name") == names.reject_reason)
    assert (rr.get("visibleWhen"), rr.get("whenTagName"), rr.get("whenChoiceValue")) == (
        "choice-selected", names.decision, cfg.REJECT)
    assert cfg.config_hash(xml) == cfg.config_hash(cfg.label_config(k))


def test_tag_names_are_read_from_the_config_not_assumed():
    renamed = cfg.TagNames(source="src", prompt="p", decision="verdict", reject_reason="why", prompt_edit="fix",
                           quality="stars", notes="memo", candidate_prefix="out", mask_prefix="paint")
    spec = cfg.parse_label_config(cfg.label_config(3, renamed))
    assert (spec.source, spec.decision, spec.prompt_edit, spec.quality, spec.notes) == ("src", "verdict", "fix",
                                                                                        "stars", "memo")
    assert spec.candidates == ["out0", "out1", "out2"] and spec.masks == {"paint0": 0, "paint1": 1, "paint2": 2}


def test_foreign_config_is_refused_with_what_is_missing():
    with pytest.raises(ValueError, match="source Image"):
        cfg.parse_label_config('<View><Image name="img" value="$image"/></View>')
    with pytest.raises(ValueError, match="not valid XML"):
        cfg.parse_label_config("<View>")
    with pytest.raises(ValueError):
        cfg.label_config(0)


def test_prompt_html_highlights_and_escapes():
    text = 'Make <b>the</b> "cat" on the left red & blue'
    ref = (text.index('"cat"'), text.index('"cat"') + len('"cat" on the left'))
    edit = (text.index("red"), len(text))
    out = cfg.prompt_html(text, ref, edit)
    assert "<b>" not in out and "&lt;b&gt;" in out and "&amp;" in out
    assert out.count("<mark") == 2 and cfg.HIGHLIGHT_REF in out and cfg.HIGHLIGHT_EDIT in out
    assert ">&quot;cat&quot; on the left</mark>" in out
    assert out.index(cfg.HIGHLIGHT_REF) < out.index(cfg.HIGHLIGHT_EDIT)


# ----------------------------------------------------------------------------------------------
# brush RLE (Label Studio) <-> mask <-> COCO RLE
# ----------------------------------------------------------------------------------------------

def _mask(h=37, w=53, seed=0):
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), dtype=bool)
    m[5:20, 7:40] = True
    m[rng.random((h, w)) < 0.05] = True
    m[0, 0] = m[-1, -1] = True
    return m


def _brush(mask, rle_values):
    h, w = mask.shape
    return {"type": "brushlabels", "original_width": w, "original_height": h,
            "value": {"format": "rle", "rle": rle_values, "brushlabels": [cfg.MASK_LABEL]}}


def test_brush_round_trip_through_the_sdk_converter():
    m = _mask()
    values = mask_to_brush_rle(m)
    assert all(isinstance(v, int) and 0 <= v < 256 for v in values)
    back = brush_to_mask(_brush(m, values))
    assert back.dtype == bool and np.array_equal(back, m)
    coco = rle.encode(back)
    assert np.array_equal(rle.decode(coco), m) and coco == rle.encode(m)
    from label_studio_sdk.converter.brush import decode_rle

    flat = decode_rle(values).reshape(m.shape[0], m.shape[1], 4)
    assert set(np.unique(flat[..., 3])) == {0, cfg.BRUSH_ALPHA}  # translucent pre-fill


def test_brush_from_a_browser_canvas_counts_any_alpha():
    from label_studio_sdk.converter.brush import encode_rle

    m = _mask(seed=1)
    rgba = np.zeros(m.shape + (4,), dtype=np.uint8)
    rgba[m] = (255, 0, 255, 255)
    rgba[m & (np.arange(m.shape[1])[None, :] % 3 == 0)] = (250, 2, 250, 7)  # anti-aliased edge
    got = brush_to_mask(_brush(m, [int(v) for v in encode_rle(rgba.ravel())]))
    assert np.array_equal(got, m)


def test_brush_of_the_wrong_size_is_refused():
    m = _mask()
    r = _brush(m, mask_to_brush_rle(m))
    r["original_width"] += 1
    with pytest.raises(ValueError, match="RGBA canvas"):
        brush_to_mask(r)


# ----------------------------------------------------------------------------------------------
# prompt edits
# ----------------------------------------------------------------------------------------------

ROW = {"prompt": "Replace the man in red with a giraffe.", "referring_span": [8, 22], "edit_span": [28, 37]}


def test_prompt_unchanged_or_empty_is_no_edit():
    assert reconcile_prompt(ROW, None, "ann") == {}
    assert reconcile_prompt(ROW, "   ", "ann") == {}
    assert reconcile_prompt(ROW, " Replace the man in  red with a giraffe. ", "ann") == {}


def test_prompt_edit_finds_the_phrases_again():
    got = reconcile_prompt(ROW, "Please swap the man in red for a giraffe", "ann@x")
    assert got["prompt"] == "Please swap the man in red for a giraffe"
    a, b = got["referring_span"]
    c, d = got["edit_span"]
    assert got["prompt"][a:b] == "the man in red" and got["prompt"][c:d] == "a giraffe"
    assert got["prompt_source"] == "human:ann@x" and "prompt_edit_invalid" not in got


def test_prompt_edit_with_marks_sets_new_phrases():
    got = reconcile_prompt(ROW, "Turn [the tall man] into {a zebra}.", "ann")
    assert got["prompt"] == "Turn the tall man into a zebra."
    assert got["prompt"][slice(*got["referring_span"])] == "the tall man"
    assert got["prompt"][slice(*got["edit_span"])] == "a zebra"


def test_edit_phrase_inside_the_referring_phrase_is_skipped():
    row = {"prompt": "Make the red car blue.", "referring_span": [5, 16], "edit_span": [17, 21]}
    got = reconcile_prompt(row, "Make the red car blue, please: blue.", "ann")
    assert got["prompt"][slice(*got["edit_span"])] == "blue" and got["edit_span"] == [17, 21]
    row2 = {"prompt": "Make the blue car red.", "referring_span": [5, 17], "edit_span": [18, 21]}
    got = reconcile_prompt(row2, "Paint the blue car red now", "ann")
    assert got["edit_span"] == [19, 22] and got["referring_span"] == [6, 18]


@pytest.mark.parametrize("text, reason", [
    ("Replace that person with a giraffe.", "referring phrase 'the man in red' is not"),
    ("Replace the man in red with an elephant.", "edit phrase 'a giraffe' is not"),
    ("Replace [the man in red with a giraffe.", "bad marks"),
    ("Replace the man] in red with a giraffe.", "bad marks"),
    ("Turn [the man] into [a cat]", "bad marks"),
    ("[the man {in] red} becomes", "spans are not valid"),
    ("Turn [ the man] into {a cat}", "space"),
])
def test_invalid_prompt_edits_are_flagged_not_dropped(text, reason):
    got = reconcile_prompt(ROW, text, "ann")
    assert got["prompt_edited"] == text
    assert reason in got["prompt_edit_invalid"]
    assert "prompt" not in got and "referring_span" not in got


# ----------------------------------------------------------------------------------------------
# several annotations, one task
# ----------------------------------------------------------------------------------------------

def _a(i, decision, t, gt=False):
    return _Ann(i, decision, {}, f"2026-01-01T00:00:{t:02d}.000000Z", "2026-01-01T00:00:00.000000Z", gt)


def test_resolution_rule():
    assert resolve([]) == (None, "none")
    w, rule = resolve([_a(1, "0", 1), _a(2, "reject", 5), _a(3, "0", 3)])
    assert (w.id, rule) == (3, "majority")  # majority, its latest annotation
    w, rule = resolve([_a(1, "0", 1), _a(2, "reject", 5)])
    assert (w.id, rule) == (2, "latest_of_tie")
    w, rule = resolve([_a(1, "0", 9), _a(2, "reject", 1, gt=True), _a(3, "0", 8)])
    assert (w.id, rule) == (2, "ground_truth")
    w, rule = resolve([_a(1, None, 1), _a(2, None, 2)])
    assert (w.id, rule) == (2, "latest")


SPEC = cfg.parse_label_config(cfg.label_config(2))
M0 = _mask(20, 30, seed=3)


def _sample():
    return {"sample_id": "s1", "prompt": ROW["prompt"], "referring_span": ROW["referring_span"],
            "edit_span": ROW["edit_span"],
            "candidates": [{"edit_mask": rle.encode(M0)}, {"edit_mask": rle.encode(~M0)}]}


def _ann(i, decision, updated, extra=(), cancelled=False, user=1):
    result = [{"from_name": SPEC.decision, "to_name": SPEC.source, "type": "choices",
               "value": {"choices": [decision]}}] if decision else []
    return {"id": i, "result": result + list(extra), "was_cancelled": cancelled, "ground_truth": False,
            "created_at": "2026-03-01T10:00:00.000000Z", "updated_at": updated, "completed_by": user,
            "lead_time": 3.5}


def _brush_on(index, mask):
    name = next(n for n, i in SPEC.masks.items() if i == index)
    return dict(_brush(mask, mask_to_brush_rle(mask)), from_name=name, to_name=SPEC.candidates[index])


def test_reconcile_accept_with_repainted_mask_and_reject():
    m1 = M0.copy()
    m1[:3, :3] = True
    task = {"id": 7, "annotations": [_ann(11, "0", "2026-03-01T10:05:00Z", [_brush_on(0, m1), _brush_on(1, ~M0)])]}
    row = reconcile_task(task, _sample(), SPEC, 3, {1: "ann@x"})
    assert (row["status"], row["chosen_candidate"], row["reviewer"]) == ("accepted", 0, "ann@x")
    assert np.array_equal(rle.decode(row["edit_mask"]), m1)
    assert row["updated_at"] == "2026-03-01T10:05:00.000000Z" and row["lead_time_s"] == 3.5
    assert (row["ls_project_id"], row["ls_task_id"], row["ls_annotation_ids"]) == (3, 7, [11])
    # the pre-fill kept as it is: no repaint recorded
    task = {"id": 7, "annotations": [_ann(11, "1", "2026-03-01T10:05:00Z", [_brush_on(0, m1), _brush_on(1, ~M0)])]}
    row = reconcile_task(task, _sample(), SPEC, 3, {})
    assert row["chosen_candidate"] == 1 and row["edit_mask"] is None and row["reviewer"] == "user:1"
    # reject with reasons
    rr = {"from_name": SPEC.reject_reason, "type": "choices", "value": {"choices": list(cfg.REJECT_REASONS[:2])}}
    row = reconcile_task({"id": 7, "annotations": [_ann(12, cfg.REJECT, "2026-03-01T10:05:00Z", [rr])]},
                         _sample(), SPEC, 3, {})
    assert row["status"] == "rejected" and row["reject_reason"] == "; ".join(cfg.REJECT_REASONS[:2])


def test_reconcile_problems_go_back_to_pending():
    # a candidate the sample does not have
    spec3 = cfg.parse_label_config(cfg.label_config(3))
    ann = _ann(1, "2", "2026-03-01T10:05:00Z")
    ann["result"][0]["from_name"] = spec3.decision
    row = reconcile_task({"id": 1, "annotations": [ann]}, _sample(), spec3, 1, {})
    assert row["status"] == "pending" and row["chosen_candidate"] is None and "candidate 3" in row["problems"][0]
    # only skipped annotations
    row = reconcile_task({"id": 1, "annotations": [_ann(1, None, "2026-03-01T10:05:00Z", cancelled=True)]},
                         _sample(), SPEC, 1, {})
    assert row["status"] == "pending" and row["n_skipped"] == 1 and row["n_annotations"] == 0
    # no annotation at all: no row
    assert reconcile_task({"id": 1, "annotations": []}, _sample(), SPEC, 1, {}) is None
    # an empty repaint
    empty = np.zeros_like(M0)
    row = reconcile_task({"id": 1, "annotations": [_ann(1, "0", "2026-03-01T10:05:00Z", [_brush_on(0, empty)])]},
                         _sample(), SPEC, 1, {})
    assert row["status"] == "pending" and "empty" in row["problems"][0]


def test_reconcile_several_annotations_records_disagreement():
    anns = [_ann(1, "0", "2026-03-01T10:01:00Z"), _ann(2, cfg.REJECT, "2026-03-01T10:02:00Z"),
            _ann(3, "0", "2026-03-01T10:03:00Z"), _ann(4, None, "2026-03-01T10:04:00Z", cancelled=True)]
    row = reconcile_task({"id": 1, "annotations": anns}, _sample(), SPEC, 1, {})
    assert (row["status"], row["chosen_candidate"], row["n_annotations"], row["n_skipped"]) == ("accepted", 0, 3, 1)
    assert row["disagreement"] is True and row["updated_at"] == "2026-03-01T10:03:00.000000Z"
    d = json.loads(row["disagreement_details"])
    assert d == {"rule": "majority", "decisions": {"1": "0", "2": "reject", "3": "0"},
                 "quality": {"1": None, "2": None, "3": None}}
    one = reconcile_task({"id": 1, "annotations": anns[:1]}, _sample(), SPEC, 1, {})
    assert one["disagreement"] is False


def test_review_table_is_deterministic_and_schema_bound():
    rows = [{"sample_id": "b", "status": "accepted", "chosen_candidate": 0, "problems": []},
            {"sample_id": "a", "status": "rejected", "problems": ["x"], "ls_annotation_ids": [3, 4]}]
    t1, t2 = reviews_table(rows), reviews_table(list(reversed(rows)))
    assert t1.equals(t2) and t1.column("sample_id").to_pylist() == ["a", "b"]
    assert t1.schema.equals(review_schema(), check_metadata=True)
    assert iso_utc("2026-03-01T11:05:00+01:00") == "2026-03-01T10:05:00.000000Z"
    assert iso_utc(None) is None


def test_apply_review_holds_back_an_invalid_prompt_edit():
    row = {"sample_id": "s", "prompt": "p", "candidates": [], "review": {"status": "pending"}}
    out = apply_review(row, {"status": "accepted", "chosen_candidate": 0, "notes": "n", "prompt": None,
                             "prompt_edit_invalid": "the referring phrase is gone"})
    assert out["review"]["status"] == "pending" and "prompt edit invalid" in out["review"]["notes"]
    assert out["prompt"] == "p"


# ----------------------------------------------------------------------------------------------
# the token and the connection
# ----------------------------------------------------------------------------------------------

def test_token_comes_from_the_environment_only():
    with pytest.raises(TokenError, match="LABEL_STUDIO_API_KEY"):
        get_token({})
    assert get_token({"LABEL_STUDIO_API_KEY": " abc "}) == "abc"
    secret = "f" * 40
    conn = Connection("http://127.0.0.1:9/", token=secret)
    assert conn.url == "http://127.0.0.1:9" and secret not in repr(conn) and secret not in str(vars(conn).keys())
    assert scrub(f"x {secret} y", secret) == "x *** y"
    with pytest.raises(InputError):
        normalize_url("127.0.0.1:8080")


def test_unreachable_server_error_names_the_url_not_the_token():
    from refcoco_edit.annotation.client import ServerUnreachable
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = "e" * 40
    conn = Connection(f"http://127.0.0.1:{port}", token=secret, timeout=5)
    with pytest.raises(ServerUnreachable) as info:
        conn.whoami()
    assert f"127.0.0.1:{port}" in str(info.value) and secret not in str(info.value)
    assert info.value.__cause__ is None


def test_importing_the_review_cli_imports_no_http_or_sdk_module():
    code = ("import sys, argparse, refcoco_edit.annotation.cli as c; p = argparse.ArgumentParser(); "
            "c.add_review_parser(p.add_subparsers()); "
            "bad = [m for m in ('label_studio_sdk', 'httpx', 'requests', 'pyarrow') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_review_parser_options():
    import argparse

    from refcoco_edit.annotation.cli import add_review_parser

    p = argparse.ArgumentParser()
    add_review_parser(p.add_subparsers(dest="command"))
    a = p.parse_args(["review", "push", "--workdir", "w", "--url", "http://x", "--pending-only", "--samples", "a,b"])
    assert a.pending_only and a.samples == "a,b" and a.func.__name__ == "cmd_review_push"
    a = p.parse_args(["review", "push", "--workdir", "w", "--all"])
    assert not a.pending_only
    a = p.parse_args(["review", "pull", "--workdir", "w"])
    assert a.func.__name__ == "cmd_review_pull" and a.timeout == 300.0
    with pytest.raises(SystemExit):
        p.parse_args(["review", "push", "--workdir", "w", "--all", "--pending-only"])
    with pytest.raises(SystemExit):
        p.parse_args(["review", "push", "--workdir", "w", "--token", "x"])  # no token option, on purpose


# ----------------------------------------------------------------------------------------------
# push helpers: media URLs, task data, sample selection
# ----------------------------------------------------------------------------------------------

def test_media_urls_local_files_and_prefix(tmp_path):
    from refcoco_edit.annotation.push import MediaUrls

    media = tmp_path / "work dir" / "review" / "media"
    url = MediaUrls(media, document_root=str(tmp_path))
    assert url("abc/source.png") == "/data/local-files/?d=work%20dir/review/media/abc/source.png"
    url = MediaUrls(media, media_url="https://files.example/rce/")
    assert url("abc/cand_0.png") == "https://files.example/rce/abc/cand_0.png"
    with pytest.raises(InputError, match="not below the document root"):
        MediaUrls(media, document_root=str(tmp_path / "elsewhere"))
    with pytest.raises(InputError, match="--document-root"):
        MediaUrls(media)


def test_task_data_fills_every_variable_and_placeholder_slots():
    from refcoco_edit.annotation.push import PLACEHOLDER, prediction, task_data

    row = {"sample_id": "s1", "prompt": ROW["prompt"], "referring_span": ROW["referring_span"],
           "edit_span": ROW["edit_span"], "category": "person", "edit_type": "replace", "edit_target": "giraffe",
           "candidates": [{"pipeline": "classical-replace", "seed": 3, "edit_mask": rle.encode(M0)}]}
    rels = {"source": "s1/source.png", "candidates": ["s1/cand_0.png"]}
    data = task_data(row, rels, 2, lambda rel: "/m/" + rel)
    root = ET.fromstring(cfg.label_config(2))
    variables = {t.get("value")[1:] for t in root.iter() if (t.get("value") or "").startswith("$")}
    assert variables <= set(data)
    assert data[cfg.key_cand_image(0)] == "/m/s1/cand_0.png" and data[cfg.key_cand_image(1)] == "/m/" + PLACEHOLDER
    assert "replace with giraffe" in data[cfg.KEY_INFO]
    pred = prediction(row, cfg.parse_label_config(cfg.label_config(2)))
    brushes = [r for r in pred["result"] if r["type"] == "brushlabels"]
    assert len(brushes) == 1 and np.array_equal(brush_to_mask(brushes[0]), M0)
    assert [r["value"]["text"] for r in pred["result"] if r["type"] == "textarea"] == [[ROW["prompt"]]]


def test_select_samples_subset_and_pending_only():
    from refcoco_edit.annotation.push import select_samples

    rows = [{"sample_id": s} for s in ("a", "b", "c", "d")]
    reviews = {"a": {"status": "accepted"}, "b": {"status": "rejected"},
               "c": {"status": "accepted", "prompt_edit_invalid": "gone"}}
    assert [r["sample_id"] for r in select_samples(rows, reviews, pending_only=True)] == ["c", "d"]
    assert [r["sample_id"] for r in select_samples(rows, reviews, samples=["d", "a"])] == ["a", "d"]
    with pytest.raises(InputError, match="not in the workspace"):
        select_samples(rows, reviews, samples=["zz"])
