"""The instruction templates (ids are stable) and rendering one template into segments.

What this module writes is part of the prompts' cache keys: a change to it bumps
``refcoco_edit.prompts.TEMPLATE_VERSION``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .expressions import needs_determiner
from .record import Segment, _merge_glue
from .renderings import _attribute_kind, indefinite_article

# Template language: {ref} / {Ref} = the referring expression (with "the " / "The " glue when it
# has no determiner); {edit} = the rendered edit content; <<words>> = a literal edit phrase (the
# removal verb); {a} = "a"/"an" agreeing with the rendered edit that follows. Everything else is
# glue, written with the casing and end punctuation it should have.
_TOKEN = re.compile(r"\{ref\}|\{Ref\}|\{edit\}|\{a\}|<<([^<>]+)>>")

_ATTRIBUTE_FORMS = ("colour", "adj", "made_of", "noun")


@dataclass(frozen=True)
class Template:
    """One instruction template.

    ``forms`` (attribute templates only) says which renderings fit the slot: ``"colour"``
    (colour targets) and ``"adj"`` / ``"made_of"`` / ``"noun"`` (material renderings).
    """

    id: str
    edit_type: str
    pattern: str
    forms: Tuple[str, ...] = ()

    def accepts(self, edit_target: str) -> bool:
        """Whether this template can express ``edit_target`` (attribute templates are picky)."""
        if self.edit_type != "attribute":
            return True
        kind = _attribute_kind(edit_target)
        if kind == "colour":
            return "colour" in self.forms
        return any(f in self.forms for f in ("adj", "made_of", "noun"))


_TEMPLATE_SPECS: Dict[str, List[Tuple[str, Tuple[str, ...]]]] = {
    "replace": [
        ("replace {ref} with {edit}", ()),
        ("Replace {ref} with {edit}.", ()),
        ("Swap {ref} for {edit}.", ()),
        ("turn {ref} into {edit}", ()),
        ("Change {ref} to {edit}.", ()),
        ("Put {edit} where {ref} is.", ()),
        ("{Ref} should become {edit}.", ()),
        ("Could you replace {ref} with {edit}?", ()),
        ("I'd like {ref} replaced by {edit}.", ()),
        ("Make {ref} {edit} instead.", ()),
        ("Transform {ref} into {edit}.", ()),
        ("Substitute {edit} for {ref}.", ()),
        ("Can you swap out {ref} for {edit}?", ()),
        ("Let's have {edit} instead of {ref}.", ()),
        ("change {ref} into {edit}", ()),
        ("Edit the photo so that {ref} is replaced by {edit}.", ()),
    ],
    "remove": [
        ("<<remove>> {ref}", ()),
        ("<<erase>> {ref} from the picture", ()),
        ("<<get rid of>> {ref}", ()),
        ("<<take out>> {ref}", ()),
        ("<<delete>> {ref}", ()),
        ("Please <<remove>> {ref}.", ()),
        ("Can you <<erase>> {ref}?", ()),
        ("{Ref} should be <<removed>>.", ()),
        ("I want {ref} <<removed>> from the photo.", ()),
        ("Could you <<get rid of>> {ref}?", ()),
        ("Make {ref} <<disappear>>.", ()),
        ("<<remove>> {ref} and fill in the background", ()),
        ("Let's <<take out>> {ref}.", ()),
        ("Edit the image to <<remove>> {ref}.", ()),
    ],
    "attribute": [
        ("make {ref} {edit}", ("colour", "adj")),
        ("Paint {ref} {edit}.", ("colour",)),
        ("{Ref} should be {edit}.", ("colour", "adj", "made_of")),
        ("Change the colour of {ref} to {edit}.", ("colour",)),
        ("Make {ref} look like it is {edit}.", ("made_of",)),
        ("turn {ref} {edit}", ("colour", "adj")),
        ("Can you make {ref} {edit}?", ("colour", "adj")),
        ("Recolor {ref} to {edit}.", ("colour",)),
        ("I want {ref} to be {edit}.", ("colour", "adj", "made_of")),
        ("Give {ref} {a} {edit} colour.", ("colour",)),
        ("Change {ref} so that it is {edit}.", ("colour", "adj", "made_of")),
        ("{Ref}, but {edit}", ("colour", "adj", "made_of")),
        ("Make {ref} out of {edit}.", ("noun",)),
        ("Could you turn {ref} {edit}?", ("colour", "adj")),
        ("Give {ref} {a} {edit} finish.", ("adj",)),
        ("colour {ref} {edit}", ("colour",)),
    ],
}


def _check_pattern(edit_type: str, pattern: str) -> None:
    refs = [m.group(0) for m in _TOKEN.finditer(pattern) if m.group(0) in ("{ref}", "{Ref}")]
    edits = [m for m in _TOKEN.finditer(pattern) if m.group(0) == "{edit}" or m.group(1)]
    if len(refs) != 1 or len(edits) != 1:
        raise ValueError(f"template {pattern!r} needs exactly one ref and one edit slot")
    if edit_type == "remove" and not edits[0].group(1):
        raise ValueError(f"remove template {pattern!r} needs a literal <<verb>>")
    if edit_type != "remove" and edits[0].group(1):
        raise ValueError(f"{edit_type} template {pattern!r} needs an {{edit}} slot")
    if "{a}" in pattern and "{a} {edit}" not in pattern:
        raise ValueError(f"template {pattern!r}: {{a}} must come right before ' {{edit}}'")
    stripped = _TOKEN.sub("", pattern)
    if "{" in stripped or "}" in stripped or "<<" in stripped or ">>" in stripped:
        raise ValueError(f"template {pattern!r} has an unknown placeholder")


def _build_templates() -> Dict[str, Template]:
    out: Dict[str, Template] = {}
    for edit_type, specs in _TEMPLATE_SPECS.items():
        for i, (pattern, forms) in enumerate(specs, start=1):
            _check_pattern(edit_type, pattern)
            if edit_type == "attribute" and (not forms or set(forms) - set(_ATTRIBUTE_FORMS)):
                raise ValueError(f"attribute template {pattern!r} has bad forms {forms}")
            tid = f"{edit_type}.{i:02d}"
            out[tid] = Template(tid, edit_type, pattern, tuple(forms))
    return out


# template id ("replace.01") -> Template. Ids are stable; append new templates at the end.
TEMPLATES: Dict[str, Template] = _build_templates()


def template_ids(edit_type: Optional[str] = None) -> List[str]:
    """The template ids, all or those of one edit type, in a stable order."""
    return [t for t, tpl in TEMPLATES.items() if edit_type is None or tpl.edit_type == edit_type]


def _render(template: Template, expression: str, edit_text: str) -> List[Segment]:
    """The segments of ``template`` filled with the expression (plus "the " glue when needed) and
    the rendered edit text."""
    segments: List[Segment] = []
    pos = 0
    for m in _TOKEN.finditer(template.pattern):
        if m.start() > pos:
            segments.append(("glue", template.pattern[pos:m.start()]))
        tok = m.group(0)
        if tok in ("{ref}", "{Ref}"):
            if needs_determiner(expression):
                segments.append(("glue", "The " if tok == "{Ref}" else "the "))
            segments.append(("ref", expression))
        elif tok == "{edit}":
            segments.append(("edit", edit_text))
        elif tok == "{a}":
            segments.append(("glue", indefinite_article(edit_text)))
        else:
            segments.append(("edit", m.group(1)))
        pos = m.end()
    if pos < len(template.pattern):
        segments.append(("glue", template.pattern[pos:]))
    return _merge_glue(segments)

