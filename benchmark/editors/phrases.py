"""Split an editing instruction into what it refers to and what it asks for, from the text alone.

The ``grounded-*`` editors see only (image, prompt, seed): they find the referred object from the
sentence themselves, as a user's two-stage pipeline (grounding -> SAM -> editing) would, so they
need the referring phrase P_r and the edit phrase P_e *without* the dataset's spans.
``parse_instruction`` does it with a small English grammar of imperative edit requests — no model,
no knowledge of the benchmark's templates or spans:

1. polite frames are dropped ("please", "could you", "can you", "I'd like", "I want",
   "let's", "edit the photo/image so that/to", a final "?"/"."/"!");
2. the first rule whose verb frame matches gives (referring, edit, kind): ``replace`` frames
   ("replace X with Y", "swap (out) X for Y", "substitute Y for X", "put Y where X is",
   "turn|change|transform|convert X into Y", "X should become Y", "X replaced by Y",
   "have Y instead of X", "make X Y instead"), ``remove`` frames ("remove|erase|delete|
   get rid of|take out|eliminate X ...", "X should be removed", "make X disappear") and
   ``attribute`` frames ("paint|recolo(u)r|colo(u)r X Y", "change the colo(u)r of X to Y",
   "give X a Y colour/finish", "make X look like it is Y", "make X out of Y", "X should be Y",
   "X, but Y", "make|turn X Y" with Y a trailing attribute word);
3. no rule matches: the whole sentence is the referring phrase (kind ``unknown``).

The result says which rule matched (``rule``), so a report can count parser fall-backs. The
parser is a baseline component: a sentence it does not understand degrades grounding, it never
fails the sample.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

__all__ = ["ParsedInstruction", "parse_instruction", "ATTRIBUTE_WORDS", "strip_article"]

# Words that end an attribute request ("make the car red", "turn the chair wooden"): common colours,
# shades and materials in their adjective form.
ATTRIBUTE_WORDS = frozenset("""
red orange yellow green blue purple violet pink white black gray grey brown beige cyan magenta teal
turquoise navy maroon gold golden silver bronze copper crimson scarlet lime olive
wooden metallic metal marble glass glassy stone plastic rubber paper furry woolen wool leather
transparent shiny matte striped spotted checkered rusty icy frozen fluffy
""".split())
_INTENSIFIERS = ("bright", "dark", "light", "pale", "deep", "vivid")

_POLITE = re.compile(
    r"^(?:(?:please|kindly|could you(?: please)?|can you(?: please)?|would you(?: please)?|will you|"
    r"i'?d like(?: you)?(?: to)?|i would like(?: you)?(?: to)?|i want(?: you)?(?: to)?|let'?s|let us|"
    r"edit (?:the|this) (?:photo|image|picture) (?:so that|to)|in (?:the|this) (?:photo|image|picture),?)\s+)+",
    re.IGNORECASE)
_TAIL = re.compile(r"[\s.!?;,]+$")
_ARTICLE = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)


def strip_article(phrase: str) -> str:
    """``phrase`` without a leading "the"/"a"/"an"."""
    return _ARTICLE.sub("", phrase.strip())


@dataclass(frozen=True)
class ParsedInstruction:
    """What ``parse_instruction`` read: ``referring`` (P_r), ``edit`` (P_e, "" for removals or
    when unknown), ``kind`` (replace | remove | attribute | unknown) and the ``rule`` that matched
    (``none`` for the fall-back: the whole sentence)."""

    referring: str
    edit: str
    kind: str
    rule: str


_Rule = Tuple[str, str, "re.Pattern[str]", Callable[["re.Match[str]"], Tuple[str, str]]]


def _rx(pattern: str) -> "re.Pattern[str]":
    return re.compile(r"^" + pattern + r"$", re.IGNORECASE)


_REMOVE_VERBS = r"(?:remove|erase|delete|get rid of|take out|take away|eliminate|clear away|wipe out|cut out)"
_RULES: List[_Rule] = [
    # attribute frames that contain a replace verb ("change the colour of X to Y") come first
    ("attribute", "colour-of", _rx(r"change the colou?r of (.+) to (.+?)"), lambda m: (m.group(1), m.group(2))),
    ("attribute", "so-that", _rx(r"change (.+) so that it is (.+)"), lambda m: (m.group(1), m.group(2))),
    # replace (the referred object is matched greedily: "the woman with a hat" keeps its "with")
    ("replace", "replace-with", _rx(r"(?:replace|swap out|swap|exchange) (.+) (?:with|for|by) (.+?)"),
     lambda m: (m.group(1), m.group(2))),
    ("replace", "substitute-for", _rx(r"substitute (.+?) for (.+)"), lambda m: (m.group(2), m.group(1))),
    ("replace", "put-where", _rx(r"(?:put|place) (.+?) (?:where|in place of|instead of) (.+?)(?: is| are| was)?"),
     lambda m: (m.group(2), m.group(1))),
    ("replace", "instead-of", _rx(r"(?:have|use|show) (.+?) instead of (.+)"), lambda m: (m.group(2), m.group(1))),
    ("replace", "turn-into", _rx(r"(?:turn|change|transform|convert|morph) (.+) (?:into|to) (.+?)"),
     lambda m: (m.group(1), m.group(2))),
    ("replace", "should-become", _rx(r"(.+?) should (?:become|turn into|be replaced (?:by|with)) (.+)"),
     lambda m: (m.group(1), m.group(2))),
    ("replace", "replaced-by", _rx(r"(.+?)(?: is| are| be| to be)? (?:replaced|swapped) (?:by|with|for) (.+)"),
     lambda m: (m.group(1), m.group(2))),
    ("replace", "make-instead", _rx(r"make (.+) ((?:a|an) .+?) instead"), lambda m: (m.group(1), m.group(2))),
    # remove
    ("remove", "remove-verb", _rx(_REMOVE_VERBS + r" (.+?)(?: from (?:the|this) (?:picture|photo|image|scene))?"
                                  r"(?: and (?:fill|inpaint|restore) .*)?"),
     lambda m: (m.group(1), "")),
    ("remove", "should-be-removed", _rx(r"(.+?) should be (?:removed|erased|deleted|gone)"), lambda m: (m.group(1), "")),
    ("remove", "removed", _rx(r"(.+?) (?:removed|erased|deleted|gone)(?: from .*)?"), lambda m: (m.group(1), "")),
    ("remove", "disappear", _rx(r"make (.+?) (?:disappear|vanish|go away)"), lambda m: (m.group(1), "")),
    # attribute
    ("attribute", "give-finish", _rx(r"give (.+) (?:a|an) (.+?) (?:colou?r|finish|look|texture|tint)"),
     lambda m: (m.group(1), m.group(2))),
    ("attribute", "look-like", _rx(r"make (.+?) look (?:like it is|like it's|as if it were|like) (.+)"),
     lambda m: (m.group(1), m.group(2))),
    ("attribute", "out-of", _rx(r"make (.+?) (?:out of|from) (.+)"), lambda m: (m.group(1), m.group(2))),
    ("attribute", "recolour-to", _rx(r"(?:recolou?r|colou?r|paint|dye|tint) (.+) to (\S+(?: \S+)?)"),
     lambda m: (m.group(1), m.group(2))),
    ("attribute", "recolour", _rx(r"(?:recolou?r|colou?r|paint|dye|tint) (.+)"),
     lambda m: _recolour(m.group(1))),
    ("attribute", "to-be", _rx(r"(.+?) to be (.+)"), lambda m: (m.group(1), m.group(2))),
    ("attribute", "should-be", _rx(r"(.+?) should be (.+)"), lambda m: (m.group(1), m.group(2))),
    ("attribute", "but", _rx(r"(.+?), but (.+)"), lambda m: (m.group(1), m.group(2))),
]


def _split_attribute(text: str) -> Optional[Tuple[str, str]]:
    """"the car bright red" -> ("the car", "bright red") when it ends in an attribute word."""
    words = text.split()
    if len(words) < 2 or words[-1].lower() not in ATTRIBUTE_WORDS:
        return None
    k = len(words) - 1
    if k >= 2 and words[k - 1].lower() in _INTENSIFIERS:
        k -= 1
    if words[k - 1].lower() in ("made", "of") and k >= 3:  # "made of wood"
        k -= 2 if words[k - 1].lower() == "of" and words[k - 2].lower() == "made" else 0
    return " ".join(words[:k]), " ".join(words[k:])


def _recolour(text: str) -> Tuple[str, str]:
    """"the car in red" / "the car red" -> ("the car", "red")."""
    split = _split_attribute(text)
    if split is None:
        return text, ""
    ref, attr = split
    return re.sub(r" (?:in|with)$", "", ref), attr


def parse_instruction(prompt: str) -> ParsedInstruction:
    """(referring phrase, edit phrase, kind, rule) of an edit instruction; see the module docstring."""
    text = _TAIL.sub("", " ".join(str(prompt).split()))
    text = _POLITE.sub("", text).strip()
    text = _TAIL.sub("", text)
    for kind, rule, rx, pick in _RULES:
        m = rx.match(text)
        if m is None:
            continue
        ref, edit = (s.strip(" ,") for s in pick(m))
        if ref:
            return ParsedInstruction(ref, edit, kind, rule)
    m = re.match(r"^(?:make|turn|render|get) (.+)$", text, re.IGNORECASE)
    if m:
        split = _split_attribute(m.group(1))
        if split is not None and split[0]:
            return ParsedInstruction(split[0], split[1], "attribute", "make-attribute")
    return ParsedInstruction(text or str(prompt), "", "unknown", "none")
