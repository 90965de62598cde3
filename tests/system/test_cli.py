"""The command line: help without torch, config file + overrides, exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, run_cli
from refcoco_edit.build import BuildConfig
from refcoco_edit.cli import build_parser, load_config_file, make_config


def test_help_does_not_import_torch_or_heavy_modules():
    code = (
        "import sys\n"
        "from refcoco_edit.cli import main\n"
        "for args in (['--help'], ['build', '--help'], ['export', '--help'], ['demo', '--help'], ['score', '--help'],"
        " ['study', 'push', '--help'], ['study', 'pull', '--help']):\n"
        "    assert main(args) == 0\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'ray', 'openai', 'label_studio_sdk', 'cv2', 'pyarrow') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def test_every_setting_is_a_flag():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["build"]
    flags = {o for a in sub._actions for o in a.option_strings}
    flat = {"--" + n.replace("_", "-") for n in BuildConfig().flat() if n != "pipeline_params"}
    assert flat <= flags, sorted(flat - flags)  # every setting keeps its flat flag (--llm-model ...)
    assert {"--llm.model", "--filters.max-bg-change", "--selection.min-area-fraction", "--run.workers", "--runtime.dtype",
            "--pipeline-params"} <= flags


def test_config_file_then_command_line_wins(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("seed: 7\nnum-images: 3\nedit_types: remove,attribute\nparaphrase: false\n")
    args = build_parser().parse_args(["build", "--config", str(cfg_file), "--seed", "9"])
    cfg = make_config(BuildConfig, args)
    assert cfg.seed == 9 and cfg.num_images == 3 and cfg.edit_types == ["remove", "attribute"]
    assert cfg.paraphrase is False
    args = build_parser().parse_args(["build", "--config", str(cfg_file), "--paraphrase", "--num-images", "none"])
    cfg = make_config(BuildConfig, args)
    assert cfg.paraphrase is True and cfg.num_images is None and cfg.seed == 7


def test_unknown_config_key_suggests(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("num_imagse: 3\n")
    with pytest.raises(Exception, match="did you mean 'num_images'"):
        load_config_file(str(cfg_file), BuildConfig)


def test_exit_codes(tmp_path):
    r = run_cli("build", "--backend", "nope")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("seeed: 1\n")
    r = run_cli("build", "--config", str(cfg_file), "--out", str(tmp_path / "w"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("refcoco-edit: error:")
    r = run_cli("build", "--refcoco", str(tmp_path / "missing"), "--out", str(tmp_path / "w"))
    assert r.returncode == 2 and "no such folder" in r.stderr
    r = run_cli("export", "--workdir", str(tmp_path / "nothing"), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "not a refcoco-edit workspace" in r.stderr
    r = run_cli()
    assert r.returncode == 2


def test_demo_command_writes_refer_layout(tmp_path):
    r = run_cli("demo", "--out", str(tmp_path / "d"), "--num-images", "4")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d" / "refcoco" / "refs(unc).p").exists()
    assert (tmp_path / "d" / "refcoco" / "instances.json").exists()
    inst = json.loads((tmp_path / "d" / "refcoco" / "instances.json").read_text())
    assert len(inst["images"]) == 4


def test_build_and_export_commands(demo_dir, tmp_path):
    w = tmp_path / "w"
    r = run_cli("build", "--out", str(w), "--refcoco", str(demo_dir), "--images", str(demo_dir / "images"),
                "--num-images", "3", "--edit-types", "remove")
    assert r.returncode == 0, r.stderr
    assert "selection: 3 images kept" in r.stdout and "exported 6" in r.stdout
    assert "generated 6 samples (1 shards)" in r.stdout
    # the same command again does nothing, and says so (not "generated 6 samples")
    r = run_cli("build", "--out", str(w), "--refcoco", str(demo_dir), "--images", str(demo_dir / "images"),
                "--num-images", "3", "--edit-types", "remove")
    assert r.returncode == 0, r.stderr
    assert "nothing to generate: all 1 shards were done already (6 samples)" in r.stdout
    assert "generated" not in r.stdout
    r = run_cli("export", "--workdir", str(w), "--out", str(tmp_path / "e"), "--status", "all")
    assert r.returncode == 0, r.stderr
    assert "exported 6 samples" in r.stdout
    assert sorted(p.name for p in (tmp_path / "e").glob("*.parquet"))


def test_train_command_reaches_the_trainer(tmp_path):
    r = run_cli("train", "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml" in (r.stderr + r.stdout)
    r = run_cli("train", "--help")
    assert r.returncode == 0 and "--config" in r.stdout
    # what the README documents for train is in its help
    for flag in ("--data", "--pretrained", "--synth.KEY", "--output_dir", "--resume"):
        assert flag in r.stdout, flag


@pytest.mark.parametrize("command, needles", [
    ("demo", ("synthetic demo data", "refer layout")),
    ("export", ("dataset card", "reference_candidate", "--view")),
    ("score", ("{output_mask}", "{batch}", "--list-editors shows every name and alias")),
    ("build", ("--refcoco", "--pipeline-params")),
    ("study", ("blind and shuffled per task", "Krippendorff's alpha", "$LABEL_STUDIO_API_KEY")),
])
def test_every_command_help_says_what_it_does(command, needles):
    text = build_parser()._subparsers._group_actions[0].choices[command].format_help()
    assert "usage:" in text
    for n in needles:
        assert n in " ".join(text.split()), (command, n)


@pytest.fixture(scope="module")
def two_image_data(tmp_path_factory):
    """A two-image mini-RefCOCO (the demo generator) to break in different ways."""
    from refcoco_edit.demo import write_demo

    root = tmp_path_factory.mktemp("two") / "data"
    write_demo(root, num_images=2)
    return root


def _broken_copy(src, dst, how: str):
    import shutil

    shutil.copytree(src, dst)
    if how == "images":  # every image truncated: each sample is quarantined at generate (corrupt_image)
        for f in (dst / "images").iterdir():
            data = f.read_bytes()
            f.write_bytes(data[: len(data) // 3])
    else:  # every mask a 2-point polygon: each referred object is quarantined at select (bad_polygon)
        inst = json.loads((dst / "refcoco" / "instances.json").read_text())
        for a in inst["annotations"]:
            if not a.get("iscrowd"):
                a["segmentation"] = [[1, 2, 3, 4]]
        (dst / "refcoco" / "instances.json").write_text(json.dumps(inst))
    return dst


@pytest.mark.parametrize("how,stage,reason", [("images", "generate", "corrupt_image"), ("masks", "select", "bad_polygon")])
def test_a_build_whose_every_sample_is_quarantined_exits_0_and_says_why(two_image_data, tmp_path, capsys, how, stage,
                                                                          reason):
    from refcoco_edit.cli import main
    from refcoco_edit.reasons import REASONS

    data = _broken_copy(two_image_data, tmp_path / "data", how)
    w = tmp_path / "W"
    args = ["build", "--out", str(w), "--refcoco", str(data), "--images", str(data / "images"), "--no-progress"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert err == "" and "nothing exported" in out and "run `refcoco-edit build" not in out
    assert f"{stage}/{reason}: " in out and REASONS[reason].description in out  # each reason, with what it means
    assert f"{w / 'quarantine'}/*.parquet" in out and "--overwrite" in out
    assert not (w / "export").exists()  # no export of no samples
    # `export` on it: still an error (nothing to export), but it says the build ran and why, not "build first"
    assert main(["export", "--workdir", str(w), "--out", str(tmp_path / "E")]) == 2
    err = capsys.readouterr().err
    assert "was built, but no sample came through" in err and f"{stage}/{reason}" in err and "run `" not in err
    assert not (tmp_path / "E").exists()
    from refcoco_edit.annotation.push import load_samples  # review push says the same
    from refcoco_edit.errors import InputError
    from refcoco_edit.workspace import Workspace

    with pytest.raises(InputError, match=f"no sample came through.*{stage}/{reason}.*nothing to review"):
        load_samples(Workspace(w))
    if how == "images":  # an empty export an earlier version left there goes on a re-run (it described nothing)
        (w / "export").mkdir()
        (w / "export" / ".refcoco-edit-export.json").write_text("{}")
        assert main(args) == 0
        assert "removed the earlier export" in capsys.readouterr().out and not (w / "export").exists()


def test_export_of_a_workspace_never_built_still_says_build_first(tmp_path, capsys):
    from refcoco_edit.cli import main

    (tmp_path / "W" / "generate").mkdir(parents=True)
    assert main(["export", "--workdir", str(tmp_path / "W"), "--out", str(tmp_path / "E")]) == 2
    assert f"run `refcoco-edit build --out {tmp_path / 'W'}` first" in capsys.readouterr().err
