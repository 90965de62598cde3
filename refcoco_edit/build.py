"""`refcoco-edit build`: RefCOCO -> select -> prompts -> generate -> export, resumable.

This module sits at the CLI layer (with ``cli.py``): it is the one place in ``refcoco_edit`` that
imports ``pipelines``. Stages:

1. ``select``   one shard: the seeded selection of objects and edits (``refcoco_edit.select``)
2. ``prompts``  shards of ``shard_size`` samples: instruction text and exact spans
3. ``generate`` the same shards: ground-truth candidates from the backend's pipelines, the
                reference image and its edit mask M_e, all in the upright image frame
4. export       Parquet + dataset card (``refcoco_edit.export``), rewritten from the shards

Each shard is written atomically with a stats file last (``refcoco_edit.workspace``); a re-run
skips done shards, so a killed build continues where it stopped and ends with the same bytes.
"""
from __future__ import annotations

import dataclasses
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from . import rle as rle_mod
from .errors import InputError, SampleError, is_disk_error
from .schema import SCHEMA_VERSION, rows_to_table
from .seeds import derive_seed, rng_for
from .workspace import Workspace, quarantine_record

STAGES = ("select", "prompts", "generate")


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


# ----------------------------------------------------------------------------------------------
# context shared by the shard functions (built once per process)
# ----------------------------------------------------------------------------------------------

@dataclass
class _Data:
    root: Path
    images: Path
    demo: bool


def resolve_data(cfg: BuildConfig) -> _Data:
    """The refer root and images folder, writing the demo data when none is given."""
    if cfg.refcoco is None:
        from .demo import ensure_demo

        root = ensure_demo(Path(cfg.out) / "demo-data")
        return _Data(Path(root), Path(root) / "images", True)
    root = Path(cfg.refcoco)
    if not root.is_dir():
        raise InputError(f"--refcoco {root}: no such folder")
    images = Path(cfg.images) if cfg.images else root.parent / "images"
    if not images.is_dir():
        raise InputError(f"images folder {images} does not exist (give --images DIR)")
    return _Data(root, images, False)


def load_refer(cfg: BuildConfig, data: _Data) -> Any:
    from .refcoco import RefCOCO

    return RefCOCO(data.root, dataset=cfg.dataset, split_by=cfg.split_by, images_dir=data.images)


def _png(array: np.ndarray, level: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=int(level))
    return buf.getvalue()


class ExemplarBank:
    """Instances of each category in the data, to cut exemplars from (``replace`` edits)."""

    def __init__(self, refer: Any, min_fraction: float, mode_policy: str = "convert"):
        self.refer = refer
        self.mode_policy = mode_policy  # --image-modes: a quarantined image gives no exemplar either
        by_cat: Dict[str, List[int]] = {}
        for ann_id, ann in refer.anns.items():
            if ann.get("iscrowd", 0):
                continue
            img = refer.images.get(ann["image_id"])
            if img is None:
                continue
            if float(ann.get("area", 0.0)) < min_fraction * img["width"] * img["height"]:
                continue
            by_cat.setdefault(refer.cats.get(ann["category_id"], ""), []).append(int(ann_id))
        self.by_cat = {k: sorted(v) for k, v in by_cat.items()}
        self._unusable: set = set()

    def categories(self) -> List[str]:
        """Categories with at least one usable instance in two different images."""
        out = []
        for cat, anns in self.by_cat.items():
            if len({self.refer.anns[a]["image_id"] for a in anns}) >= 2:
                out.append(cat)
        return sorted(out)

    def cut(self, category: str, exclude_image: int, rng: np.random.Generator) -> Tuple[np.ndarray, int]:
        """An RGBA cut-out of an instance of ``category`` from another image.

        Instances are tried in a seeded order until one loads; unusable ones (bad image or mask)
        are remembered, so a broken image costs one attempt per process, not one per sample.
        """
        pool = [a for a in self.by_cat.get(category, []) if self.refer.anns[a]["image_id"] != exclude_image]
        if not pool:
            raise SampleError("no_exemplar", f"no instance of {category!r} in another image")
        errors = []
        for k in rng.permutation(len(pool)):
            ann_id = pool[int(k)]
            if ann_id in self._unusable:
                continue
            try:
                li = self.refer.load_image(self.refer.anns[ann_id]["image_id"], mode_policy=self.mode_policy)
                mask = li.orient_mask(rle_mod.decode(self.refer.ann_rle(ann_id)))
            except (SampleError, rle_mod.MaskError) as e:
                self._unusable.add(ann_id)
                if len(errors) < 3:
                    errors.append(f"ann {ann_id}: {e}")
                continue
            ys, xs = np.nonzero(mask)
            if len(ys) == 0:
                continue
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            rgba = np.dstack([li.array[y0:y1, x0:x1], (mask[y0:y1, x0:x1] * 255).astype(np.uint8)])
            return np.ascontiguousarray(rgba), ann_id
        raise SampleError("no_exemplar", f"no usable instance of {category!r}: " + "; ".join(errors))


class Builder:
    """Holds the loaded data and pipelines of one process and runs shards of each stage."""

    def __init__(self, cfg: BuildConfig, ws: Workspace, data: _Data, refer: Any = None):
        self.cfg = cfg
        self.ws = ws
        self.data = data
        self.refer = refer if refer is not None else load_refer(cfg, data)
        self._bank: Optional[ExemplarBank] = None
        self._pipelines: Dict[str, Any] = {}
        self._llm: Any = None
        self._llm_pid = -1
        self._plan: Any = None  # the select stage's table, once it is done
        self._sam: Any = False  # not resolved yet
        self._filter: Any = None

    @property
    def bank(self) -> ExemplarBank:
        if self._bank is None:
            self._bank = ExemplarBank(self.refer, self.cfg.exemplar_min_fraction, self.cfg.image_modes)
        return self._bank

    def pipeline(self, name: str) -> Any:
        if name not in self._pipelines:
            from refcoco_edit.pipelines.base import get_pipeline

            self._pipelines[name] = get_pipeline(name, **self._pipeline_kwargs(name))
        return self._pipelines[name]

    # -- select ------------------------------------------------------------------------------
    def run_select(self) -> Dict[str, Any]:
        from .select import SelectionConfig, Selector

        stage = self.ws.stage("select")
        if stage.is_done(0):
            return stage.stats(0)
        cfg = self.cfg
        scfg = SelectionConfig(
            num_images=cfg.num_images or None,
            samples_per_image=cfg.samples_per_image,
            splits=cfg.splits,
            edit_types=tuple(cfg.edit_types),
            min_area_fraction=cfg.min_area_fraction,
            max_area_fraction=cfg.max_area_fraction,
            sizeable_fraction=cfg.sizeable_fraction,
            similarity_threshold=cfg.similarity_threshold,
            imaginative_targets=cfg.backend != "classical",
        )
        available = self.bank.categories() if cfg.backend == "classical" else None
        result = Selector(self.refer, scfg, seed=cfg.seed, available_categories=available).run()
        stage.write_shard(0, rows_to_table(result.rows), {"report": result.report}, result.quarantine)
        self._plan = None
        return stage.stats(0)

    def num_shards(self) -> int:
        n = self.ws.stage("select").stats(0)["rows"]
        return (n + self.cfg.shard_size - 1) // self.cfg.shard_size

    def _plan_rows(self, i: int) -> List[Dict[str, Any]]:
        if self._plan is None:  # read the selection once per process, not once per shard
            self._plan = self.ws.stage("select").read_shard(0)
        s = self.cfg.shard_size
        return self._plan.slice(i * s, s).to_pylist()

    # -- prompts -----------------------------------------------------------------------------
    def llm(self) -> Any:
        """The LLM rephraser of this process (its SQLite cache is never shared across a fork)."""
        import os

        if self._llm is None or self._llm_pid != os.getpid():
            from refcoco_edit.pipelines.rephrase import LLMCache, LLMRephraser, RephraseConfig

            cfg = self.cfg
            rc = RephraseConfig(model=cfg.llm_model, base_url=cfg.llm_base_url, mode=cfg.llm_mode,
                                temperature=cfg.llm_temperature, attempts=cfg.llm_attempts, json_mode=cfg.llm_json_mode,
                                timeout=cfg.llm_timeout, max_retries=cfg.llm_max_retries,
                                concurrency=cfg.llm_concurrency, seed=cfg.seed)
            self._llm = LLMRephraser(rc, LLMCache(self.ws.root / "llm" / "cache.sqlite"))
            self._llm_pid = os.getpid()
        return self._llm

    def _template_prompts(self, i: int) -> Tuple[List[Dict[str, Any]], List[Any], List[Dict[str, Any]]]:
        """The rows of shard i with their template prompts, and the template failures."""
        from .prompts import TemplateParaphraser, make_prompt

        para = TemplateParaphraser() if self.cfg.paraphrase else None
        rows, prompts, quarantine = [], [], []
        for row in self._plan_rows(i):
            try:
                p = make_prompt(row["edit_type"], row["referring_expression"], row["edit_target"],
                                rng_for(self.cfg.seed, row["sample_id"], "prompt"), paraphraser=para)
                p.validate()
            except (SampleError, ValueError) as e:
                quarantine.append(quarantine_record("prompts", row["sample_id"], getattr(e, "reason", "prompt_error"), str(e)))
                continue
            rows.append(row)
            prompts.append(p)
        return rows, prompts, quarantine

    def _llm_items(self, rows: List[Dict[str, Any]], prompts: List[Any]) -> List[Dict[str, Any]]:
        allowed_replace = self.bank.categories() if self.cfg.backend == "classical" else None
        items = []
        for row, p in zip(rows, prompts):
            item = {"sample_id": row["sample_id"], "edit_type": row["edit_type"], "edit_target": row["edit_target"],
                    "referring_expression": row["referring_expression"], "category": row["category"], "prompt": p,
                    "seed": derive_seed(self.cfg.seed, row["sample_id"], "llm")}
            if self.cfg.llm_mode == "propose":
                if row["edit_type"] == "replace" and allowed_replace is not None:
                    item["allowed_targets"] = [c for c in allowed_replace if c != row["category"]]
                elif row["edit_type"] == "attribute":
                    from .vocab import COLOURS, MATERIALS

                    item["allowed_targets"] = list(COLOURS) + list(MATERIALS)
            items.append(item)
        return items

    def prompts_shard(self, i: int) -> Dict[str, Any]:
        rows, prompts, quarantine = self._template_prompts(i)
        out = []
        if self.cfg.llm_model:
            llm = self.llm()
            calls0, hits0 = llm.calls, llm.cache_hits
            results = llm.write(self._llm_items(rows, prompts))  # service failures raise: shard not written
            for row, res in zip(rows, results):
                if isinstance(res, Exception):
                    quarantine.append(quarantine_record("prompts", row["sample_id"], getattr(res, "reason", "llm_error"), str(res)))
                    continue
                if self.cfg.llm_mode == "propose" and row["sample_id"] in llm.targets:
                    from .schema import sample_id

                    row["edit_target"] = llm.targets[row["sample_id"]] if row["edit_type"] != "remove" else ""
                    row["sample_id"] = sample_id(row["dataset"], row["ref_id"], row["sent_id"], row["edit_type"], row["edit_target"])
                row.update(prompt=res.text, referring_span=list(res.referring_span), edit_span=list(res.edit_span),
                           prompt_source=res.source)
                out.append(row)
            stats = {"llm_calls": llm.calls - calls0, "llm_cache_hits": llm.cache_hits - hits0}
        else:
            for row, p in zip(rows, prompts):
                row.update(prompt=p.text, referring_span=list(p.referring_span), edit_span=list(p.edit_span),
                           prompt_source=p.source)
                out.append(row)
            stats = {}
        self.ws.stage("prompts").write_shard(i, rows_to_table(out), stats, quarantine)
        return self.ws.stage("prompts").stats(i)

    def llm_batch(self, shards: List[int], log: Callable[[str], None]) -> Dict[str, int]:
        """Bulk mode: answer every LLM request of these shards through the Batch API first."""
        from refcoco_edit.pipelines.rephrase import BatchRunner

        items: List[Dict[str, Any]] = []
        for i in shards:
            rows, prompts, _ = self._template_prompts(i)
            items.extend(self._llm_items(rows, prompts))
        runner = BatchRunner(self.llm(), self.ws.root / "llm" / "batches.json", poll_interval=self.cfg.llm_batch_poll, log=log)
        return runner.run(items)

    # -- generate ----------------------------------------------------------------------------
    def active_pipelines(self, edit_type: str) -> List[str]:
        """The backend's pipelines for an edit type (restricted by ``--pipelines``)."""
        from refcoco_edit.pipelines.base import pipelines_for

        names = pipelines_for(self.cfg.backend, edit_type)
        if self.cfg.backend == "diffusion" and self.cfg.pipelines:
            names = [n for n in names if n in self.cfg.pipelines]
        return names

    def runtime(self) -> Any:
        """The diffusion runtime (device, dtype, hub policy, speed switches) of this build."""
        from refcoco_edit.models import Runtime

        c = self.cfg
        return Runtime(device=c.device, dtype=c.dtype, local_files_only=c.local_files_only,
                       channels_last=c.channels_last, compile=c.compile, batch_size=c.batch_size)

    def sam(self) -> Any:
        """The SAM box segmenter of replacements, or None (``--sam-checkpoint none`` / auto and absent)."""
        if self._sam is False:
            path = resolve_sam_checkpoint(self.cfg)
            if path is None:
                self._sam = None
            else:
                from refcoco_edit.pipelines.masks import SamBoxSegmenter

                self._sam = SamBoxSegmenter.from_checkpoint(path, self.cfg.sam_type, self.runtime().torch_device())
        return self._sam

    def _pipeline_kwargs(self, name: str) -> Dict[str, Any]:
        """Constructor arguments of a registered pipeline from the build config."""
        c = self.cfg
        if not name.startswith(("pbe-", "bld-", "sd-")):
            return {}
        kw: Dict[str, Any] = dict(runtime=self.runtime(), num_inference_steps=c.num_inference_steps,
                                  resolution=c.resolution, context=c.context)
        if c.guidance_scale is not None:
            kw["guidance_scale"] = c.guidance_scale
        if name == "pbe-replace":
            kw.update(model=c.pbe_model, region_growth=c.region_growth, sam=self.sam())
        elif name.startswith("bld-"):
            kw.update(model=c.inpaint_model if c.bld_backbone == "inpaint" else c.sd_model, backbone=c.bld_backbone,
                      region_growth=c.region_growth, refine_steps=c.bld_refine_steps,
                      sam=self.sam() if name == "bld-replace" else None)
        elif name == "sd-inpaint-remove":
            kw.update(model=c.inpaint_model)
        return kw

    def candidate_filter(self) -> Any:
        """The candidate filters of the diffusion backend (CLIP loaded once per process)."""
        if self._filter is None:
            from refcoco_edit.pipelines.filters import CandidateFilter, FilterConfig

            c = self.cfg
            fc = FilterConfig(clip_model=None if str(c.clip_model).lower() in ("none", "off", "") else c.clip_model,
                              min_clip_target=c.filter_min_clip_target,
                              min_clip_directional=c.filter_min_clip_directional,
                              max_removed_prob=c.filter_max_removed_prob, max_bg_change=c.filter_max_bg_change)
            self._filter = CandidateFilter.from_config(fc, self.runtime())
        return self._filter

    def load_models(self) -> List[str]:
        """Build and load every pipeline (and SAM, CLIP) this build will use, before any shard
        runs: a model that cannot be loaded stops the run with ``InputError`` (exit 2) instead
        of quarantining every sample. Returns notes for the log."""
        from refcoco_edit.pipelines.masks import SamCheckpointError
        from refcoco_edit.models import ModelError

        notes = []
        try:
            for t in self.cfg.edit_types:
                for name in self.active_pipelines(t):
                    p = self.pipeline(name)
                    if hasattr(p, "load"):
                        p.load()
            if self.cfg.backend == "diffusion":
                f = self.candidate_filter()
                if f.skip_reason:
                    notes.append(f"candidate filters: CLIP checks skipped: {f.skip_reason}")
                if self.sam() is None and "replace" in self.cfg.edit_types:
                    notes.append("SAM: off (no checkpoint); new objects are found by pixel difference")
        except (ModelError, SamCheckpointError) as e:
            raise InputError(str(e)) from None
        return notes

    def _user_exemplar(self, target: str, rng: np.random.Generator) -> Optional[np.ndarray]:
        """An exemplar of ``target`` from ``--exemplar-dir`` (RGBA; an RGB file is all object)."""
        if not self.cfg.exemplar_dir:
            return None
        from PIL import Image, UnidentifiedImageError

        root = Path(self.cfg.exemplar_dir)
        name = target.strip().lower()
        for art in ("a ", "an ", "the "):
            if name.startswith(art):
                name = name[len(art):]
        if not name or name.startswith(".") or any(c in name for c in "/\\\0:"):
            return None  # a target is a folder/file name under --exemplar-dir, never a path out of it
        exts = (".png", ".jpg", ".jpeg", ".webp")
        files = sorted(p for p in (root / name).glob("*") if p.suffix.lower() in exts) if (root / name).is_dir() else []
        files += [root / f"{name}{e}" for e in exts if (root / f"{name}{e}").is_file()]
        for k in rng.permutation(len(files)) if files else []:
            try:
                with Image.open(files[int(k)]) as im:
                    im = im.convert("RGBA")
                    arr = np.asarray(im).copy()
            except (OSError, UnidentifiedImageError, ValueError):
                continue
            if (arr[..., 3] > 0).any():
                return arr
        return None

    def _prepare_sample(self, row: Dict[str, Any], cache: Dict[int, Any]) -> Dict[str, Any]:
        """Load a sample's image and masks, cut its exemplar and make its edit requests."""
        from refcoco_edit.pipelines.base import EditRequest, PipelineError

        cfg = self.cfg
        li = self._image(int(row["image_id"]), cache)
        image = li.array
        mask = li.orient_mask(rle_mod.decode(row["source_mask"]))
        if not mask.any():
            raise SampleError("empty_mask", "the source mask is empty")
        dmasks = [li.orient_mask(rle_mod.decode(r)) for r in row["distractor_masks"]]
        sp = row["edit_span"]
        exemplar = None
        if row["edit_type"] == "replace":
            rng = rng_for(cfg.seed, row["sample_id"], "exemplar")
            if cfg.backend == "classical":
                exemplar, _ = self.bank.cut(row["edit_target"], int(row["image_id"]), rng)
            else:  # optional: text-driven pipelines need none, Paint-by-Example says no_exemplar
                exemplar = self._user_exemplar(row["edit_target"], rng)
                if exemplar is None:
                    try:
                        exemplar, _ = self.bank.cut(row["edit_target"], int(row["image_id"]), rng)
                    except SampleError:
                        exemplar = None
        source_rle = rle_mod.encode(mask)
        names = self.active_pipelines(row["edit_type"])
        if not names:
            raise PipelineError("pipeline_error", f"backend {cfg.backend!r} has no pipeline for {row['edit_type']!r} edits")
        requests = []
        for name in names:
            for c in range(cfg.num_candidates):
                seed = derive_seed(cfg.seed, row["sample_id"], name, c)
                requests.append((name, c, EditRequest(
                    sample_id=row["sample_id"], edit_type=row["edit_type"], image=image, mask=mask,
                    bbox=rle_mod.to_bbox(source_rle), prompt=row["prompt"], edit_phrase=row["prompt"][sp[0]:sp[1]],
                    edit_target=row["edit_target"], seed=seed, category=row["category"], exemplar=exemplar,
                    distractor_masks=dmasks,
                )))
        return {"row": row, "li": li, "mask": mask, "dmasks": dmasks, "exemplar": exemplar,
                "source_rle": source_rle, "requests": requests}

    def _run_pipeline(self, name: str, requests: List[Any]) -> List[Any]:
        """Run one pipeline over requests: an output or a ``PipelineError`` per request."""
        from refcoco_edit.pipelines.base import PipelineError

        pipe = self.pipeline(name)
        if hasattr(pipe, "generate_batch"):
            try:
                return list(pipe.generate_batch(requests))
            except Exception as e:  # the batch's model call failed: each of its samples records it
                if is_disk_error(e):  # a full disk is not the samples' fault: stop, resume later
                    raise
                err = PipelineError("pipeline_error", f"{name}: {type(e).__name__}: {e}")
                return [err] * len(requests)
        outs: List[Any] = []
        for r in requests:
            try:
                outs.append(pipe([r])[0])
            except PipelineError as e:
                outs.append(e)
            except Exception as e:  # one sample's surprise never stops the run
                if is_disk_error(e):
                    raise
                outs.append(PipelineError("pipeline_error", f"{type(e).__name__}: {e}"))
        return outs

    def generate_shard(self, i: int) -> Dict[str, Any]:
        """Generate a shard: 1. prepare every sample (image, masks, exemplar, requests);
        2. run each pipeline once over all its requests of the shard (batched model calls);
        3. assemble each sample: candidates, filter scores, the best as reference."""
        from refcoco_edit.pipelines.base import PipelineError

        t0 = time.perf_counter()
        cache: Dict[int, Any] = {}
        rows_in = self.ws.stage("prompts").read_shard(i).to_pylist()
        prepared: Dict[int, Dict[str, Any]] = {}
        failed: Dict[int, Dict[str, Any]] = {}

        def fail(k: int, row: Dict[str, Any], e: BaseException) -> None:
            if is_disk_error(e):  # not the sample's fault: quarantined, it would never be redone
                raise e
            if isinstance(e, (SampleError, PipelineError, rle_mod.MaskError)):
                failed[k] = quarantine_record("generate", row["sample_id"], e.reason, str(e))
            else:  # the shard boundary: one sample's surprise never stops the run
                failed[k] = quarantine_record("generate", row["sample_id"], "pipeline_error", f"{type(e).__name__}: {e}")

        for k, row in enumerate(rows_in):  # 1
            try:
                prepared[k] = self._prepare_sample(row, cache)
            except Exception as e:  # noqa: BLE001 - recorded per sample by fail()
                fail(k, row, e)
        jobs: Dict[str, List[Tuple[int, int, Any]]] = {}
        for k, prep in prepared.items():
            for name, c, req in prep["requests"]:
                jobs.setdefault(name, []).append((k, c, req))
        results: Dict[Tuple[int, str, int], Any] = {}
        for name, items in jobs.items():  # 2
            for (k, c, _), out in zip(items, self._run_pipeline(name, [r for _, _, r in items])):
                results[(k, name, c)] = out
        rows = []
        cand_failures: Dict[str, int] = {}
        for k, row in enumerate(rows_in):  # 3
            if k not in prepared:
                continue
            try:
                rows.append(self._assemble(prepared[k], results, k, cand_failures))
            except Exception as e:  # noqa: BLE001 - recorded per sample by fail()
                fail(k, row, e)
        quarantine = [failed[k] for k in sorted(failed)]
        stats: Dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 3)}
        if cand_failures:
            stats["candidate_failures"] = dict(sorted(cand_failures.items()))
        self.ws.stage("generate").write_shard(i, rows_to_table(rows), stats, quarantine)
        return self.ws.stage("generate").stats(i)

    def _assemble(self, prep: Dict[str, Any], results: Dict[Tuple[int, str, int], Any], k: int,
                  cand_failures: Dict[str, int]) -> Dict[str, Any]:
        """The sample row: its candidates (failed ones left out), their filter scores, and the
        best candidate as ``reference_image`` (the first one with the classical backend)."""
        from refcoco_edit.pipelines.base import PipelineError

        cfg = self.cfg
        row, li, image = prep["row"], prep["li"], prep["li"].array
        candidates, outputs, errors = [], [], []
        exemplar_used = prep["exemplar"]
        for name, c, req in prep["requests"]:
            out = results[(k, name, c)]
            if isinstance(out, Exception):
                errors.append(out)
                key = f"{name}/{getattr(out, 'reason', 'pipeline_error')}"
                cand_failures[key] = cand_failures.get(key, 0) + 1
                continue
            if out.image.shape != image.shape or not np.array_equal(out.image[~out.edit_mask], image[~out.edit_mask]):
                errors.append(PipelineError("pipeline_error", f"{name} changed pixels outside its edit mask"))
                continue
            if out.exemplar is not None:
                exemplar_used = out.exemplar
            outputs.append(out)
            candidates.append({
                "pipeline": name,
                "params": json.dumps(out.params, sort_keys=True, default=str),
                "seed": int(req.seed),
                "image": {"bytes": _png(out.image, cfg.png_compress_level), "path": f"{row['sample_id']}-{name}-{c}.png"},
                "edit_mask": rle_mod.encode(out.edit_mask),
                "filter_scores": json.dumps({}),
            })
        if not candidates:
            raise errors[0]
        best = 0
        if cfg.backend == "diffusion":
            from refcoco_edit.pipelines.blended_latent import edit_text
            from refcoco_edit.pipelines.filters import FilterItem, rank_candidates

            req0 = prep["requests"][0][2]
            items = [FilterItem(image, o.image, prep["mask"], o.edit_mask, row["edit_type"],
                                edit_text(req0) if row["edit_type"] != "remove" else "", row["category"])
                     for o in outputs]
            scores = self.candidate_filter().score_many(items)
            for cand, s in zip(candidates, scores):
                cand["filter_scores"] = json.dumps(s, sort_keys=True)
            best = rank_candidates(scores)
        chosen = candidates[best]
        source_rle = prep["source_rle"]
        row.update(
            source_image={"bytes": li.encoded, "path": row["source_image"]["path"]},
            source_mask=source_rle,
            bbox=rle_mod.to_bbox(source_rle),
            distractor_masks=[rle_mod.encode(m) for m in prep["dmasks"]],
            candidates=candidates,
            reference_image={"bytes": chosen["image"]["bytes"], "path": f"{row['sample_id']}.png"},
            edit_mask=chosen["edit_mask"],
            exemplar_image=({"bytes": _png(exemplar_used, cfg.png_compress_level), "path": f"{row['sample_id']}-exemplar.png"}
                            if exemplar_used is not None else None),
            schema_version=SCHEMA_VERSION,
        )
        return row

    def _image(self, image_id: int, cache: Dict[int, Any]) -> Any:
        if image_id not in cache:
            try:
                cache[image_id] = self.refer.load_image(image_id, mode_policy=self.cfg.image_modes)
            except SampleError as e:
                cache[image_id] = e
        got = cache[image_id]
        if isinstance(got, Exception):
            raise got
        return got

    def generate_one(self, row: Dict[str, Any], cache: Dict[int, Any]) -> Dict[str, Any]:
        """Make the candidates, reference and masks of one sample (upright frame)."""
        prep = self._prepare_sample(row, cache)
        results = {}
        for name, c, req in prep["requests"]:
            results[(0, name, c)] = self._run_pipeline(name, [req])[0]
        return self._assemble(prep, results, 0, {})


def resolve_sam_checkpoint(cfg: "BuildConfig") -> Optional[str]:
    """The SAM checkpoint to load, or None: ``none`` is off; ``auto`` is the official file of
    ``--sam-type`` in the working folder when it is there (else off); anything else must exist
    (checked up front: a missing explicit checkpoint stops the run)."""
    from refcoco_edit.pipelines.masks import SAM_DEFAULT_CHECKPOINTS

    spec = str(cfg.sam_checkpoint or "none").strip()
    if spec.lower() in ("none", "off", ""):
        return None
    if spec.lower() == "auto":
        p = Path(SAM_DEFAULT_CHECKPOINTS[cfg.sam_type])
        return str(p) if p.is_file() else None
    return spec



# ----------------------------------------------------------------------------------------------
# shard functions for executors that run in other processes or machines (Ray)
# ----------------------------------------------------------------------------------------------

_PATH_FIELDS = ("out", "refcoco", "images", "exemplar_dir", "pbe_model", "sd_model", "inpaint_model", "clip_model")
_WORKER_BUILDERS: Dict[str, "Builder"] = {}


def _absolute_paths(cfg: BuildConfig) -> BuildConfig:
    """The config with local paths made absolute (a worker's working folder may differ); a model
    given as a hub id stays as it is. On a cluster these paths must mean the same on every node."""
    changes: Dict[str, Any] = {}
    for name in _PATH_FIELDS:
        value = getattr(cfg, name)
        if value and (name in ("out", "refcoco", "images", "exemplar_dir") or Path(value).exists()):
            changes[name] = str(Path(value).expanduser().resolve())
    if cfg.backend == "diffusion":
        sam = resolve_sam_checkpoint(cfg)  # "auto" looks in the driver's working folder
        changes["sam_checkpoint"] = str(Path(sam).resolve()) if sam else "none"
    return dataclasses.replace(cfg, **changes)


class ShardTask:
    """A picklable shard-function factory: (build config, Builder method name).

    Called inside a worker process (a Ray actor), it builds that process's ``Builder`` once (the
    RefCOCO index, and with ``--backend diffusion`` every model, loaded up front so that a model
    that cannot be loaded is an ``InputError``) and returns the bound stage method. Builders are
    cached per config, so the stages of a build share them within a process."""

    def __init__(self, cfg: BuildConfig, method: str):
        if method not in ("prompts_shard", "generate_shard"):
            raise ValueError(f"not a shard method: {method!r}")
        self.cfg = _absolute_paths(cfg)
        self.method = method

    def __call__(self) -> Callable[[int], Dict[str, Any]]:
        key = json.dumps(dataclasses.asdict(self.cfg), sort_keys=True, default=str)
        builder = _WORKER_BUILDERS.get(key)
        if builder is None:
            builder = Builder(self.cfg, Workspace(self.cfg.out), resolve_data(self.cfg))
            _WORKER_BUILDERS.clear()  # one build per worker process at a time
            _WORKER_BUILDERS[key] = builder
        if self.method == "generate_shard" and self.cfg.backend == "diffusion":
            builder.load_models()  # idempotent: pipelines are cached in the Builder
        return getattr(builder, self.method)


# ----------------------------------------------------------------------------------------------
# the whole build
# ----------------------------------------------------------------------------------------------

def diffusion_models(cfg: BuildConfig) -> List[Tuple[str, str, str]]:
    """(model spec, kind, option) of every model the diffusion pipelines of this build need."""
    from refcoco_edit.pipelines.base import pipelines_for

    out: List[Tuple[str, str, str]] = []
    for t in cfg.edit_types:
        for name in pipelines_for("diffusion", t):
            if cfg.pipelines and name not in cfg.pipelines:
                continue
            if name == "pbe-replace":
                need = (cfg.pbe_model, "pbe", "--pbe-model")
            elif name.startswith("bld-"):
                need = ((cfg.inpaint_model, "sd-inpaint", "--inpaint-model") if cfg.bld_backbone == "inpaint"
                        else (cfg.sd_model, "sd", "--sd-model"))
            else:
                need = (cfg.inpaint_model, "sd-inpaint", "--inpaint-model")
            if need not in out:
                out.append(need)
    return out


def check_diffusion_config(cfg: BuildConfig) -> None:
    """The up-front checks of ``--backend diffusion`` (JSON configs only, no torch): the extra is
    installed, the settings make sense, every model exists and is of the right kind, an explicit
    SAM checkpoint exists, an explicit CLIP path is a CLIP model. Raises ``InputError``."""
    import importlib.util

    missing = [m for m in ("torch", "diffusers", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"--backend diffusion needs {', '.join(missing)}: pip install 'refcoco-edit[diffusion]'")
    from refcoco_edit.pipelines.base import BACKENDS

    known = sorted({n for names in BACKENDS["diffusion"].values() for n in names})
    bad = [n for n in (cfg.pipelines or []) if n not in known]
    if bad:
        raise InputError(f"--pipelines: unknown {', '.join(bad)}; the diffusion backend has {', '.join(known)}")
    if cfg.resolution < 16 or cfg.resolution % 8:
        raise InputError(f"--resolution must be a multiple of 8 and at least 16, got {cfg.resolution}")
    if cfg.num_inference_steps < 1 or cfg.batch_size < 1 or cfg.num_candidates < 1:
        raise InputError("--num-inference-steps, --batch-size and --num-candidates must be at least 1")
    from refcoco_edit.models import ModelError, ModelUnavailable, check_model

    for spec, kind, option in diffusion_models(cfg):
        try:
            check_model(spec, kind, option, cfg.local_files_only)
        except ModelError as e:
            raise InputError(str(e)) from None
    sam = resolve_sam_checkpoint(cfg)
    if sam is not None and "replace" in cfg.edit_types and not Path(sam).is_file():
        raise InputError(f"--sam-checkpoint {sam}: no such file")
    if str(cfg.clip_model).lower() not in ("none", "off", ""):
        try:
            check_model(cfg.clip_model, "clip", "--clip-model", cfg.local_files_only)
        except ModelUnavailable:
            pass  # optional: the CLIP filters are skipped and every candidate says why
        except ModelError as e:
            raise InputError(str(e)) from None


@dataclass
class BuildResult:
    workdir: Path
    export_dir: Path
    selection: Dict[str, Any]
    counts: Dict[str, int]
    quarantine: Dict[str, Dict[str, int]]
    seconds: float
    export: Dict[str, Any] = field(default_factory=dict)


def build(cfg: BuildConfig, log: Callable[[str], None] = print) -> BuildResult:
    """Run (or resume) every stage, then export. Raises InputError on unusable input."""
    from .executors import get_executor
    from .export import export_workspace
    from .select import format_report

    t0 = time.perf_counter()
    if cfg.backend == "diffusion":
        check_diffusion_config(cfg)  # before anything is written: models, SAM, CLIP (no torch yet)
    from .vocab import BUILD_EDIT_TYPES

    bad = [t for t in cfg.edit_types if t not in BUILD_EDIT_TYPES]
    if bad:
        raise InputError(f"unknown edit type(s) {bad}; choose from {', '.join(BUILD_EDIT_TYPES)}")
    if cfg.shard_size < 1:
        raise InputError("--shard-size must be at least 1")
    ws = Workspace(cfg.out)
    data = resolve_data(cfg)
    refer = load_refer(cfg, data)  # InputError on unsafe pickles / escaping paths: before any write
    settings = cfg.settings()
    if data.demo:  # a newer demo generator makes other data: never mix it with old shards
        from .demo import DEMO_VERSION

        settings["demo_version"] = DEMO_VERSION
    ws.prepare(settings, STAGES, overwrite=cfg.overwrite)
    builder = Builder(cfg, ws, data, refer)
    workers = cfg.workers
    if cfg.backend == "diffusion" and cfg.executor == "ray":
        log("diffusion backend on Ray: each actor loads the models (on its GPU with --num-gpus-per-worker)")
    elif cfg.backend == "diffusion":
        for note in builder.load_models():  # before any shard runs: a bad model is exit 2
            log(note)
        if workers > 1:
            log("diffusion backend: --workers ignored (one process holds the models and batches their calls)")
            workers = 1
    sel = builder.run_select()
    log(format_report(sel["report"]))
    n = builder.num_shards()
    executor = get_executor(cfg.executor, workers=workers, progress=cfg.progress, ray_address=cfg.ray_address,
                            num_gpus_per_worker=cfg.num_gpus_per_worker)
    counts: Dict[str, int] = {}
    with executor:  # Ray: the actors (and the pipelines they loaded) serve both stages, then go
        for stage_name, method in (("prompts", "prompts_shard"), ("generate", "generate_shard")):
            stage = ws.stage(stage_name)
            todo = [i for i in range(n) if not stage.is_done(i)]
            if todo and stage_name == "prompts" and cfg.llm_model and cfg.llm_batch:
                log(f"llm batch mode: {builder.llm_batch(todo, log)}")
            ran: List[Dict[str, Any]] = []
            if todo:
                def factory(method: str = method) -> Callable[[int], Dict[str, Any]]:
                    return getattr(builder, method)

                # Ray runs shards in other processes (other machines): a picklable factory that
                # rebuilds the Builder there; the local executor reuses this process's (forked) one
                ran = executor.run(ShardTask(cfg, method) if cfg.executor == "ray" else factory, todo, desc=stage_name)
            counts[stage_name] = sum(stage.stats(i)["rows"] for i in range(n))
            if stage_name == "prompts" and cfg.llm_model:  # requests made by this run
                counts["llm_calls"] = sum(r.get("llm_calls", 0) for r in ran)
                counts["llm_cache_hits"] = sum(r.get("llm_cache_hits", 0) for r in ran)
    quarantine = ws.quarantine().to_pylist()
    by_reason: Dict[str, Dict[str, int]] = {}
    for q in quarantine:
        by_reason.setdefault(q["stage"], {}).setdefault(q["reason"], 0)
        by_reason[q["stage"]][q["reason"]] += 1
    exp = export_workspace(ws, status=cfg.export_status, build_info={
        "settings": cfg.settings(), "demo_data": data.demo, "selection": sel["report"]})
    res = BuildResult(ws.root, Path(exp["out"]), sel["report"], counts, by_reason, time.perf_counter() - t0, exp)
    return res
