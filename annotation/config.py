"""The Label Studio labeling config of a RefCOCO-Edit review, generated from one place.

What the annotator sees for one sample (one task):

* the source image with the referred object tinted and outlined (``$source_image``), and a
  line naming the edit (``$info``);
* the prompt with its referring phrase and its edit phrase highlighted (``$prompt_html``);
* every candidate reference output side by side (``$cand_<i>_image``, titled ``$cand_<i>_title``),
  each with a brush layer pre-filled (as a prediction) with that candidate's edit mask M_e.

What the annotator does:

* choose the best candidate or reject the sample (``decision``), with a reason when rejecting
  (``reject_reason``, shown only then);
* correct the prompt (``prompt_edit``, pre-filled with the current prompt). When the referring or
  the edit phrase itself changes, mark the new phrases: ``[referring phrase]`` and
  ``{edit phrase}``; otherwise the unchanged phrases are found again in the new text;
* repaint M_e with the brush on the chosen candidate;
* rate the quality 1-5 (``quality``) and leave a note (``notes``).

Tag names are fields of :class:`TagNames` and appear nowhere else: :func:`label_config` writes
them into the XML and :func:`parse_label_config` reads them back *from a config* (the project's
own, as the server holds it) by the tags' types and the data variables they show, the way
label-studio-ml-backend finds its tags.
"""
from __future__ import annotations

import hashlib
import html
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

# Task data keys (the ``$variables`` of the config). One place; push writes them, pull reads them.
KEY_SAMPLE_ID = "sample_id"
KEY_SOURCE = "source_image"
KEY_PROMPT = "prompt"
KEY_PROMPT_HTML = "prompt_html"
KEY_INFO = "info"
KEY_HASH = "refcoco_edit_hash"


def key_cand_image(i: int) -> str:
    """Task data key of candidate ``i``'s image URL."""
    return f"cand_{i}_image"


def key_cand_title(i: int) -> str:
    """Task data key of candidate ``i``'s title."""
    return f"cand_{i}_title"


_CAND_IMAGE_RE = re.compile(r"^\$cand_(\d+)_image$")

REJECT = "Reject"
REJECT_REASONS = (
    "wrong object edited",
    "edit not done or not visible",
    "artifacts / poor quality",
    "prompt ambiguous or wrong",
    "edit changes too much outside the object",
    "other (see note)",
)
MASK_LABEL = "M_e"
# Alpha of the pre-filled M_e brush layer (Label Studio draws a brush region with the alpha of its
# RLE): translucent, so that the candidate stays visible under it.
BRUSH_ALPHA = 110
REF_MARK = ("[", "]")   # marks the referring phrase in an edited prompt
EDIT_MARK = ("{", "}")  # marks the edit phrase in an edited prompt
HIGHLIGHT_REF = "#ffe58f"
HIGHLIGHT_EDIT = "#b7eb8f"


@dataclass(frozen=True)
class TagNames:
    """The names of the config's tags: the only place they are written down."""

    source: str = "source"
    prompt: str = "prompt"
    decision: str = "decision"
    reject_reason: str = "reject_reason"
    prompt_edit: str = "prompt_edit"
    quality: str = "quality"
    notes: str = "notes"
    candidate_prefix: str = "cand_"
    mask_prefix: str = "mask_"

    def candidate(self, i: int) -> str:
        return f"{self.candidate_prefix}{i}"

    def mask(self, i: int) -> str:
        return f"{self.mask_prefix}{i}"


@dataclass
class ConfigSpec:
    """The tags of a labeling config, found by type and data variable (see :func:`parse_label_config`)."""

    source: str
    prompt: str
    decision: str
    reject_reason: Optional[str]
    prompt_edit: Optional[str]
    quality: Optional[str]
    notes: Optional[str]
    candidates: List[str] = field(default_factory=list)      # Image tag name per candidate index
    masks: Dict[str, int] = field(default_factory=dict)      # BrushLabels name -> candidate index
    choice_index: Dict[str, Optional[int]] = field(default_factory=dict)  # decision value -> index (None: reject)

    @property
    def num_candidates(self) -> int:
        return len(self.candidates)


def decision_value(i: int) -> str:
    """The decision result value that accepts candidate ``i`` (the Choice alias)."""
    return str(i)


def label_config(num_candidates: int, names: TagNames = TagNames()) -> str:
    """The labeling config XML for samples with up to ``num_candidates`` candidates."""
    if num_candidates < 1:
        raise ValueError("a review needs at least one candidate per sample")
    root = ET.Element("View")
    ET.SubElement(root, "Style").text = (
        ".rce-row { display: flex; gap: 12px; align-items: flex-start; flex-wrap: wrap; }"
        " .rce-col { flex: 1 1 0; min-width: 260px; }"
        " .rce-prompt { font-size: 18px; line-height: 1.6; padding: 6px 10px; background: #fafafa;"
        " border: 1px solid #ddd; border-radius: 4px; }"
    )
    ET.SubElement(root, "Header", value=f"${KEY_INFO}", size="5")
    ET.SubElement(root, "Header", value="Prompt (referring phrase in yellow, edit phrase in green)", size="6")
    p = ET.SubElement(root, "View", className="rce-prompt")
    ET.SubElement(p, "HyperText", name=names.prompt, value=f"${KEY_PROMPT_HTML}", inline="true")
    row = ET.SubElement(root, "View", className="rce-row")
    col = ET.SubElement(row, "View", className="rce-col")
    ET.SubElement(col, "Header", value="Source (referred object outlined)", size="6")
    ET.SubElement(col, "Image", name=names.source, value=f"${KEY_SOURCE}", zoom="true", maxWidth="100%")
    for i in range(num_candidates):
        col = ET.SubElement(row, "View", className="rce-col")
        ET.SubElement(col, "Header", value=f"${key_cand_title(i)}", size="6")
        brush = ET.SubElement(col, "BrushLabels", name=names.mask(i), toName=names.candidate(i))
        ET.SubElement(brush, "Label", value=MASK_LABEL, background="#ff00ff")
        ET.SubElement(col, "Image", name=names.candidate(i), value=f"${key_cand_image(i)}", zoom="true", maxWidth="100%")
    ET.SubElement(root, "Header", value="Decision: the best candidate, or reject the sample", size="6")
    ch = ET.SubElement(root, "Choices", name=names.decision, toName=names.source, choice="single-radio",
                       showInline="true", required="true", requiredMessage="Choose a candidate or reject the sample")
    for i in range(num_candidates):
        ET.SubElement(ch, "Choice", value=f"Candidate {i + 1}", alias=decision_value(i))
    ET.SubElement(ch, "Choice", value=REJECT)
    rr = ET.SubElement(root, "Choices", name=names.reject_reason, toName=names.source, choice="multiple",
                       showInline="true", visibleWhen="choice-selected", whenTagName=names.decision,
                       whenChoiceValue=REJECT)
    for reason in REJECT_REASONS:
        ET.SubElement(rr, "Choice", value=reason)
    ET.SubElement(root, "Header", size="6", value=(
        "Correct the prompt if needed. If the referring or the edit phrase changes, mark them: "
        f"{REF_MARK[0]}referring phrase{REF_MARK[1]} and {EDIT_MARK[0]}edit phrase{EDIT_MARK[1]}"))
    ET.SubElement(root, "TextArea", name=names.prompt_edit, toName=names.prompt, rows="2", editable="true",
                  maxSubmissions="1", showSubmitButton="false", placeholder="corrected prompt")
    ET.SubElement(root, "Header", value="Quality of the chosen output (1-5)", size="6")
    ET.SubElement(root, "Rating", name=names.quality, toName=names.source, maxRating="5")
    ET.SubElement(root, "TextArea", name=names.notes, toName=names.source, rows="2", editable="true",
                  maxSubmissions="1", showSubmitButton="false", placeholder="note (optional)")
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode")


def config_hash(xml: str) -> str:
    """A short stable hash of a config's text."""
    return hashlib.sha256(xml.encode("utf-8")).hexdigest()[:16]


def parse_label_config(xml: str) -> ConfigSpec:
    """Find the review's tags in a labeling config by their types and the variables they show.

    Raises ValueError naming what is missing when the config is not a RefCOCO-Edit review config.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise ValueError(f"the labeling config is not valid XML ({e})") from None
    tags = list(root.iter())
    images = {t.get("name"): t.get("value", "") for t in tags if t.tag == "Image"}
    source = next((n for n, v in images.items() if v == f"${KEY_SOURCE}"), None)
    cand_by_index: Dict[int, str] = {}
    for n, v in images.items():
        m = _CAND_IMAGE_RE.match(v)
        if m:
            cand_by_index[int(m.group(1))] = n
    prompt = next((t.get("name") for t in tags if t.tag == "HyperText" and t.get("value") == f"${KEY_PROMPT_HTML}"), None)
    missing = [what for what, got in (("the source Image ($source_image)", source),
                                      ("the prompt HyperText ($prompt_html)", prompt),
                                      ("candidate Images ($cand_<i>_image)", cand_by_index or None)) if not got]
    if sorted(cand_by_index) != list(range(len(cand_by_index))):
        missing.append(f"candidate Images numbered 0..n-1 (got {sorted(cand_by_index)})")
    decision = None
    choice_index: Dict[str, Optional[int]] = {}
    reject_reason = None
    for t in tags:
        if t.tag != "Choices":
            continue
        values = [(c.get("value"), c.get("alias")) for c in t.iter("Choice")]
        if any(v == REJECT for v, _ in values) and decision is None:
            decision = t.get("name")
            for v, alias in values:
                key = alias if alias is not None else v
                choice_index[key] = None if v == REJECT else int(key)
        elif t.get("visibleWhen") == "choice-selected":
            reject_reason = t.get("name")
    if decision is None:
        missing.append(f"a decision Choices holding {REJECT!r}")
    if missing:
        raise ValueError("the labeling config is not a refcoco-edit review config: missing " + "; ".join(missing))
    candidates = [cand_by_index[i] for i in range(len(cand_by_index))]
    masks = {}
    for t in tags:
        if t.tag == "BrushLabels" and t.get("toName") in candidates:
            masks[t.get("name")] = candidates.index(t.get("toName"))
    prompt_edit = next((t.get("name") for t in tags if t.tag == "TextArea" and t.get("toName") == prompt), None)
    notes = next((t.get("name") for t in tags if t.tag == "TextArea" and t.get("toName") == source), None)
    quality = next((t.get("name") for t in tags if t.tag == "Rating"), None)
    return ConfigSpec(source=source, prompt=prompt, decision=decision, reject_reason=reject_reason,
                      prompt_edit=prompt_edit, quality=quality, notes=notes, candidates=candidates, masks=masks,
                      choice_index=choice_index)


# ----------------------------------------------------------------------------------------------
# the highlighted prompt
# ----------------------------------------------------------------------------------------------

def prompt_html(text: str, referring_span: Sequence[int], edit_span: Sequence[int]) -> str:
    """The prompt as HTML with the referring phrase and the edit phrase highlighted (escaped)."""
    marks: List[Tuple[int, int, str, str]] = []
    for span, colour, title in ((referring_span, HIGHLIGHT_REF, "referring phrase"),
                                (edit_span, HIGHLIGHT_EDIT, "edit phrase")):
        if span is not None and len(span) == 2 and 0 <= int(span[0]) < int(span[1]) <= len(text):
            marks.append((int(span[0]), int(span[1]), colour, title))
    marks.sort()
    out, pos = [], 0
    for a, b, colour, title in marks:
        if a < pos:  # overlapping spans: highlight the first only
            continue
        out.append(html.escape(text[pos:a]))
        out.append(f'<mark class="rce-{title.split()[0]}" title="{title}" style="background:{colour};'
                   f'padding:1px 3px;border-radius:3px">{html.escape(text[a:b])}</mark>')
        pos = b
    out.append(html.escape(text[pos:]))
    return "<span>" + "".join(out) + "</span>"


# ----------------------------------------------------------------------------------------------
# brush masks (Label Studio's RLE of the RGBA canvas, through the SDK's converter)
# ----------------------------------------------------------------------------------------------

def brush_to_mask(result: Dict[str, Any]) -> np.ndarray:
    """A Label Studio brush region (RLE of the RGBA canvas) -> bool HxW mask (the alpha channel).

    Decoded with the SDK's converter; ValueError when the RLE does not match the stated size."""
    from label_studio_sdk.converter.brush import decode_rle

    value = result.get("value") or {}
    w, h = int(result["original_width"]), int(result["original_height"])
    flat = decode_rle(value["rle"])
    if flat.size != h * w * 4:
        raise ValueError(f"brush RLE holds {flat.size} values, a {w}x{h} RGBA canvas needs {h * w * 4}")
    return np.reshape(flat, (h, w, 4))[:, :, 3] > 0


def mask_to_brush_rle(mask: np.ndarray, alpha: int = BRUSH_ALPHA) -> List[int]:
    """bool HxW mask -> Label Studio brush RLE (through the SDK's converter).

    Every channel of a masked pixel holds ``alpha`` (the browser recolours RGB with the label's
    colour and keeps the alpha: a translucent layer), unmasked pixels are 0."""
    from label_studio_sdk.converter.brush import mask2rle

    if not 0 < alpha <= 255:
        raise ValueError("alpha must be in 1..255")
    return [int(v) for v in mask2rle(np.asarray(mask, dtype=bool).astype(np.uint8) * np.uint8(alpha))]
