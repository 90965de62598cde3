"""Every classical pipeline parameter is a build setting (YAML and command line), and the
selection/filter settings that used to be hard-wired are too; new settings at their defaults
leave the workspace fingerprint as it was."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from refcoco_edit.cli import main
from refcoco_edit.pipelines.base import PIPELINES

CLASSICAL = {"classical-remove": "remove", "classical-replace": "replace", "classical-attribute": "attribute"}


def _changed(value):
    """A different valid value of a numeric parameter (strings keep their default)."""
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if value is None:
        return 3
    if isinstance(value, int):
        return value + 1
    return round(value * 0.8, 4)


def _candidate_params(export_dir, pipeline):
    out = []
    for f in sorted(export_dir.glob("*.parquet")):
        for row in pq.read_table(f).to_pylist():
            out += [json.loads(c["params"]) for c in row["candidates"] if c["pipeline"] == pipeline]
    return out


@pytest.mark.parametrize("pipeline", sorted(CLASSICAL))
def test_each_classical_parameter_is_settable_from_yaml(pipeline, demo_dir, tmp_path):
    import yaml

    params = {k: _changed(v) for k, v in PIPELINES.get(pipeline).parameters().items()}
    assert params, pipeline
    cfg = tmp_path / "build.yaml"
    cfg.write_text(yaml.safe_dump({"num_images": 3, "edit_types": [CLASSICAL[pipeline]],
                                   "pipeline_params": {pipeline: params}}))
    out = tmp_path / "w"
    assert main(["build", "--out", str(out), "--refcoco", str(demo_dir), "--images", str(demo_dir / "images"), "--config", str(cfg), "--no-progress"]) == 0
    got = _candidate_params(out / "export", pipeline)
    assert got, "no candidate of this pipeline was made"
    from refcoco_edit.pipelines.fill import default_method

    # a removal fill given as "auto" is recorded as the fill that stands for it, the settings keep "auto"
    recorded = {k: default_method() if k in ("method", "fill") and v == "auto" else v for k, v in params.items()}
    for rec in got:
        for k, v in recorded.items():
            assert rec[k] == v, (k, rec[k], v)
    settings = json.loads((out / "workspace.json").read_text())["settings"]
    assert settings["pipeline_params"] == {pipeline: params}


def test_the_command_line_wins_and_underscored_names_work(demo_dir, tmp_path):
    cfg = tmp_path / "b.yaml"
    cfg.write_text("num_images: 2\nedit_types: [remove]\npipeline_params:\n  classical_remove: {radius: 9, noise: 0.5}\n")
    out = tmp_path / "w"
    assert main(["build", "--out", str(out), "--refcoco", str(demo_dir), "--images", str(demo_dir / "images"), "--config", str(cfg), "--no-progress",
                 "--pipeline-params", "classical-remove.radius=4"]) == 0
    recs = _candidate_params(out / "export", "classical-remove")
    assert recs and all(r["radius"] == 4 and r["noise"] == 0.5 for r in recs)


def test_bad_pipeline_sections_stop_before_anything_is_written(demo_dir, tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["build", "--out", str(out), "--refcoco", str(demo_dir), "--images", str(demo_dir / "images"), "--pipeline-params", "classical-remove.raduis=3"]) == 2
    assert "unknown parameter 'raduis'; did you mean 'radius'?" in capsys.readouterr().err
    assert main(["build", "--out", str(out), "--refcoco", str(demo_dir), "--images", str(demo_dir / "images"), "--pipeline-params", "clasical-remove.radius=3"]) == 2
    assert "did you mean 'classical-remove'" in capsys.readouterr().err
    assert not (out / "select").exists()


def test_selection_and_filter_settings_reach_their_rules_and_defaults_keep_the_fingerprint():
    from refcoco_edit.build import BuildConfig
    from refcoco_edit.stages.select import selection_config

    base = BuildConfig()
    assert "sizeable_relative" not in base.settings() and "pipeline_params" not in base.settings()
    cfg = BuildConfig.of(sizeable_relative=0.5, backend="diffusion", filter_crop_margin=0.3)
    assert selection_config(cfg).sizeable_relative == 0.5
    assert cfg.settings()["sizeable_relative"] == 0.5 and cfg.settings()["filter_crop_margin"] == 0.3
    assert "filter_crop_margin" not in BuildConfig.of(filter_crop_margin=0.3).settings()  # classical: not read


def test_build_settings_have_sections_and_every_flat_key_still_works(tmp_path):
    """selection / llm / filters are sections: nested YAML, dotted keys and the old flat keys give
    the same config, and the workspace fingerprint keeps the flat names."""
    from refcoco_edit.build import BuildConfig
    from refcoco_edit.config import read_file

    forms = {
        "nested": "selection: {min_area_fraction: 0.02}\nllm: {temperature: 0.3}\nfilters: {max_bg_change: 0.01}\n",
        "dotted": "selection.min_area_fraction: 0.02\nllm.temperature: 0.3\nfilters.max_bg_change: 0.01\n",
        "flat": "min_area_fraction: 0.02\nllm_temperature: 0.3\nfilter_max_bg_change: 0.01\n",
    }
    cfgs = []
    for name, text in forms.items():
        f = tmp_path / f"{name}.yaml"
        f.write_text(text + "backend: diffusion\n")
        cfgs.append(BuildConfig.of(**read_file(f, BuildConfig)))
    assert cfgs[0] == cfgs[1] == cfgs[2]
    cfg = cfgs[0]
    assert (cfg.selection.min_area_fraction, cfg.llm.temperature, cfg.filters.max_bg_change) == (0.02, 0.3, 0.01)
    s = cfg.settings()
    assert (s["min_area_fraction"], s["llm_temperature"], s["filter_max_bg_change"]) == (0.02, 0.3, 0.01)
    assert BuildConfig.of(llm_model="m").llm.model == "m"
