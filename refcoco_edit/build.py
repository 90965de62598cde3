"""`refcoco-edit build`: RefCOCO -> select -> prompts -> generate -> export, resumable.

This module holds the build's settings (``BuildConfig``) and ``build``, the thin function that
wires the stage modules of ``refcoco_edit.stages`` together (as img2dataset's ``download``). With
``cli.py`` and ``refcoco_edit.stages`` it sits at the CLI layer: the one place in ``refcoco_edit``
that imports ``refcoco_edit.pipelines``. Stages:

1. ``select``   one shard: the seeded selection of objects and edits (``stages.select``)
2. ``prompts``  shards of ``shard_size`` samples: instruction text and exact spans (``stages.prompts``)
3. ``generate`` the same shards: ground-truth candidates from the backend's pipelines, the
                reference image and its edit mask M_e, all in the upright image frame
                (``stages.generate``)
4. export       Parquet + dataset card (``stages.export``), rewritten from the shards

Each shard is written atomically with a stats file last (``refcoco_edit.workspace``); a re-run
skips done shards, so a killed build continues where it stopped and ends with the same bytes.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .errors import InputError
from .stages.context import STAGES
from .stages.workers import ShardTask
from .workspace import Workspace

__all__ = ["BuildConfig", "BuildResult", "build", "ShardTask", "STAGES"]


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A config field with its command-line help (the CLI builds its flags from these)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=dict(help=help, **meta))
    return field(default=default, metadata=dict(help=help, **meta))


@dataclass
class BuildConfig:
    """Every setting of `refcoco-edit build`. Each is a YAML key and a command-line flag."""

    out: str = _f("refcoco-edit-work", "workspace folder (WORKDIR)", runtime=True)
    refcoco: Optional[str] = _f(None, "refer data root holding refcoco/, refcoco+/, refcocog/ (default: the bundled demo data)")
    images: Optional[str] = _f(None, "folder holding the COCO train2014 images (default: <refcoco>/../images or the demo's)")
    dataset: str = _f("refcoco", "which dataset", choices=("refcoco", "refcoco+", "refcocog"))
    split_by: Optional[str] = _f(None, "refs file: unc | google | umd (default: unc, umd for refcocog)", choices=("unc", "google", "umd"))
    splits: Optional[List[str]] = _f(None, "only refs of these splits, comma separated (default: all)")
    num_images: Optional[int] = _f(400, "target number of images (0 or none: all)")
    samples_per_image: int = _f(2, "samples per image where possible")
    edit_types: List[str] = _f(["replace", "remove", "attribute"], "edit types to generate, comma separated")
    seed: int = _f(0, "global seed: every random choice derives from (seed, sample_id)")
    backend: str = _f("classical", "ground-truth backend", choices=("classical", "diffusion"))
    num_candidates: int = _f(1, "candidates per pipeline and sample (different seeds)")
    paraphrase: bool = _f(True, "vary template wording with the offline paraphraser")
    image_modes: str = _f("convert", "non-RGB images (CMYK, grayscale, palette): convert them or quarantine them", choices=("convert", "quarantine"))
    min_area_fraction: float = _f(0.005, "rule: drop objects smaller than this fraction of the image")
    max_area_fraction: float = _f(0.6, "rule 1: drop objects larger than this fraction of the image")
    sizeable_fraction: float = _f(0.01, "rule 1: another object is sizeable from this fraction of the image")
    similarity_threshold: float = _f(0.7, "rule 2: visual similarity needed when no same-category object exists")
    exemplar_min_fraction: float = _f(0.01, "exemplars: smallest instance, as a fraction of its image")
    png_compress_level: int = _f(1, "PNG compression of generated images (0-9; bytes differ, pixels do not)")
    llm_model: Optional[str] = _f(None, "rephrase prompts with this LLM (OpenAI-compatible; key from $OPENAI_API_KEY); default: the offline paraphraser")
    llm_base_url: Optional[str] = _f(None, "OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (vLLM, Ollama, llama.cpp)", runtime=True)
    llm_mode: str = _f("rephrase", "rephrase: rewrite the template prompt; propose: let the LLM choose the edit target and instruction", choices=("rephrase", "propose"))
    llm_temperature: float = _f(0.7, "LLM sampling temperature")
    llm_attempts: int = _f(3, "answers asked for per sample before it is quarantined")
    llm_json_mode: bool = _f(True, "ask for response_format=json_object (turn off for servers without it)")
    llm_concurrency: int = _f(4, "LLM requests in flight at once", runtime=True)
    llm_timeout: float = _f(60.0, "seconds per LLM request", runtime=True)
    llm_max_retries: int = _f(4, "the openai client's retries of 429/5xx/connection errors (Retry-After honoured)", runtime=True)
    llm_batch: bool = _f(False, "send LLM requests through the Batch API (large runs; resumable)", runtime=True)
    llm_batch_poll: float = _f(10.0, "seconds between Batch API polls", runtime=True)
    shard_size: int = _f(16, "samples per shard (the unit of work and of resume)")
    executor: str = _f("local", "where shards run", choices=("local", "ray"), runtime=True)
    workers: int = _f(1, "worker processes (local executor) or Ray actors (ray executor)", runtime=True)
    ray_address: Optional[str] = _f(None, "ray executor: the cluster to attach to (auto, HOST:6379, ray://HOST:10001; default: a local Ray instance with --workers CPUs)", runtime=True)
    num_gpus_per_worker: float = _f(0.0, "ray executor: GPUs reserved by each actor (fractions share a GPU)", runtime=True)
    overwrite: bool = _f(False, "redo every stage even if the workspace has done shards", runtime=True)
    export_status: str = _f("all", "which samples the final export holds", choices=("accepted", "all"), runtime=True)
    progress: Optional[bool] = _f(None, "progress bars (default: on a terminal only)", runtime=True)
    # -- the diffusion backend (--backend diffusion); see README "Diffusion backend" -------------
    pipelines: Optional[List[str]] = _f(None, "diffusion: only these pipelines of the backend, comma separated (pbe-replace, bld-replace, bld-attribute, sd-inpaint-remove; default: all)", diffusion=True)
    pbe_model: str = _f("Fantasy-Studio/Paint-by-Example", "diffusion: Paint-by-Example model (local folder or hub id)", diffusion=True)
    sd_model: str = _f("stable-diffusion-v1-5/stable-diffusion-v1-5", "diffusion: Stable Diffusion text-to-image model for Blended Latent Diffusion (local folder or hub id)", diffusion=True)
    inpaint_model: str = _f("stable-diffusion-v1-5/stable-diffusion-inpainting", "diffusion: Stable Diffusion inpainting model for removals (local folder or hub id)", diffusion=True)
    sam_checkpoint: str = _f("auto", "diffusion: segment-anything checkpoint (.pth) that segments new objects; auto: the official file of --sam-type in the working folder if there, else off; none: off", diffusion=True)
    sam_type: str = _f("vit_h", "diffusion: SAM architecture of --sam-checkpoint", choices=("vit_b", "vit_l", "vit_h"), diffusion=True)
    clip_model: str = _f("openai/clip-vit-large-patch14", "diffusion: CLIP model of the candidate filters (local folder or hub id); not available locally: the CLIP filters are skipped and say why; none: off", diffusion=True)
    exemplar_dir: Optional[str] = _f(None, "diffusion: folder of exemplar images (DIR/<target>/*.png or DIR/<target>.png; RGBA alpha = object), tried before instances cut from the data", diffusion=True)
    local_files_only: bool = _f(True, "diffusion: never download models; hub ids must be in the local Hugging Face cache (--no-local-files-only to download)", runtime=True, diffusion=True)
    device: str = _f("auto", "diffusion: torch device (auto: cuda when available, else cpu)", runtime=True, diffusion=True)
    dtype: str = _f("auto", "diffusion: model precision (auto: fp16 on CUDA, fp32 on CPU)", choices=("auto", "fp32", "fp16", "bf16"), diffusion=True)
    batch_size: int = _f(4, "diffusion: requests per model call", runtime=True, diffusion=True)
    compile: bool = _f(False, "diffusion: torch.compile the UNets (slow first batch, faster after)", runtime=True, diffusion=True)
    channels_last: bool = _f(True, "diffusion: channels-last memory format for UNet and VAE", runtime=True, diffusion=True)
    num_inference_steps: int = _f(50, "diffusion: denoising steps", diffusion=True)
    guidance_scale: Optional[float] = _f(None, "diffusion: classifier-free guidance scale (default: 5 for Paint-by-Example, 7.5 for SD)", diffusion=True)
    resolution: int = _f(512, "diffusion: working resolution of the square context window (a multiple of 8)", diffusion=True)
    context: float = _f(1.5, "diffusion: context window side, as a multiple of the edit region's longer side", diffusion=True)
    region_growth: float = _f(0.15, "diffusion: replace edits change a region = the source box grown by this fraction on each side (the new object may have another shape)", diffusion=True)
    bld_backbone: str = _f("sd", "diffusion: Blended Latent Diffusion backbone: sd (--sd-model) or inpaint (--inpaint-model)", choices=("sd", "inpaint"), diffusion=True)
    bld_refine_steps: int = _f(0, "diffusion: Blended Latent Diffusion background-preservation refinement steps (decoder fine-tuning per image; 0: off)", diffusion=True)
    filter_min_clip_target: float = _f(20.0, "diffusion filters: least 100*cos(CLIP(edited crop), CLIP(target text))", diffusion=True)
    filter_min_clip_directional: float = _f(0.0, "diffusion filters: least directional CLIP similarity", diffusion=True)
    filter_max_removed_prob: float = _f(0.5, "diffusion filters: removals: most CLIP probability that the region still shows the removed category", diffusion=True)
    filter_max_bg_change: float = _f(0.002, "diffusion filters: most mean squared change ([0,1]) outside the source box grown by 0.35 of its size on each side", diffusion=True)

    def settings(self) -> Dict[str, Any]:
        """What changes the outputs (the workspace fingerprint): everything but runtime knobs, and
        the diffusion settings only for the diffusion backend (a classical build's fingerprint
        does not depend on them)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("runtime"):
                continue
            if f.metadata.get("diffusion") and self.backend != "diffusion":
                continue
            out[f.name] = getattr(self, f.name)
        return out



@dataclass
class BuildResult:
    """What a build did: where its workspace and export are, the selection report, row counts
    per stage (and LLM counts), quarantined samples per stage and reason, and its duration."""

    workdir: Path
    export_dir: Path
    selection: Dict[str, Any]
    counts: Dict[str, int]
    quarantine: Dict[str, Dict[str, int]]
    seconds: float
    export: Dict[str, Any] = field(default_factory=dict)


def _check(cfg: BuildConfig) -> None:
    """Settings that make no build (``InputError``), before anything is written."""
    from .vocab import BUILD_EDIT_TYPES

    if cfg.backend == "diffusion":
        from .stages.backend import check_diffusion_config

        check_diffusion_config(cfg)  # models, SAM, CLIP from their JSON configs (no torch yet)
    bad = [t for t in cfg.edit_types if t not in BUILD_EDIT_TYPES]
    if bad:
        raise InputError(f"unknown edit type(s) {bad}; choose from {', '.join(BUILD_EDIT_TYPES)}")
    if cfg.shard_size < 1:
        raise InputError("--shard-size must be at least 1")


def _quarantine_counts(ws: Workspace) -> Dict[str, Dict[str, int]]:
    """Quarantined samples per stage and reason."""
    by_reason: Dict[str, Dict[str, int]] = {}
    for q in ws.quarantine().to_pylist():
        by_reason.setdefault(q["stage"], {}).setdefault(q["reason"], 0)
        by_reason[q["stage"]][q["reason"]] += 1
    return by_reason


def build(cfg: BuildConfig, log: Callable[[str], None] = print) -> BuildResult:
    """Run (or resume) every stage, then export. Raises InputError on unusable input."""
    from .executors import get_executor
    from .select import format_report
    from .stages import export, prompts, select
    from .stages.context import BuildContext, load_refer, resolve_data
    from .stages.workers import stage_fn

    t0 = time.perf_counter()
    _check(cfg)
    ws = Workspace(cfg.out)
    data = resolve_data(cfg)
    refer = load_refer(cfg, data)  # InputError on unsafe pickles / escaping paths: before any write
    settings = cfg.settings()
    if data.demo:  # a newer demo generator makes other data: never mix it with old shards
        from .demo import DEMO_VERSION

        settings["demo_version"] = DEMO_VERSION
    ws.prepare(settings, STAGES, overwrite=cfg.overwrite)
    ctx = BuildContext(cfg, ws, data, refer)
    workers = cfg.workers
    if cfg.backend == "diffusion" and cfg.executor == "ray":
        log("diffusion backend on Ray: each actor loads the models (on its GPU with --num-gpus-per-worker)")
    elif cfg.backend == "diffusion":
        for note in ctx.backend.load_models():  # before any shard runs: a bad model is exit 2
            log(note)
        if workers > 1:
            log("diffusion backend: --workers ignored (one process holds the models and batches their calls)")
            workers = 1
    sel = select.run(ctx)
    log(format_report(sel["report"]))
    n = ctx.num_shards()
    executor = get_executor(cfg.executor, workers=workers, progress=cfg.progress, ray_address=cfg.ray_address,
                            num_gpus_per_worker=cfg.num_gpus_per_worker)
    counts: Dict[str, int] = {}
    with executor:  # Ray: the actors (and the pipelines they loaded) serve both stages, then go
        for stage_name in ("prompts", "generate"):
            stage = ws.stage(stage_name)
            todo = [i for i in range(n) if not stage.is_done(i)]
            if todo and stage_name == "prompts" and cfg.llm_model and cfg.llm_batch:
                log(f"llm batch mode: {prompts.llm_batch(ctx, todo, log)}")
            ran: List[Dict[str, Any]] = []
            if todo:
                # Ray runs shards in other processes (other machines): a picklable factory that
                # rebuilds the context there; the local executor reuses this process's (forked) one
                factory: Callable[[], Any] = (ShardTask(cfg, stage_name) if cfg.executor == "ray"
                                              else lambda s=stage_name: stage_fn(ctx, s))
                ran = executor.run(factory, todo, desc=stage_name)
            counts[stage_name] = sum(stage.stats(i)["rows"] for i in range(n))
            if stage_name == "prompts" and cfg.llm_model:  # requests made by this run
                counts["llm_calls"] = sum(r.get("llm_calls", 0) for r in ran)
                counts["llm_cache_hits"] = sum(r.get("llm_cache_hits", 0) for r in ran)
    by_reason = _quarantine_counts(ws)
    exp = export.run(ctx, sel["report"])
    return BuildResult(ws.root, Path(exp["out"]), sel["report"], counts, by_reason, time.perf_counter() - t0, exp)
