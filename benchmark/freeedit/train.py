"""FreeEdit trainer: ``refcoco-edit train --model freeedit --config F.yaml`` (phases on the shared core).

* Data: a reference-based export (``refcoco-edit export --view reference-based``): each triplet's
  before image (``source_image``) is the U-Net's source, its after image (``reference_image``) the
  target, and its exemplar (``exemplar_image`` cut out by ``exemplar_mask``, squared, resized to
  the model's ``reference_resolution``: :func:`.reference.reference_image`, as the ``freeedit``
  editor does) the reference of the multi-modal instruction, with the ``prompt`` as its text.
  By default reviewed-accepted triplets only (``status: accepted``).
* Phases (``phases:``; defaults :data:`DEFAULT_PHASES`): ``base`` trains the instruction
  encoder's projection and the U-Net, ``detail`` adds the detail extractor and DRRA, ``quality``
  tunes them on the quality subset. The quality subset (``quality:``, a
  :class:`~refcoco_edit.benchmark.training.quality.QualityRule`) is chosen from a score run's
  per-sample scores and written to ``output_dir/quality_subset.json`` before training starts.
* The loop, checkpoints, bit-exact resume (``resume: latest``), DDP and the log are the shared
  training core's (:mod:`refcoco_edit.benchmark.training`); condition dropout (dual
  classifier-free guidance) is the model's (``model.conditioning_dropout_prob``).
* Several processes: ``accelerate launch --multi_gpu --num_processes N -m
  refcoco_edit.benchmark.freeedit.train --config F.yaml``; on CPU ``ACCELERATE_USE_CPU=true
  torchrun --nproc_per_node N -m refcoco_edit.benchmark.freeedit.train ...`` (gloo).

Every option of the YAML config can be overridden on the command line: ``--lr 1e-4``,
``--model.num_image_tokens 4``, ``--quality.metric judge_same_object`` (values parsed as YAML).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from refcoco_edit import config
from refcoco_edit.benchmark.training import Phase, RunSettings, TrainingPlugin, parse_phases, run
from refcoco_edit.benchmark.training.quality import QUALITY_FILE, QualityRule, chosen_ids, select_quality
from refcoco_edit.benchmark.training.stream import resize, to_tensor
from refcoco_edit.config import UsageError, setting

_MODEL = "refcoco_edit.benchmark.freeedit.model:FreeEditConfig"
_QUALITY = "refcoco_edit.benchmark.training.quality:QualityRule"

GROUPS = ("projection", "unet", "detail_extractor", "drra", "text_encoder", "image_encoder")
DEFAULT_PHASES: List[Dict[str, Any]] = [
    {"name": "base", "steps": 5000, "modules": ["projection", "unet"], "data": "train"},
    {"name": "detail", "steps": 5000, "modules": ["projection", "unet", "detail_extractor", "drra"], "data": "train"},
    {"name": "quality", "steps": 1000, "modules": ["projection", "unet", "detail_extractor", "drra"],
     "data": "quality", "lr": 1.0e-5},
]


@dataclass
class FreeEditTrainConfig:
    """Every setting of the FreeEdit trainer: a YAML key of ``--config`` and a ``--key value`` override."""

    pretrained: str = setting("timbrooks/instruct-pix2pix", "InstructPix2Pix, Stable Diffusion (U-Net widened to 8 "
                                                            "channels) or FreeEdit folder, or hub id")
    image_encoder: Optional[str] = setting(None, "the reference's image encoder (folder or hub id; default: the "
                                                 "pretrained folder's image_encoder/, else CLIP ViT-L/14)")
    local_files_only: bool = setting(True, "hub ids only from the local cache, never downloaded")
    data: str = setting("", "a reference-based export (refcoco-edit export --view reference-based)")
    output_dir: str = setting("runs/freeedit", "checkpoints/, final/, log.jsonl, config.json, quality_subset.json")
    split: Optional[str] = setting(None, "train on this split only (default: all)")
    status: str = setting("accepted", "reviewed-accepted triplets only, or all", choices=("accepted", "all"))
    limit: Optional[int] = setting(None, "the first N triplets only (default: all)")
    resolution: int = setting(256, "training resolution of the before/after images (a multiple of 8)")
    batch_size: int = setting(4, "micro-batch size per process")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step")
    lr: float = setting(5e-5, "learning rate (a phase's own lr wins)")
    lr_scheduler: str = setting("constant", "diffusers LR scheduler name (constant, cosine, linear, ...), per phase")
    lr_warmup_steps: int = setting(0, "LR warm-up steps at the start of each phase")
    adam_weight_decay: float = setting(1e-2, "AdamW weight decay (of the training modules only)")
    max_grad_norm: float = setting(1.0, "gradient clipping norm")
    max_steps: Optional[int] = setting(None, "stop after this global step (default: the end of the last phase)")
    mixed_precision: str = setting("no", "accelerate mixed precision", choices=("no", "fp16", "bf16", "fp8"))
    checkpoint_every: int = setting(500, "optimizer steps between checkpoints (0: none)")
    checkpoints_total_limit: Optional[int] = setting(None, "keep at most this many checkpoints (default: all)")
    resume: Optional[str] = setting(None, "latest, or a checkpoint folder (default: start afresh)")
    seed: int = setting(0, "seed of the data order, noise, dropout and the projection's initialisation")
    phases: Any = setting(DEFAULT_PHASES, "the phase schedule: a list of {name, steps, modules, data, lr}; modules "
                                          "from " + ", ".join(GROUPS) + "; data: train or quality")
    quality: Dict[str, Any] = setting({}, "the quality-tuning rule (scores, metric, top_fraction, min_score, "
                                          "status, higher_is_better)", schema=_QUALITY)
    model: Dict[str, Any] = setting({}, "FreeEditConfig options (conditioning_dropout_prob, num_image_tokens, "
                                        "reference_resolution, drra_scale_init, ...)", schema=_MODEL)

    def __post_init__(self) -> None:
        if self.mixed_precision is False:  # YAML 1.1 reads `mixed_precision: no` as false
            self.mixed_precision = "no"
        if self.resolution % 8:
            raise ValueError(f"resolution {self.resolution} is not a multiple of 8")
        phases = parse_phases(self.phases)
        self.phases = [p.to_dict() for p in phases]
        for p in phases:
            bad = [m for m in p.modules if m not in GROUPS]
            if bad:
                raise UsageError(f"phase {p.name!r}: unknown module group(s) {', '.join(bad)}; FreeEdit has "
                                 f"{', '.join(GROUPS)}")
            if p.data not in ("train", "quality"):
                raise UsageError(f"phase {p.name!r}: data {p.data!r} is not a sample source; use train or quality")
        QualityRule(**self.quality)  # checks the rule's values now


def load_config(path: Optional[str], overrides: Sequence[str] = ()) -> FreeEditTrainConfig:
    """The YAML file (a path, or a shipped config's name: ``freeedit``, ``builtin:freeedit``) then
    ``--key value`` overrides (the command line wins), through :mod:`refcoco_edit.config`; bad keys
    and values raise ``refcoco_edit.config.UsageError`` (a ValueError)."""
    values: Dict[str, Any] = {}
    if path:
        from .configs import resolve as resolve_config

        values = config.read_file(resolve_config(path), FreeEditTrainConfig)
    return config.build(FreeEditTrainConfig, values, config.read_overrides(FreeEditTrainConfig, overrides))


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

class TripletSource:
    """Index -> one training triplet: before/after images at ``resolution``, the prepared reference, the prompt."""

    def __init__(self, samples: List[Any], resolution: int, reference_resolution: int):
        self.samples, self.resolution, self.reference_resolution = samples, resolution, reference_resolution

    def __len__(self) -> int:
        return len(self.samples)

    def get(self, i: int, epoch: int) -> Dict[str, Any]:
        from refcoco_edit.benchmark.data import decode_sample

        from .reference import reference_image

        s = self.samples[i]
        d = decode_sample(s, reference=True)
        if d.exemplar is None:
            raise UsageError(f"{s.sample_id}: no exemplar; FreeEdit trains on a reference-based export "
                             "(refcoco-edit export --view reference-based)")
        R = self.resolution
        return {"source": resize(d.source, R, False), "target": resize(d.reference, R, False),
                "reference": reference_image(d.exemplar, d.exemplar_mask, self.reference_resolution),
                "prompt": s.prompt}


def collate(examples: Sequence[Dict[str, Any]], model: Any) -> Dict[str, Any]:
    """A micro-batch: before/after/reference pixels in [-1, 1] and the prompt's tokens."""
    import torch

    tok = model.tokenize([e["prompt"] for e in examples])
    return {"source_pixels": torch.stack([to_tensor(e["source"]) for e in examples]),
            "target_pixels": torch.stack([to_tensor(e["target"]) for e in examples]),
            "reference_pixels": torch.stack([to_tensor(e["reference"]) for e in examples]),
            "input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"]}


def _model_config(cfg: FreeEditTrainConfig) -> Any:
    """The FreeEditConfig the run uses: ``model:`` when given, else a FreeEdit folder's own, else the defaults."""
    from .model import FREEEDIT_CONFIG, FreeEditConfig

    if cfg.model:
        return FreeEditConfig.from_dict(dict(cfg.model))
    saved = Path(cfg.pretrained).expanduser() / FREEEDIT_CONFIG
    return FreeEditConfig.from_dict(json.loads(saved.read_text())) if saved.is_file() else FreeEditConfig()


# ----------------------------------------------------------------------------------------------
# The model plugged into the shared training core
# ----------------------------------------------------------------------------------------------

class FreeEditPlugin(TrainingPlugin):
    """FreeEdit for :func:`refcoco_edit.benchmark.training.run`: sources ``train`` (the triplets)
    and ``quality`` (the quality subset, when a phase draws from it)."""

    progress_terms = ("loss",)

    def __init__(self, cfg: FreeEditTrainConfig):
        self.cfg = cfg
        self.model_cfg = _model_config(cfg)
        self.quality_record: Optional[Dict[str, Any]] = None

    def phases(self) -> List[Phase]:
        return parse_phases(self.cfg.phases)

    def _load(self, status: str) -> List[Any]:
        from refcoco_edit.benchmark.data import REFERENCE_BASED, load_dataset
        from refcoco_edit.errors import InputError

        cfg = self.cfg
        if not cfg.data:
            raise UsageError("--data is required: a reference-based export (refcoco-edit export --view reference-based)")
        ds = load_dataset(cfg.data, split=cfg.split, status=status, limit=cfg.limit)
        if ds.view != REFERENCE_BASED:
            raise InputError(f"--data {cfg.data}: the {ds.view} view; FreeEdit trains on a reference-based export "
                             "(refcoco-edit export --view reference-based)")
        if not ds.samples:
            raise InputError(f"{cfg.data} has no {status} triplets"
                             + (" (review them first, or set status: all)" if status == "accepted" else ""))
        return ds.samples

    def sources(self) -> Dict[str, Any]:
        cfg, R, RR = self.cfg, self.cfg.resolution, int(self.model_cfg.reference_resolution)
        samples = self._load(cfg.status)
        out: Dict[str, Any] = {"train": TripletSource(samples, R, RR)}
        if any(p.data == "quality" and p.steps for p in self.phases()):
            rule = QualityRule(**cfg.quality)
            if not rule.scores:
                raise UsageError("a phase draws from the quality subset but quality.scores is not set: name a "
                                 "`refcoco-edit score` RESULTS folder (or its samples.parquet), or drop that phase")
            pool = samples if rule.status == cfg.status else self._load(rule.status)
            rec = select_quality(rule, [s.sample_id for s in pool])
            self._check_resumed_subset(rec)
            keep = set(chosen_ids(rec))
            out["quality"] = TripletSource([s for s in pool if s.sample_id in keep], R, RR)
            self.quality_record = rec
        return out

    def _check_resumed_subset(self, rec: Dict[str, Any]) -> None:
        """A resumed run must tune on the subset it started with (else it is not the same run)."""
        f = Path(self.cfg.output_dir) / QUALITY_FILE
        if not self.cfg.resume or not f.is_file():
            return
        try:
            before = chosen_ids(json.loads(f.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError):
            return
        if before != chosen_ids(rec):
            raise UsageError(f"resume: the quality rule now selects {len(rec['chosen'])} sample(s) that differ from the "
                             f"{len(before)} this run started with ({f}); resume with the same scores and rule")

    def build_model(self) -> Any:
        from .model import FreeEdit

        cfg = self.cfg
        return FreeEdit.from_pretrained(cfg.pretrained, config=self.model_cfg if cfg.model else None,
                                        local_files_only=cfg.local_files_only, image_encoder=cfg.image_encoder)

    def module_groups(self, model: Any) -> Dict[str, List[Any]]:
        return model.module_groups()

    def collate(self, examples: Sequence[Dict[str, Any]], model: Any) -> Dict[str, Any]:
        return collate(examples, model)

    def loss(self, model: Any, core: Any, batch: Dict[str, Any], generator: Any) -> Dict[str, Any]:
        return core.loss(model(generator=generator, **batch))

    def save_final(self, core: Any, path: Path) -> None:
        core.save_pretrained(path)

    def prepare_run(self, out: Path) -> None:
        if self.quality_record is not None:
            from refcoco_edit.workspace import atomic_write_bytes

            atomic_write_bytes(out / QUALITY_FILE, json.dumps(self.quality_record, indent=2).encode("utf-8"))


def train(cfg: FreeEditTrainConfig) -> Dict[str, Any]:
    """Run (or resume) FreeEdit's phased training; returns {"step", "phase", "output_dir", "final"}."""
    return run(FreeEditPlugin(cfg), RunSettings.of(cfg), record=asdict(cfg), desc="train freeedit")


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

_CONFIG_HELP = "YAML config: a file, or a shipped config's name (freeedit, freeedit_no_quality; also builtin:NAME)"


def help_parser() -> argparse.ArgumentParser:
    """The trainer's options for ``--help``, generated from FreeEditTrainConfig's fields."""
    ap = argparse.ArgumentParser(
        prog="refcoco-edit train --model freeedit",
        description="Train FreeEdit (the reference-based baseline) in phases on a reference-based export, with "
                    "accelerate: base (projection + U-Net), detail (+ detail extractor + DRRA), quality (the "
                    "best-scored accepted triplets, chosen by the quality rule and written to "
                    "OUTPUT_DIR/quality_subset.json).",
        epilog="Settings: the defaults, then --config, then the options given here (the command line wins). Each "
               "option is also a YAML key of --config; values are read as YAML (--resume latest, --quality.metric "
               "judge_same_object, --phases '[{name: base, steps: 100, modules: [projection, unet]}]'). Exit codes: "
               "0 done, 2 bad config or unusable data, 1 other errors.")
    ap.add_argument("--config", help=_CONFIG_HELP)
    config.add_flags(ap, FreeEditTrainConfig, style="tokens")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``refcoco-edit train --model freeedit ...``: 0 done, 2 bad config or data, 1 a full disk."""
    from refcoco_edit.benchmark.training.entry import trainer_main

    return trainer_main(argv, "freeedit-train", _CONFIG_HELP, help_parser, load_config, train)


if __name__ == "__main__":
    raise SystemExit(main())
