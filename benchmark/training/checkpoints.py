"""The files of a training run: complete checkpoints, atomic folder publishing, the trimmed log.

``output_dir/checkpoints/step-NNNNNNN`` is written as ``.step-NNNNNNN.tmp`` and renamed when
complete; only folders holding ``trainer_state.json`` count, so a kill (or a full disk) during a
save never leaves a half checkpoint that ``resume`` would take. ``final/`` is published the same
way. A resumed run first drops the log records written after its checkpoint (by a run killed past
it): every step is logged once.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

__all__ = ["STATE_FILE", "list_checkpoints", "find_resume", "read_state", "writing", "publish_dir", "trim_log",
           "remove_stale", "step_dir"]

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir(out: Path, step: int) -> Path:
    """The checkpoint folder of ``step``."""
    return out / "checkpoints" / f"step-{step:07d}"


def list_checkpoints(out: Path) -> List[Path]:
    """The complete checkpoints (``step-N`` folders holding ``trainer_state.json``), oldest first."""
    d = out / "checkpoints"
    if not d.is_dir():
        return []
    done = [p for p in d.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def find_resume(out: Path, resume: Optional[str]) -> Optional[Path]:
    """The checkpoint ``resume`` names: ``latest`` (None when the run has none yet: start afresh)
    or a folder (InputError when it is not a complete checkpoint)."""
    from refcoco_edit.errors import InputError

    if not resume:
        return None
    if resume == "latest":
        cks = list_checkpoints(out)
        return cks[-1] if cks else None
    ck = Path(resume)
    if not (ck / STATE_FILE).is_file():
        raise InputError(f"resume: {ck} is not a complete checkpoint (no {STATE_FILE}); use latest or a "
                         f"{out / 'checkpoints'}/step-N folder")
    return ck


def read_state(ck: Path) -> Dict[str, Any]:
    """``trainer_state.json`` of checkpoint ``ck`` (InputError when unreadable)."""
    from refcoco_edit.errors import InputError

    try:
        state = json.loads((ck / STATE_FILE).read_text(encoding="utf-8"))
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"resume: {ck / STATE_FILE} is unreadable ({e})") from None
    return state


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """A full disk while writing ``path``: the error names it (``f.write`` errors carry no path)."""
    from refcoco_edit.errors import is_disk_error, with_path

    try:
        yield
    except OSError as e:
        if is_disk_error(e):
            raise with_path(e, path) from None
        raise


def publish_dir(tmp: Path, final: Path) -> None:
    """Put the complete folder ``tmp`` in place of ``final`` (renames on one file system)."""
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def trim_log(path: Path, step: int) -> None:
    """Keep the records of steps <= ``step`` (a killed run may have logged past its checkpoint,
    and its last line may be cut): each step appears once, in order."""
    from refcoco_edit.workspace import atomic_write_bytes

    if not path.exists():
        return
    raw = path.read_bytes()
    keep = []
    for line in raw.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            keep.append(line + b"\n")
    data = b"".join(keep)
    if data != raw:
        with writing(path):
            atomic_write_bytes(path, data)


def remove_stale(out: Path) -> None:
    """Remove what a killed run left half written (temp checkpoint / final folders)."""
    for p in list((out / "checkpoints").glob(".step-*")) + [out / ".final.tmp", out / ".final.old"]:
        shutil.rmtree(p, ignore_errors=True)
