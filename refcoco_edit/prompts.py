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
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import numpy as np

from .errors import SampleError
from .vocab import BUILD_EDIT_TYPES, COCO_CATEGORIES, COCO_SUPERCATEGORIES, COLOURS, IMAGINATIVE_TARGETS, MATERIALS

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


# Bump whenever templates, renderings or target choice change: it is part of cache keys.
TEMPLATE_VERSION = "1"

# Probability that an attribute edit is a material rather than a colour.
P_MATERIAL = 0.3
# Probability that an imaginative target is drawn when ``imaginative=True``.
P_IMAGINATIVE = 0.35
# Probability that a colour gets an intensifier ("bright red").
P_INTENSIFIER = 0.25

Span = Tuple[int, int]


# ----------------------------------------------------------------------------------------------
# The record
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Expressions
# ----------------------------------------------------------------------------------------------

_TRAILING_PUNCT = ".,;:!?\u2026"

# A first word that already makes the expression a determined noun phrase (or a pronoun).
_DETERMINERS = frozenset(
    """
    the a an this that these those his her their its my your our whose which what
    some any each every both all another either neither several many few much half such
    he she it they him them i me you we us
    someone somebody something anyone anybody anything everyone everybody everything
    nobody nothing whoever whatever whichever
    """.split()
)


def normalize_expression(expr: str) -> str:
    """Strip, collapse whitespace, and drop trailing punctuation; keep the case as given.

    This is the exact text the referring span covers.
    """
    text = " ".join(str(expr).split())
    while text and (text[-1] in _TRAILING_PUNCT or text[-1].isspace()):
        text = text[:-1]
    return text


def _words(text: str) -> List[str]:
    return re.findall(r"[^\W_]+(?:['\u2019][^\W_]+)*", text.lower())


def needs_determiner(expression: str) -> bool:
    """Whether ``"the "`` must be put before the expression to make it a noun phrase.

    False when it starts with a determiner, pronoun or possessive ("the", "his", "those",
    "someone"). "one" counts as a determiner only in "one of ...": RefCOCO's "one on left"
    means *the* one on the left, and "remove one on left" would say something else.
    """
    words = _words(expression)
    if not words:
        return False
    first = words[0]
    for suffix in ("'s", "\u2019s"):
        if first.endswith(suffix) and first[: -len(suffix)] in _DETERMINERS:
            return False
    if first in _DETERMINERS:
        return False
    if first == "one":
        return not (len(words) > 1 and words[1] == "of")
    return True


# ----------------------------------------------------------------------------------------------
# Articles and renderings
# ----------------------------------------------------------------------------------------------

# Vowel letters with a consonant sound ("a unicorn") and silent h ("an hour").
_CONSONANT_SOUND_PREFIXES = (
    "uni", "use", "usu", "uti", "ute", "uro", "ura", "ubiq", "ufo", "uk", "eu", "ewe", "one",
    "once",
)
_SILENT_H_PREFIXES = ("hour", "honest", "honor", "honour", "heir")


def indefinite_article(phrase: str) -> str:
    """``"a"`` or ``"an"`` for the sound the phrase starts with (vocab-level accuracy)."""
    words = _words(phrase)
    if not words:
        return "a"
    w = words[0]
    if w.startswith(_SILENT_H_PREFIXES):
        return "an"
    if w.startswith(_CONSONANT_SOUND_PREFIXES):
        return "a"
    if len(w) == 1 and w in "aefhilmnorsx":  # letters read as "an": "an X-ray", "an f-stop"
        return "an"
    return "an" if w[0] in "aeiou" else "a"


_PAIR_NOUNS = frozenset({"skis", "scissors"})
_MASS_NOUNS = frozenset({"broccoli"})
_NP_STARTERS = frozenset({"a", "an", "the", "some", "two", "three", "several", "many"})


def render_target(target: str) -> str:
    """The replace target as a noun phrase: ``"giraffe"`` -> ``"a giraffe"``.

    Targets that already start with an article (imaginative ones: ``"a robot"``) are used as is;
    plural-only nouns become ``"a pair of skis"``, mass nouns ``"some broccoli"``.
    """
    t = " ".join(target.split())
    if not t:
        raise ValueError("a replace edit needs a non-empty target")
    words = t.split(" ")
    if words[0].lower() in _NP_STARTERS:
        return t
    if t.lower() in _PAIR_NOUNS:
        return f"a pair of {t}"
    if t.lower() in _MASS_NOUNS:
        return f"some {t}"
    return f"{indefinite_article(t)} {t}"


# Intensifiers that keep the hue (the classical recolouring renders one RGB per colour).
_INTENSIFIERS: Dict[str, Tuple[str, ...]] = {
    "red": ("bright", "vivid", "deep"), "orange": ("bright", "vivid"),
    "yellow": ("bright",), "green": ("bright", "vivid"), "blue": ("bright", "vivid", "deep"),
    "purple": ("bright", "deep"), "pink": ("bright",), "white": ("pure", "snow"),
    "black": ("jet", "pitch"), "gray": (), "brown": (),
}

# material -> (predicative adjective, noun used in "made of X" / "out of X")
_MATERIAL_FORMS: Dict[str, Tuple[str, str]] = {
    "wooden": ("wooden", "wood"), "metallic": ("metallic", "metal"), "golden": ("golden", "gold"),
    "marble": ("marble", "marble"), "glass": ("glass", "glass"), "stone": ("stone", "stone"),
}

# words in an expression that mention a material (prefix match on word starts)
_MATERIAL_WORDS: Dict[str, Tuple[str, ...]] = {
    "wooden": ("wood",), "metallic": ("metal", "steel", "iron", "chrome"),
    "golden": ("gold",), "marble": ("marble",), "glass": ("glass",), "stone": ("stone",),
}

_COLOUR_WORDS: Dict[str, Tuple[str, ...]] = {
    "gray": ("gray", "grey"), "blue": ("blue", "bluish"), "purple": ("purple", "violet"),
}


def _attribute_kind(target: str) -> str:
    if target in COLOURS:
        return "colour"
    if target in MATERIALS:
        return "material"
    raise ValueError(
        f"unknown attribute target {target!r}: expected a colour {sorted(COLOURS)} "
        f"or a material {list(MATERIALS)}"
    )


def _render_attribute(target: str, form: str, rng: np.random.Generator) -> str:
    if form == "colour":
        choices = _INTENSIFIERS.get(target, ())
        if choices and rng.random() < P_INTENSIFIER:
            return f"{choices[int(rng.integers(len(choices)))]} {target}"
        return target
    if target not in _MATERIAL_FORMS:  # a material added to vocab without a rendering
        adj = noun = target
    else:
        adj, noun = _MATERIAL_FORMS[target]
    if form == "adj":
        return adj
    if form == "made_of":
        return f"made of {noun}"
    if form == "noun":
        return noun
    raise ValueError(f"unknown attribute form {form!r}")


# ----------------------------------------------------------------------------------------------
# Templates
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Segments -> text + spans
# ----------------------------------------------------------------------------------------------

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


def _render(template: Template, expression: str, edit_text: str) -> List[Segment]:
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


def _merge_glue(segments: Sequence[Segment]) -> List[Segment]:
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
    text, ref_span, edit_span = _assemble(segments)
    prompt = Prompt(text, ref_span, edit_span, source=source, template_id=template_id)
    prompt.validate()
    return prompt


# ----------------------------------------------------------------------------------------------
# Choosing the edit target
# ----------------------------------------------------------------------------------------------

_NAME_TO_SUPER: Dict[str, str] = {
    COCO_CATEGORIES[i]: sup for sup, ids in COCO_SUPERCATEGORIES.items() for i in ids
}

# Rough physical size class of each category (0 small, 1 medium, 2 large); default small.
_SIZE: Dict[str, int] = {
    **{n: 2 for n in (
        "airplane", "bus", "train", "truck", "boat", "car", "elephant", "giraffe", "bed",
        "couch", "dining table", "refrigerator", "horse", "cow", "bear", "motorcycle",
        "bench", "zebra",
    )},
    **{n: 1 for n in (
        "person", "bicycle", "sheep", "dog", "cat", "fire hydrant", "parking meter",
        "stop sign", "traffic light", "suitcase", "chair", "toilet", "tv", "oven", "sink",
        "microwave", "potted plant", "surfboard", "skis", "snowboard", "umbrella",
        "teddy bear", "backpack", "skateboard", "laptop", "cake", "pizza", "kite",
    )},
}

# Other words by which an expression names a category (on top of the name and its plural).
_CATEGORY_SYNONYMS: Dict[str, Tuple[str, ...]] = {
    "person": ("people", "man", "men", "woman", "women", "guy", "guys", "girl", "girls", "boy",
               "boys", "lady", "ladies", "kid", "kids", "child", "children", "player", "baby",
               "dude", "gentleman", "gentlemen", "mom", "dad"),
    "bicycle": ("bike", "bikes", "cycle"), "motorcycle": ("motorbike", "motorbikes", "bike", "bikes"),
    "airplane": ("plane", "planes", "jet", "jets", "aeroplane"), "tv": ("television", "monitor", "screen"),
    "couch": ("sofa", "sofas"), "cell phone": ("phone", "phones", "cellphone", "cellphones"),
    "dining table": ("table", "tables"), "donut": ("doughnut", "doughnuts"),
    "potted plant": ("plant", "plants"), "refrigerator": ("fridge", "fridges"),
    "hair drier": ("hair dryer", "dryer"), "sports ball": ("ball", "balls"),
    "teddy bear": ("teddy", "teddies"), "knife": ("knives",), "mouse": ("mice",),
    "wine glass": ("glass", "glasses"), "laptop": ("computer",), "handbag": ("purse", "bag"),
    "backpack": ("bag",), "hot dog": ("hotdog", "hotdogs"), "cup": ("mug", "mugs"),
    "sheep": ("lamb", "lambs"), "cow": ("cattle", "bull", "calf"),
}


def _mentions(text: str, word: str, prefix: bool = False) -> bool:
    """Whether ``word`` occurs in ``text`` as a whole word (or a word start, ``prefix=True``),
    case-insensitively, with plural endings allowed."""
    w = re.escape(word.lower()).replace(r"\ ", r"\s+")
    tail = r"" if prefix else r"(?:s|es)?\b"
    return re.search(r"(?<![^\W_])" + w + tail, text.lower()) is not None


def _named_categories(expression: str) -> set:
    named = set()
    for name in COCO_CATEGORIES.values():
        words = (name,) + _CATEGORY_SYNONYMS.get(name, ())
        if any(_mentions(expression, w) for w in words):
            named.add(name)
    return named


def _target_weight(source: str, cand: str) -> float:
    """Plausibility of replacing ``source`` by ``cand``: similar size and same supercategory
    weigh more, but every candidate keeps some weight (variety)."""
    if source not in _NAME_TO_SUPER:
        return 1.0
    gap = abs(_SIZE.get(source, 0) - _SIZE.get(cand, 0))
    w = (3.0, 1.5, 0.5)[gap]
    if _NAME_TO_SUPER.get(cand) == _NAME_TO_SUPER[source]:
        w *= 2.0
    return w


def _pick(rng: np.random.Generator, items: Sequence[str], weights: Optional[Sequence[float]] = None) -> str:
    if weights is None:
        return items[int(rng.integers(len(items)))]
    p = np.asarray(weights, dtype=float)
    return items[int(rng.choice(len(items), p=p / p.sum()))]


def choose_edit_target(
    edit_type: str,
    category: str,
    expression: str,
    rng: np.random.Generator,
    available_categories: Optional[Sequence[str]] = None,
    imaginative: bool = False,
) -> str:
    """Pick what the edit changes the object into / to.

    * replace: a COCO category name other than ``category`` and other than any category the
      expression names (also by synonyms and plurals: "man" names person). With
      ``available_categories`` (the classical backend needs an exemplar instance) the choice is
      restricted to those; if nothing is left, ``SampleError("no_exemplar")``. With
      ``imaginative=True`` an imaginative target ("a robot") is drawn with probability
      ``P_IMAGINATIVE`` (or whenever no COCO candidate is left). COCO candidates are weighted
      toward a similar size and the same supercategory, keeping every candidate possible.
    * attribute: a colour of ``vocab.COLOURS`` not mentioned in the expression or the category
      name, or (with probability ``P_MATERIAL``) a material of ``vocab.MATERIALS``.
    * remove: ``""``.
    """
    if edit_type == "remove":
        return ""
    expression = normalize_expression(expression)
    if edit_type == "replace":
        excluded = {category} | _named_categories(expression)
        pool = [n for n in COCO_CATEGORIES.values() if n not in excluded]
        if available_categories is not None:
            allowed = set(available_categories)
            pool = [n for n in pool if n in allowed]
        fancy: List[str] = []
        if imaginative:
            text = f"{expression} {category}"
            fancy = [
                t for t in IMAGINATIVE_TARGETS
                if not any(_mentions(text, w) for w in t.split()[1:] if len(w) > 2)
            ]
        if fancy and (not pool or rng.random() < P_IMAGINATIVE):
            return _pick(rng, fancy)
        if not pool:
            raise SampleError(
                "no_exemplar",
                f"no replace target for {category!r} ({expression!r}): no other category "
                f"with an exemplar among {sorted(available_categories or [])}",
            )
        return _pick(rng, pool, [_target_weight(category, n) for n in pool])
    if edit_type == "attribute":
        text = f"{expression} {category}"
        colours = [
            c for c in COLOURS
            if not any(_mentions(text, w, prefix=True) for w in _COLOUR_WORDS.get(c, (c,)))
        ]
        materials = [
            m for m in MATERIALS
            if not any(_mentions(text, w, prefix=True) for w in _MATERIAL_WORDS.get(m, (m,)))
        ]
        use_material = bool(materials) and (not colours or rng.random() < P_MATERIAL)
        if use_material:
            return _pick(rng, materials)
        if colours:
            return _pick(rng, colours)
        raise SampleError("prompt_error", f"every attribute value is already in {expression!r}")
    raise ValueError(f"no edit targets for edit type {edit_type!r}; expected one of {BUILD_EDIT_TYPES}")


# ----------------------------------------------------------------------------------------------
# Composing
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Offline paraphrasing
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Spans of text written elsewhere, and the LLM plug-in point
# ----------------------------------------------------------------------------------------------

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
