"""Training phases: a run is a list of phases, each training some module groups on some samples.

A phase names which of the model's module groups train (``modules``), how many optimizer steps
it takes (``steps``), which sample source its micro-batches come from (``data``) and its learning
rate (``lr``; None: the run's). Phases follow one another: global optimizer step ``s`` (1-based)
belongs to the first phase whose cumulative end is >= ``s``. Pure Python (no torch): configs are
checked before anything heavy is loaded.

YAML form (a list of mappings)::

    phases:
      - {name: base, steps: 2000, modules: [projection, unet]}
      - {name: detail, steps: 2000, modules: [projection, unet, detail_extractor, drra], lr: 2.0e-5}
      - {name: quality, steps: 500, modules: [projection, unet, detail_extractor, drra], data: quality}
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from refcoco_edit.config import UsageError

__all__ = ["Phase", "parse_phases", "phase_index", "phase_bounds", "check_phases", "phases_dict"]

_KEYS = ("name", "steps", "modules", "data", "lr")


@dataclass(frozen=True)
class Phase:
    """One phase of a run: ``steps`` optimizer steps training ``modules`` on source ``data`` at ``lr``."""

    name: str
    steps: int
    modules: Tuple[str, ...]
    data: str = "train"
    lr: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict (JSON / YAML) of the phase."""
        d = asdict(self)
        d["modules"] = list(self.modules)
        return d


def _phase(raw: Any, i: int, where: str) -> Phase:
    if isinstance(raw, Phase):
        return raw
    if not isinstance(raw, Mapping):
        raise UsageError(f"{where}: phases[{i}]: expected a mapping {{name, steps, modules, data, lr}}, got {raw!r}")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise UsageError(f"{where}: phases[{i}]: unknown key(s) {', '.join(unknown)}; known: {', '.join(_KEYS)}")
    name = raw.get("name", f"phase{i + 1}")
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"{where}: phases[{i}].name: expected a non-empty string, got {name!r}")
    steps = raw.get("steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise UsageError(f"{where}: phases[{i}] ({name}).steps: expected an integer >= 0, got {steps!r}")
    mods = raw.get("modules")
    if isinstance(mods, str):
        mods = [m.strip() for m in mods.split(",") if m.strip()]
    if not isinstance(mods, (list, tuple)) or not mods or not all(isinstance(m, str) for m in mods):
        raise UsageError(f"{where}: phases[{i}] ({name}).modules: expected a non-empty list of module group "
                         f"names, got {mods!r}")
    data = raw.get("data", "train")
    if not isinstance(data, str) or not data:
        raise UsageError(f"{where}: phases[{i}] ({name}).data: expected a sample source name, got {data!r}")
    lr = raw.get("lr")
    if isinstance(lr, str):
        try:
            lr = float(lr)
        except ValueError:
            pass
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
        raise UsageError(f"{where}: phases[{i}] ({name}).lr: expected a number > 0 or null, got {lr!r}")
    return Phase(name=name, steps=steps, modules=tuple(dict.fromkeys(mods)), data=data,
                 lr=None if lr is None else float(lr))


def parse_phases(raw: Any, where: str = "config") -> List[Phase]:
    """The phase list of a config value (a list of mappings or Phases); UsageError on a bad entry,
    a repeated name or an empty schedule."""
    if not isinstance(raw, (list, tuple)) or not raw:
        raise UsageError(f"{where}: phases: expected a non-empty list of phases, got {raw!r}")
    out = [_phase(r, i, where) for i, r in enumerate(raw)]
    names = [p.name for p in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"{where}: phases: repeated phase name(s) {', '.join(dup)}")
    if sum(p.steps for p in out) == 0:
        raise UsageError(f"{where}: phases: every phase has 0 steps")
    return out


def check_phases(phases: Sequence[Phase], groups: Iterable[str], sources: Iterable[str], where: str = "config") -> None:
    """UsageError when a phase names a module group, or (with steps) a sample source, the model does not have."""
    groups, sources = list(groups), list(sources)
    for p in phases:
        bad = [m for m in p.modules if m not in groups]
        if bad:
            raise UsageError(f"{where}: phase {p.name!r} trains unknown module group(s) {', '.join(bad)}; "
                             f"the model has: {', '.join(groups)}")
        if p.steps and p.data not in sources:  # a 0-step phase draws nothing
            raise UsageError(f"{where}: phase {p.name!r} draws from unknown sample source {p.data!r}; "
                             f"known: {', '.join(sources)}")


def phase_bounds(phases: Sequence[Phase]) -> List[Tuple[int, int]]:
    """[start, end) global step range of each phase (end = start + steps)."""
    out, start = [], 0
    for p in phases:
        out.append((start, start + p.steps))
        start += p.steps
    return out


def phase_index(phases: Sequence[Phase], step: int) -> int:
    """The phase that optimizer step number ``step`` (1-based) belongs to; 0 for ``step`` 0; the
    last phase for steps past the schedule's end."""
    for i, (a, b) in enumerate(phase_bounds(phases)):
        if step <= b and b > a:
            return i
    return len(phases) - 1


def phases_dict(phases: Sequence[Phase]) -> List[Dict[str, Any]]:
    """The schedule as plain dicts (recorded in checkpoints and config.json)."""
    return [p.to_dict() for p in phases]

