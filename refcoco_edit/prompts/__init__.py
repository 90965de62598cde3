"""Edit instructions: P = P_r + P_e, with exact character spans.

A RefCOCO-Edit prompt is one sentence that both *refers* to an object and says how to *edit* it,
e.g. ``"Replace the man in red with a giraffe."``. Downstream code (span-aware editors, the
ReferDiffusion baseline, LLM rephrasing checks) needs to know which characters are which, so a
:class:`Prompt` carries two ``[start, end)`` character offsets into ``text``:

``referring_span``
    covers the referring expression *exactly as given* (after :func:`normalize_expression`:
    stripped, whitespace collapsed, trailing punctuation dropped), verbatim and never re-cased.
    When the expression has no determiner of its own ("man in red") we add ``"the "`` as glue
    *outside* the span: ``"Remove the [man in red]"``.
``edit_span``
    covers the contiguous phrase that names the change's content:

    * replace: the target noun phrase, article included (``"a giraffe"``, ``"an umbrella"``,
      ``"a robot"``; an imaginative target that already has its article is used as is);
    * attribute: the attribute phrase (``"red"``, ``"bright red"``, ``"wooden"``,
      ``"made of wood"``, or ``"wood"`` in ``"make ... out of wood"``);
    * remove: the removal verb phrase (``"remove"``, ``"erase"``, ``"get rid of"``,
      ``"take out"``, ``"removed"``).

Everything else is template glue. The two spans are non-empty and never overlap.

Prompts are built as a list of segments (glue / ref / edit) that are concatenated while the
offsets are computed, so spans are exact by construction, never found by searching the text
(the referring expression may contain the edit phrase, or the other way round).
:func:`find_span` is for text written elsewhere (LLM outputs), where searching is all we have.

Casing: templates are written with their own casing; only template glue is ever capitalised
(``"The "`` before a determiner-less expression at the start of a sentence). The referring
expression is never re-cased, so a sentence that starts with an expression that has its own
determiner starts in lower case (``"the dog on the left should become a horse."``).

Nothing heavy is imported here; randomness comes from a caller-provided
``numpy.random.Generator`` so that a sample's prompt is a function of its seed.

The package, by concern (each module imports only those listed before it):

``record``       the :class:`Prompt` record, segments -> text + exact spans
``expressions``  normal form of a referring expression, whether it needs ``"the "``
``renderings``   articles, replace-target and attribute renderings
``templates``    the instruction templates and their rendering into segments
``fit``          whether a replacement target fits the source region (size, aspect)
``targets``      choosing the edit target
``paraphrase``   the offline :class:`TemplateParaphraser`
``compose``      :func:`compose` and :func:`make_prompt`
``writer``       :func:`find_span` and the :class:`PromptWriter` plug-in point (LLM rephrasing)
"""
from __future__ import annotations

from ..vocab import BUILD_EDIT_TYPES
from .compose import compose, make_prompt
from .expressions import needs_determiner, normalize_expression
from .paraphrase import TemplateParaphraser
from .record import Prompt
from .renderings import P_INTENSIFIER, indefinite_article, render_target  # noqa: F401
from .targets import _CATEGORY_SYNONYMS, P_IMAGINATIVE, P_MATERIAL, choose_edit_target  # noqa: F401
from .templates import TEMPLATES, Template, template_ids
from .writer import PromptWriter, find_span

# Beside __all__, the package keeps the module attributes that refcoco_edit.prompts had before it
# became a package: the draw probabilities P_* and _CATEGORY_SYNONYMS, which pipelines/rephrase.py
# imports from here (one synonym table for the project).
__all__ = [
    "BUILD_EDIT_TYPES",
    "TEMPLATE_VERSION",
    "Prompt",
    "Template",
    "TEMPLATES",
    "template_ids",
    "normalize_expression",
    "needs_determiner",
    "indefinite_article",
    "render_target",
    "choose_edit_target",
    "compose",
    "TemplateParaphraser",
    "make_prompt",
    "find_span",
    "PromptWriter",
]

# Bump whenever templates, renderings or target choice change (templates.py, renderings.py,
# targets.py, fit.py, paraphrase.py, compose.py): it is part of cache keys.
TEMPLATE_VERSION = "2"  # 2: shape-aware replace targets (fit.py)
