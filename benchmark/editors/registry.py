"""Finding an editor from the ``--model`` spec, without importing any backend before it is needed.

A spec is one of:

* a registered name or alias: ``identity``, ``oracle`` (built-in, weight-free); the diffusion
  editors ``instruct-pix2pix``, ``magicbrush``, ``blended-latent``, ``inpaint-anything``
  (``refcoco_edit.benchmark.editors.diffusion``: the diffusion extra, weights via ``--editor-arg model=...``),
  ``instructdiffusion`` (``.instructdiffusion``) and the grounding -> SAM -> editing baselines
  ``grounded-inpaint``, ``grounded-pbe``, ``grounded-blended`` (``.grounded``); the reference-based
  track's baselines ``copy-paste`` (``.copy_paste``, weight-free) and ``pbe-mask`` (``.pbe_mask``);
  names of planned editors (``PLANNED``) are known and say so when asked for;
* ``NAME:ARG``, a registered name (or alias) whose editor class declares ``spec_option``: ARG is
  that constructor option, e.g. ``referdiffusion:CHECKPOINT`` = ``referdiffusion`` with
  ``checkpoint=CHECKPOINT`` (``refcoco_edit.benchmark.referdiffusion.infer``). A ``module:Class`` whose module
  part is not a registered name is imported as before;
* a plug-in name: any entry point in the ``refcoco_edit.editors`` group of an installed
  distribution (``my-editor = my_pkg.editors:MyEditor`` in its ``entry_points.txt``);
* ``module:Class`` (``my_pkg.editors:MyEditor``), imported on demand;
* ``dir:PATH`` (precomputed outputs) or ``cmd:TEMPLATE`` (an external program), see ``adapters``.

Registered editors are lazy ``"module:Class"`` strings in a ``refcoco_edit.registry.Registry``
(the habit of lm-evaluation-harness' registry): nothing is imported until ``get_editor`` builds
one. An unknown name raises ``UnknownEditorError`` (an ``InputError``: exit 2) with close matches
("did you mean ...?"). Built-in names win over plug-ins of the same name; aliases resolve to
built-ins only; names are matched case-insensitively.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from refcoco_edit.errors import InputError
from refcoco_edit.registry import Registry, UnknownNameError, import_target

from .base import Editor, check_protocol

ENTRY_POINT_GROUP = "refcoco_edit.editors"

# name -> "module:Class" (imported only when that editor is built)
EDITORS: Dict[str, str] = {
    "identity": "refcoco_edit.benchmark.editors.builtin:IdentityEditor",
    "oracle": "refcoco_edit.benchmark.editors.builtin:OracleEditor",
    "instruct-pix2pix": "refcoco_edit.benchmark.editors.diffusion:InstructPix2PixEditor",
    "magicbrush": "refcoco_edit.benchmark.editors.diffusion:MagicBrushEditor",
    "blended-latent": "refcoco_edit.benchmark.editors.diffusion:BlendedLatentEditor",
    "inpaint-anything": "refcoco_edit.benchmark.editors.diffusion:InpaintAnythingEditor",
    "referdiffusion": "refcoco_edit.benchmark.referdiffusion.infer:ReferDiffusionEditor",
    "freeedit": "refcoco_edit.benchmark.freeedit.infer:FreeEditEditor",
    "grounded-inpaint": "refcoco_edit.benchmark.editors.grounded:GroundedInpaintEditor",
    "grounded-pbe": "refcoco_edit.benchmark.editors.grounded:GroundedPbEEditor",
    "grounded-blended": "refcoco_edit.benchmark.editors.grounded:GroundedBlendedEditor",
    "instructdiffusion": "refcoco_edit.benchmark.editors.instructdiffusion:InstructDiffusionEditor",
    "copy-paste": "refcoco_edit.benchmark.editors.copy_paste:CopyPasteEditor",
    "pbe-mask": "refcoco_edit.benchmark.editors.pbe_mask:PbEMaskEditor",
}

# names we know and will ship with the diffusion extra; asking for one says what is missing
PLANNED: Dict[str, str] = {}

ALIASES: Dict[str, str] = {
    "noop": "identity",
    "none": "identity",
    "source": "identity",
    "gt": "oracle",
    "reference": "oracle",
    "ip2p": "instruct-pix2pix",
    "instructpix2pix": "instruct-pix2pix",
    "pix2pix": "instruct-pix2pix",
    "blended-latent-diffusion": "blended-latent",
    "bld": "blended-latent",
    "inpaint_anything": "inpaint-anything",
    "magic-brush": "magicbrush",
    "blended_latent": "blended-latent",
    "refer-diffusion": "referdiffusion",
    "grounded-sam-inpaint": "grounded-inpaint",
    "grounded-paint-by-example": "grounded-pbe",
    "grounded-sam-pbe": "grounded-pbe",
    "grounded-blended-latent": "grounded-blended",
    "grounded-sam-blended": "grounded-blended",
    "instruct-diffusion": "instructdiffusion",
    "copypaste": "copy-paste",
    "paint-by-example-mask": "pbe-mask",
}


REGISTRY: Registry[Any] = Registry("editor", EDITORS, aliases=ALIASES, entry_point_group=ENTRY_POINT_GROUP,
                                   normalize=str.lower)


class UnknownEditorError(UnknownNameError):
    """No editor of that name."""


def list_editors() -> List[Dict[str, str]]:
    """Every known name: built-in, planned and plug-in, with where it comes from."""
    rows = [{"name": n, "kind": "built-in", "target": t} for n, t in sorted(EDITORS.items())]
    rows += [{"name": n, "kind": "planned", "target": d} for n, d in sorted(PLANNED.items())]
    rows += [{"name": n, "kind": "plug-in", "target": ep.value}
             for n, ep in sorted(REGISTRY.plugins().items()) if n not in EDITORS]
    rows += [{"name": a, "kind": "alias", "target": t} for a, t in sorted(ALIASES.items())]
    return rows


def _instantiate(cls: Any, what: str, options: Dict[str, Any]) -> Editor:
    if not (isinstance(cls, type) and issubclass(cls, Editor)):
        raise InputError(f"{what}: {cls!r} is not a subclass of refcoco_edit.benchmark.editors.Editor")
    try:
        editor = cls(**options)
    except TypeError as e:
        raise InputError(f"{what}: bad editor options {sorted(options)}: {e}") from None
    except ValueError as e:
        raise InputError(f"{what}: {e}") from None
    try:
        check_protocol(editor.protocol, what)
    except ValueError as e:
        raise InputError(str(e)) from None
    if int(editor.batch_size) < 1:
        raise InputError(f"{what}: batch_size must be at least 1")
    return editor


def parse_spec(spec: str) -> Tuple[str, str]:
    """``spec`` -> (kind, value): kind is dir | cmd | class | name | name_arg (value "NAME:ARG",
    NAME a registered built-in name or alias)."""
    spec = str(spec).strip()
    if not spec:
        raise InputError("--model is empty; give a registered name, module:Class, dir:PATH or cmd:\"...\"")
    if spec.startswith("dir:"):
        return "dir", spec[4:]
    if spec.startswith("cmd:"):
        return "cmd", spec[4:]
    if ":" in spec:
        head = spec.partition(":")[0]
        if REGISTRY.canonical(head) is not None:
            return "name_arg", spec
        return "class", spec
    return "name", spec


def get_editor(spec: str, options: Optional[Dict[str, Any]] = None) -> Editor:
    """Build the editor named by ``spec`` with constructor ``options`` (nothing loaded yet)."""
    from .adapters import CmdEditor, DirEditor

    options = dict(options or {})
    kind, value = parse_spec(spec)
    if kind == "dir":
        if not value:
            raise InputError("dir: needs a folder, e.g. dir:outputs/")
        return _instantiate(DirEditor, f"--model {spec}", dict(options, path=value))
    if kind == "cmd":
        if not value.strip():
            raise InputError("cmd: needs a command template, e.g. cmd:\"python edit.py {input} {prompt} {output}\"")
        return _instantiate(CmdEditor, "--model cmd:...", dict(options, template=value))
    if kind == "class":
        cls = import_target(value, f"--model {spec}")
        return _instantiate(cls, f"--model {spec}", options)

    if kind == "name_arg":
        head, _, arg = value.partition(":")
        canonical = REGISTRY.canonical(head) or head
        what = f"--model {spec}"
        cls = import_target(EDITORS[canonical], f"editor {canonical!r}")
        opt = getattr(cls, "spec_option", None)
        if not opt:
            raise InputError(f"{what}: editor {canonical!r} takes no argument after ':' "
                             f"(give its options with --editor-arg key=value)")
        if not arg.strip():
            raise InputError(f"{what}: nothing after ':' (expected {canonical}:{opt.upper()})")
        if opt in options and str(options[opt]) != arg:
            raise InputError(f"{what}: {opt} given twice ({arg!r} and --editor-arg {opt}={options[opt]!r})")
        return _instantiate(cls, f"editor {canonical!r}", dict(options, **{opt: arg}))

    name = value
    canonical = REGISTRY.canonical(name) or name
    if canonical in EDITORS:
        return _instantiate(import_target(EDITORS[canonical], f"editor {canonical!r}"), f"editor {canonical!r}", options)
    plugins = REGISTRY.plugins()
    if canonical in plugins:
        ep = plugins[canonical]
        return _instantiate(import_target(ep.value, f"plug-in editor {canonical!r}"), f"plug-in editor {canonical!r}", options)
    if canonical in PLANNED:
        raise UnknownEditorError(
            f"editor {canonical!r} ({PLANNED[canonical]}) is not available in this version yet; "
            f"available editors: {', '.join(sorted(EDITORS))}")
    err = REGISTRY.unknown(name, "; or give module:Class, dir:PATH or cmd:\"...\"")
    raise UnknownEditorError(str(err), name, err.suggestions)
