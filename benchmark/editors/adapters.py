"""Generic adapters: score outputs made elsewhere (``dir:PATH``) or by any program (``cmd:"..."``).

``dir:PATH`` — precomputed outputs ``PATH/{sample_id}.png`` (``.jpg``, ``.jpeg``, ``.webp`` are
tried next, in this order). A missing file is the failure ``missing_output``, an undecodable one
``corrupt_output``. The editor that made them is unknown to us, so declare what it saw:
``--editor-arg protocol=gt_mask,edit_phrase`` (recorded in the report). A method that also
predicts where the referred object is can leave ``PATH/{sample_id}.mask.png`` next to each output
and pass ``--editor-arg masks=true``: the masks are scored as ``mask_iou``.

``cmd:"TEMPLATE"`` — an external program run once per sample, or once per batch:

* per sample: the template must hold ``{input}`` and ``{output}``; it may hold ``{prompt}``,
  ``{seed}``, ``{sample_id}`` and the protocol placeholders ``{mask}`` (a PNG of M_e, 255 inside),
  ``{object_mask}`` (a PNG of M), ``{edit_phrase}``, ``{referring_phrase}``, ``{edit_type}``.
  Using one of those declares it: the protocol is derived from the template, so the report can
  not understate what the program saw. The program writes an image to ``{output}`` (and, when the
  template holds ``{output_mask}``, its predicted mask of the referred object there: a grey PNG,
  level / 255 = probability, scored as ``mask_iou``).
* per batch: the template holds ``{batch}`` (and none of the per-sample placeholders): the path of
  a JSON-lines file with one object per sample, keys ``sample_id, input, prompt, output, seed``
  plus the protocol keys in use (``--editor-arg protocol=...`` declares them; ``mask`` and
  ``object_mask`` are PNG paths). The program writes every ``output`` (and, with ``--editor-arg
  masks=true``, every ``output_mask``).

Quoting. By default the template is split into arguments with ``shlex.split`` *first*, then each
placeholder is substituted inside its argument and the program is started without a shell
(``shell=False``). A prompt is therefore always one argument, whatever quotes, spaces, ``;`` or
``$(...)`` it holds; nothing in the data is ever interpreted by a shell. Write ``{{``/``}}`` for
literal braces. Only when the template itself needs a shell (pipes, redirections, ``&&``), pass
``--cmd-shell``: the template then runs through ``/bin/sh -c`` with every substituted value quoted
by ``shlex.quote``.

Each call has a time limit (``--cmd-timeout``, default 600 s per sample or per batch); on timeout
the program's whole process group is killed and the samples fail with ``cmd_timeout``. A non-zero
exit fails them with ``cmd_failed`` and the last lines of the program's stderr.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import string
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from .base import Editor, EditFailure, EditOutput, check_protocol

DIR_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
STDERR_TAIL = 800

# template placeholder -> protocol key it reveals (None: always allowed)
SAMPLE_PLACEHOLDERS: Dict[str, Optional[str]] = {
    "input": None, "prompt": None, "output": None, "seed": None, "sample_id": None,
    "mask": "gt_mask", "object_mask": "object_mask", "edit_phrase": "edit_phrase",
    "referring_phrase": "referring_phrase", "edit_type": "edit_type", "output_mask": None,
}
BATCH_PLACEHOLDERS = ("batch",)


def _parse_protocol(value: Any) -> frozenset:
    if value is None or value == "":
        return frozenset()
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    return check_protocol(value, "--editor-arg protocol")


def _read_mask(path: Path, missing: str, shown: str) -> Any:
    """A predicted-mask PNG as a float HxW array (grey level / 255), or an ``EditFailure``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        return EditFailure("bad_mask", missing)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        return EditFailure("bad_mask", f"{shown}: cannot be decoded ({type(e).__name__})")


def _with_mask(img: Any, mask: Any) -> Any:
    """``EditOutput(img, mask)``, or the first failure of the two."""
    if isinstance(img, EditFailure):
        return img
    return mask if isinstance(mask, EditFailure) else EditOutput(img, mask)


def _masks_flag(masks: Any, where: str) -> bool:
    flag = str(masks).strip().lower()
    if flag not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"{where}: masks must be true or false, got {masks!r}")
    return flag in ("true", "1", "yes")


def _decode_file(path: Path, shown: Optional[str] = None) -> Union[np.ndarray, EditFailure]:
    from refcoco_edit.imageio import ImageError, decode_image_bytes

    shown = shown or str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return EditFailure("missing_output", f"{shown} does not exist")
    except OSError as e:
        return EditFailure("missing_output", f"{shown} cannot be read ({type(e).__name__})")
    try:
        return decode_image_bytes(data)
    except ImageError as e:
        return EditFailure("corrupt_output", f"{shown}: {e}")


class DirEditor(Editor):
    """Precomputed outputs: ``PATH/{sample_id}.png``. With ``masks=true`` the method's predicted
    masks of the referred object too: ``PATH/{sample_id}.mask.png`` (grey, level / 255 = the
    probability; a 0/255 or 1-bit PNG for a hard mask), scored as ``mask_iou``; a sample without
    one fails as ``bad_mask``."""

    name = "dir"
    batch_size = 16

    def __init__(self, path: str, protocol: Any = None, masks: Any = False):
        with_masks = _masks_flag(masks, "dir:")
        config: Dict[str, Any] = {"path": str(path), "protocol": sorted(_parse_protocol(protocol))}
        if with_masks:  # recorded (and fingerprinted) only when on: older runs' caches stay valid
            config["masks"] = True
        super().__init__(**config)
        self.path = Path(path)
        if not self.path.is_dir():
            raise ValueError(f"dir:{path}: no such folder")
        self.protocol = _parse_protocol(protocol)
        self.returns_mask = with_masks

    def _mask(self, sample_id: str) -> Any:
        p = self.path / f"{sample_id}.mask.png"
        return _read_mask(p, f"no {p.name} in {self.path} (dir: with masks=true)", str(p))

    def _find(self, sample_id: str) -> Optional[Path]:
        from refcoco_edit.schema import is_safe_name

        if not is_safe_name(sample_id):  # the harness skips such rows; never look outside PATH
            return None
        for ext in DIR_EXTENSIONS:
            p = self.path / f"{sample_id}{ext}"
            if p.is_file():
                return p
        return None

    def edit(self, images, prompts, seeds, extras):
        out: List[Union[np.ndarray, EditFailure]] = []
        for e in extras:
            p = self._find(e["sample_id"])
            if p is None:
                out.append(EditFailure("missing_output", f"no {e['sample_id']}{{{','.join(DIR_EXTENSIONS)}}} in {self.path}"))
            else:
                img = _decode_file(p)
                if self.returns_mask and not isinstance(img, EditFailure):
                    img = _with_mask(img, self._mask(e["sample_id"]))
                out.append(img)
        return out


def _fields(template: str) -> List[str]:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"cmd template {template!r}: {e} (write {{{{ and }}}} for literal braces)") from None
    for n in names:
        if n == "" or not n.isidentifier():
            raise ValueError(f"cmd template {template!r}: bad placeholder {{{n}}}; use names like {{input}}")
    return names


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class CmdEditor(Editor):
    """An external program per sample (``{input} {output} ...``) or per batch (``{batch}``)."""

    name = "cmd"
    batch_size = 8

    def __init__(self, template: str, shell: bool = False, timeout: float = 600.0,
                 protocol: Any = None, batch_size: Optional[int] = None, masks: Any = False):
        fields = _fields(template)
        declared = _parse_protocol(protocol)
        self.batch_mode = "batch" in fields
        # a predicted mask per sample: the {output_mask} placeholder, or masks=true for {batch}
        self.returns_mask = ("output_mask" in fields) or (self.batch_mode and _masks_flag(masks, "cmd:"))
        if self.batch_mode:
            bad = sorted(set(fields) - set(BATCH_PLACEHOLDERS))
            if bad:
                raise ValueError(f"cmd template: a {{batch}} template takes no per-sample placeholders, found {bad}")
            protocol_keys = declared
        else:
            unknown = sorted(set(fields) - set(SAMPLE_PLACEHOLDERS))
            if unknown:
                raise ValueError(f"cmd template: unknown placeholder(s) {unknown}; known: "
                                 f"{sorted(SAMPLE_PLACEHOLDERS) + list(BATCH_PLACEHOLDERS)}")
            missing = [k for k in ("input", "output") if k not in fields]
            if missing:
                raise ValueError(f"cmd template must hold {{input}} and {{output}} (or {{batch}}); missing {missing}")
            protocol_keys = declared | {SAMPLE_PLACEHOLDERS[f] for f in fields if SAMPLE_PLACEHOLDERS[f]}
        if "reference" in protocol_keys:
            raise ValueError("cmd editors cannot be given the reference image")
        if not shell:
            try:
                shlex.split(template)
            except ValueError as e:
                raise ValueError(f"cmd template {template!r} cannot be split into arguments: {e}") from None
        timeout = float(timeout)
        if timeout <= 0:
            raise ValueError("--cmd-timeout must be positive")
        config: Dict[str, Any] = {"template": template, "shell": bool(shell), "protocol": sorted(protocol_keys)}
        if self.batch_mode and self.returns_mask:
            config["masks"] = True
        super().__init__(**config)
        self.template = template
        self.shell = bool(shell)
        self.timeout = timeout
        self.protocol = frozenset(protocol_keys)
        if batch_size is not None:
            self.batch_size = int(batch_size)

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d["timeout_s"] = self.timeout  # not part of config: it does not change outputs
        return d

    # -- running ------------------------------------------------------------------------------

    def _run(self, values: Dict[str, str], scrub: str = "") -> Optional[EditFailure]:
        if self.shell:
            cmd: Any = self.template.format_map({k: shlex.quote(v) for k, v in values.items()})
        else:
            cmd = [tok.format_map(values) for tok in shlex.split(self.template)]
        try:
            proc = subprocess.Popen(cmd, shell=self.shell, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:  # program not found, not executable
            return EditFailure("cmd_failed", f"cannot start {cmd if self.shell else cmd[0]!r}: {e}")
        try:
            _, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return EditFailure("cmd_timeout", f"no exit within {self.timeout:g} s; killed")
        finally:
            if proc.poll() is None:
                _kill_group(proc)
                proc.wait()
        if proc.returncode != 0:
            tail = err.decode("utf-8", "replace")
            if scrub:  # the per-call temp folder: keep failure messages identical across runs
                tail = tail.replace(scrub, "<tmp>")
            tail = tail[-STDERR_TAIL:].strip()
            return EditFailure("cmd_failed", f"exit status {proc.returncode}: {tail}")
        return None

    def _write_inputs(self, d: Path, k: int, image: np.ndarray, extra: Dict[str, Any]) -> Dict[str, str]:
        from refcoco_edit.imageio import encode_png

        files = {"input": d / f"{k:04d}-input.png", "output": d / f"{k:04d}-output.png"}
        if self.returns_mask:
            files["output_mask"] = d / f"{k:04d}-output-mask.png"
        files["input"].write_bytes(encode_png(image))
        if "gt_mask" in self.protocol:
            files["mask"] = d / f"{k:04d}-mask.png"
            files["mask"].write_bytes(encode_png(np.asarray(extra["gt_mask"], dtype=np.uint8) * 255))
        if "object_mask" in self.protocol:
            files["object_mask"] = d / f"{k:04d}-object-mask.png"
            files["object_mask"].write_bytes(encode_png(np.asarray(extra["object_mask"], dtype=np.uint8) * 255))
        return {k2: str(v) for k2, v in files.items()}

    def _values(self, paths: Dict[str, str], prompt: str, seed: int, extra: Dict[str, Any]) -> Dict[str, str]:
        v = dict(paths, prompt=prompt, seed=str(int(seed)), sample_id=str(extra["sample_id"]))
        for key in ("edit_phrase", "referring_phrase", "edit_type"):
            if key in self.protocol:
                v[key] = str(extra[key])
        return v

    def edit(self, images, prompts, seeds, extras):
        with tempfile.TemporaryDirectory(prefix="refcoco-edit-cmd-") as tmp:
            d = Path(tmp)
            values = [self._values(self._write_inputs(d, k, img, e), p, s, e)
                      for k, (img, p, s, e) in enumerate(zip(images, prompts, seeds, extras))]
            if self.batch_mode:
                manifest = d / "batch.jsonl"
                manifest.write_text("".join(json.dumps(v, sort_keys=True) + "\n" for v in values), encoding="utf-8")
                fail = self._run({"batch": str(manifest)}, scrub=str(d))
                if fail is not None:
                    return [fail] * len(values)
                return [self._result(v) for v in values]
            out: List[Any] = []
            for v in values:
                fail = self._run(v, scrub=str(d))
                out.append(fail if fail is not None else self._result(v))
            return out

    def _result(self, v: Dict[str, str]) -> Any:
        img = _decode_file(Path(v["output"]), "the program's output")
        if not self.returns_mask or isinstance(img, EditFailure):
            return img
        return _with_mask(img, _read_mask(Path(v["output_mask"]), "the program wrote no {output_mask} file",
                                          "the program's output mask"))
