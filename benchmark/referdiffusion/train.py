"""ReferDiffusion trainer on accelerate: ``python -m refcoco_edit.benchmark.referdiffusion.train --config FILE.yaml``.

* Stage 1 (``stage: stage1``): self-supervised samples made on the fly by :mod:`.synth` from any
  RefCOCO-Edit export / workspace (the referring phrase of each prompt is the expression).
  Stage 2 (``stage: stage2``): the dataset's own (source, prompt, reference, M, M_e), by default
  reviewed-accepted samples only (``status: accepted``).
* The loop is the shared training core's (:mod:`refcoco_edit.benchmark.training`; FreeEdit uses
  the same): this module gives it a :class:`ReferDiffusionPlugin` - the sample source, the model,
  its module groups (``unet``, ``rem``, ``text_encoder``), one phase ``train`` of ``max_steps``
  steps, the collate and the loss terms.
* Mixed precision, gradient accumulation and multi-GPU come from accelerate (``accelerate launch
  --multi_gpu --num_processes N``). On CPU, ``ACCELERATE_USE_CPU=true torchrun --nproc_per_node N -m
  refcoco_edit.benchmark.referdiffusion.train ...`` runs N gloo processes (``accelerate launch --cpu`` starts
  one); tests/test_referdiffusion_ddp.py uses that to test the multi-process path.
* Exact resume (the core's): ``accelerator.save_state`` (model, optimizer, LR scheduler, RNG)
  every ``checkpoint_every`` optimizer steps into ``output_dir/checkpoints/step-XXXXXXX`` +
  ``trainer_state.json``, written to a temp folder and renamed when complete. The data position
  needs no state: micro-batch ``k`` of the run is a pure function of (seed, k, process index) -
  epoch ``e`` visits ``randperm(n, seed + e)``, each stage-1 sample is synthesised with seed
  (seed, e, index) - and so are the noise, timesteps and condition dropout of every micro-batch
  (a ``torch.Generator`` seeded from (seed, k, process)). ``resume: latest`` (or a checkpoint
  folder) continues bit-for-bit where the run stopped.
* Every loss term (the mean over the processes) goes to ``output_dir/log.jsonl`` (main process)
  and the progress bar; a resumed run first drops the records past its checkpoint. The final
  model (``ReferDiffusion.save_pretrained``) is published atomically as ``output_dir/final``.

Every option of the YAML config can be overridden on the command line: ``--lr 1e-4``,
``--model.num_heads 4``, ``--loss.rcl 0`` (values parsed as YAML).
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from refcoco_edit import config
from refcoco_edit.benchmark.training import Phase, RunSettings, TrainingPlugin, micro_batch_indices, run
from refcoco_edit.benchmark.training.stream import resize, to_tensor
from refcoco_edit.config import setting


_MODEL = "refcoco_edit.benchmark.referdiffusion.model:ReferDiffusionConfig"
_LOSS = "refcoco_edit.benchmark.referdiffusion.losses:LossWeights"


@dataclass
class TrainConfig:
    """Every setting of the trainer: a YAML key of ``--config`` and a ``--key value`` override."""

    pretrained: str = setting("timbrooks/instruct-pix2pix", "InstructPix2Pix (or ReferDiffusion) folder or hub id")
    local_files_only: bool = setting(True, "hub ids only from the local cache, never downloaded")
    data: str = setting("", "a RefCOCO-Edit export folder or workspace")
    output_dir: str = setting("runs/referdiffusion", "checkpoints/, final/, log.jsonl, config.json")
    stage: str = setting("stage2", "stage1: self-supervised samples synthesised from the data; stage2: the "
                                   "dataset's own samples", choices=("stage1", "stage2"))
    split: Optional[str] = setting(None, "train on this split only (default: all)")
    status: str = setting("accepted", "stage 2: reviewed-accepted samples only, or all", choices=("accepted", "all"))
    limit: Optional[int] = setting(None, "the first N samples only (default: all)")
    resolution: int = setting(480, "training resolution (a multiple of 8)")
    batch_size: int = setting(4, "micro-batch size per process")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step")
    lr: float = setting(5e-5, "learning rate")
    lr_scheduler: str = setting("constant", "diffusers LR scheduler name (constant, cosine, linear, ...)")
    lr_warmup_steps: int = setting(0, "LR warm-up steps")
    adam_weight_decay: float = setting(1e-2, "AdamW weight decay")
    max_grad_norm: float = setting(1.0, "gradient clipping norm")
    max_steps: int = setting(10000, "optimizer steps")
    mixed_precision: str = setting("no", "accelerate mixed precision", choices=("no", "fp16", "bf16", "fp8"))
    checkpoint_every: int = setting(500, "optimizer steps between checkpoints (0: none)")
    checkpoints_total_limit: Optional[int] = setting(None, "keep at most this many checkpoints (default: all)")
    resume: Optional[str] = setting(None, "latest, or a checkpoint folder (default: start afresh)")
    seed: int = setting(0, "seed of the data order, noise and REM initialisation")
    num_workers: int = setting(0, "data-loading threads")
    synth: Dict[str, Any] = setting({}, "stage-1 synthesis options (expand_ratio, min_expand_px, crop_scale, "
                                        "flip_prob, colours, llm_rephrase: {model, base_url, cache, variants, ...})")
    model: Dict[str, Any] = setting({}, "ReferDiffusionConfig options (use_rem, num_heads, image_features, "
                                        "image_feature_dim, conditioning_dropout_prob, ...)", schema=_MODEL)
    loss: Dict[str, Any] = setting({}, "LossWeights (eps, mask, mask_bce, mask_dice, edit, rcl, edit_loss, "
                                       "rcl_mask_downsample, rcl_weighting)", schema=_LOSS)

    def __post_init__(self) -> None:
        if self.mixed_precision is False:  # YAML 1.1 reads `mixed_precision: no` (and `--mixed_precision no`) as false
            self.mixed_precision = "no"
        if self.stage not in ("stage1", "stage2"):
            raise ValueError(f"stage must be stage1 or stage2, got {self.stage!r}")
        if self.resolution % 8:
            raise ValueError(f"resolution {self.resolution} is not a multiple of 8")


def load_config(path: Optional[str], overrides: Sequence[str] = ()) -> TrainConfig:
    """The YAML file (a path, or a shipped config's name: ``3_rem_rcl``, ``builtin:3_rem_rcl``) then
    ``--key value`` / ``--a.b value`` / ``--a.b=value`` overrides (values read as YAML; the command
    line wins), through :mod:`refcoco_edit.config`. Unknown keys and bad values raise
    ``refcoco_edit.config.UsageError`` (a ValueError) with a did-you-mean."""
    values: Dict[str, Any] = {}
    if path:
        from .configs import resolve as resolve_config

        values = config.read_file(resolve_config(path), TrainConfig)
    return config.build(TrainConfig, values, config.read_overrides(TrainConfig, overrides))


# ----------------------------------------------------------------------------------------------
# Data: a deterministic micro-batch stream (the shared core's: refcoco_edit.benchmark.training.stream)
# ----------------------------------------------------------------------------------------------

_to_tensor = to_tensor
_resize = resize


class SampleSource:
    """Index -> training example (dict of arrays + prompt) for stage 1 or 2."""

    def __init__(self, samples: List[Any], cfg: TrainConfig):
        if not samples:
            raise ValueError("no training samples")
        self.samples, self.cfg = samples, cfg
        self.synth = dict(cfg.synth)
        if cfg.stage == "stage1" and self.synth.get("llm_rephrase"):
            from .synth import prepare_llm_rephrase  # every (subject, colour) is asked before training starts

            self.synth["llm_rephrase"] = prepare_llm_rephrase(self.synth["llm_rephrase"], samples, cfg.output_dir,
                                                              self.synth.get("colours"))

    def __len__(self) -> int:
        return len(self.samples)

    def get(self, i: int, epoch: int) -> Dict[str, Any]:
        from refcoco_edit.benchmark.data import decode_sample

        from .synth import synthesize

        s = self.samples[i]
        R = self.cfg.resolution
        if self.cfg.stage == "stage1":
            d = decode_sample(s, reference=False)
            if d.target_mask is None:
                raise ValueError(f"{s.sample_id}: stage 1 needs the source mask")
            a, b = s.referring_span
            seed = int(np.random.SeedSequence([self.cfg.seed, epoch, i]).generate_state(1)[0])
            x = synthesize(d.source, d.target_mask, s.prompt[a:b], s.category, seed=seed, size=(R, R),
                           **self.synth)
            return {"source": x.source, "target": x.target, "source_mask": x.source_mask, "edit_mask": x.edit_mask,
                    "prompt": x.prompt.text, "edit_span": x.prompt.edit_span}
        d = decode_sample(s, reference=True)
        sm = d.target_mask if d.target_mask is not None else d.edit_mask
        return {"source": resize(d.source, R, False), "target": resize(d.reference, R, False),
                "source_mask": resize(sm.astype(np.uint8), R, True).astype(bool),
                "edit_mask": resize(d.edit_mask.astype(np.uint8), R, True).astype(bool),
                "prompt": s.prompt, "edit_span": tuple(s.edit_span)}


def collate(examples: List[Dict[str, Any]], model) -> Dict[str, Any]:
    """A micro-batch of tensors: pixels in [-1, 1], tokens with the edit span's token mask, masks."""
    import torch

    tok = model.tokenize([e["prompt"] for e in examples], [e["edit_span"] for e in examples])
    return {
        "source_pixels": torch.stack([to_tensor(e["source"]) for e in examples]),
        "target_pixels": torch.stack([to_tensor(e["target"]) for e in examples]),
        "input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"], "edit_token_mask": tok["span_mask"],
        "source_mask": torch.stack([torch.from_numpy(e["source_mask"].astype(np.float32))[None] for e in examples]),
        "edit_mask": torch.stack([torch.from_numpy(e["edit_mask"].astype(np.float32))[None] for e in examples]),
    }


# ----------------------------------------------------------------------------------------------
# The model plugged into the shared training core
# ----------------------------------------------------------------------------------------------

class ReferDiffusionPlugin(TrainingPlugin):
    """ReferDiffusion for :func:`refcoco_edit.benchmark.training.run`: one phase (``train``,
    ``max_steps`` steps) training the U-Net and the REM (and the text encoder when
    ``model.train_text_encoder``); the VAE never trains."""

    progress_terms = ("loss", "eps", "mask", "rcl")

    def __init__(self, cfg: TrainConfig, samples: Optional[List[Any]] = None):
        from .losses import LossWeights
        from .model import ReferDiffusionConfig

        self.cfg, self.samples = cfg, samples
        self.model_cfg = ReferDiffusionConfig.from_dict(dict(cfg.model))
        self.weights = LossWeights(**cfg.loss)

    def sources(self) -> Dict[str, Any]:
        cfg = self.cfg
        status = cfg.status if cfg.stage == "stage2" else "all"
        samples = self.samples
        if samples is None:
            from refcoco_edit.benchmark.data import load_dataset

            samples = load_dataset(cfg.data, split=cfg.split, status=status, limit=cfg.limit).samples
        if not samples:
            from refcoco_edit.errors import InputError

            raise InputError(f"{cfg.data} has no {status} samples for {cfg.stage}"
                             + (" (review them first, or set status: all)" if status == "accepted" else ""))
        return {"train": SampleSource(samples, cfg)}

    def build_model(self) -> Any:
        from .model import ReferDiffusion

        return ReferDiffusion.from_pretrained(self.cfg.pretrained, self.model_cfg,
                                              local_files_only=self.cfg.local_files_only)

    def module_groups(self, model: Any) -> Dict[str, List[Any]]:
        return {"unet": list(model.unet.parameters()),
                "rem": list(model.rem.parameters()) if model.rem is not None else [],
                "text_encoder": list(model.text_encoder.parameters())}

    def phases(self) -> List[Phase]:
        mods = ("unet",) + (("rem",) if self.model_cfg.use_rem else ()) + \
            (("text_encoder",) if self.model_cfg.train_text_encoder else ())
        return [Phase(name="train", steps=self.cfg.max_steps, modules=mods)]

    def collate(self, examples: Sequence[Dict[str, Any]], model: Any) -> Dict[str, Any]:
        return collate(list(examples), model)

    def loss(self, model: Any, core: Any, batch: Dict[str, Any], generator: Any) -> Dict[str, Any]:
        from .losses import total_loss

        return total_loss(model(generator=generator, **batch), batch, core.scheduler, self.weights)

    def save_final(self, core: Any, path: Path) -> None:
        core.save_pretrained(path)


def train(cfg: TrainConfig, samples: Optional[List[Any]] = None) -> Dict[str, Any]:
    """Run (or resume) training on the shared core; returns {"step", "phase", "output_dir", "final"}.
    ``samples``: BenchSamples (default: ``refcoco_edit.benchmark.data.load_dataset(cfg.data)``)."""
    return run(ReferDiffusionPlugin(cfg, samples), RunSettings.of(cfg), record=asdict(cfg))


_CONFIG_HELP = ("YAML config: a file, or a shipped config's name (1_finetune, 2_rem, 3_rem_rcl, 4_selfsup; also "
                "builtin:NAME)")


def help_parser() -> argparse.ArgumentParser:
    """The trainer's options for ``--help``: every TrainConfig setting, generated from its fields
    (the values themselves are read by :func:`load_config`, as YAML)."""
    ap = argparse.ArgumentParser(
        prog="refcoco-edit train", description="Train ReferDiffusion (the reference baseline) with accelerate.",
        epilog="Settings: the defaults, then --config, then the options given here (the command line wins). "
               "Each option is also a YAML key of --config (dashes or underscores); values are read as YAML "
               "(--local_files_only false, --synth.colours '[red, blue]', --resume null; --key=value works too). "
               "Nested options: --model.num_heads 4, --loss.rcl=0.5, --synth.llm_rephrase.model NAME. Exit codes: 0 done, 2 bad config, 1 other errors.")
    ap.add_argument("--config", help=_CONFIG_HELP)
    config.add_flags(ap, TrainConfig, style="tokens")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``refcoco-edit train ...``: 0 done, 2 bad config or data, 1 a full disk."""
    from refcoco_edit.benchmark.training.entry import trainer_main

    return trainer_main(argv, "referdiffusion-train", _CONFIG_HELP, help_parser, load_config, train)


if __name__ == "__main__":
    raise SystemExit(main())
