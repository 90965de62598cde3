"""Every reason code the package records, in one table.

A reason code is the stable string a user filters on: why a sample was quarantined by a build
stage (``quarantine``), why an editor produced no scorable output for a sample (``edit``), or
why a dataset row was not scored at all (``skip``), or why the VLM judge gave no usable answer to
one of a sample's questions (``judge``). One code may serve several scopes (a corrupt
image is quarantined by ``build`` and skipped by ``score``). ``tests/test_reasons.py`` checks
the table against every code the package's source emits, both ways.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, FrozenSet

from .suggest import did_you_mean

QUARANTINE, EDIT, SKIP, JUDGE = "quarantine", "edit", "skip", "judge"
SCOPES = (QUARANTINE, EDIT, SKIP, JUDGE)


@dataclass(frozen=True)
class Reason:
    description: str
    scopes: FrozenSet[str]


def _r(description: str, *scopes: str) -> Reason:
    return Reason(description, frozenset(scopes))


REASONS: Dict[str, Reason] = {
    # -- input data (refer files, images, masks) -------------------------------------------------
    "missing_image": _r("the image file does not exist", QUARANTINE),
    "corrupt_image": _r("the image file cannot be decoded (truncated or not an image)", QUARANTINE, SKIP),
    "unsupported_mode": _r("the image mode cannot be converted to RGB, or --image-modes quarantine refused it",
                           QUARANTINE, SKIP),
    "size_mismatch": _r("the decoded image (or a mask) differs in size from what it must match", QUARANTINE, SKIP),
    "bad_polygon": _r("a polygon has fewer than 3 points, an odd number of coordinates, or non-finite values",
                      QUARANTINE),
    "bad_rle": _r("an RLE mask is malformed (bad counts, wrong size)", QUARANTINE, SKIP),
    "empty_mask": _r("the object mask is empty", QUARANTINE),
    "missing_annotation": _r("the ref points to an annotation id that does not exist", QUARANTINE),
    "empty_sentence": _r("the referring sentence is empty", QUARANTINE),
    # -- prompts and the LLM ---------------------------------------------------------------------
    "prompt_error": _r("a prompt could not be composed", QUARANTINE),
    "llm_bad_json": _r("the LLM answer is not the JSON object asked for", QUARANTINE),
    "llm_bad_request": _r("the LLM server refused the request as malformed (HTTP 400/422)", QUARANTINE),
    "llm_empty": _r("the LLM answer is empty", QUARANTINE),
    "llm_error": _r("the LLM request failed for this sample (an error of the server for this request)",
                    QUARANTINE),
    "llm_lost_referent": _r("the rewritten referring phrase lost its head noun or a spatial/colour word",
                            QUARANTINE),
    "llm_refusal": _r("the LLM refused", QUARANTINE),
    "llm_span_missing": _r("a phrase the LLM returned is not verbatim in its prompt", QUARANTINE),
    "llm_target_changed": _r("the LLM changed the edit target", QUARANTINE),
    "llm_too_long": _r("the LLM prompt is longer than allowed", QUARANTINE),
    # -- ground-truth generation -----------------------------------------------------------------
    "no_exemplar": _r("no exemplar instance of the edit target is available (build), or a reference-based row "
                      "has no exemplar image or exemplar mask (score)", QUARANTINE, SKIP),
    "no_fitting_target": _r("no replace target fits the source box (typical aspect and size, see "
                            "target_aspect_tolerance / target_size_ratio)", QUARANTINE),
    "shape_mismatch": _r("the exemplar scaled into the source box covers less than min_cover of it", QUARANTINE),
    "no_change": _r("the pipeline output does not differ from the source inside the edit mask", QUARANTINE),
    "duplicate_candidate": _r("a candidate kept the pixels of an earlier candidate of its sample through every re-draw "
                              "with another seed: left out, the sample keeps its other candidates (shard stats' "
                              "candidate_failures; never a quarantined sample)", QUARANTINE),
    "pipeline_error": _r("the generation pipeline raised an error", QUARANTINE),
    # -- score: editor outputs -------------------------------------------------------------------
    "editor_error": _r("the editor raised an exception on this sample", EDIT),
    "wrong_count": _r("the editor returned a different number of outputs than inputs", EDIT),
    "bad_type": _r("the output is not an image array", EDIT),
    "bad_dtype": _r("the output array is neither uint8 nor floating point", EDIT),
    "bad_channels": _r("the output is not HxWx3 (grey, RGBA or another shape)", EDIT),
    "non_finite": _r("the output holds NaN or infinite values", EDIT),
    "bad_range": _r("a floating output has values outside [0, 1]", EDIT),
    "wrong_size": _r("the output's height/width differ from the source (see --resize-outputs)", EDIT),
    "missing_output": _r("the precomputed or external output file does not exist", EDIT),
    "corrupt_output": _r("the output file cannot be decoded as an image", EDIT),
    "cmd_failed": _r("the external command exited with a non-zero status", EDIT),
    "cmd_timeout": _r("the external command ran past its time limit", EDIT),
    "bad_mask": _r("an editor that returns a predicted mask gave none, or one of the wrong size, type or range",
                   EDIT),
    # -- score: dataset rows that cannot be scored -----------------------------------------------
    "bad_sample_id": _r("the sample_id is not a safe file name ([A-Za-z0-9_.-], 128 characters at most)", SKIP),
    "duplicate_sample_id": _r("another row has the same sample_id (the first one is scored)", SKIP),
    "no_source_image": _r("the row has no source image bytes", SKIP),
    "no_reference": _r("the row has no reference image", SKIP),
    "no_edit_mask": _r("the row has no edit mask M_e", SKIP),
    "empty_prompt": _r("the prompt is empty", SKIP),
    # -- score: the VLM judge (one question of one sample; never scored as a zero) ---------------
    "judge_bad_json": _r("the judge's answer is not the JSON object the question's schema asks for", JUDGE),
    "judge_out_of_range": _r("a score or count in the judge's answer is outside its allowed range", JUDGE),
    "judge_refusal": _r("the judge refused to answer", JUDGE),
    "judge_empty": _r("the judge's answer is empty", JUDGE),
    "judge_truncated": _r("the judge's answer was cut off (finish_reason length: raise --judge-max-tokens)", JUDGE),
    "judge_bad_request": _r("the judge server refused this request as malformed (HTTP 400/422)", JUDGE),
    "judge_no_output": _r("the editor output to judge is missing or cannot be read", JUDGE),
}


def reasons(scope: str) -> Dict[str, str]:
    """code -> description of the codes of one scope (``quarantine``, ``edit``, ``skip`` or ``judge``)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown reason scope {scope!r}; one of {SCOPES}")
    return {code: r.description for code, r in REASONS.items() if scope in r.scopes}


def check_reason(code: str) -> str:
    """``code`` itself when it is in the table, else ValueError (a typo in the code, not the data)."""
    if code not in REASONS:
        raise ValueError(f"unknown reason code {code!r}{did_you_mean(str(code), REASONS, n=1)}"
                         " (add it to refcoco_edit.reasons.REASONS)")
    return code
