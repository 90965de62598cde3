"""The one lazy registry (refcoco_edit.registry) behind pipelines, editors, metrics and executors."""
from __future__ import annotations

import sys
import textwrap

import pytest

from refcoco_edit.errors import InputError
from refcoco_edit.registry import Registry, UnknownNameError, import_target
from refcoco_edit.suggest import did_you_mean


def _module(tmp_path, monkeypatch, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_entries_are_imported_only_when_asked_for(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "reg_lazy_mod", "class Thing:\n    value = 42\n")
    reg = Registry("widget", {"thing": "reg_lazy_mod:Thing", "inline": int}, aliases={"t": "thing"},
                   normalize=str.lower)
    assert "reg_lazy_mod" not in sys.modules
    assert reg.names() == ["inline", "thing"] and "THING" in reg and "t" in reg and "nope" not in reg
    assert "reg_lazy_mod" not in sys.modules  # listing and membership import nothing
    assert reg.get("T").value == 42 and reg.get("thing") is reg.get("Thing")
    assert reg.get("inline") is int and reg.target("t") == "reg_lazy_mod:Thing"


def test_unknown_names_say_what_is_close_and_are_input_and_key_errors():
    reg = Registry("pipeline", {"classical-remove": int, "classical-replace": int}, aliases={"rm": "classical-remove"})
    with pytest.raises(UnknownNameError) as info:
        reg.get("classical-remov")
    e = info.value
    assert isinstance(e, InputError) and isinstance(e, KeyError)
    assert str(e).startswith("unknown pipeline 'classical-remov'; did you mean 'classical-remove'")
    assert "(known: classical-remove, classical-replace)" in str(e) and e.suggestions[0] == "classical-remove"
    assert "did you mean" not in str(reg.unknown("zzzz"))
    assert did_you_mean("ray", ["ray", "local"]) == "; did you mean 'ray'?"
    with pytest.raises(ValueError, match="registered already"):
        reg.register("classical-remove", int)
    with pytest.raises(ValueError, match="unknown pipeline"):
        reg.alias("x", "missing")


def test_suggestions_prefer_names_and_say_what_an_alias_stands_for():
    from refcoco_edit.benchmark.editors.registry import REGISTRY

    # 'Orcale' is close to 'oracle' and to the alias 'source': only the name is offered
    msg = str(REGISTRY.unknown("Orcale"))
    assert "did you mean 'oracle'?" in msg and "source" not in msg.split("(known")[0]
    # no name is close: the alias is offered with the name it stands for
    msg = str(REGISTRY.unknown("pix2pixx"))
    assert "did you mean 'pix2pix' (alias of 'instruct-pix2pix')" in msg
    assert REGISTRY.canonical("Oracle") == "oracle"  # names are case-blind: Oracle is oracle


def test_import_target_errors_name_the_part_that_is_wrong():
    assert import_target("os.path:join") is __import__("os").path.join
    with pytest.raises(InputError, match="not of the form module:Class"):
        import_target("os.path")
    with pytest.raises(InputError, match="cannot import module 'no_such_mod_xyz'"):
        import_target("no_such_mod_xyz:X")
    with pytest.raises(InputError, match="has no attribute 'nope'"):
        import_target("os:nope", "editor 'x'")


def test_plugins_come_from_entry_points_and_built_ins_win(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "reg_plugin_mod", "def make():\n    return 'plugged'\n")
    dist = tmp_path / "reg_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: reg-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[refcoco_edit.test_widgets]\nextra = reg_plugin_mod:make\n"
                                           "local = reg_plugin_mod:make\n")
    reg = Registry("executor", {"local": "os:getcwd"}, entry_point_group="refcoco_edit.test_widgets")
    assert reg.names() == ["extra", "local"] and reg.names(plugins=False) == ["local"]
    assert "reg_plugin_mod" not in sys.modules
    assert reg.get("extra")() == "plugged"
    assert reg.target("local") == "os:getcwd"  # the built-in wins over a plug-in of the same name
    with pytest.raises(UnknownNameError, match="did you mean 'extra'"):
        reg.get("extr")


def test_the_package_registries_use_it():
    from refcoco_edit.benchmark.editors.registry import REGISTRY as EDITORS
    from refcoco_edit.executors import EXECUTORS
    from refcoco_edit.pipelines.base import PIPELINES, pipelines_for

    assert {"classical-remove", "pbe-replace"} <= set(PIPELINES.names())
    assert {"identity", "oracle"} <= set(EDITORS.names()) and EDITORS.canonical("GT") == "oracle"
    assert EXECUTORS.names(plugins=False) == ["local", "ray"]
    from refcoco_edit.benchmark.metrics import REGISTRY as METRICS

    assert METRICS.get("SSIM-bg").name == "ssim_bg" and "referring_accuracy" in METRICS.get("referring")
    with pytest.raises(UnknownNameError, match="unknown backend 'clasical'; did you mean 'classical'"):
        pipelines_for("clasical", "remove")
