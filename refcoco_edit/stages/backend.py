"""The backend of a build: which pipelines make candidates, the models they need (checked up
front, from their JSON configs only), and, per process, the pipelines built and loaded once.

Nothing here names a pipeline: each registered pipeline describes itself
(``refcoco_edit.pipelines.base.GTPipeline``: ``model_needs``, ``build_settings``, ``uses``,
``from_build_config``), so adding one is its file plus its lines in ``PIPELINES`` and ``BACKENDS``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

from ..errors import InputError, is_disk_error

if TYPE_CHECKING:
    from refcoco_edit.pipelines.base import ModelNeed

    from .config import BuildConfig


def active_pipelines(cfg: "BuildConfig", edit_type: str) -> List[str]:
    """The backend's pipelines for an edit type (restricted by ``--pipelines``)."""
    from refcoco_edit.pipelines.base import pipelines_for

    names = pipelines_for(cfg.backend, edit_type)
    if cfg.backend == "diffusion" and cfg.pipelines:
        names = [n for n in names if n in cfg.pipelines]
    return names


def model_needs(cfg: "BuildConfig") -> List["ModelNeed"]:
    """Every model the diffusion pipelines of this build load, each once, in the order of
    ``--edit-types`` and the backend's pipelines (the order the checks report them)."""
    from refcoco_edit.pipelines.base import PIPELINES, pipelines_for

    settings = cfg.flat()  # the build settings by name, as pipelines read them
    out: List["ModelNeed"] = []
    for t in cfg.edit_types:
        for name in pipelines_for("diffusion", t):
            if cfg.pipelines and name not in cfg.pipelines:
                continue
            for need in PIPELINES.get(name).model_needs(settings):
                if all((n.setting, n.kind) != (need.setting, need.kind) for n in out):
                    out.append(need)
    return out


def diffusion_models(cfg: "BuildConfig") -> List[Tuple[str, str, str]]:
    """(model spec, kind, option) of every model the diffusion pipelines of this build need."""
    return [(getattr(cfg, n.setting), n.kind, n.option) for n in model_needs(cfg)]


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


def _clip_off(cfg: "BuildConfig") -> bool:
    return str(cfg.clip_model).lower() in ("none", "off", "")


def check_diffusion_config(cfg: "BuildConfig") -> None:
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
    if cfg.num_inference_steps < 1 or cfg.runtime.batch_size < 1 or cfg.num_candidates < 1:
        raise InputError("--num-inference-steps, --batch-size and --num-candidates must be at least 1")
    from refcoco_edit.models import ModelError, ModelUnavailable, check_model

    for spec, kind, option in diffusion_models(cfg):
        try:
            check_model(spec, kind, option, cfg.runtime.local_files_only)
        except ModelError as e:
            raise InputError(str(e)) from None
    sam = resolve_sam_checkpoint(cfg)
    if sam is not None and "replace" in cfg.edit_types and not Path(sam).is_file():
        raise InputError(f"--sam-checkpoint {sam}: no such file")
    if not _clip_off(cfg):
        try:
            check_model(cfg.clip_model, "clip", "--clip-model", cfg.runtime.local_files_only)
        except ModelUnavailable:
            pass  # optional: the CLIP filters are skipped and every candidate says why
        except ModelError as e:
            raise InputError(str(e)) from None


def check_pipeline_params(cfg: "BuildConfig") -> None:
    """Every section of ``pipeline_params`` names a registered pipeline and only parameters it
    takes (``InputError`` before anything runs, never a quarantined shard); the sections are
    stored under the pipelines' registered names."""
    from refcoco_edit.pipelines.base import PIPELINES

    if not isinstance(cfg.pipeline_params, dict):
        raise InputError(f"pipeline_params: expected a mapping of pipeline name -> parameters, got {cfg.pipeline_params!r}")
    sections: Dict[str, Dict[str, Any]] = {}
    for name, params in sorted(cfg.pipeline_params.items()):
        canonical = PIPELINES.canonical(name) or name  # YAML keys may spell dashes as underscores
        sections.setdefault(canonical, {}).update(PIPELINES.get(canonical).check_params(params))
    cfg.pipeline_params = sections


class Backend:
    """The pipelines of one process, built from their self-description and kept; SAM and the
    candidate filters (CLIP) are loaded once, on first use."""

    def __init__(self, cfg: "BuildConfig", params: Optional[Mapping[str, Mapping[str, Any]]] = None):
        self.cfg = cfg
        self.settings = cfg.flat()
        # pipeline name -> its own settings section (default: the build's pipeline_params)
        self.params = dict(cfg.pipeline_params or {}) if params is None else dict(params)
        self._pipelines: Dict[str, Any] = {}
        self._sam: Any = False  # not resolved yet
        self._filter: Any = None

    def active(self, edit_type: str) -> List[str]:
        """The pipelines making candidates for ``edit_type`` in this build."""
        return active_pipelines(self.cfg, edit_type)

    def runtime(self) -> Any:
        """The diffusion runtime (device, dtype, hub policy, speed switches) of this build."""
        from refcoco_edit.models import Runtime

        return Runtime(**dataclasses.asdict(self.cfg.runtime))  # the section mirrors Runtime field for field

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

    def pipeline(self, name: str) -> Any:
        """The registered pipeline ``name``, built once from the build settings."""
        if name not in self._pipelines:
            from refcoco_edit.pipelines.base import PIPELINES

            cls = PIPELINES.get(name)
            resources = {"runtime": self.runtime, "sam": self.sam}
            self._pipelines[name] = cls.from_build_config(self.settings, resources, self.params.get(name))
        return self._pipelines[name]

    def candidate_filter(self) -> Any:
        """The candidate filters of the diffusion backend (CLIP loaded once per process)."""
        if self._filter is None:
            from refcoco_edit.pipelines.filters import CandidateFilter, FilterConfig

            c = self.cfg
            fc = FilterConfig(clip_model=None if _clip_off(c) else c.clip_model, **dataclasses.asdict(c.filters))
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
                for name in self.active(t):
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

    def run(self, name: str, requests: List[Any]) -> List[Any]:
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
