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
from .errors import InputError, SampleError
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
    workers: int = _f(1, "local executor: worker processes", runtime=True)
    overwrite: bool = _f(False, "redo every stage even if the workspace has done shards", runtime=True)
    export_status: str = _f("all", "which samples the final export holds", choices=("accepted", "all"), runtime=True)
    progress: Optional[bool] = _f(None, "progress bars (default: on a terminal only)", runtime=True)

    def settings(self) -> Dict[str, Any]:
        """What changes the outputs (the workspace fingerprint): everything but runtime knobs."""
        out = {}
        for f in dataclasses.fields(self):
            if not f.metadata.get("runtime"):
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

    @property
    def bank(self) -> ExemplarBank:
        if self._bank is None:
            self._bank = ExemplarBank(self.refer, self.cfg.exemplar_min_fraction, self.cfg.image_modes)
        return self._bank

    def pipeline(self, name: str) -> Any:
        if name not in self._pipelines:
            from pipelines.base import get_pipeline

            self._pipelines[name] = get_pipeline(name)
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
        return stage.stats(0)

    def num_shards(self) -> int:
        n = self.ws.stage("select").stats(0)["rows"]
        return (n + self.cfg.shard_size - 1) // self.cfg.shard_size

    def _plan_rows(self, i: int) -> List[Dict[str, Any]]:
        table = self.ws.stage("select").read_shard(0)
        s = self.cfg.shard_size
        return table.slice(i * s, s).to_pylist()

    # -- prompts -----------------------------------------------------------------------------
    def llm(self) -> Any:
        """The LLM rephraser of this process (its SQLite cache is never shared across a fork)."""
        import os

        if self._llm is None or self._llm_pid != os.getpid():
            from pipelines.rephrase import LLMCache, LLMRephraser, RephraseConfig

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
        from pipelines.rephrase import BatchRunner

        items: List[Dict[str, Any]] = []
        for i in shards:
            rows, prompts, _ = self._template_prompts(i)
            items.extend(self._llm_items(rows, prompts))
        runner = BatchRunner(self.llm(), self.ws.root / "llm" / "batches.json", poll_interval=self.cfg.llm_batch_poll, log=log)
        return runner.run(items)

    # -- generate ----------------------------------------------------------------------------
    def generate_shard(self, i: int) -> Dict[str, Any]:
        from pipelines.base import PipelineError

        rows, quarantine = [], []
        t0 = time.perf_counter()
        cache: Dict[int, Any] = {}
        for row in self.ws.stage("prompts").read_shard(i).to_pylist():
            try:
                rows.append(self.generate_one(row, cache))
            except (SampleError, PipelineError, rle_mod.MaskError) as e:
                quarantine.append(quarantine_record("generate", row["sample_id"], e.reason, str(e)))
            except Exception as e:  # the shard boundary: one sample's surprise never stops the run
                quarantine.append(quarantine_record("generate", row["sample_id"], "pipeline_error",
                                                    f"{type(e).__name__}: {e}"))
        self.ws.stage("generate").write_shard(i, rows_to_table(rows), {"seconds": round(time.perf_counter() - t0, 3)},
                                              quarantine)
        return self.ws.stage("generate").stats(i)

    def _image(self, image_id: int, cache: Dict[int, Any]) -> Any:
        if image_id not in cache:
            cache.clear()
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
        from pipelines.base import EditRequest, PipelineError, pipelines_for

        cfg = self.cfg
        li = self._image(int(row["image_id"]), cache)
        image = li.array
        h, w = image.shape[:2]
        mask = li.orient_mask(rle_mod.decode(row["source_mask"]))
        if not mask.any():
            raise SampleError("empty_mask", "the source mask is empty")
        dmasks = [li.orient_mask(rle_mod.decode(r)) for r in row["distractor_masks"]]
        sp = row["edit_span"]
        exemplar = None
        if row["edit_type"] == "replace":
            exemplar, _ = self.bank.cut(row["edit_target"], int(row["image_id"]),
                                        rng_for(cfg.seed, row["sample_id"], "exemplar"))
        source_rle = rle_mod.encode(mask)
        candidates = []
        exemplar_used = exemplar
        for name in pipelines_for(cfg.backend, row["edit_type"]):
            pipe = self.pipeline(name)
            for c in range(cfg.num_candidates):
                seed = derive_seed(cfg.seed, row["sample_id"], name, c)
                req = EditRequest(
                    sample_id=row["sample_id"], edit_type=row["edit_type"], image=image, mask=mask,
                    bbox=rle_mod.to_bbox(source_rle), prompt=row["prompt"], edit_phrase=row["prompt"][sp[0]:sp[1]],
                    edit_target=row["edit_target"], seed=seed, category=row["category"], exemplar=exemplar,
                    distractor_masks=dmasks,
                )
                out = pipe([req])[0]
                if out.image.shape != image.shape or not np.array_equal(out.image[~out.edit_mask], image[~out.edit_mask]):
                    raise PipelineError("pipeline_error", f"{name} changed pixels outside its edit mask")
                if out.exemplar is not None:
                    exemplar_used = out.exemplar
                candidates.append({
                    "pipeline": name,
                    "params": json.dumps(out.params, sort_keys=True, default=str),
                    "seed": int(seed),
                    "image": {"bytes": _png(out.image, cfg.png_compress_level), "path": f"{row['sample_id']}-{name}-{c}.png"},
                    "edit_mask": rle_mod.encode(out.edit_mask),
                    "filter_scores": json.dumps({}),
                })
        if not candidates:
            raise PipelineError("pipeline_error", f"backend {cfg.backend!r} has no pipeline for {row['edit_type']!r} edits")
        best = candidates[0]
        row.update(
            source_image={"bytes": li.encoded, "path": row["source_image"]["path"]},
            source_mask=source_rle,
            bbox=rle_mod.to_bbox(source_rle),
            distractor_masks=[rle_mod.encode(m) for m in dmasks],
            candidates=candidates,
            reference_image={"bytes": best["image"]["bytes"], "path": f"{row['sample_id']}.png"},
            edit_mask=best["edit_mask"],
            exemplar_image=({"bytes": _png(exemplar_used, cfg.png_compress_level), "path": f"{row['sample_id']}-exemplar.png"}
                            if exemplar_used is not None else None),
            schema_version=SCHEMA_VERSION,
        )
        return row


# ----------------------------------------------------------------------------------------------
# the whole build
# ----------------------------------------------------------------------------------------------

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
        raise InputError("--backend diffusion is not part of this version yet; use --backend classical")
    bad = [t for t in cfg.edit_types if t not in ("replace", "remove", "attribute")]
    if bad:
        raise InputError(f"unknown edit type(s) {bad}; choose from replace, remove, attribute")
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
    sel = builder.run_select()
    log(format_report(sel["report"]))
    n = builder.num_shards()
    executor = get_executor(cfg.executor, workers=cfg.workers, progress=cfg.progress)
    counts: Dict[str, int] = {}
    for stage_name, method in (("prompts", "prompts_shard"), ("generate", "generate_shard")):
        stage = ws.stage(stage_name)
        todo = [i for i in range(n) if not stage.is_done(i)]
        if todo and stage_name == "prompts" and cfg.llm_model and cfg.llm_batch:
            log(f"llm batch mode: {builder.llm_batch(todo, log)}")
        ran: List[Dict[str, Any]] = []
        if todo:
            def factory(method: str = method) -> Callable[[int], Dict[str, Any]]:
                return getattr(builder, method)

            ran = executor.run(factory, todo, desc=stage_name)
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
