"""Composing P = P_r + P_e from a template (and optionally paraphrasing it).

What this module writes is part of the prompts' cache keys: a change to it bumps
``refcoco_edit.prompts.TEMPLATE_VERSION``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import SampleError
from ..vocab import BUILD_EDIT_TYPES
from .expressions import normalize_expression
from .paraphrase import TemplateParaphraser
from .record import Prompt, _prompt_from
from .renderings import _attribute_kind, _render_attribute, render_target
from .templates import TEMPLATES, _render, template_ids


def compose(
    edit_type: str,
    referring_expression: str,
    edit_target: str,
    rng: np.random.Generator,
    template_id: Optional[str] = None,
) -> Prompt:
    """Write the instruction for one edit from a template, with exact spans.

    ``template_id=None`` draws one of the templates of ``edit_type`` that can express
    ``edit_target``. Raises ``SampleError("empty_sentence")`` when the expression is empty
    after normalisation, ValueError on an unknown edit type / template or a target the chosen
    template cannot express.
    """
    if edit_type not in BUILD_EDIT_TYPES:
        raise ValueError(f"no templates for edit type {edit_type!r}; expected one of {BUILD_EDIT_TYPES}")
    expression = normalize_expression(referring_expression)
    if not expression:
        raise SampleError("empty_sentence", f"referring expression {referring_expression!r} is empty")
    if template_id is None:
        candidates = [TEMPLATES[t] for t in template_ids(edit_type)]
        candidates = [t for t in candidates if t.accepts(edit_target)]
        template = candidates[int(rng.integers(len(candidates)))]
    else:
        if template_id not in TEMPLATES:
            raise ValueError(f"unknown template id {template_id!r}")
        template = TEMPLATES[template_id]
        if template.edit_type != edit_type:
            raise ValueError(f"template {template_id} is a {template.edit_type} template, not {edit_type}")
        if not template.accepts(edit_target):
            raise ValueError(f"template {template_id} ({template.pattern!r}) cannot express {edit_target!r}")

    if edit_type == "replace":
        edit_text = render_target(edit_target)
    elif edit_type == "attribute":
        if _attribute_kind(edit_target) == "colour":
            form = "colour"
        else:
            forms = [f for f in template.forms if f != "colour"]
            form = forms[int(rng.integers(len(forms)))]
        edit_text = _render_attribute(edit_target, form, rng)
    else:
        edit_text = ""  # the removal verb is literal in the template
    return _prompt_from(_render(template, expression, edit_text), "template", template.id)


def make_prompt(
    edit_type: str,
    referring_expression: str,
    edit_target: str,
    rng: np.random.Generator,
    paraphraser: Optional[TemplateParaphraser] = None,
    template_id: Optional[str] = None,
) -> Prompt:
    """Compose a template prompt, then (optionally) paraphrase it."""
    prompt = compose(edit_type, referring_expression, edit_target, rng, template_id=template_id)
    if paraphraser is not None:
        prompt = paraphraser.paraphrase(prompt, rng)
    return prompt

