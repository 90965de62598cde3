"""The labeling config of a study: what a rater sees and does for one task (one sample).

Sees: a line naming the sample and the edit (``$info``), the prompt with its referring phrase and
its edit phrase highlighted as in the review (``$prompt_html``), the source image with the
referred object outlined (``$source_image``), and the methods' outputs as "Output 1..n"
(``$out_<k>_image``, titled ``$out_<k>_title``) in a per-task shuffled order. Nothing in the
config or in a task says which method made which output.

Does, per output: rate *quality* 1-5 (``quality_<k>``) and *consistency* 1-5 (``consistency_<k>``:
only the referred object edited, as instructed); optionally pick the best output or "no
preference" (``preference``), and leave a note.

Tag names are fields of :class:`StudyTags`; :func:`parse_study_config` reads them back from the
project's config as the server holds it (Image tags by their data variable, Ratings by the image
they rate and their name's prefix).
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

KEY_SAMPLE_ID = "sample_id"
KEY_SOURCE = "source_image"
KEY_PROMPT = "prompt"
KEY_PROMPT_HTML = "prompt_html"
KEY_INFO = "info"
KEY_HASH = "refcoco_edit_hash"
TIE = "tie"
NO_PREFERENCE = "No preference"
_OUT_IMAGE_RE = re.compile(r"^\$out_(\d+)_image$")


def key_out_image(k: int) -> str:
    """Task data key of output slot ``k``'s image URL."""
    return f"out_{k}_image"


def key_out_title(k: int) -> str:
    """Task data key of output slot ``k``'s title."""
    return f"out_{k}_title"


def slot_title(k: int) -> str:
    """What the rater reads above slot ``k``."""
    return f"Output {k + 1}"


@dataclass(frozen=True)
class StudyTags:
    """The names of the study config's tags: the only place they are written down."""

    source: str = "source"
    prompt: str = "prompt"
    preference: str = "preference"
    notes: str = "notes"
    output_prefix: str = "out_"
    quality_prefix: str = "quality_"
    consistency_prefix: str = "consistency_"


@dataclass
class StudySpec:
    """The tags of a study config, found by :func:`parse_study_config`."""

    source: str
    outputs: Dict[str, int] = field(default_factory=dict)                       # Image name -> slot
    ratings: Dict[str, Tuple[str, int]] = field(default_factory=dict)          # Rating name -> (criterion, slot)
    preference: Optional[str] = None
    preference_slot: Dict[str, Optional[int]] = field(default_factory=dict)    # choice value -> slot (None: tie)

    @property
    def num_slots(self) -> int:
        return len(self.outputs)


def study_config(num_slots: int, tags: StudyTags = StudyTags()) -> str:
    """The labeling config XML for tasks with up to ``num_slots`` outputs."""
    if num_slots < 2:
        raise ValueError("a study compares at least two methods")
    root = ET.Element("View")
    ET.SubElement(root, "Style").text = (
        ".rcs-row { display: flex; gap: 12px; align-items: flex-start; flex-wrap: wrap; }"
        " .rcs-col { flex: 1 1 0; min-width: 220px; }"
        " .rce-prompt { font-size: 18px; line-height: 1.6; padding: 6px 10px; background: #fafafa;"
        " border: 1px solid #ddd; border-radius: 4px; }")
    ET.SubElement(root, "Header", value=f"${KEY_INFO}", size="5")
    ET.SubElement(root, "Header", size="6", value=(
        "Rate every output 1-5 for QUALITY (how good the image looks) and for CONSISTENCY (only the "
        "referred object was edited, as the prompt asks; everything else unchanged)."))
    p = ET.SubElement(root, "View", className="rce-prompt")
    ET.SubElement(p, "HyperText", name=tags.prompt, value=f"${KEY_PROMPT_HTML}", inline="true")
    row = ET.SubElement(root, "View", className="rcs-row")
    col = ET.SubElement(row, "View", className="rcs-col")
    ET.SubElement(col, "Header", value="Source (referred object outlined)", size="6")
    ET.SubElement(col, "Image", name=tags.source, value=f"${KEY_SOURCE}", zoom="true", maxWidth="100%")
    for k in range(num_slots):
        name = f"{tags.output_prefix}{k}"
        col = ET.SubElement(row, "View", className="rcs-col")
        ET.SubElement(col, "Header", value=f"${key_out_title(k)}", size="6")
        ET.SubElement(col, "Image", name=name, value=f"${key_out_image(k)}", zoom="true", maxWidth="100%")
        ET.SubElement(col, "Header", value="Quality", size="6")
        ET.SubElement(col, "Rating", name=f"{tags.quality_prefix}{k}", toName=name, maxRating="5")
        ET.SubElement(col, "Header", value="Consistency", size="6")
        ET.SubElement(col, "Rating", name=f"{tags.consistency_prefix}{k}", toName=name, maxRating="5")
    ET.SubElement(root, "Header", value="Which output is best overall? (optional)", size="6")
    ch = ET.SubElement(root, "Choices", name=tags.preference, toName=tags.source, choice="single-radio",
                       showInline="true")
    for k in range(num_slots):
        ET.SubElement(ch, "Choice", value=slot_title(k), alias=str(k))
    ET.SubElement(ch, "Choice", value=NO_PREFERENCE, alias=TIE)
    ET.SubElement(root, "TextArea", name=tags.notes, toName=tags.source, rows="2", editable="true",
                  maxSubmissions="1", showSubmitButton="false", placeholder="note (optional)")
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode")


def parse_study_config(xml: str, tags: StudyTags = StudyTags()) -> StudySpec:
    """Find the study's tags in a labeling config; ValueError naming what is missing."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise ValueError(f"the labeling config is not valid XML ({e})") from None
    all_tags = list(root.iter())
    source = next((t.get("name") for t in all_tags if t.tag == "Image" and t.get("value") == f"${KEY_SOURCE}"), None)
    outputs: Dict[str, int] = {}
    for t in all_tags:
        m = _OUT_IMAGE_RE.match(t.get("value", "")) if t.tag == "Image" else None
        if m:
            outputs[t.get("name")] = int(m.group(1))
    ratings: Dict[str, Tuple[str, int]] = {}
    for t in all_tags:
        if t.tag != "Rating" or t.get("toName") not in outputs:
            continue
        name = t.get("name") or ""
        crit = ("quality" if name.startswith(tags.quality_prefix) else
                "consistency" if name.startswith(tags.consistency_prefix) else None)
        if crit:
            ratings[name] = (crit, outputs[t.get("toName")])
    missing = [what for what, got in (("the source Image ($source_image)", source),
                                      ("output Images ($out_<k>_image)", outputs)) if not got]
    if outputs and sorted(outputs.values()) != list(range(len(outputs))):
        missing.append(f"output Images numbered 0..n-1 (got {sorted(outputs.values())})")
    for crit in ("quality", "consistency"):
        if sorted(s for c, s in ratings.values() if c == crit) != list(range(len(outputs))):
            missing.append(f"a {crit} Rating on every output Image")
    if missing:
        raise ValueError("the labeling config is not a refcoco-edit study config: missing " + "; ".join(missing))
    spec = StudySpec(source=source, outputs=outputs, ratings=ratings)
    for t in all_tags:
        if t.tag == "Choices" and t.get("name") == tags.preference:
            spec.preference = t.get("name")
            for c in t.iter("Choice"):
                alias = c.get("alias") or c.get("value")
                spec.preference_slot[alias] = None if alias == TIE else int(alias)
    return spec
