"""One table of reason codes (refcoco_edit.reasons) against every code the package emits."""
from __future__ import annotations

import ast
import re

import pytest

from conftest import REPO

PACKAGE_FOLDERS = ("refcoco_edit", "pipelines", "annotation", "benchmark")
CODE = re.compile(r"^[a-z]+(_[a-z0-9]+)*$")
# calls whose first argument is a reason code
EMITTERS = re.compile(r"(Error|Rejected|Failure)$")
# calls with the reason code at another position: name -> index
POSITIONAL = {"quarantine_record": 2, "_quarantine": 1}


def _emitted() -> dict:
    """code -> places: string literals the source passes as a reason code."""
    found: dict = {}

    def add(value: object, where: str) -> None:
        if isinstance(value, str) and CODE.match(value):
            found.setdefault(value, []).append(where)

    for folder in PACKAGE_FOLDERS:
        for f in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
                where = f"{f.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
                if isinstance(node, ast.Call):
                    fn = node.func
                    name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
                    if EMITTERS.search(name) and node.args and isinstance(node.args[0], ast.Constant):
                        add(node.args[0].value, where)
                    pos = POSITIONAL.get(name)
                    if pos is not None and len(node.args) > pos and isinstance(node.args[pos], ast.Constant):
                        add(node.args[pos].value, where)
                    for kw in node.keywords:
                        if kw.arg == "reason" and isinstance(kw.value, ast.Constant):
                            add(kw.value.value, where)
                    if name == "getattr" and len(node.args) == 3 and isinstance(node.args[1], ast.Constant) \
                            and node.args[1].value == "reason" and isinstance(node.args[2], ast.Constant):
                        add(node.args[2].value, where)
                elif isinstance(node, ast.Dict):
                    for k, v in zip(node.keys, node.values):
                        if isinstance(k, ast.Constant) and k.value == "reason" and isinstance(v, ast.Constant):
                            add(v.value, where)
    return found


def _all_string_literals() -> set:
    out = set()
    for folder in PACKAGE_FOLDERS:
        for f in (REPO / folder).rglob("*.py"):
            if f.name == "reasons.py":
                continue
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    out.add(node.value)
    return out


def test_every_emitted_code_is_in_the_table():
    from refcoco_edit.reasons import REASONS

    emitted = _emitted()
    assert len(emitted) >= 30, sorted(emitted)  # the scan sees the package's codes at all
    missing = {c: w[:3] for c, w in emitted.items() if c not in REASONS}
    assert not missing, f"codes emitted but not in refcoco_edit.reasons.REASONS: {missing}"


def test_every_code_of_the_table_is_used_somewhere():
    from refcoco_edit.reasons import REASONS

    literals = _all_string_literals()
    unused = sorted(c for c in REASONS if c not in literals)
    assert not unused, f"codes in the table that no code emits: {unused}"


def test_the_tables_users_see_are_views_of_the_one_table():
    from refcoco_edit.benchmark.data import SKIP_REASONS
    from refcoco_edit.benchmark.editors import FAILURE_REASONS
    from refcoco_edit.reasons import REASONS, reasons
    from refcoco_edit.schema import REASONS as QUARANTINE_REASONS

    assert QUARANTINE_REASONS == reasons("quarantine") and "llm_bad_json" in QUARANTINE_REASONS
    assert FAILURE_REASONS == reasons("edit") and "cmd_timeout" in FAILURE_REASONS
    assert SKIP_REASONS == reasons("skip") and "duplicate_sample_id" in SKIP_REASONS
    from refcoco_edit.benchmark.judge import JUDGE_REASONS

    assert JUDGE_REASONS == reasons("judge") and "judge_bad_json" in JUDGE_REASONS
    assert set(QUARANTINE_REASONS) | set(FAILURE_REASONS) | set(SKIP_REASONS) | set(JUDGE_REASONS) == set(REASONS)
    assert all(r.description and r.scopes for r in REASONS.values())
    with pytest.raises(ValueError, match="scope"):
        reasons("nope")


def test_reason_errors_share_one_base_and_keep_their_own():
    from refcoco_edit.benchmark.editors import EditFailure
    from refcoco_edit.errors import ReasonError, SampleError
    from refcoco_edit.imageio import ImageError
    from refcoco_edit.pipelines.base import PipelineError
    from refcoco_edit.pipelines.rephrase import RephraseRejected
    from refcoco_edit.rle import MaskError

    for cls, code in ((SampleError, "empty_sentence"), (ImageError, "corrupt_image"), (PipelineError, "no_change"),
                      (MaskError, "bad_rle"), (RephraseRejected, "llm_refusal")):
        e = cls(code, "why")
        assert isinstance(e, ReasonError) and e.reason == code and str(e) == "why"
    assert isinstance(MaskError("bad_rle", ""), ValueError) and isinstance(PipelineError("no_change", ""), RuntimeError)
    with pytest.raises(ValueError, match="did you mean 'no_change'"):
        PipelineError("no_chnage", "typo in a code")
    with pytest.raises(ValueError, match="unknown failure reason"):
        EditFailure("empty_sentence")  # a quarantine code is not an editor failure
