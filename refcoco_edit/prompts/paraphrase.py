"""Offline paraphrasing: another natural wording of a Prompt, touching only its glue.

What this module writes is part of the prompts' cache keys: a change to it bumps
``refcoco_edit.prompts.TEMPLATE_VERSION``.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import numpy as np

from .expressions import _words
from .record import Prompt, _assemble, _merge_glue, _prompt_from

_IMPERATIVES = frozenset(
    """replace swap turn change put make transform substitute show remove erase get take delete
    paint recolor recolour give colour color edit exchange switch convert""".split()
)

_SUFFIXES = (
    " and keep everything else unchanged",
    ", leaving the rest of the photo as it is",
    " without changing anything else",
    " but leave everything else untouched",
    ", keeping the background as it is",
    " and don't touch the rest of the picture",
)

_POLITE_IMPERATIVE = ("please", "tail", "could", "kindly", "can")

# (verb at the end of the leading glue, glue between ref and edit) pairs that mean the same.
_VERB_GROUPS: Dict[str, Tuple[Tuple[Tuple[str, str], ...], ...]] = {
    "replace": (
        (("replace", " with "), ("swap out", " for "), ("switch out", " for "),
         ("exchange", " for "), ("swap", " for "), ("replace", " by ")),
        (("turn", " into "), ("change", " into "), ("transform", " into "),
         ("convert", " into "), ("change", " to ")),
    ),
    "attribute": (
        (("make", " "), ("turn", " ")),
        (("paint", " "), ("colour", " "), ("color", " ")),
        (("recolor", " to "), ("recolour", " to ")),
    ),
}

# Interchangeable glue words (whole words, any edit type).
_WORD_GROUPS: Tuple[Tuple[str, ...], ...] = (
    ("picture", "photo", "image", "scene"),
    ("colour", "color"),
    ("I'd like", "I want"),
    ("Could you", "Can you", "Would you"),
    ("could you", "can you", "would you"),
)


def _match_case(new: str, old: str) -> str:
    return new[:1].upper() + new[1:] if old[:1].isupper() else new


class TemplateParaphraser:
    """Offline variety without an LLM: rewrites a Prompt into another natural wording.

    It only ever touches glue: the referring phrase and the edit phrase are kept verbatim and
    their spans recomputed by construction (the prompt is split at its spans into segments,
    glue segments are rewritten, segments are joined again). Rewrites: a verb synonym
    ("replace X with Y" -> "swap out X for Y"), a glue word synonym ("picture" -> "photo"), a
    "keep the rest" suffix, politeness ("Please ...", "Could you ...?", "..., please"). The
    source is kept; ``template_id`` gets a ``"+para"`` suffix when the text changed.
    """

    def __init__(self, p_politeness: float = 0.25, p_suffix: float = 0.3, p_synonym: float = 0.5):
        for name, p in (("p_politeness", p_politeness), ("p_suffix", p_suffix), ("p_synonym", p_synonym)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.p_politeness = p_politeness
        self.p_suffix = p_suffix
        self.p_synonym = p_synonym

    # -- segments -----------------------------------------------------------------------------
    @staticmethod
    def _split(prompt: Prompt) -> List[List[str]]:
        prompt.validate()
        marks = sorted([("ref",) + prompt.referring_span, ("edit",) + prompt.edit_span], key=lambda s: s[1])
        segs: List[List[str]] = []
        pos = 0
        for kind, a, b in marks:
            if a > pos:
                segs.append(["glue", prompt.text[pos:a]])
            segs.append([kind, prompt.text[a:b]])
            pos = b
        if pos < len(prompt.text):
            segs.append(["glue", prompt.text[pos:]])
        return segs

    @staticmethod
    def _insert_before_end(segs: List[List[str]], addition: str, end: Optional[str] = None) -> None:
        """Insert glue before the final punctuation (and optionally replace that punctuation)."""
        if segs[-1][0] == "glue":
            m = re.search(r"[.?!]*$", segs[-1][1])
            body, punct = segs[-1][1][: m.start()], m.group(0)
            segs[-1][1] = body + addition + (punct if end is None else end)
        else:
            segs.append(["glue", addition + (end or "")])

    # -- rewrites -----------------------------------------------------------------------------
    def _synonym_rewrites(self, segs: List[List[str]], edit_type: Optional[str]) -> List:
        rewrites = []
        kinds = [s[0] for s in segs]
        # verb groups: [glue, ref, glue, edit, ...]
        if edit_type in _VERB_GROUPS and kinds[:4] == ["glue", "ref", "glue", "edit"]:
            lead, mid = segs[0][1], segs[2][1]
            for group in _VERB_GROUPS[edit_type]:
                for verb, middle in group:
                    # the verb ends the leading glue, possibly followed by our "the " glue
                    pat = r"(?:^|(?<=\s))(" + re.escape(verb) + r") (?:the )?$"
                    m = re.search(pat, lead, re.IGNORECASE)
                    if m and mid == middle:
                        for alt_verb, alt_mid in group:
                            if (alt_verb, alt_mid) != (verb, middle):
                                rewrites.append(("verb", m.span(1), alt_verb, alt_mid))
                        break
        # glue words
        for gi, (kind, text) in enumerate(segs):
            if kind != "glue":
                continue
            for group in _WORD_GROUPS:
                for word in group:
                    pat = r"(?<![\w'])" + re.escape(word) + r"(?![\w'])"
                    if re.search(pat, text):
                        for alt in group:
                            if alt != word:
                                rewrites.append(("word", gi, pat, alt))
                        break
        return rewrites

    @staticmethod
    def _apply_rewrite(segs: List[List[str]], rw) -> None:
        if rw[0] == "verb":
            _, (start, end), alt_verb, alt_mid = rw
            lead = segs[0][1]
            segs[0][1] = lead[:start] + _match_case(alt_verb, lead[start:end]) + lead[end:]
            segs[2][1] = alt_mid
        else:
            _, gi, pat, alt = rw
            segs[gi][1] = re.sub(pat, alt, segs[gi][1], count=1)

    def _polite(self, segs: List[List[str]], rng: np.random.Generator) -> None:
        glue = " ".join(t for k, t in segs if k == "glue").lower()
        if re.search(r"\b(please|kindly)\b", glue):
            return
        first_kind, first_text = segs[0]
        first_word = (_words(first_text) or [""])[0]
        lead = first_text.lower()
        already_question = lead.startswith(("could you", "can you", "would you"))
        imperative = (
            first_word in _IMPERATIVES
            and first_kind in ("glue", "edit")
            and not (first_kind == "edit" and first_text[:1].isupper())
        )
        style = _POLITE_IMPERATIVE[int(rng.integers(len(_POLITE_IMPERATIVE)))] if imperative else "tail"
        if already_question or style == "tail":
            self._insert_before_end(segs, ", please")
            return
        if first_kind == "glue":
            segs[0][1] = first_text[:1].lower() + first_text[1:]
        prefix = {"please": "Please ", "could": "Could you ", "kindly": "Kindly ", "can": "Can you "}[style]
        segs.insert(0, ["glue", prefix])
        if style in ("could", "can"):
            self._insert_before_end(segs, "", end="?")

    def paraphrase(self, prompt: Prompt, rng: np.random.Generator) -> Prompt:
        """Another wording of ``prompt`` with the same referring and edit phrases."""
        segs = self._split(prompt)
        edit_type = prompt.template_id.split(".", 1)[0] if prompt.template_id else None
        if rng.random() < self.p_synonym:
            rewrites = self._synonym_rewrites(segs, edit_type)
            if rewrites:
                self._apply_rewrite(segs, rewrites[int(rng.integers(len(rewrites)))])
        if rng.random() < self.p_suffix:
            glue = " ".join(t for k, t in segs if k == "glue")
            if not any(s.strip(", ") in glue for s in _SUFFIXES):
                # no "... and fill in the background and keep ..." chains
                options = [s for s in _SUFFIXES if not (" and " in glue and s.startswith(" and "))]
                self._insert_before_end(segs, options[int(rng.integers(len(options)))])
        if rng.random() < self.p_politeness:
            self._polite(segs, rng)
        merged = _merge_glue([(k, t) for k, t in segs])
        text, _, _ = _assemble(merged)
        if text == prompt.text:
            return prompt
        tid = prompt.template_id if prompt.template_id.endswith("+para") else prompt.template_id + "+para"
        return _prompt_from(merged, prompt.source, tid)

