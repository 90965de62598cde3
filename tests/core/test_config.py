"""One configuration system (refcoco_edit.config): settings declared once, read from YAML and
flags (nested, dotted and flat forms), defaults < file < command line; `score --config` end to
end; `train` through the same loader."""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from refcoco_edit import config
from refcoco_edit.config import UsageError, section, setting
from refcoco_edit.errors import InputError


@dataclass
class _Loss:
    eps: float = 1.0
    rcl: float = 0.1
    edit_loss: str = "mse"


@dataclass
class LLM:
    model: Optional[str] = setting(None, "the LLM")
    temperature: float = setting(0.7, "sampling temperature")
    json_mode: bool = setting(True, "ask for JSON")
    timeout: float = setting(60.0, "seconds per request", runtime=True)


@dataclass
class Pbe:
    model: str = setting("Fantasy-Studio/Paint-by-Example", "PbE model", aliases=("pbe_model",))
    steps: int = setting(50, "denoising steps")


@dataclass
class Cfg:
    seed: int = setting(0, "global seed")
    num_images: Optional[int] = setting(400, "images (none: all)")
    edit_types: List[str] = setting(["replace", "remove"], "edit types, comma separated")
    backend: str = setting("classical", "backend", choices=("classical", "diffusion"))
    options: Dict[str, Any] = setting({}, "free options", flag="option", metavar="KEY=VALUE")
    loss: Dict[str, Any] = setting({}, "loss weights", schema=_Loss)
    llm: LLM = section(LLM, "the LLM rephraser", flat_prefix="llm_")
    pbe: Pbe = section(Pbe, "Paint-by-Example")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config")
    config.add_flags(ap, Cfg)
    return ap


def _make(argv, tmp_path=None, yaml_text=None):
    path = None
    if yaml_text is not None:
        path = tmp_path / "c.yaml"
        path.write_text(yaml_text)
    return config.make(Cfg, _parser().parse_args(argv), path)


def test_nested_dotted_and_flat_forms_give_the_same_config(tmp_path):
    want = _make(["--llm-model", "m", "--llm-temperature", "0.2", "--no-llm-json-mode", "--pbe-model", "p"])
    assert (want.llm.model, want.llm.temperature, want.llm.json_mode, want.pbe.model) == ("m", 0.2, False, "p")
    assert _make(["--llm.model", "m", "--llm.temperature", "0.2", "--no-llm.json-mode", "--pbe.model", "p"]) == want
    for text in ("llm: {model: m, temperature: 0.2, json_mode: false}\npbe: {model: p}\n",
                 "llm.model: m\nllm.temperature: 0.2\nllm.json-mode: false\npbe.model: p\n",
                 "llm_model: m\nllm-temperature: 0.2\nllm_json_mode: false\npbe_model: p\n"):
        assert _make([], tmp_path, text) == want, text
    assert config.read_overrides(Cfg, ["--llm.model", "m", "--llm_temperature=0.2", "--llm.json_mode", "false",
                                       "--pbe_model", "p"]) == {"llm": {"model": "m", "temperature": 0.2,
                                                                        "json_mode": False}, "pbe": {"model": "p"}}


def test_command_line_wins_over_the_file_which_wins_over_the_defaults(tmp_path):
    text = ("seed: 3\nnum_images: all\nedit_types: remove,attribute\nllm: {model: a, json_mode: false}\n"
            "options: {x: 1, y: two}\nloss: {rcl: 2e-4}\n")
    cfg = _make([], tmp_path, text)
    assert (cfg.seed, cfg.num_images, cfg.edit_types, cfg.llm.model, cfg.llm.json_mode) == \
        (3, None, ["remove", "attribute"], "a", False)
    assert cfg.options == {"x": 1, "y": "two"} and cfg.loss == {"rcl": 2e-4}  # 2e-4: a float, not YAML 1.1's string
    assert cfg.llm.temperature == 0.7 and cfg.backend == "classical"  # untouched: the defaults
    cfg = _make(["--seed", "0", "--num-images", "5", "--llm.json-mode", "--option", "y=3", "--option", "z=true",
                 "--llm-model", "b"], tmp_path, text)
    # a flag given with the default's value still wins over the file
    assert (cfg.seed, cfg.num_images, cfg.llm.json_mode, cfg.llm.model) == (0, 5, True, "b")
    assert cfg.options == {"x": 1, "y": 3, "z": True}  # mappings merge key by key
    assert cfg.edit_types == ["remove", "attribute"]
    assert _make([]) == Cfg() and _make([]).edit_types is not Cfg().edit_types


@pytest.mark.parametrize("text, message", [
    ("sed: 1\n", "unknown setting 'sed'; did you mean 'seed'?"),
    ("llm: {modle: x}\n", "unknown setting 'llm.modle'; did you mean 'llm.model'?"),
    ("llm_modle: x\n", "did you mean 'llm_model'?"),
    ("loss: {rlc: 1}\n", "unknown setting 'loss.rlc'; did you mean 'loss.rcl'?"),
    ("seed: abc\n", "seed: expected an integer, got 'abc'"),
    ("llm.temperature: hot\n", "expected a number"),
    ("llm: {json_mode: maybe}\n", "expected true or false"),
    ("backend: gpu\n", "'gpu' is not one of classical, diffusion"),
    ("llm: 3\n", "llm: expected a mapping of its settings"),
    ("loss: {eps: x}\n", "loss.eps: expected a number"),
    ("- a\n- b\n", "expected a mapping of settings"),
    ("seed: [1\n", "not valid YAML"),
])
def test_bad_files_are_usage_errors_naming_the_key(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("?", r"\?")) as e:
        config.read_file(f, Cfg)
    assert isinstance(e.value, InputError) and str(f) in str(e.value)
    with pytest.raises(UsageError, match="no such file"):
        config.read_file(tmp_path / "missing.yaml", Cfg)


def test_overrides_and_key_values():
    assert config.read_overrides(Cfg, ["--loss.rcl", "0.5", "--options.a.b=1"]) == \
        {"loss": {"rcl": 0.5}, "options": {"a": {"b": 1}}}
    with pytest.raises(UsageError, match="needs a value"):
        config.read_overrides(Cfg, ["--seed"])
    with pytest.raises(UsageError, match="unexpected argument 'x'"):
        config.read_overrides(Cfg, ["x"])
    with pytest.raises(UsageError, match="did you mean 'loss.eps'"):
        config.read_overrides(Cfg, ["--loss.esp", "1"])
    with pytest.raises(InputError, match="--option 'nope': expected key=value"):
        config.parse_key_values(["nope"], "--option")
    with pytest.raises(SystemExit):
        _parser().parse_args(["--backend", "gpu"])


def test_dump_build_and_declaration_errors():
    cfg = config.build(Cfg, {"llm": {"model": "m"}}, {"seed": 4})
    d = config.to_dict(cfg)
    assert d["llm"] == {"model": "m", "temperature": 0.7, "json_mode": True, "timeout": 60.0} and d["seed"] == 4
    assert "timeout" not in config.to_dict(cfg, runtime=False)["llm"]
    assert json.loads(json.dumps(d)) == d

    @dataclass
    class Clash:
        llm_model: str = setting("x", "flat")
        llm: LLM = section(LLM, flat_prefix="llm_")

    with pytest.raises(TypeError, match="claimed twice"):
        config.settings_of(Clash)

    @dataclass
    class Req:
        model: str = setting(help="required")
        n: int = setting(1, "n")

        def __post_init__(self) -> None:
            if self.n < 0:
                raise ValueError("n must be >= 0")

    with pytest.raises(UsageError, match="--model is required"):
        config.build(Req, {})
    with pytest.raises(UsageError, match="n must be >= 0"):
        config.build(Req, {"model": "m", "n": -1})


# ----------------------------------------------------------------------------------------------
# score
# ----------------------------------------------------------------------------------------------

def _score_parser() -> argparse.ArgumentParser:
    from refcoco_edit.benchmark.cli import add_score_parser

    ap = argparse.ArgumentParser()
    add_score_parser(ap.add_subparsers(dest="command"))
    return ap


def test_score_flags_come_from_score_config():
    from refcoco_edit.benchmark.harness import ScoreConfig
    from refcoco_edit.benchmark.metrics import MetricParams

    args = _score_parser().parse_args(["score"])
    for f in dataclasses.fields(ScoreConfig):
        assert hasattr(args, f.name), f.name
    defaults = {f.name: getattr(args, f.name) for f in dataclasses.fields(ScoreConfig) if f.name != "editor_args"}
    assert defaults == {k: v for k, v in dataclasses.asdict(ScoreConfig(model=None)).items()
                        if k != "editor_args"}
    assert (ScoreConfig.referring_eps, ScoreConfig.preservation_tau) == \
        (MetricParams.referring_eps, MetricParams.preservation_tau)
    a = _score_parser().parse_args(["score", "--model", "m", "--metrics", "paper, referring", "--no-gallery",
                                    "--no-plots", "--editor-arg", "steps=2", "--editor-arg", "protocol=gt_mask",
                                    "--no-local-files-only", "--progress", "--limit", "3", "--cmd-timeout", "5"])
    cfg = config.make(ScoreConfig, a)
    assert (cfg.metrics, cfg.gallery, cfg.plots, cfg.local_files_only, cfg.progress, cfg.limit, cfg.cmd_timeout) == \
        (["paper", "referring"], False, False, False, True, 3, 5.0)
    assert cfg.editor_args == {"steps": 2, "protocol": "gt_mask"}


@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> Path:
    from refcoco_edit.cli import main

    work = tmp_path_factory.mktemp("cfg") / "work"
    assert main(["build", "--num-images", "3", "--out", str(work), "--no-progress"]) == 0
    return work


def test_score_config_file_end_to_end(small_build, tmp_path, capsys):
    from refcoco_edit.cli import main

    s = tmp_path / "s.yaml"
    s.write_text(f"model: identity\ndata: {small_build}\nlimit: 2\nmetrics: [paper, referring]\ngallery: false\n"
                 "plots: false\nbootstrap: 10\nprogress: false\n")
    assert main(["score", "--config", str(s), "--out", str(tmp_path / "a")]) == 0
    r = json.loads((tmp_path / "a" / "results.json").read_text())
    assert r["counts"]["samples"] == 2 and r["editor"]["spec"] == "identity"
    assert "l2_bg" in r["metrics"] and "psnr_bg" not in r["metrics"]  # metrics: from the file
    assert not (tmp_path / "a" / "gallery.html").exists() and not (tmp_path / "a" / "plots").exists()
    # the command line wins over the file
    assert main(["score", "--config", str(s), "--out", str(tmp_path / "b"), "--limit", "3", "--gallery",
                 "--model", "oracle"]) == 0
    r = json.loads((tmp_path / "b" / "results.json").read_text())
    assert r["counts"]["samples"] == 3 and r["editor"]["spec"] == "oracle"
    assert (tmp_path / "b" / "gallery.html").exists() and not (tmp_path / "b" / "plots").exists()
    capsys.readouterr()
    # an unknown key: exit 2, one line, with a did-you-mean
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: identity\nlimt: 2\n")
    assert main(["score", "--config", str(bad), "--data", str(small_build)]) == 2
    err = capsys.readouterr().err
    assert "unknown setting 'limt'; did you mean 'limit'?" in err and err.count("\n") == 1
    bad.write_text("model: identity\nlimit: two\n")
    assert main(["score", "--config", str(bad), "--data", str(small_build)]) == 2
    assert "limit: expected an integer" in capsys.readouterr().err
    assert main(["score", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad.write_text("limit: 2\n")  # no model anywhere
    assert main(["score", "--config", str(bad)]) == 2
    assert "--model is required" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------

def test_train_reads_its_config_through_the_same_loader(tmp_path, capsys):
    from refcoco_edit.benchmark.referdiffusion.train import TrainConfig, load_config, main

    forms = {"nested": "lr: 2e-4\nmodel: {num_heads: 4}\nloss: {rcl: 0.5}\nmixed_precision: no\n",
             "dotted": "lr: 2.0e-4\nmodel.num_heads: 4\nloss.rcl: 0.5\nmixed-precision: 'no'\n"}
    got = {}
    for name, text in forms.items():
        f = tmp_path / f"{name}.yaml"
        f.write_text(text)
        got[name] = load_config(str(f))
    assert got["nested"] == got["dotted"] == load_config(None, ["--lr", "2e-4", "--model.num_heads=4",
                                                                "--loss.rcl", "0.5"])
    assert got["nested"].lr == 2e-4 and got["nested"].model == {"num_heads": 4}
    assert load_config("3_rem_rcl", ["--model.num_heads", "2"]).model == \
        {"use_rem": True, "image_features": "latent", "image_feature_dim": 64, "num_heads": 2}
    assert isinstance(load_config("builtin:3_rem_rcl"), TrainConfig)
    with pytest.raises(ValueError, match="did you mean 'model.num_heads'"):
        load_config(None, ["--model.num_head", "4"])
    with pytest.raises(ValueError, match="did you mean 'output_dir'"):
        load_config(None, ["--output-dri", "x"])
    with pytest.raises(ValueError, match="resolution: expected an integer"):
        load_config(None, ["--resolution", "big"])
    with pytest.raises(ValueError, match="not a multiple of 8"):
        load_config(None, ["--resolution", "30"])
    assert main(["--config", "3_rem_rcl", "--stage", "stage3"]) == 2
    assert "stage3" in capsys.readouterr().err


def test_train_help_lists_the_settings():
    from conftest import run_cli

    r = run_cli("train", "--help")
    assert r.returncode == 0
    for flag in ("--config", "--output_dir", "--lr", "--mixed_precision", "--model.KEY", "--loss.KEY", "--synth.KEY"):
        assert flag in r.stdout, flag
