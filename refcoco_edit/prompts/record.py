"""The Prompt record and the segment algebra that gives it exact spans.

A prompt is built as a list of segments ``(kind, text)``, kind in ``{"glue", "ref", "edit"}``;
:func:`_assemble` concatenates them and computes the referring and edit spans while going, so the
spans are exact by construction and never found by searching the text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

Span = Tuple[int, int]


@dataclass(frozen=True)
class Prompt:
    """An edit instruction with the spans of its referring part and its edit part.

    Spans are ``(start, end)`` character offsets, end exclusive: ``text[start:end]`` is the
    phrase. Lists (as read back from Arrow) are accepted and stored as tuples.
    """

    text: str
    referring_span: Span
    edit_span: Span
    source: str = "template"  # "template" | "llm:<model>"
    template_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "referring_span", _as_span(self.referring_span))
        object.__setattr__(self, "edit_span", _as_span(self.edit_span))

    @property
    def referring_phrase(self) -> str:
        """The referring part P_r as it appears in the text."""
        a, b = self.referring_span
        return self.text[a:b]

    @property
    def edit_phrase(self) -> str:
        """The edit part P_e as it appears in the text."""
        a, b = self.edit_span
        return self.text[a:b]

    def validate(self) -> None:
        """Raise ValueError if a span is out of range, empty, or the two spans overlap."""
        if not isinstance(self.text, str) or not self.text:
            raise ValueError("prompt text must be a non-empty string")
        n = len(self.text)
        for name, span in (("referring_span", self.referring_span), ("edit_span", self.edit_span)):
            a, b = span
            if not (0 <= a < b <= n):
                raise ValueError(
                    f"{name} {span} is empty or out of range for a prompt of {n} characters"
                )
        (a, b), (c, d) = self.referring_span, self.edit_span
        if a < d and c < b:
            raise ValueError(
                f"referring_span {self.referring_span} and edit_span {self.edit_span} overlap"
            )

    def to_fields(self) -> Dict[str, object]:
        """The data-model columns of this prompt (spans as lists, as stored in Arrow)."""
        return {
            "prompt": self.text,
            "referring_span": list(self.referring_span),
            "edit_span": list(self.edit_span),
            "prompt_source": self.source,
        }


def _as_span(span: Sequence[int]) -> Span:
    try:
        a, b = span
    except (TypeError, ValueError):
        raise ValueError(f"a span is a pair (start, end), got {span!r}") from None
    if isinstance(a, bool) or isinstance(b, bool):
        raise ValueError(f"span offsets must be integers, got {span!r}")
    try:
        ia, ib = int(a), int(b)
    except (TypeError, ValueError):
        raise ValueError(f"span offsets must be integers, got {span!r}") from None
    if ia != a or ib != b:
        raise ValueError(f"span offsets must be integers, got {span!r}")
    return (ia, ib)


Segment = Tuple[str, str]  # (kind, text); kind in {"glue", "ref", "edit"}


def _assemble(segments: Sequence[Segment]) -> Tuple[str, Span, Span]:
    """Concatenate segments, computing the ref and edit spans while going."""
    parts: List[str] = []
    pos = 0
    spans: Dict[str, Span] = {}
    for kind, text in segments:
        if kind in ("ref", "edit"):
            if kind in spans:
                raise ValueError(f"two {kind} segments")
            spans[kind] = (pos, pos + len(text))
        elif kind != "glue":
            raise ValueError(f"unknown segment kind {kind!r}")
        parts.append(text)
        pos += len(text)
    if "ref" not in spans or "edit" not in spans:
        raise ValueError("segments need one ref and one edit")
    return "".join(parts), spans["ref"], spans["edit"]


def _merge_glue(segments: Sequence[Segment]) -> List[Segment]:
    """Drop empty glue and join adjacent glue segments (ref and edit segments stay as they are)."""
    out: List[Segment] = []
    for kind, text in segments:
        if kind == "glue" and not text:
            continue
        if kind == "glue" and out and out[-1][0] == "glue":
            out[-1] = ("glue", out[-1][1] + text)
        else:
            out.append((kind, text))
    return out


def _prompt_from(segments: Sequence[Segment], source: str, template_id: str) -> Prompt:
    """A validated Prompt from segments, its spans computed by :func:`_assemble`."""
    text, ref_span, edit_span = _assemble(segments)
    prompt = Prompt(text, ref_span, edit_span, source=source, template_id=template_id)
    prompt.validate()
    return prompt
