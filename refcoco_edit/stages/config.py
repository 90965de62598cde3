"""The settings of `refcoco-edit build` (``BuildConfig``): each one a YAML key and a flag.

Declared once with ``refcoco_edit.config``'s field metadata (help, choices, ``runtime`` for
knobs that do not change outputs, ``diffusion`` for settings only the diffusion backend reads,
``new`` for settings added after the first release: at their defaults they stay out of the
workspace fingerprint, so older workspaces resume). Pipeline parameters live in one mapping,
``pipeline_params`` (``{pipeline name: {parameter: value}}``), checked against each pipeline's
own ``parameters()`` before anything runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ..config import section, setting, settings_of

__all__ = ["BuildConfig", "SelectionSettings", "LLMSettings", "FilterSettings", "RunSettings", "DiffusionRuntime"]


def _flat_name(s: Any) -> str:
    """A setting's flat name: its own for top-level fields, the prefixed alias inside a section."""
    return s.names[-1] if len(s.path) > 1 else s.path[0]


@dataclass
class SelectionSettings:
    """The selection rules (``refcoco_edit.select.SelectionConfig``); flat keys as before."""

    min_area_fraction: float = setting(0.005, "rule: drop objects smaller than this fraction of the image")
    max_area_fraction: float = setting(0.6, "rule 1: drop objects larger than this fraction of the image")
    sizeable_fraction: float = setting(0.01, "rule 1: another object is sizeable from this fraction of the image")
    similarity_threshold: float = setting(0.7, "rule 2: visual similarity needed when no same-category object exists")
    sizeable_relative: float = setting(0.2, "rule 1: another object is also sizeable from this fraction of the object's own area", new=True)
    target_aspect_tolerance: float = setting(2.0, "replace targets: a target's typical box aspect (w/h) must be within this factor of the source box's, and exemplars are cut from instances within it where there are some (0: off)", new=True)
    target_size_ratio: float = setting(3.0, "replace targets: a target's typical physical size must be within this factor of the source category's (a bus or a tie for a person is implausible; 0: off)", new=True)


@dataclass
class LLMSettings:
    """LLM rephrasing (``--llm-*``; YAML ``llm: {model: ...}`` or ``llm_model``)."""

    model: Optional[str] = setting(None, "rephrase prompts with this LLM (OpenAI-compatible; key from $OPENAI_API_KEY); default: the offline paraphraser")
    base_url: Optional[str] = setting(None, "OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (vLLM, Ollama, llama.cpp)", runtime=True)
    mode: str = setting("rephrase", "rephrase: rewrite the template prompt; propose: let the LLM choose the edit target and instruction", choices=("rephrase", "propose"))
    temperature: float = setting(0.7, "LLM sampling temperature")
    attempts: int = setting(3, "answers asked for per sample before it is quarantined")
    json_mode: bool = setting(True, "ask for response_format=json_object (turn off for servers without it)")
    concurrency: int = setting(4, "LLM requests in flight at once", runtime=True)
    timeout: float = setting(60.0, "seconds per LLM request", runtime=True)
    max_retries: int = setting(4, "the openai client's retries of 429/5xx/connection errors (Retry-After honoured)", runtime=True)
    batch: bool = setting(False, "send LLM requests through the Batch API (large runs; resumable)", runtime=True)
    batch_poll: float = setting(10.0, "seconds between Batch API polls", runtime=True)


@dataclass
class FilterSettings:
    """The diffusion backend's candidate filters (``--filter-*``; YAML ``filters: {...}``)."""

    min_clip_target: float = setting(20.0, "diffusion filters: least 100*cos(CLIP(edited crop), CLIP(target text))", diffusion=True)
    min_clip_directional: float = setting(0.0, "diffusion filters: least directional CLIP similarity", diffusion=True)
    max_removed_prob: float = setting(0.5, "diffusion filters: removals: most CLIP probability that the region still shows the removed category", diffusion=True)
    max_bg_change: float = setting(0.002, "diffusion filters: most mean squared change ([0,1]) outside the source box grown by 0.35 of its size on each side", diffusion=True)
    crop_margin: float = setting(0.1, "diffusion filters: the CLIP crop is the box of M_e grown by this fraction of its size", diffusion=True, new=True)


@dataclass
class RunSettings:
    """Executors, workers, resume and progress: knobs that never change the outputs."""

    executor: str = setting("local", "where shards run", choices=("local", "ray"), runtime=True)
    workers: int = setting(1, "worker processes (local executor) or Ray actors (ray executor)", runtime=True)
    ray_address: Optional[str] = setting(None, "ray executor: the cluster to attach to (auto, HOST:6379, ray://HOST:10001; default: a local Ray instance with --workers CPUs)", runtime=True)
    num_gpus_per_worker: float = setting(0.0, "ray executor: GPUs reserved by each actor (fractions share a GPU)", runtime=True)
    overwrite: bool = setting(False, "redo every stage even if the workspace has done shards", runtime=True)
    export_status: str = setting("all", "which samples the final export holds", choices=("accepted", "all"), runtime=True)
    progress: Optional[bool] = setting(None, "progress bars (default: on a terminal only)", runtime=True)


@dataclass
class DiffusionRuntime:
    """The diffusion backend's runtime; its fields are ``refcoco_edit.models.Runtime``'s."""

    device: str = setting("auto", "diffusion: torch device (auto: cuda when available, else cpu)", runtime=True, diffusion=True)
    dtype: str = setting("auto", "diffusion: model precision (auto: fp16 on CUDA, fp32 on CPU)", choices=("auto", "fp32", "fp16", "bf16"), diffusion=True)
    local_files_only: bool = setting(True, "diffusion: never download models; hub ids must be in the local Hugging Face cache (--no-local-files-only to download)", runtime=True, diffusion=True)
    channels_last: bool = setting(True, "diffusion: channels-last memory format for UNet and VAE", runtime=True, diffusion=True)
    compile: bool = setting(False, "diffusion: torch.compile the UNets (slow first batch, faster after)", runtime=True, diffusion=True)
    batch_size: int = setting(4, "diffusion: requests per model call", runtime=True, diffusion=True)


@dataclass
class BuildConfig:
    """Every setting of `refcoco-edit build`. Each is a YAML key and a command-line flag."""

    out: str = setting("refcoco-edit-work", "workspace folder (WORKDIR)", runtime=True)
    refcoco: Optional[str] = setting(None, "refer data root holding refcoco/, refcoco+/, refcocog/ (default: the bundled demo data)")
    images: Optional[str] = setting(None, "folder holding the COCO train2014 images (default: <refcoco>/../images or the demo's)")
    dataset: str = setting("refcoco", "which dataset", choices=("refcoco", "refcoco+", "refcocog"))
    split_by: Optional[str] = setting(None, "refs file: unc | google | umd (default: unc, umd for refcocog)", choices=("unc", "google", "umd"))
    splits: Optional[List[str]] = setting(None, "only refs of these splits, comma separated (default: all)")
    num_images: Optional[int] = setting(400, "target number of images (0 or none: all)")
    samples_per_image: int = setting(2, "samples per image where possible")
    edit_types: List[str] = setting(["replace", "remove", "attribute"], "edit types to generate, comma separated")
    seed: int = setting(0, "global seed: every random choice derives from (seed, sample_id)")
    backend: str = setting("classical", "ground-truth backend", choices=("classical", "diffusion"))
    num_candidates: int = setting(1, "candidates per pipeline and sample (different seeds)")
    paraphrase: bool = setting(True, "vary template wording with the offline paraphraser")
    image_modes: str = setting("convert", "non-RGB images (CMYK, grayscale, palette): convert them or quarantine them", choices=("convert", "quarantine"))
    exemplar_min_fraction: float = setting(0.01, "exemplars: smallest instance, as a fraction of its image")
    png_compress_level: int = setting(1, "PNG compression of generated images (0-9; bytes differ, pixels do not)")
    selection: SelectionSettings = section(SelectionSettings, "selection rules (the paper's two rules)", flat_prefix="")
    llm: LLMSettings = section(LLMSettings, "LLM rephrasing of the prompts", flat_prefix="llm_")
    shard_size: int = setting(16, "samples per shard (the unit of work and of resume)")
    run: RunSettings = section(RunSettings, "where and how shards run (outputs do not depend on it)", flat_prefix="")
    # -- the diffusion backend (--backend diffusion); see README "Diffusion backend" -------------
    pipelines: Optional[List[str]] = setting(None, "diffusion: only these pipelines of the backend, comma separated (pbe-replace, bld-replace, bld-attribute, sd-inpaint-remove; default: all)", diffusion=True)
    pbe_model: str = setting("Fantasy-Studio/Paint-by-Example", "diffusion: Paint-by-Example model (local folder or hub id)", diffusion=True)
    sd_model: str = setting("stable-diffusion-v1-5/stable-diffusion-v1-5", "diffusion: Stable Diffusion text-to-image model for Blended Latent Diffusion (local folder or hub id)", diffusion=True)
    inpaint_model: str = setting("stable-diffusion-v1-5/stable-diffusion-inpainting", "diffusion: Stable Diffusion inpainting model for removals (local folder or hub id)", diffusion=True)
    sam_checkpoint: str = setting("auto", "diffusion: segment-anything checkpoint (.pth) that segments new objects; auto: the official file of --sam-type in the working folder if there, else off; none: off", diffusion=True)
    sam_type: str = setting("vit_h", "diffusion: SAM architecture of --sam-checkpoint", choices=("vit_b", "vit_l", "vit_h"), diffusion=True)
    clip_model: str = setting("openai/clip-vit-large-patch14", "diffusion: CLIP model of the candidate filters (local folder or hub id); not available locally: the CLIP filters are skipped and say why; none: off", diffusion=True)
    exemplar_dir: Optional[str] = setting(None, "diffusion: folder of exemplar images (DIR/<target>/*.png or DIR/<target>.png; RGBA alpha = object), tried before instances cut from the data", diffusion=True)
    runtime: DiffusionRuntime = section(DiffusionRuntime, "diffusion: device, precision, batching "
                                        "(refcoco_edit.models.Runtime)", flat_prefix="")
    num_inference_steps: int = setting(50, "diffusion: denoising steps", diffusion=True)
    guidance_scale: Optional[float] = setting(None, "diffusion: classifier-free guidance scale (default: 5 for Paint-by-Example, 7.5 for SD)", diffusion=True)
    resolution: int = setting(512, "diffusion: working resolution of the square context window (a multiple of 8)", diffusion=True)
    context: float = setting(1.5, "diffusion: context window side, as a multiple of the edit region's longer side", diffusion=True)
    region_growth: float = setting(0.15, "diffusion: replace edits change a region = the source box grown by this fraction on each side (the new object may have another shape)", diffusion=True)
    bld_backbone: str = setting("sd", "diffusion: Blended Latent Diffusion backbone: sd (--sd-model) or inpaint (--inpaint-model)", choices=("sd", "inpaint"), diffusion=True)
    bld_refine_steps: int = setting(0, "diffusion: Blended Latent Diffusion background-preservation refinement steps (decoder fine-tuning per image; 0: off)", diffusion=True)
    filters: FilterSettings = section(FilterSettings, "diffusion: automatic candidate filters", flat_prefix="filter_")
    # -- settings added after 0.1: at their defaults they stay out of the workspace fingerprint,
    # so a workspace built before they existed resumes as it is ------------------------------
    pipeline_params: Dict[str, Any] = setting({}, "parameters of individual pipelines: NAME: {PARAM: VALUE} in YAML, "
                                             "--pipeline-params NAME.PARAM=VALUE on the command line (a pipeline's parameters are its constructor's)",
                                         metavar="NAME.PARAM=VALUE", flag="pipeline-params", new=True)
    audit_pixel_threshold: int = setting(8, "ground-truth audit: a pixel of another annotated object changed when a channel moved by more than this (0-255)", new=True)
    audit_max_changed: float = setting(0.01, "ground-truth audit: a candidate that changed more than this share of another annotated object's pixels is marked and is not the reference while a clean candidate exists", new=True)

    def settings(self) -> Dict[str, Any]:
        """What changes the outputs (the workspace fingerprint): everything but runtime knobs, and
        the diffusion settings only for the diffusion backend (a classical build's fingerprint
        does not depend on them)."""
        out = {}
        for s in settings_of(type(self)):
            meta = s.field.metadata
            if meta.get("runtime") or (meta.get("diffusion") and self.backend != "diffusion"):
                continue
            value = self.get(s.path)
            if meta.get("new") and value == s.default():
                continue
            out[_flat_name(s)] = value
        return out

    def get(self, path: Tuple[str, ...]) -> Any:
        """The value at a setting's path (``("llm", "model")``)."""
        value: Any = self
        for part in path:
            value = getattr(value, part)
        return value

    def flat(self) -> Dict[str, Any]:
        """Every setting under its flat name (``llm_model``, ``filter_max_bg_change``, ``seed``)."""
        return {_flat_name(s): self.get(s.path) for s in settings_of(type(self))}

    @classmethod
    def of(cls, **settings: Any) -> "BuildConfig":
        """A config from settings by any of their names (flat ``llm_model=``, nested ``llm={...}``),
        checked as a YAML file's are: the Python twin of ``--config``."""
        from ..config import build, read_mapping

        return build(cls, read_mapping(cls, settings, where="BuildConfig.of"))

    def pipeline_section(self, name: str) -> Dict[str, Any]:
        """The parameters given for pipeline ``name`` (its own settings section; may be empty)."""
        return dict((self.pipeline_params or {}).get(name) or {})
