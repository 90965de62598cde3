"""The per-process state of a build, shared by its stage functions (``BuildContext``).

A context is made once per process (the driver, a forked local worker, a Ray actor): loading the
RefCOCO index, the exemplar bank, the selection plan, the LLM client and the models is done once
there, not once per shard.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from ..errors import InputError, SampleError
from ..workspace import Workspace

if TYPE_CHECKING:  # the CLI-layer config; imported for type hints only
    from .config import BuildConfig
    from .backend import Backend
    from .exemplars import ExemplarBank

STAGES = ("select", "prompts", "generate")


@dataclass
class DataPaths:
    """Where the data is: the refer root, the images folder, and whether it is the bundled demo."""

    root: Path
    images: Path
    demo: bool


def resolve_data(cfg: "BuildConfig") -> DataPaths:
    """The refer root and images folder, writing the demo data when none is given."""
    if cfg.refcoco is None:
        from ..demo import ensure_demo

        root = ensure_demo(Path(cfg.out) / "demo-data")
        return DataPaths(Path(root), Path(root) / "images", True)
    root = Path(cfg.refcoco)
    if not root.is_dir():
        raise InputError(f"--refcoco {root}: no such folder")
    images = Path(cfg.images) if cfg.images else root.parent / "images"
    if not images.is_dir():
        raise InputError(f"images folder {images} does not exist (give --images DIR)")
    return DataPaths(root, images, False)


def load_refer(cfg: "BuildConfig", data: DataPaths) -> Any:
    """The RefCOCO index of the configured dataset (``InputError`` on unsafe or bad files)."""
    from ..refcoco import RefCOCO

    return RefCOCO(data.root, dataset=cfg.dataset, split_by=cfg.split_by, images_dir=data.images)


class BuildContext:
    """What every stage of one process reads: the config, the workspace, the data and the RefCOCO
    index; the exemplar bank, the selection plan, the LLM rephraser and the backend are made on
    first use and kept."""

    def __init__(self, cfg: "BuildConfig", ws: Workspace, data: Optional[DataPaths], refer: Any = None):
        self.cfg = cfg
        self.ws = ws
        self.data = data
        self.refer = refer if refer is not None else load_refer(cfg, data)  # type: ignore[arg-type]
        self._bank: Optional["ExemplarBank"] = None
        self._backend: Optional["Backend"] = None
        self._plan: Any = None  # the select stage's table, once it is done
        self._llm: Tuple[int, Any] = (-1, None)  # (pid, rephraser): never shared across a fork

    @property
    def bank(self) -> "ExemplarBank":
        """The exemplar bank (instances per category), indexed on first use."""
        if self._bank is None:
            from .exemplars import ExemplarBank

            self._bank = ExemplarBank(self.refer, self.cfg.exemplar_min_fraction, self.cfg.image_modes)
        return self._bank

    @property
    def backend(self) -> "Backend":
        """The backend's pipelines (and SAM, the candidate filter) of this process."""
        if self._backend is None:
            from .backend import Backend

            self._backend = Backend(self.cfg)
        return self._backend

    def llm(self) -> Any:
        """The LLM rephraser of this process (its SQLite cache is never shared across a fork)."""
        pid, llm = self._llm
        if llm is None or pid != os.getpid():
            from refcoco_edit.pipelines.rephrase import LLMCache, LLMRephraser, RephraseConfig

            cfg = self.cfg
            known = {f.name for f in dataclasses.fields(RephraseConfig)}  # the llm section, less batch knobs
            rc = RephraseConfig(seed=cfg.seed, **{k: v for k, v in dataclasses.asdict(cfg.llm).items() if k in known})
            llm = LLMRephraser(rc, LLMCache(self.ws.root / "llm" / "cache.sqlite"))
            self._llm = (os.getpid(), llm)
        return llm

    def forget_plan(self) -> None:
        """Drop the cached selection (the select stage has just rewritten it)."""
        self._plan = None

    def num_shards(self) -> int:
        """Shards of the prompts and generate stages: the selected rows in ``shard_size`` pieces."""
        n = self.ws.stage("select").stats(0)["rows"]
        return (n + self.cfg.shard_size - 1) // self.cfg.shard_size

    def plan_rows(self, i: int) -> List[Dict[str, Any]]:
        """The selected rows of shard ``i`` (the selection is read once per process)."""
        if self._plan is None:
            self._plan = self.ws.stage("select").read_shard(0)
        s = self.cfg.shard_size
        return self._plan.slice(i * s, s).to_pylist()

    def load_image(self, image_id: int, cache: Dict[int, Any]) -> Any:
        """A source image (``LoadedImage``), loaded once per shard; a bad image raises its
        ``SampleError`` again for every sample that uses it."""
        if image_id not in cache:
            try:
                cache[image_id] = self.refer.load_image(image_id, mode_policy=self.cfg.image_modes)
            except SampleError as e:
                cache[image_id] = e
        got = cache[image_id]
        if isinstance(got, Exception):
            raise got
        return got
