"""The settings of `refcoco-edit score`, declared once (see :mod:`refcoco_edit.config`).

The ``score`` flags, the keys of ``score --config FILE.yaml`` and ``ScoreConfig`` itself all come
from the fields below. Light on purpose (no numpy, no metrics): ``refcoco-edit --help`` builds the
score parser from it. ``refcoco_edit.benchmark.harness`` re-exports :class:`ScoreConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from refcoco_edit.config import setting

if TYPE_CHECKING:
    from ..metrics import MetricParams

__all__ = ["ScoreConfig", "JudgeSettings"]


@dataclass
class ScoreConfig:
    """Every setting of `refcoco-edit score` (each a YAML key of ``--config`` and a flag)."""

    model: str = setting(help="the editor (see below); --list-editors shows the known names")
    data: str = setting("refcoco-edit-work", "export folder, .parquet file or workspace (default: refcoco-edit-work)")
    out: Optional[str] = setting(None, "results folder (default: refcoco-edit-results/<model>)")
    split: Optional[str] = setting(None, "score only this split (default: all)")
    metrics: Optional[List[str]] = setting(
        None, "comma-separated metric or family names: paper, pie, magicbrush, referring, identity (default: all)")
    seed: int = setting(0, "seed of editor seeds and bootstrap (default: 0)")
    status: str = setting("all", "all samples or reviewed-accepted only", choices=("all", "accepted"))
    limit: Optional[int] = setting(None, "score only the first N samples (by sample_id)")
    subset: Optional[str] = setting(
        None, "score only the samples whose difficulty attributes match EXPR, e.g. \"n_distractors >= 2 and "
              "size_class == 'small'\" or \"'location' in expression_kinds\" (recorded in results.json)",
        metavar="EXPR")
    batch_size: Optional[int] = setting(None, "editor batch size (default: the editor's)", runtime=True)
    editor_args: Dict[str, Any] = setting(
        {}, "editor constructor option (repeatable), e.g. --editor-arg protocol=gt_mask for dir:; in YAML a "
            "mapping (editor_args: {steps: 20})", flag="editor-arg", aliases=("editor_arg",), metavar="KEY=VALUE")
    resize_outputs: bool = setting(False, "resize outputs of the wrong size to the source's (recorded); "
                                          "default: they fail")
    retry_failed: bool = setting(False, "edit samples that failed in an earlier run again (default: off)")
    overwrite: bool = setting(False, "discard cached outputs of another configuration (default: off)")
    cmd_timeout: Optional[float] = setting(None, "cmd: time limit per call in seconds (default: 600)")
    cmd_shell: bool = setting(False, "cmd: run the template through /bin/sh (values shlex-quoted); only for "
                                     "pipes/redirections (default: off)")
    clip_model: Optional[str] = setting(
        None, "CLIP model folder or hub id, e.g. openai/clip-vit-large-patch14 (AP, CLIP-Sim_fg, CLIP whole/edited, "
              "CLIP-I, CLIP-T)")
    aesthetic_weights: Optional[str] = setting(
        None, "LAION aesthetic predictor v2 MLP (sac+logos+ava1-l14-linearMSE.pth; a file or owner/repo/file in the "
              "hub cache) for AP, with --clip-model ViT-L/14")
    dino_model: Optional[str] = setting(None, "DINO ViT model folder or hub id, e.g. facebook/dino-vits16 "
                                              "(MagicBrush DINO)")
    lpips_weights: Optional[str] = setting(
        None, "LPIPS weights (PIE-Bench LPIPS_bg): one file with the whole lpips.LPIPS state dict, or a folder with "
              "the lpips package's alex.pth and torchvision's alexnet weights")
    device: str = setting("auto", "device of the metric models: auto (cuda when present), cpu, cuda, cuda:1 ... "
                                  "(default: auto)", runtime=True)
    dtype: str = setting("auto", "dtype of the CLIP/DINO models: auto = fp16 on CUDA, fp32 elsewhere (default: auto)",
                         choices=("auto", "fp32", "fp16", "bf16"))
    metric_batch_size: int = setting(32, "images per model forward pass (default: 32)", runtime=True)
    local_files_only: bool = setting(True, "metric models: hub ids only from the local cache, never downloaded "
                                           "(default: on)", runtime=True)
    bootstrap: int = setting(1000, "bootstrap resamples for the 95% CIs (default: 1000)")
    referring_eps: float = setting(0.01, "referring accuracy margin (default: 0.01)")
    preservation_tau: float = setting(0.05, "distractor preservation threshold (default: 0.05)")
    workers: int = setting(2, "threads decoding images and computing metrics; with --executor ray also the number "
                              "of Ray actors editing (default: 2)", runtime=True)
    chunk_size: int = setting(32, "samples decoded, edited and scored together; with --executor ray the unit of "
                                  "work of an actor (default: 32)", runtime=True)
    executor: str = setting("local", "where editing runs: local (this process) or ray (--workers actors, each "
                                     "loading the editor once; RESULTS must be on storage every node sees); metrics "
                                     "and reports run here (default: local)", choices=("local", "ray"), runtime=True)
    ray_address: Optional[str] = setting(
        None, "ray executor: the cluster to attach to (auto, HOST:6379, ray://HOST:10001; default: a private local "
              "Ray instance with --workers CPUs, listening on 127.0.0.1 only)", runtime=True)
    num_gpus_per_worker: float = setting(
        0.0, "ray executor: GPUs reserved by each actor (fractions share a GPU; Ray sets each actor's "
             "CUDA_VISIBLE_DEVICES, the editor picks its device as it does locally)", runtime=True)
    gallery: bool = setting(True, "write gallery.html and thumbnails (--no-gallery skips them)", runtime=True)
    plots: bool = setting(True, "write plots/*.png (--no-plots skips them)", runtime=True)
    progress: Optional[bool] = setting(None, "progress bar (default: on a terminal only)", runtime=True)
    # -- the VLM judge (off unless --judge; `refcoco-edit judge RESULTS` takes the same settings) --
    judge: Optional[str] = setting(
        None, "VLM judge model as its OpenAI-compatible server names it (e.g. gpt-4.1, Qwen/Qwen2.5-VL-7B-Instruct): "
              "adds VIEScore SC/PQ/O and the referring questions (default: no judge)", metavar="MODEL")
    judge_base_url: Optional[str] = setting(
        None, "judge server URL, e.g. http://localhost:8000/v1 for vLLM (default: the OpenAI API)", metavar="URL")
    judge_api_key_env: str = setting("OPENAI_API_KEY", "environment variable holding the judge's API key "
                                                       "(default: OPENAI_API_KEY; not needed with --judge-base-url)")
    judge_passes: int = setting(1, "judge passes per question (self-ensembling; pass i sends seed i; use "
                                   "--judge-temperature > 0 for independent passes); the spread is reported (default: 1)")
    judge_protocols: List[str] = setting(["blind", "marked"], "referring-question protocols: blind (the judge finds "
                                                              "the object itself), marked (the object outlined) "
                                                              "(default: blind,marked)")
    judge_temperature: float = setting(0.0, "judge sampling temperature (default: 0)")
    judge_max_tokens: int = setting(400, "judge answer length limit in tokens (default: 400)")
    judge_json_mode: bool = setting(True, "send response_format json_object (--no-judge-json-mode for servers "
                                          "without it; answers are validated either way) (default: on)")
    judge_concurrency: int = setting(4, "judge requests in flight (default: 4)", runtime=True)
    judge_timeout: float = setting(60.0, "seconds per judge request before the client retries (default: 60)",
                                   runtime=True)
    judge_max_retries: int = setting(4, "the openai client's retries per judge request (429, 5xx, timeouts) "
                                        "(default: 4)", runtime=True)
    judge_max_wait: float = setting(600.0, "longest total wait for a 429's Retry-After beyond the client's own "
                                           "(default: 600 s)", runtime=True)
    judge_cache: Optional[str] = setting(None, "judge answer cache (SQLite; default: RESULTS/judge/cache.sqlite); "
                                               "share one file between runs to never pay twice", runtime=True)

    def models(self) -> Dict[str, Optional[str]]:
        """The metric model settings (what the model-based metrics need)."""
        return {"clip_model": self.clip_model, "aesthetic_weights": self.aesthetic_weights,
                "dino_model": self.dino_model, "lpips_weights": self.lpips_weights}

    def params(self) -> "MetricParams":
        """The weight-free metrics' parameters."""
        from ..metrics import MetricParams

        return MetricParams(referring_eps=float(self.referring_eps), preservation_tau=float(self.preservation_tau))


def _judge_settings_class() -> type:
    """The settings of `refcoco-edit judge RESULTS`: ScoreConfig's ``judge*`` settings and
    ``progress``, declared once (above) and copied field by field."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(ScoreConfig)
    fields = []
    for f in dataclasses.fields(ScoreConfig):
        if f.name.startswith("judge") or f.name == "progress":
            kw: Dict[str, Any] = {"metadata": f.metadata}
            if f.default_factory is not dataclasses.MISSING:
                kw["default_factory"] = f.default_factory
            else:
                kw["default"] = f.default
            fields.append((f.name, hints[f.name], dataclasses.field(**kw)))
    cls = dataclasses.make_dataclass("JudgeSettings", fields)
    cls.__module__ = __name__
    cls.__doc__ = "The settings of `refcoco-edit judge RESULTS` (ScoreConfig's judge settings)."
    return cls


JudgeSettings = _judge_settings_class()
