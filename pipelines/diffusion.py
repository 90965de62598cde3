"""The shared frame of the diffusion ground-truth pipelines (Paint-by-Example, Blended Latent
Diffusion, SD inpainting): ``DiffusionGTPipeline`` loads its model lazily through the model layer
(``refcoco_edit.models.load_diffusers``), cuts the square context window at a working resolution
(``refcoco_edit.pipelines.windows``), batches requests, and pastes back exactly through M_e.

A subclass declares its ``models`` (``ModelNeed``) and implements ``prepare`` (request -> ``Job``),
``run_model`` (jobs -> generated crops, one model call per batch) and ``finish`` (job +
full-size generated image -> ``PipelineOutput`` via ``paste``). Where models come from, their
kinds, device and dtype: ``refcoco_edit.models``.

torch and diffusers are imported inside the methods that need them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple

import numpy as np

from refcoco_edit.models import Runtime, load_diffusers
from refcoco_edit.pipelines.base import EditRequest, GTPipeline, ModelNeed, PipelineError, PipelineOutput
from refcoco_edit.pipelines.masks import check_output, mask_box, paste_back
from refcoco_edit.pipelines.windows import crop_to_window, uncrop

__all__ = ["Job", "DiffusionGTPipeline"]


@dataclass
class Job:
    """One request prepared for a model call: the crop window, the model-resolution inputs, and
    whatever the pipeline needs to finish it."""

    request: EditRequest
    window: Tuple[int, int, int, int]  # x0, y0, x1, y1 in the source image
    region: np.ndarray  # HxW bool: where the model is asked to change things (full image)
    image: Any  # PIL RGB crop at the working resolution
    mask: Any  # PIL L crop mask at the working resolution (255 = edit)
    extra: Dict[str, Any]


class DiffusionGTPipeline(GTPipeline):
    """Base of the diffusion ground-truth pipelines: lazy model loading, the crop window at a
    working resolution, batching over requests, and the exact paste-back through M_e.

    Subclasses declare their ``models`` (``ModelNeed``) and implement ``prepare`` (request -> Job),
    ``run_model`` (jobs -> generated crops, one model call per batch) and ``finish`` (job +
    full-size generated image -> PipelineOutput via ``self.paste``).
    """

    uses: ClassVar[Tuple[str, ...]] = ("runtime",)
    build_settings: ClassVar[Mapping[str, str]] = {
        "num_inference_steps": "num_inference_steps", "guidance_scale": "guidance_scale",
        "resolution": "resolution", "context": "context"}

    def __init__(
        self,
        model: str,
        runtime: Optional[Runtime] = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        resolution: int = 512,
        context: float = 1.5,
        feather_px: int = 4,
        sam: Any = None,
    ) -> None:
        if int(num_inference_steps) < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if int(resolution) < 16 or int(resolution) % 8:
            raise ValueError(f"resolution must be a multiple of 8 and >= 16, got {resolution}")
        self.model = str(model)
        self.runtime = runtime or Runtime()
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.resolution = int(resolution)
        self.context = float(context)
        self.feather_px = int(feather_px)
        self.sam = sam
        self._pipe: Any = None

    # -- model ---------------------------------------------------------------------------------
    def model_need(self) -> ModelNeed:
        """The model this instance loads: its ``models`` entry (a pipeline whose model depends on
        a setting, as Blended Latent Diffusion's backbone, picks among ``model_needs``)."""
        return self.models[0]

    @property
    def model_kind(self) -> str:
        """The kind of model ``pipe`` loads (``sd``, ``sd-inpaint``, ``pbe``)."""
        return self.model_need().kind

    @property
    def pipe(self) -> Any:
        """The loaded diffusers pipeline (loaded on first use; ``ModelError`` when it cannot be)."""
        if self._pipe is None:
            need = self.model_need()
            self._pipe = load_diffusers(self.model, need.kind, self.runtime, need.option)
        return self._pipe

    def load(self) -> "DiffusionGTPipeline":
        """Load the model now (the build does this before any shard runs)."""
        _ = self.pipe
        return self

    def base_params(self) -> Dict[str, Any]:
        """What produced a candidate (stored on it): model, steps, guidance, resolution, dtype."""
        return {
            "model": self.model, "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale, "resolution": self.resolution, "context": self.context,
            "dtype": str(self.runtime.torch_dtype()).replace("torch.", ""), "feather_px": self.feather_px,
            "sam": None if self.sam is None else getattr(self.sam, "sam_type", "sam"),
        }

    # -- geometry ------------------------------------------------------------------------------
    def crop(self, image: np.ndarray, mask: np.ndarray, region_box: Tuple[int, int, int, int]) -> Tuple[Tuple[int, int, int, int], Any, Any]:
        """The square context window around ``region_box`` and the image/mask crops resized to
        the working resolution (PIL): ``windows.crop_to_window`` with this pipeline's settings."""
        return crop_to_window(image, mask, region_box, self.context, self.resolution)

    #: the source with the window replaced by the generated crop (``windows.uncrop``)
    uncrop = staticmethod(uncrop)

    def paste(self, request: EditRequest, generated: np.ndarray, m_e: np.ndarray, params: Dict[str, Any],
              exemplar: Optional[np.ndarray] = None) -> PipelineOutput:
        """Paste back through the feathered M_e (exact outside), verify the contract, record.

        Both run on the box of M_e grown by ``feather_px + 2`` only: outside it the output is the
        source by construction, and the feathered alpha of a pixel only depends on the mask
        within ``feather_px`` of it, so the result is the full-image ``paste_back``'s, bit for
        bit, at a fraction of the cost on large photos.
        """
        src = request.image
        if not np.asarray(m_e).any():
            raise PipelineError("no_change", "the edit mask is empty")
        x0, y0, x1, y1 = mask_box(m_e)
        g = self.feather_px + 2
        x0, y0, x1, y1 = max(0, x0 - g), max(0, y0 - g), min(src.shape[1], x1 + g), min(src.shape[0], y1 + g)
        out = src.copy()
        out[y0:y1, x0:x1] = paste_back(src[y0:y1, x0:x1], generated[y0:y1, x0:x1], m_e[y0:y1, x0:x1],
                                       feather_px=self.feather_px)
        stats = check_output(src[y0:y1, x0:x1], out[y0:y1, x0:x1], m_e[y0:y1, x0:x1])
        params = {**self.base_params(), **params, "seed": int(request.seed)}
        params["stats"] = {k: round(float(v), 4) for k, v in stats.items()}
        return PipelineOutput(image=out, edit_mask=m_e, params=params, exemplar=exemplar)

    @staticmethod
    def changed_in_window(job: "Job", generated: np.ndarray, threshold: float = 12.0) -> np.ndarray:
        """``changed_region`` of the source and the generated image, computed on the window only
        (outside it the generated image is the source)."""
        from refcoco_edit.pipelines.masks import changed_region

        x0, y0, x1, y1 = job.window
        out = np.zeros(generated.shape[:2], bool)
        out[y0:y1, x0:x1] = changed_region(job.request.image[y0:y1, x0:x1], generated[y0:y1, x0:x1], threshold)
        return out

    # -- the batched entry points ----------------------------------------------------------------
    def prepare(self, request: EditRequest) -> Job:  # pragma: no cover - abstract
        raise NotImplementedError

    def run_model(self, jobs: List[Job]) -> List[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self, job: Job, generated: np.ndarray) -> PipelineOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def generate_batch(self, requests: List[EditRequest]) -> List[Any]:
        """List in, list out: a ``PipelineOutput`` or the ``PipelineError`` of each request.

        1. check and prepare every request (a bad one fails alone);
        2. run the model over the prepared jobs in batches of ``runtime.batch_size``;
        3. map each generated crop back, build M_e, paste back and check.
        """
        results: List[Any] = [None] * len(requests)
        jobs: List[Tuple[int, Job]] = []
        for i, r in enumerate(requests):  # 1
            try:
                self.check_inputs(r)
                jobs.append((i, self.prepare(r)))
            except PipelineError as e:
                results[i] = e
        bs = max(1, int(self.runtime.batch_size))
        for k in range(0, len(jobs), bs):  # 2
            chunk = jobs[k:k + bs]
            crops = self.run_model([j for _, j in chunk])
            for (i, job), crop in zip(chunk, crops):  # 3
                try:
                    generated = self.uncrop(job.request.image, job.window, crop)
                    results[i] = self.finish(job, generated)
                except PipelineError as e:
                    results[i] = e
        return results

    def generate(self, request: EditRequest) -> PipelineOutput:
        (res,) = self.generate_batch([request])
        if isinstance(res, Exception):
            raise res
        return res

    def __call__(self, requests: List[EditRequest]) -> List[PipelineOutput]:
        """The ``GTPipeline`` entry point: batched; the first failing request raises."""
        outs = self.generate_batch(list(requests))
        for o in outs:
            if isinstance(o, Exception):
                raise o
        return outs

    # -- helpers for subclasses ------------------------------------------------------------------
    def generators(self, jobs: List[Job]) -> List[Any]:
        """One CPU ``torch.Generator`` per job, seeded by its request: a sample's noise does not
        depend on the batch it runs in, nor on the device."""
        import torch

        return [torch.Generator("cpu").manual_seed(int(j.request.seed) % (2 ** 63)) for j in jobs]
