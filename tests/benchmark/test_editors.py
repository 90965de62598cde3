"""Editors: built-ins, the registry (aliases, did-you-mean, module:Class, entry-point plug-ins),
the dir: and cmd: adapters, and the output checks that turn defects into failures."""
from __future__ import annotations

import json
import shlex
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refcoco_edit.benchmark.editors import EditFailure, Editor, check_output, get_editor, list_editors
from refcoco_edit.benchmark.editors.registry import UnknownEditorError
from refcoco_edit.errors import InputError
from refcoco_edit.imageio import encode_png

IMG = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 3
REF = 255 - IMG


class FlipEditor(Editor):
    """Used through ``--model test_editors:FlipEditor``."""

    name = "flip"
    protocol = frozenset({"edit_phrase"})

    def edit(self, images, prompts, seeds, extras):
        return [np.ascontiguousarray(img[:, ::-1]) for img in images]


class NotAnEditor:
    pass


def _extras(n=1, **kw):
    return [dict({"sample_id": f"s{i}"}, **kw) for i in range(n)]


# ----------------------------------------------------------------------------------------------
# built-ins and registry
# ----------------------------------------------------------------------------------------------


def test_identity_and_oracle():
    ident = get_editor("identity")
    out = ident.edit([IMG], ["make it red"], [0], _extras())
    assert np.array_equal(out[0], IMG) and out[0] is not IMG
    assert ident.protocol == frozenset()
    oracle = get_editor("oracle")
    assert oracle.protocol == {"reference"}
    assert np.array_equal(oracle.edit([IMG], ["p"], [0], _extras(reference=REF))[0], REF)
    d = oracle.describe()
    assert d["protocol"] == ["reference"] and d["class"] == "refcoco_edit.benchmark.editors.builtin:OracleEditor"


def test_aliases_and_did_you_mean():
    assert get_editor("noop").name == "identity"
    assert get_editor("GT").name == "oracle"
    with pytest.raises(UnknownEditorError, match="did you mean 'identity'"):
        get_editor("identiy")
    with pytest.raises(InputError, match="unknown editor 'zzz'"):
        get_editor("zzz")
    with pytest.raises(InputError, match="needs a checkpoint"):
        get_editor("referdiffusion")  # registered, but needs referdiffusion:CHECKPOINT
    assert get_editor("ip2p").name == "instruct-pix2pix"  # alias of a diffusion editor (built, not loaded)


def test_module_class_spec():
    e = get_editor("test_editors:FlipEditor")
    assert isinstance(e, FlipEditor)
    assert np.array_equal(e.edit([IMG], ["p"], [0], _extras())[0], IMG[:, ::-1])
    with pytest.raises(InputError, match="not a subclass"):
        get_editor("test_editors:NotAnEditor")
    with pytest.raises(InputError, match="cannot import module"):
        get_editor("no_such_module_xyz:Editor")
    with pytest.raises(InputError, match="has no attribute"):
        get_editor("test_editors:Missing")
    with pytest.raises(InputError, match="bad editor options"):
        get_editor("identity", {"unexpected": 1})


def test_entry_point_plugin(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "fake_rie_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "fake_rie_plugin-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-rie-plugin\nVersion: 1.0\n")
    (site / "fake_rie_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[refcoco_edit.editors]\nfake-invert = fake_rie_plugin_mod:InvertEditor\n")
    (site / "fake_rie_plugin_mod.py").write_text(textwrap.dedent("""
        import numpy as np
        from refcoco_edit.benchmark.editors import Editor

        class InvertEditor(Editor):
            name = "fake-invert"
            protocol = frozenset({"gt_mask"})

            def edit(self, images, prompts, seeds, extras):
                return [255 - img for img in images]
    """))
    monkeypatch.syspath_prepend(str(site))
    assert "fake_rie_plugin_mod" not in sys.modules
    names = {r["name"]: r for r in list_editors()}
    assert names["fake-invert"]["kind"] == "plug-in"
    assert "fake_rie_plugin_mod" not in sys.modules  # listing imports nothing
    e = get_editor("fake-invert")
    assert e.protocol == {"gt_mask"}
    assert np.array_equal(e.edit([IMG], ["p"], [0], _extras())[0], 255 - IMG)
    with pytest.raises(UnknownEditorError, match="did you mean 'fake-invert'"):
        get_editor("fake-invrt")
    monkeypatch.delitem(sys.modules, "fake_rie_plugin_mod")


def test_bad_protocol_declaration_is_refused():
    class Bad(Editor):
        protocol = frozenset({"everything"})

        def edit(self, images, prompts, seeds, extras):
            return images

    from refcoco_edit.benchmark.editors.registry import _instantiate

    with pytest.raises(InputError, match="unknown protocol"):
        _instantiate(Bad, "test", {})


# ----------------------------------------------------------------------------------------------
# output checks
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("out,reason", [
    (np.full((4, 5, 3), np.nan), "non_finite"),
    (np.full((4, 5, 3), np.inf, dtype=np.float32), "non_finite"),
    (np.full((4, 5, 3), 1.5), "bad_range"),
    (np.zeros((4, 5, 3), dtype=np.int64), "bad_dtype"),
    (np.zeros((4, 5), dtype=np.uint8), "bad_channels"),
    (np.zeros((4, 5, 4), dtype=np.uint8), "bad_channels"),
    (np.zeros((5, 4, 3), dtype=np.uint8), "wrong_size"),
    ([[0]], "bad_type"),
    (None, "bad_type"),
])
def test_check_output_failures(out, reason):
    arr, fail, resized = check_output(out, (4, 5))
    assert arr is None and fail.reason == reason and not resized


def test_check_output_accepts_and_converts():
    arr, fail, resized = check_output(IMG, (4, 5))
    assert fail is None and arr.dtype == np.uint8 and np.array_equal(arr, IMG) and not resized
    arr, fail, _ = check_output(np.full((4, 5, 3), 0.5, dtype=np.float32), (4, 5))
    assert fail is None and (arr == 128).all()  # round(127.5) -> 128 (half to even)
    arr, fail, _ = check_output(Image.fromarray(IMG), (4, 5))
    assert fail is None and np.array_equal(arr, IMG)
    arr, fail, resized = check_output(np.zeros((8, 10, 3), np.uint8), (4, 5), resize=True)
    assert fail is None and resized and arr.shape == (4, 5, 3)
    arr, fail, resized = check_output(np.full((8, 10, 3), np.nan), (4, 5), resize=True)
    assert fail.reason == "non_finite"  # resizing never hides another defect


def test_edit_failure_reason_is_checked():
    with pytest.raises(ValueError):
        EditFailure("whatever")


# ----------------------------------------------------------------------------------------------
# dir:
# ----------------------------------------------------------------------------------------------


def test_dir_adapter(tmp_path):
    (tmp_path / "s0.png").write_bytes(encode_png(REF))
    Image.fromarray(IMG).save(tmp_path / "s1.jpg", quality=100)
    (tmp_path / "s3.png").write_bytes(b"not a png")
    e = get_editor(f"dir:{tmp_path}", {"protocol": "gt_mask"})
    assert e.protocol == {"gt_mask"}
    out = e.edit([IMG] * 4, ["p"] * 4, [0] * 4, _extras(4))
    assert np.array_equal(out[0], REF)
    assert out[1].shape == IMG.shape
    assert isinstance(out[2], EditFailure) and out[2].reason == "missing_output"
    assert isinstance(out[3], EditFailure) and out[3].reason == "corrupt_output"
    with pytest.raises(InputError, match="no such folder"):
        get_editor(f"dir:{tmp_path / 'nope'}")
    with pytest.raises(InputError, match="unknown protocol"):
        get_editor(f"dir:{tmp_path}", {"protocol": "telepathy"})


# ----------------------------------------------------------------------------------------------
# cmd:
# ----------------------------------------------------------------------------------------------

SCRIPT = textwrap.dedent('''
    import json, sys, time
    import numpy as np
    from PIL import Image
    args = sys.argv[1:]
    mode = args[0]
    if mode == "sample":
        inp, out, prompt, log = args[1:5]
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(args[1:]) + "\\n")
        if "FAIL" in prompt:
            sys.stderr.write("editor exploded on purpose\\n")
            sys.exit(3)
        if "SLEEP" in prompt:
            time.sleep(30)
        if "NOOUT" in prompt:
            sys.exit(0)
        a = np.asarray(Image.open(inp).convert("RGB"))
        if len(args) > 5:  # a mask path
            m = np.asarray(Image.open(args[5])) > 0
            a = a.copy(); a[m] = 0
        Image.fromarray(np.ascontiguousarray(a[:, ::-1])).save(out)
    elif mode == "batch":
        for line in open(args[1], encoding="utf-8"):
            job = json.loads(line)
            a = np.asarray(Image.open(job["input"]).convert("RGB"))
            Image.fromarray(255 - a).save(job["output"])
''')


@pytest.fixture()
def script(tmp_path):
    p = tmp_path / "fake_editor.py"
    p.write_text(SCRIPT)
    return p


def _cmd(script, rest):
    return f"cmd:{shlex.quote(sys.executable)} {shlex.quote(str(script))} {rest}"


def test_cmd_adapter_passes_prompts_verbatim_without_a_shell(script, tmp_path):
    log = tmp_path / "log.jsonl"
    e = get_editor(_cmd(script, f"sample {{input}} {{output}} {{prompt}} {shlex.quote(str(log))}"))
    assert e.protocol == frozenset()
    evil = "it's \"quoted\"; touch PWNED $(touch PWNED2) `touch PWNED3` {input} \n new line"
    out = e.edit([IMG, IMG], [evil, "plain"], [1, 2], _extras(2))
    assert np.array_equal(out[0], IMG[:, ::-1]) and np.array_equal(out[1], IMG[:, ::-1])
    logged = [json.loads(x) for x in log.read_text().splitlines()]
    assert logged[0][2] == evil and logged[1][2] == "plain"
    assert not any(Path(p).exists() for p in ("PWNED", "PWNED2", "PWNED3"))


def test_cmd_adapter_failures(script, tmp_path):
    log = tmp_path / "log.jsonl"
    e = get_editor(_cmd(script, f"sample {{input}} {{output}} {{prompt}} {shlex.quote(str(log))}"), {"timeout": 2})
    out = e.edit([IMG] * 3, ["FAIL", "NOOUT", "SLEEP"], [0] * 3, _extras(3))
    assert out[0].reason == "cmd_failed" and "exit status 3" in out[0].message
    assert "exploded on purpose" in out[0].message
    assert out[1].reason == "missing_output"
    assert out[2].reason == "cmd_timeout"
    missing = get_editor("cmd:/no/such/program {input} {output}")
    assert missing.edit([IMG], ["p"], [0], _extras())[0].reason == "cmd_failed"


def test_cmd_protocol_follows_the_placeholders(script, tmp_path):
    log = tmp_path / "log.jsonl"
    e = get_editor(_cmd(script, f"sample {{input}} {{output}} {{edit_phrase}} {shlex.quote(str(log))} {{mask}}"))
    assert e.protocol == {"gt_mask", "edit_phrase"}
    mask = np.zeros((4, 5), dtype=bool)
    mask[0, 0] = True
    out = e.edit([IMG], ["p"], [0], _extras(gt_mask=mask, edit_phrase="green"))
    want = IMG.copy()
    want[0, 0] = 0
    assert np.array_equal(out[0], want[:, ::-1])
    assert json.loads(log.read_text().splitlines()[0])[2] == "green"


def test_cmd_batch_mode(script):
    e = get_editor(_cmd(script, "batch {batch}"), {"batch_size": 3})
    assert e.batch_size == 3 and e.batch_mode
    out = e.edit([IMG, REF], ["a", "b"], [0, 1], _extras(2))
    assert np.array_equal(out[0], 255 - IMG) and np.array_equal(out[1], IMG)


def test_cmd_shell_mode_quotes_values(script, tmp_path):
    log = tmp_path / "log.jsonl"
    tmpl = f"sample {{input}} {{output}} {{prompt}} {shlex.quote(str(log))} | cat"
    e = get_editor(_cmd(script, tmpl), {"shell": True})
    out = e.edit([IMG], ["x; touch PWNED_SHELL"], [0], _extras())
    assert np.array_equal(out[0], IMG[:, ::-1])
    assert not Path("PWNED_SHELL").exists()
    assert json.loads(log.read_text().splitlines()[0])[2] == "x; touch PWNED_SHELL"


@pytest.mark.parametrize("template,match", [
    ("prog {input}", "must hold"),
    ("prog {input} {output} {bogus}", "unknown placeholder"),
    ("prog {batch} {input}", "no per-sample placeholders"),
    ("prog {input} {output} {", "literal braces"),
    ("prog {input} {output} 'unclosed", "cannot be split"),
])
def test_cmd_template_errors(template, match):
    with pytest.raises(InputError, match=match):
        get_editor("cmd:" + template)
