"""What the VLM judge is asked and what it may answer: the questions, their prompts (ours,
versioned by :data:`JUDGE_PROMPT_VERSION`), the JSON schema of each answer and its validation.

Four questions per sample and pass (``QUESTIONS``):

* ``sc`` (VIEScore semantic consistency; images: source, output): ``{"score": [editing_success,
  over_editing], "reasoning"}``, each score an integer-valued number in [0, 10];
* ``pq`` (VIEScore perceptual quality; image: output): ``{"score": [naturalness, artifacts],
  "reasoning"}``, each in [0, 10];
* ``ref_blind`` (ours; images: source, output): ``{"target_edited": bool, "distractors_changed":
  int in [0, N], "other_changed": bool, "reasoning"}``: the judge must find the referred object
  from the words itself;
* ``ref_marked`` (ours; images: source with the referred object outlined from M, output): the
  same answer; the judge only verifies.

On the reference-based track (samples with an exemplar) one more question:

* ``same_object`` (ours; images: the exemplar with its object outlined from its mask, the output
  with the edited area M_e outlined): ``{"same_object": bool, "score": number in [0, 10],
  "reasoning"}``: is the object in the edited region the same object (identity, not only the
  category) as the one outlined in the reference image.

N is the number of same-category distractors (the look-alikes the referring phrase must tell
apart), told to the judge in both protocols. Version history: ``refcoco-edit-judge-1`` (sc, pq,
ref_blind, ref_marked); ``refcoco-edit-judge-2`` adds ``same_object`` (the other prompts are
unchanged, but every cache key moves with the version). Prompts, schemas and the re-ask message are part
of the cache key through :data:`JUDGE_PROMPT_VERSION`: change any of them only with a new version.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from refcoco_edit.errors import SampleError

__all__ = ["JUDGE_PROMPT_VERSION", "QUESTIONS", "REFERENCE_QUESTIONS", "PROTOCOLS", "OUTLINE_RGB", "JudgeRejected", "Question",
           "answer_schema", "build_messages", "parse_answer", "feedback_message"]

JUDGE_PROMPT_VERSION = "refcoco-edit-judge-2"
PROTOCOLS = ("blind", "marked")
QUESTIONS = ("sc", "pq", "ref_blind", "ref_marked", "same_object")
REFERENCE_QUESTIONS = ("same_object",)  # asked only on the reference-based track (samples with an exemplar)
OUTLINE_RGB = (255, 0, 255)  # the marked protocol's outline colour (magenta: rare in photos)
OUTLINE_NAME = "magenta"
SCORE_MAX = 10

_REFUSAL = re.compile(r"^\s*(i'?m sorry|i am sorry|sorry,|i can(?:'|no)t|i cannot|i won'?t|as an ai\b|i'm unable|"
                      r"i am unable)", re.IGNORECASE)
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL | re.IGNORECASE)


class JudgeRejected(SampleError):
    """An answer of the judge that cannot be used (``reason``: a ``judge_*`` code)."""


@dataclass(frozen=True)
class Question:
    """One question about one sample: its kind (``QUESTIONS``), the texts it quotes and the
    number of same-category distractors N."""

    kind: str
    prompt: str
    referring_phrase: str
    edit_phrase: str
    category: str
    n_distractors: int


_SYSTEM = ("You are a careful evaluator of image edits. You look at the images you are given and answer with "
           "exactly one JSON object, with no text before or after it.")

_SC = ("The first image is an original photo. The second image was made from it by an image editor following "
       "this instruction:\n\"{prompt}\"\n\n"
       "Rate the edit with two integers from 0 to 10:\n"
       "1. editing_success: 10 when the second image does exactly what the instruction asks, 0 when it does "
       "nothing of it.\n"
       "2. over_editing: 10 when nothing beyond what the instruction asks was changed, 0 when the second image "
       "is changed far beyond it (other objects, the background, the whole scene).\n\n"
       "Answer with: {{\"score\": [editing_success, over_editing], \"reasoning\": \"one or two sentences\"}}")

_PQ = ("This image was made by an image editor. Rate it with two integers from 0 to 10:\n"
       "1. naturalness: 10 when it looks like a real, coherent photo (lighting, shadows, scale, perspective), "
       "0 when it looks clearly unnatural.\n"
       "2. artifacts: 10 when it has no visible artifacts, 0 when it is full of them (distortion, blur, noise, "
       "seams, broken textures, watermarks).\n\n"
       "Answer with: {\"score\": [naturalness, artifacts], \"reasoning\": \"one or two sentences\"}")

_REF = ("The first image is an original photo, the second an edited version of it. The instruction was:\n"
        "\"{prompt}\"\n\n"
        "It refers to one object, \"{referring}\", and asks for this edit: \"{edit}\".\n"
        "{marked}"
        "Besides the referred object, the original photo shows {n} other {category} object(s) that the "
        "instruction does not refer to.\n\n"
        "Compare the two images and answer:\n"
        "- target_edited: true if the referred object received the requested edit, else false;\n"
        "- distractors_changed: how many of the {n} other {category} object(s) were visibly changed "
        "(an integer from 0 to {n});\n"
        "- other_changed: true if anything else (other objects, the background) was visibly changed, "
        "else false.\n\n"
        "Answer with: {{\"target_edited\": true or false, \"distractors_changed\": integer, "
        "\"other_changed\": true or false, \"reasoning\": \"one or two sentences\"}}")

_SAME = ("The first image is a reference image: the object outlined in " + OUTLINE_NAME + " in it is the "
         "reference object. The second image was made by an image editor following this instruction:\n"
         "\"{prompt}\"\n\n"
         "In the second image the edited region is outlined in " + OUTLINE_NAME + "; the outlines are not part of "
         "the photos.\n"
         "Is the object in the edited region of the second image the same object as the reference object: the "
         "same individual object (its shape, colours, texture and details), not merely another {category}? "
         "Pose, size, lighting and background may differ.\n\n"
         "Answer with: {{\"same_object\": true or false, \"score\": a number from 0 (a different object, or "
         "none) to 10 (certainly the same object), \"reasoning\": \"one or two sentences\"}}")

_MARKED = ("In the first image the referred object is outlined in " + OUTLINE_NAME + "; the outline is not part "
           "of the photo.\n")


def answer_schema(q: Question) -> Dict[str, Any]:
    """The JSON Schema an answer to ``q`` must follow (checked by ``report.schema.schema_errors``)."""
    if q.kind == "same_object":
        return {"type": "object", "required": ["same_object", "score"],
                "properties": {"same_object": {"type": "boolean"},
                               "score": {"type": "number", "minimum": 0, "maximum": SCORE_MAX},
                               "reasoning": {"type": ["string", "null"]}}}
    if q.kind in ("sc", "pq"):
        return {"type": "object", "required": ["score"],
                "properties": {"score": {"type": "array", "minItems": 2, "maxItems": 2,
                                         "items": {"type": "number", "minimum": 0, "maximum": SCORE_MAX}},
                               "reasoning": {"type": ["string", "null"]}}}
    return {"type": "object", "required": ["target_edited", "distractors_changed", "other_changed"],
            "properties": {"target_edited": {"type": "boolean"},
                           "distractors_changed": {"type": "integer", "minimum": 0, "maximum": int(q.n_distractors)},
                           "other_changed": {"type": "boolean"},
                           "reasoning": {"type": ["string", "null"]}}}


def question_text(q: Question) -> str:
    """The user text of ``q``."""
    if q.kind == "sc":
        return _SC.format(prompt=q.prompt)
    if q.kind == "pq":
        return _PQ
    if q.kind == "same_object":
        return _SAME.format(prompt=q.prompt, category=q.category or "object of that kind")
    return _REF.format(prompt=q.prompt, referring=q.referring_phrase, edit=q.edit_phrase,
                       marked=_MARKED if q.kind == "ref_marked" else "", n=int(q.n_distractors),
                       category=q.category or "similar")


def build_messages(q: Question, image_urls: Sequence[str], previous: Optional[str] = None,
                   feedback: Optional[str] = None) -> List[Dict[str, Any]]:
    """The chat messages of ``q`` with its images (data URLs, in the order the text names them);
    on a re-ask, the rejected answer and why it was rejected follow."""
    content: List[Dict[str, Any]] = [{"type": "text", "text": question_text(q)}]
    content += [{"type": "image_url", "image_url": {"url": u}} for u in image_urls]
    msgs: List[Dict[str, Any]] = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": content}]
    if feedback is not None:
        msgs.append({"role": "assistant", "content": previous or ""})
        msgs.append({"role": "user", "content": feedback_message(feedback)})
    return msgs


def feedback_message(reason: str) -> str:
    """The re-ask text: why the last answer was rejected."""
    return (f"Your answer could not be used: {reason}. Answer again with only the JSON object asked for, "
            "following its format and ranges exactly.")


def parse_answer(q: Question, content: Optional[str], refusal: Optional[str], finish_reason: Optional[str]
                 ) -> Dict[str, Any]:
    """The validated answer object, or :class:`JudgeRejected` with the reason."""
    from ..report.schema import schema_errors

    if refusal:
        raise JudgeRejected("judge_refusal", f"the judge refused: {str(refusal)[:200]}")
    text = (content or "").strip()
    if not text:
        if finish_reason == "length":
            raise JudgeRejected("judge_truncated", "the answer was cut off before any text")
        raise JudgeRejected("judge_empty", "the answer is empty")
    m = _FENCE.match(text)
    if m:
        text = m.group(1)
    try:
        obj = json.loads(text)
    except ValueError:
        if _REFUSAL.match(text):
            raise JudgeRejected("judge_refusal", f"the judge refused: {text[:200]}") from None
        if finish_reason == "length":
            raise JudgeRejected("judge_truncated", "the answer was cut off (finish_reason length)") from None
        raise JudgeRejected("judge_bad_json", f"the answer is not a JSON object: {text[:120]!r}") from None
    errs = schema_errors(obj, answer_schema(q), "answer")
    if errs:
        code = "judge_out_of_range" if all(" above " in e or " below " in e for e in errs) else "judge_bad_json"
        raise JudgeRejected(code, "; ".join(errs[:4]))
    return obj
