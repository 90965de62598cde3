"""Spans of text written elsewhere (LLM outputs), and the LLM plug-in point."""
from __future__ import annotations

from typing import List, Optional, Protocol, Union, runtime_checkable

from .record import Prompt, Span


def find_span(text: str, phrase: str) -> Optional[Span]:
    """The ``[start, end)`` of the first exact, case-sensitive occurrence of ``phrase`` in
    ``text``; None if it does not occur or is empty.

    For prompts written elsewhere (LLM outputs), where the phrases must be found again.
    """
    if not phrase:
        return None
    i = text.find(phrase)
    if i < 0:
        return None
    return (i, i + len(phrase))


@runtime_checkable
class PromptWriter(Protocol):
    """Plug-in point for LLM rephrasing.

    ``write`` gets a list of items (dicts with at least ``edit_type``, ``referring_expression``,
    ``edit_target`` and the template ``prompt``: a :class:`Prompt`) and returns, in the same
    order, one :class:`Prompt` per item (``source="llm:<model>"``, spans recomputed, e.g. with
    :func:`find_span`) or the Exception explaining why that item could not be rewritten.
    """

    def write(self, items: List[dict]) -> List[Union[Prompt, Exception]]:
        ...
