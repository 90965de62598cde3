"""What a model gives the training core: the plugin interface.

A :class:`TrainingPlugin` knows one model family (ReferDiffusion, FreeEdit): its sample sources,
how to build the model, its module groups, its phase schedule, how a micro-batch is collated and
what its loss terms are, and how the final model is saved. The core (:mod:`.core`) owns
everything else - the loop, phases, checkpoints, resume, DDP, logging - once for all models.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Dict, List, Protocol, Sequence, Tuple

from .phases import Phase

__all__ = ["SampleSource", "TrainingPlugin"]


class SampleSource(Protocol):
    """Index -> one training example; ``epoch`` lets on-the-fly augmentation vary by epoch while
    staying a pure function of (seed, epoch, index)."""

    def __len__(self) -> int: ...

    def get(self, i: int, epoch: int) -> Dict[str, Any]: ...


class TrainingPlugin(ABC):
    """One model family plugged into the training core."""

    #: loss terms shown on the progress bar (every term is logged to log.jsonl)
    progress_terms: Tuple[str, ...] = ("loss",)

    @abstractmethod
    def sources(self) -> Dict[str, SampleSource]:
        """The named sample sources phases draw from (``"train"`` at least). Called on every
        process, the main one first (so that it may fill caches the others then read)."""

    @abstractmethod
    def build_model(self) -> Any:
        """The model (a ``torch.nn.Module``), built after ``torch.manual_seed(seed)``: its random
        initialisation is the same on every process and in a resumed run."""

    @abstractmethod
    def module_groups(self, model: Any) -> Dict[str, List[Any]]:
        """Group name -> parameters; phases train whole groups. Parameters in no group never train."""

    @abstractmethod
    def phases(self) -> List[Phase]:
        """The phase schedule of the run."""

    @abstractmethod
    def collate(self, examples: Sequence[Dict[str, Any]], model: Any) -> Dict[str, Any]:
        """A micro-batch of tensors from the examples (``model``: the unwrapped model, e.g. for its tokenizer)."""

    @abstractmethod
    def loss(self, model: Any, core: Any, batch: Dict[str, Any], generator: Any) -> Dict[str, Any]:
        """The loss terms of one micro-batch: a dict of scalar tensors with the total as ``"loss"``.
        ``model`` is the prepared (maybe DDP-wrapped) model to call, ``core`` the unwrapped one;
        every random draw (noise, timesteps, condition dropout) comes from ``generator``."""

    @abstractmethod
    def save_final(self, core: Any, path: Path) -> None:
        """Write the trained model to ``path`` (a fresh folder; the core publishes it atomically)."""

    def prepare_run(self, out: Path) -> None:
        """Write run files of the plugin's own into ``out`` (main process only, before training)."""
