"""The ReferDiffusion configs ship with the package: inside a wheel built from this checkout, and
reachable by name (``--config 3_rem_rcl`` / ``builtin:3_rem_rcl``) from an installed copy, while
``--config configs/referdiffusion/1_finetune.yaml`` keeps working from a checkout."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO

NAMES = ["1_finetune", "2_rem", "3_rem_rcl", "4_selfsup"]


def test_names_resolve_to_the_shipped_files(monkeypatch, tmp_path):
    from refcoco_edit.benchmark.referdiffusion import configs
    from refcoco_edit.benchmark.referdiffusion.train import load_config, main

    assert configs.names() == NAMES
    for n in NAMES:
        for form in (n, f"{n}.yaml", f"builtin:{n}", f"builtin:{n}.yaml"):
            assert configs.resolve(form) == configs.path(n)
            assert configs.path(n).parent == Path(configs.__file__).resolve().parent
    cfg = load_config("3_rem_rcl", ["--lr", "1e-4"])
    assert cfg.loss["rcl"] == 0.1 and cfg.model["use_rem"] is True and cfg.lr == 1e-4
    assert load_config("builtin:4_selfsup").stage == "stage1"
    assert load_config("1_finetune").model == {"use_rem": False}
    # from a checkout, the documented paths still work (links to the package's files)
    monkeypatch.chdir(REPO)
    for n in NAMES:
        f = Path("configs/referdiffusion") / f"{n}.yaml"
        assert load_config(str(f)) == load_config(n)
    # a file of the same name in the working folder wins over nothing: only paths that exist are files
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("lr: 0.5\n")
    assert load_config("mine.yaml").lr == 0.5
    for bad in ("nope", "builtin:nope", "builtin:../setup", "sub/3_rem_rcl.yaml"):
        with pytest.raises(ValueError, match="shipped"):
            load_config(bad)
    assert main(["--config", "no_such_config"]) == 2

# the wheel and the installed copy: tests/test_packaging.py
