"""A VLM judge for the loopback OpenAI server (``support.fake_openai``) that looks at the images.

``JudgeOracle(samples)`` is a chat-completions handler (``srv.script(oracle)``). For every
request it decodes the data URLs of the images, finds the sample by the prompt quoted in the
question, checks each image's size against the sample (and that the source is the sample's
source, pixel for pixel; the marked source differs from it only on an outline around M), and
answers from the real pixel difference between output and source:

* ``ct`` = mean |output - source| / 255 inside M (the referred object), ``co`` = the same outside
  M and M_e, ``cd_j`` = the same inside each same-category distractor minus M;
* sc: ``[round(10 * ct / 0.15), round(10 - 10 * co / 0.02)]`` clipped to 0..10;
* pq (output only; matched to the samples by size): ``[10 - saturated pixels %, 10 - mean
  |Laplacian| / 8]`` clipped to 0..10;
* ref_blind / ref_marked: ``target_edited = ct > 0.05``, ``distractors_changed = #{j: cd_j > 0.05}``,
  ``other_changed = co > 0.005``.

A request that fails a check is answered HTTP 400 and recorded in ``errors`` (tests assert it
stays empty). ``fault``: an optional ``(kind, sample_id, reask) -> Reply | None`` to misbehave.
"""
from __future__ import annotations

import base64
import json
import re
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from refcoco_edit.benchmark.data import decode_sample
from refcoco_edit.imageio import decode_image_bytes

from .fake_openai import Reply

__all__ = ["JudgeOracle", "kind_of"]

_PROMPT = re.compile(r'instruction(?: was)?:\n"(.*?)"\n', re.DOTALL)
_N = re.compile(r"shows (\d+) other ")


def kind_of(text: str) -> str:
    """The question kind of a judge request's text."""
    if "target_edited" in text:
        return "ref_marked" if "is outlined in" in text else "ref_blind"
    if "editing_success" in text:
        return "sc"
    if "naturalness" in text:
        return "pq"
    return "?"


def _decode_url(url: str) -> np.ndarray:
    head, _, b64 = url.partition(",")
    if not head.startswith("data:image/") or ";base64" not in head:
        raise ValueError(f"not a base64 image data URL: {head[:40]!r}")
    return decode_image_bytes(base64.b64decode(b64))


def _change(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=2) / 255.0


def _mean(c: np.ndarray, m: np.ndarray) -> float:
    return float(c[m].mean()) if m.any() else 0.0


def _clip(x: float) -> int:
    return int(min(10, max(0, round(x))))


class JudgeOracle:
    """See the module docstring."""

    def __init__(self, samples: Sequence[Any], fault: Optional[Callable[[str, str, bool], Optional[Reply]]] = None):
        self.by_prompt: Dict[str, Dict[str, Any]] = {}
        for s in samples:
            d = decode_sample(s, reference=False)
            assert s.prompt not in self.by_prompt, f"two samples share the prompt {s.prompt!r}"
            self.by_prompt[s.prompt] = {"sid": s.sample_id, "src": d.source, "m": d.target_mask.astype(bool),
                                        "me": d.edit_mask.astype(bool),
                                        "ds": [x.astype(bool) & ~d.target_mask.astype(bool) for x in d.distractor_masks]}
        self.sizes = {v["src"].shape for v in self.by_prompt.values()}
        self.fault = fault
        self.errors: List[str] = []
        self.seen: List[tuple] = []
        self._lock = threading.Lock()

    def _fail(self, msg: str) -> Reply:
        with self._lock:
            self.errors.append(msg)
        return Reply(status=400, json_body={"error": {"message": msg, "type": "invalid_request_error",
                                                      "param": None, "code": None}})

    def __call__(self, body: dict) -> Reply:
        msgs = body.get("messages") or []
        user = next((m for m in msgs if m.get("role") == "user" and isinstance(m.get("content"), list)), None)
        if user is None:
            return self._fail("no user message with images")
        text = "".join(p.get("text", "") for p in user["content"] if p.get("type") == "text")
        urls = [p["image_url"]["url"] for p in user["content"] if p.get("type") == "image_url"]
        kind = kind_of(text)
        reask = len(msgs) > 2
        try:
            images = [_decode_url(u) for u in urls]
        except (ValueError, OSError) as e:
            return self._fail(f"{kind}: an image does not decode: {e}")
        if kind == "pq":
            return self._pq(images, reask)
        m = _PROMPT.search(text)
        if kind == "?" or m is None or m.group(1) not in self.by_prompt:
            return self._fail(f"{kind}: no known sample prompt in the question")
        smp = self.by_prompt[m.group(1)]
        with self._lock:
            self.seen.append((kind, smp["sid"]))
        if self.fault is not None:
            r = self.fault(kind, smp["sid"], reask)
            if r is not None:
                return r
        if len(images) != 2:
            return self._fail(f"{kind}: expected 2 images, got {len(images)}")
        first, out = images
        src = smp["src"]
        for name, im in (("first", first), ("output", out)):
            if im.shape != src.shape:
                return self._fail(f"{kind} {smp['sid']}: {name} image is {im.shape}, the sample {src.shape}")
        if kind == "ref_marked":
            diff = np.any(first != src, axis=2)
            if not diff.any():
                return self._fail(f"{kind} {smp['sid']}: the marked source has no outline")
            import cv2

            edge = cv2.morphologyEx(smp["m"].astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
            band = cv2.dilate(edge.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
            if (diff & ~band).any():
                return self._fail(f"{kind} {smp['sid']}: the marked source differs away from M's outline")
        elif not np.array_equal(first, src):
            return self._fail(f"{kind} {smp['sid']}: the first image is not the sample's source")
        c = _change(out, src)
        ct, co = _mean(c, smp["m"]), _mean(c, ~(smp["m"] | smp["me"]))
        if kind == "sc":
            ans: Dict[str, Any] = {"score": [_clip(10 * ct / 0.15), _clip(10 - 10 * co / 0.02)],
                                   "reasoning": f"change inside the object {ct:.3f}, elsewhere {co:.4f}"}
        else:
            n = int(_N.search(text).group(1)) if _N.search(text) else -1
            if n != len(smp["ds"]):
                return self._fail(f"{kind} {smp['sid']}: told {n} distractors, the sample has {len(smp['ds'])}")
            k = sum(1 for d in smp["ds"] if _mean(c, d) > 0.05)
            ans = {"target_edited": ct > 0.05, "distractors_changed": k, "other_changed": co > 0.005,
                   "reasoning": f"object {ct:.3f}, distractors changed {k}, elsewhere {co:.4f}"}
        return Reply(content=json.dumps(ans))

    def _pq(self, images: List[np.ndarray], reask: bool) -> Reply:
        if len(images) != 1:
            return self._fail(f"pq: expected 1 image, got {len(images)}")
        im = images[0]
        if im.shape not in self.sizes:
            return self._fail(f"pq: image of {im.shape}, no sample has that size")
        with self._lock:
            self.seen.append(("pq", None))
        if self.fault is not None:
            r = self.fault("pq", "", reask)
            if r is not None:
                return r
        g = im.astype(np.float32).mean(axis=2)
        lap = np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]).mean()
        sat = float(np.mean(np.all(im == 0, axis=2) | np.all(im == 255, axis=2))) * 100
        return Reply(content=json.dumps({"score": [_clip(10 - sat), _clip(10 - lap / 8)], "reasoning": "pixel statistics"}))
