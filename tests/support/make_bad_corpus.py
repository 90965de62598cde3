"""A mini-RefCOCO with one planted defect per image: the input of ``tests/test_bad_inputs.py``.

    python tests/support/make_bad_corpus.py OUT        # writes OUT/ and prints the manifest (JSON)

``make_bad_corpus(out_dir)`` writes the synthetic demo (16 images, ``refcoco_edit.demo``) and then
corrupts deterministic parts of it, each case on its own image:

image files (shared by every dataset of the demo; file names updated in every instances.json)
  truncated_jpeg      the JPEG cut in half                    -> generate / corrupt_image
  missing_image       the file deleted                        -> generate / missing_image
  cmyk_jpeg           re-saved as a CMYK JPEG                 -> converted (quarantine mode: unsupported_mode)
  grayscale_png       re-saved as an "L" PNG (file_name .png) -> converted (quarantine mode: unsupported_mode)
  palette_png         re-saved as a "P" PNG (file_name .png)  -> converted (quarantine mode: unsupported_mode)
  exif_rotated_jpeg   pixels stored rotated 90 degrees counter-clockwise with EXIF orientation 6, so
                      the upright view is the original photo; instances.json keeps the upright
                      width/height (the annotation was made on the upright photo) -> exported, masks aligned

``refcoco/`` only (instances.json annotations and refs(unc).p)
  polygon_4_numbers   a referred object's segmentation is [[x, y, w, h]] (pycocotools would read a box)
                                                              -> select / bad_polygon   (key ann:<id>)
  polygon_2_points    a referred object's polygon gets a second part of 2 points
                                                              -> select / bad_polygon   (key ann:<id>)
  malformed_rle       a referred object's segmentation is a compressed RLE whose counts cover more
                      than h*w pixels (an overflow for pycocotools' unchecked decoder)
                                                              -> select / bad_rle       (key ann:<id>)
  missing_annotation  a ref's ann_id points to no annotation  -> select / missing_annotation (key ref:<id>)
  empty_sentence      one sentence of a ref with other good sentences blanked ("" raw and sent)
                                                              -> select / empty_sentence (key sent:<id>)

The manifest (also written to ``OUT/bad_corpus.json``)::

    {"root": OUT, "images_dir": OUT/images, "good_image_ids": [...],
     "cases": {name: {"image_id", "file_name", "ann_id", "ref_id", "sent_id", "expected_stage",
                      "expected_reason", "quarantine_mode_reason", "key", "original"}}}

``expected_stage``/``expected_reason`` are None for the images that must be converted and exported;
``key`` is None for image cases (their quarantine keys are the sample ids of the image's samples).
``original`` is the path of a copy of the untouched demo image (under OUT/originals/) for the
image cases. Original demo files are kept bit for bit everywhere else.

Cases of the later stages (``manifest["stages"]``, used by ``tests/test_corpus_all_stages.py``)
are planted on images whose files and annotations stay valid, so a plain build (and
``test_bad_inputs.py``) sees them as good; they misbehave only when a stage's service or editor
is told to by the manifest:

``stages["llm"]`` — a build with ``--llm-model`` against ``tests/support/fake_openai.py`` scripted with
:func:`llm_handler`: every request whose referring phrase is one of the case's ``phrases`` (the
sentences of the case's image, made unique in the corpus) gets the case's bad answer, every time
  llm_garbage       JSON whose phrases are not in its prompt      -> prompts / llm_span_missing
  llm_invalid_json  a JSON object cut off in the middle            -> prompts / llm_bad_json
  llm_refusal       "I'm sorry, but I can't help with that."      -> prompts / llm_refusal
  llm_http_500      HTTP 500 while ``fail_500`` is on              -> build exit 1; resumes when off

``stages["editor"]`` — the score stage; :func:`editor_plans` maps each case to the sample ids
of its image in an export. Three adapters misbehave on their planted samples:
``make_bad_corpus:PlannedEditor`` (``--editor-arg plan=FILE``, a ``module:Class`` editor),
``dir:`` (a folder written by :func:`write_dir_outputs`) and ``cmd:`` (``OUT/editor_cmd.py``)
  editor_nan        PlannedEditor returns NaN                       -> non_finite
  editor_wrong_size PlannedEditor returns half the size             -> wrong_size
  editor_raise      PlannedEditor raises                            -> editor_error
  dir_wrong_size    dir: a valid PNG of the wrong size              -> wrong_size
  dir_corrupt_png   dir: a PNG cut in half                          -> corrupt_output
  dir_missing_file  dir: no file                                    -> missing_output
  cmd_exit_1        cmd: the program exits 1                        -> cmd_failed
Every other sample gets its source image back (the identity editor's output).

``stages["review"]`` — Label Studio: ``reject_image_id`` (its samples are rejected by the
reviewer, the rest accepted), and the requests a proxy answers with HTTP 500: ``push_500`` (the
task import, forwarded first: the server has the tasks, the client sees a 500) and ``pull_500``
(the export snapshot download). Both exit 1 and the same command then resumes.
"""
from __future__ import annotations

import io
import json
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

try:  # the score-stage editor (``make_bad_corpus:PlannedEditor``); the corpus itself needs only the core
    from refcoco_edit.benchmark.editors.base import Editor, EditFailure
except ImportError:  # pragma: no cover - the benchmark package is part of this repository
    Editor = object  # type: ignore[misc,assignment]
    EditFailure = None  # type: ignore[assignment]

import numpy as np
from PIL import Image

NUM_IMAGES = 16
MISSING_ANN_ID = 999_999_999
DATASETS = ("refcoco", "refcoco+", "refcocog")

# The order in which cases pick their image: the first image (by id) that fits and is still free.
# Annotation cases want an image with >= 3 refs, so that the image's other objects keep a
# look-alike and still give samples (the run goes on within the image, too).
CASES = (
    "exif_rotated_jpeg",
    "empty_sentence",
    "polygon_4_numbers",
    "polygon_2_points",
    "malformed_rle",
    "missing_annotation",
    "truncated_jpeg",
    "missing_image",
    "cmyk_jpeg",
    "grayscale_png",
    "palette_png",
)


def _read_json(p: Path) -> Dict[str, Any]:
    return json.loads(p.read_text())


def _write_json(p: Path, data: Dict[str, Any]) -> None:
    p.write_bytes(json.dumps(data, separators=(",", ":")).encode("utf-8"))


def _save(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_bad_corpus(out_dir: str | Path) -> Dict[str, Any]:
    """Write the demo into ``out_dir`` and plant the defects; return the manifest (see module doc)."""
    from pycocotools import mask as mask_api

    from refcoco_edit.demo import write_demo

    root = Path(out_dir)
    write_demo(root, num_images=NUM_IMAGES)
    images_dir = root / "images"
    originals = root / "originals"
    originals.mkdir(parents=True, exist_ok=True)

    inst_path = root / "refcoco" / "instances.json"
    refs_path = root / "refcoco" / "refs(unc).p"
    inst = _read_json(inst_path)
    with open(refs_path, "rb") as f:
        refs: List[Dict[str, Any]] = pickle.load(f)

    images = {im["id"]: im for im in inst["images"]}
    anns = {a["id"]: a for a in inst["annotations"]}
    refs_of: Dict[int, List[Dict[str, Any]]] = {}
    for r in refs:
        refs_of.setdefault(r["image_id"], []).append(r)

    def first_ref(iid: int) -> Dict[str, Any]:
        return min(refs_of[iid], key=lambda r: r["ref_id"])

    def multi_sentence_ref(iid: int) -> Optional[Dict[str, Any]]:
        c = [r for r in refs_of.get(iid, []) if len(r["sentences"]) >= 2]
        return min(c, key=lambda r: r["ref_id"]) if c else None

    needs: Dict[str, Callable[[int], bool]] = {
        "exif_rotated_jpeg": lambda iid: images[iid]["width"] != images[iid]["height"],
        "empty_sentence": lambda iid: multi_sentence_ref(iid) is not None,
        "polygon_4_numbers": lambda iid: len(refs_of[iid]) >= 3,
        "polygon_2_points": lambda iid: len(refs_of[iid]) >= 3,
        "malformed_rle": lambda iid: len(refs_of[iid]) >= 3,
    }
    used: Dict[str, int] = {}
    free = sorted(i for i in images if refs_of.get(i))
    for case in CASES:
        ok = needs.get(case, lambda iid: True)
        iid = next(i for i in free if ok(i))
        free.remove(iid)
        used[case] = iid

    cases: Dict[str, Dict[str, Any]] = {}
    renamed: Dict[int, str] = {}  # image id -> new file name (all datasets' instances.json)

    def entry(case: str, **kw: Any) -> Dict[str, Any]:
        iid = used[case]
        e = {"image_id": iid, "file_name": images[iid]["file_name"], "ann_id": None, "ref_id": None,
             "sent_id": None, "expected_stage": None, "expected_reason": None,
             "quarantine_mode_reason": None, "key": None, "original": None}
        e.update(kw)
        cases[case] = e
        return e

    def keep_original(iid: int) -> Path:
        name = images[iid]["file_name"]
        dst = originals / name
        shutil.copyfile(images_dir / name, dst)
        return dst

    def pixels(iid: int) -> Image.Image:
        with Image.open(images_dir / images[iid]["file_name"]) as im:
            return im.convert("RGB")

    # -- image files ------------------------------------------------------------------------
    iid = used["truncated_jpeg"]
    orig = keep_original(iid)
    data = orig.read_bytes()
    (images_dir / images[iid]["file_name"]).write_bytes(data[: len(data) // 2])
    entry("truncated_jpeg", expected_stage="generate", expected_reason="corrupt_image", original=str(orig))

    iid = used["missing_image"]
    orig = keep_original(iid)
    (images_dir / images[iid]["file_name"]).unlink()
    entry("missing_image", expected_stage="generate", expected_reason="missing_image", original=str(orig))

    iid = used["cmyk_jpeg"]
    orig = keep_original(iid)
    (images_dir / images[iid]["file_name"]).write_bytes(_save(pixels(iid).convert("CMYK"), "JPEG", quality=95))
    entry("cmyk_jpeg", quarantine_mode_reason="unsupported_mode", original=str(orig))

    for case, mode in (("grayscale_png", "L"), ("palette_png", "P")):
        iid = used[case]
        orig = keep_original(iid)
        rgb = pixels(iid)
        im = rgb.convert("L") if mode == "L" else rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
        assert im.mode == mode
        old = images[iid]["file_name"]
        new = old.rsplit(".", 1)[0] + ".png"
        (images_dir / new).write_bytes(_save(im, "PNG"))
        (images_dir / old).unlink()
        renamed[iid] = new
        entry(case, quarantine_mode_reason="unsupported_mode", original=str(orig))
        cases[case]["file_name"] = new

    iid = used["exif_rotated_jpeg"]
    orig = keep_original(iid)
    upright = np.asarray(pixels(iid))
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # 90 degrees counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": undoes the rotation above
    (images_dir / images[iid]["file_name"]).write_bytes(
        _save(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes()))
    entry("exif_rotated_jpeg", original=str(orig))  # instances keep the upright width/height

    # -- annotations (refcoco only) -----------------------------------------------------------
    iid = used["polygon_4_numbers"]
    ref = first_ref(iid)
    ann = anns[ref["ann_id"]]
    x, y, w, h = ann["bbox"]
    ann["segmentation"] = [[float(x), float(y), float(w), float(h)]]
    entry("polygon_4_numbers", ann_id=ann["id"], ref_id=ref["ref_id"], expected_stage="select",
          expected_reason="bad_polygon", key=f"ann:{ann['id']}")

    iid = used["polygon_2_points"]
    ref = first_ref(iid)
    ann = anns[ref["ann_id"]]
    good = ann["segmentation"][0]
    ann["segmentation"] = [good, list(good[:4])]  # a valid part plus a 2-point part
    entry("polygon_2_points", ann_id=ann["id"], ref_id=ref["ref_id"], expected_stage="select",
          expected_reason="bad_polygon", key=f"ann:{ann['id']}")

    iid = used["malformed_rle"]
    ref = first_ref(iid)
    ann = anns[ref["ann_id"]]
    h, w = images[iid]["height"], images[iid]["width"]
    taller = np.zeros((h + 7, w), dtype=np.uint8, order="F")
    taller[h // 4: h // 2, w // 4: w // 2] = 1
    counts = mask_api.encode(np.asfortranarray(taller))["counts"].decode("ascii")
    ann["segmentation"] = {"size": [h, w], "counts": counts}  # counts cover (h+7)*w pixels
    entry("malformed_rle", ann_id=ann["id"], ref_id=ref["ref_id"], expected_stage="select",
          expected_reason="bad_rle", key=f"ann:{ann['id']}")

    # -- refs (refcoco unc only) ----------------------------------------------------------------
    iid = used["missing_annotation"]
    ref = first_ref(iid)
    assert MISSING_ANN_ID not in anns
    ref["ann_id"] = MISSING_ANN_ID
    entry("missing_annotation", ann_id=MISSING_ANN_ID, ref_id=ref["ref_id"], expected_stage="select",
          expected_reason="missing_annotation", key=f"ref:{ref['ref_id']}")

    iid = used["empty_sentence"]
    ref = multi_sentence_ref(iid)
    sent = ref["sentences"][0]
    sent.update(raw="", sent="", tokens=[])
    assert all(s["sent"].strip() for s in ref["sentences"][1:])
    entry("empty_sentence", ref_id=ref["ref_id"], sent_id=sent["sent_id"], expected_stage="select",
          expected_reason="empty_sentence", key=f"sent:{sent['sent_id']}")

    # -- later stages: planted on images that stay valid -----------------------------------------
    stages = _plant_stage_cases(root, refs, images, cases, free)

    # -- write back ------------------------------------------------------------------------------
    for r in refs:
        if r["image_id"] in renamed:
            r["file_name"] = r["file_name"].rsplit(".", 1)[0] + ".png"
    for im in inst["images"]:
        if im["id"] in renamed:
            im["file_name"] = renamed[im["id"]]
    _write_json(inst_path, inst)
    with open(refs_path, "wb") as f:
        pickle.dump(refs, f, protocol=2)
    for ds in DATASETS[1:]:  # the other datasets share the image files: keep their file names right
        p = root / ds / "instances.json"
        other = _read_json(p)
        for im in other["images"]:
            if im["id"] in renamed:
                im["file_name"] = renamed[im["id"]]
        _write_json(p, other)

    bad = {c["image_id"] for c in cases.values()}
    manifest = {
        "root": str(root),
        "images_dir": str(images_dir),
        "good_image_ids": sorted(i for i in images if i not in bad),
        "cases": cases,
        "stages": stages,
    }
    (root / "bad_corpus.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


# ----------------------------------------------------------------------------------------------
# cases of the later stages (LLM rephrasing, scoring, review)
# ----------------------------------------------------------------------------------------------

LLM_CASES = {  # case -> (kind of answer, expected quarantine reason at the prompts stage)
    "llm_garbage": ("garbage", "llm_span_missing"),
    "llm_invalid_json": ("invalid_json", "llm_bad_json"),
    "llm_refusal": ("refusal", "llm_refusal"),
    "llm_http_500": ("http_500", None),  # a service failure, not a sample's: the run stops and resumes
}
# case -> (adapter, fault, expected failure reason, the image case it is planted on)
EDITOR_CASES = {
    "editor_nan": ("python", "nan", "non_finite", "grayscale_png"),
    "editor_wrong_size": ("python", "wrong_size", "wrong_size", "palette_png"),
    "editor_raise": ("python", "raise", "editor_error", "exif_rotated_jpeg"),
    "dir_wrong_size": ("dir", "wrong_size", "wrong_size", "grayscale_png"),
    "dir_corrupt_png": ("dir", "corrupt_png", "corrupt_output", "palette_png"),
    "dir_missing_file": ("dir", "missing_file", "missing_output", "exif_rotated_jpeg"),
    "cmd_exit_1": ("cmd", "exit_1", "cmd_failed", "grayscale_png"),
}
REJECTED_IMAGE_CASE = "cmyk_jpeg"  # the reviewer rejects this image's samples, accepts the rest
_UNIQUE_SUFFIXES = ("in view", "in the picture", "in this photo", "over there", "right here")

EDITOR_CMD = '''"""cmd: editor of the bad corpus: copy {input} to {output}, or fail for a planted sample."""
import json
import shutil
import sys

src, dst, sample_id, plan = sys.argv[1:5]
if json.load(open(plan)).get(sample_id) == "exit_1":
    print(f"planted failure for {sample_id}", file=sys.stderr)
    sys.exit(1)
shutil.copyfile(src, dst)
'''


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def _plant_stage_cases(root: Path, refs: List[Dict[str, Any]], images: Dict[int, Dict[str, Any]],
                       cases: Dict[str, Dict[str, Any]], free: List[int]) -> Dict[str, Any]:
    """Pick the images of the later stages' cases; make the LLM cases' sentences unique."""
    assert len(free) > len(LLM_CASES), "not enough untouched images for the LLM cases"
    llm: Dict[str, Dict[str, Any]] = {}
    for case, (kind, reason) in LLM_CASES.items():
        iid = free.pop(0)
        others = {_norm(s["sent"]) for r in refs if r["image_id"] != iid for s in r["sentences"]}
        phrases = []
        for r in (r for r in refs if r["image_id"] == iid):
            for sent in r["sentences"]:
                text = sent["sent"]
                for suffix in ("",) + _UNIQUE_SUFFIXES:
                    cand = f"{text} {suffix}".strip()
                    if _norm(cand) not in others:
                        break
                else:  # pragma: no cover - the demo never needs more
                    raise AssertionError(f"cannot make {text!r} unique")
                if cand != text:
                    sent.update(raw=cand, sent=cand, tokens=cand.split())
                phrases.append(_norm(cand))
        llm[case] = {"image_id": iid, "file_name": images[iid]["file_name"], "reply": kind,
                     "phrases": sorted(set(phrases)), "expected_stage": "prompts" if reason else None,
                     "expected_reason": reason}
    editor = {case: {"image_id": cases[on]["image_id"], "adapter": adapter, "fault": fault, "expected_reason": reason,
                     "planted_on": on}
              for case, (adapter, fault, reason, on) in EDITOR_CASES.items()}
    (root / "editor_cmd.py").write_text(EDITOR_CMD)
    review = {
        "reject_image_id": cases[REJECTED_IMAGE_CASE]["image_id"],
        "push_500": {"method": "POST", "path_contains": "/import", "forward_first": True,
                     "stage": "review push", "expected_exit": 1, "expected_message": "HTTP 500"},
        "pull_500": {"method": "GET", "path_contains": "/download", "forward_first": False,
                     "stage": "review pull", "expected_exit": 1, "expected_message": "HTTP 500"},
    }
    return {"llm": llm, "editor": editor, "review": review, "untouched_image_ids": list(free),
            "editor_cmd": str(root / "editor_cmd.py")}


def llm_handler(manifest: Dict[str, Any], good: Callable[[Dict[str, Any]], Any], state: Dict[str, Any]) -> Callable:
    """A ``fake_openai`` handler: the planted LLM cases' bad answers for their samples, ``good(body)``
    for every other request. ``state["fail_500"]`` switches the ``llm_http_500`` case on and off;
    ``state["asked"]`` counts requests per (case or "good") and ``state["good_bodies"]`` keeps the
    user messages that got a good answer (to check that a resumed run does not ask them again)."""
    from support.fake_openai import Reply

    by_phrase = {p: c for c, e in manifest["stages"]["llm"].items() for p in e["phrases"]}
    kinds = {c: e["reply"] for c, e in manifest["stages"]["llm"].items()}
    state.setdefault("asked", {})
    state.setdefault("good_bodies", [])
    state.setdefault("fail_500", False)

    def handler(body: Dict[str, Any]) -> Any:
        user = json.loads([m for m in body["messages"] if m["role"] == "user"][0]["content"])
        phrase = _norm(user.get("referring_phrase") or user.get("object_description") or "")
        case = by_phrase.get(phrase)
        kind = kinds.get(case)
        if kind == "http_500" and not state["fail_500"]:
            case = kind = None
        key = case or "good"
        state["asked"][key] = state["asked"].get(key, 0) + 1
        if kind == "garbage":
            return Reply(content=json.dumps({"prompt": "zxq vlorp blarg.", "referring_phrase": "qwerty uiop",
                                             "edit_phrase": "asdf"}))
        if kind == "invalid_json":
            return Reply(content='{"prompt": "Please turn the thing into", "referring_phrase": "the')
        if kind == "refusal":
            return Reply(content="I'm sorry, but I can't help with that.")
        if kind == "http_500":
            return Reply(status=500)
        state["good_bodies"].append(json.dumps(body, sort_keys=True))
        return good(body)

    return handler


def samples_of_image(rows: Iterable[Dict[str, Any]], image_id: int) -> List[str]:
    return sorted(r["sample_id"] for r in rows if int(r["image_id"]) == int(image_id))


def editor_plans(manifest: Dict[str, Any], rows: Iterable[Dict[str, Any]]) -> Dict[str, Dict[str, str]]:
    """adapter -> {sample_id: fault} for the samples of ``rows`` (an export) on planted images."""
    rows = list(rows)
    plans: Dict[str, Dict[str, str]] = {"python": {}, "dir": {}, "cmd": {}}
    for case in manifest["stages"]["editor"].values():
        for sid in samples_of_image(rows, case["image_id"]):
            plans[case["adapter"]][sid] = case["fault"]
    return plans


def write_dir_outputs(rows: Iterable[Dict[str, Any]], plan: Dict[str, str], out: Path) -> Path:
    """A ``dir:`` folder: ``{sample_id}.png`` = the source image, except the planted faults."""
    from refcoco_edit.imageio import decode_image_bytes, encode_png

    out.mkdir(parents=True, exist_ok=True)
    for r in rows:
        sid, fault = r["sample_id"], plan.get(r["sample_id"])
        if fault == "missing_file":
            continue
        src = decode_image_bytes(r["source_image"]["bytes"])
        if fault == "wrong_size":
            data = encode_png(np.ascontiguousarray(src[: src.shape[0] // 2, : src.shape[1] // 2]))
        else:
            data = encode_png(src)
        if fault == "corrupt_png":
            data = data[: len(data) // 2]
        (out / f"{sid}.png").write_bytes(data)
    return out


class PlannedEditor(Editor):  # type: ignore[misc,valid-type]
    """The identity editor, except on planted samples: ``--editor-arg plan=FILE`` (JSON
    ``{sample_id: "nan" | "wrong_size" | "raise"}``)."""

    name = "planned-faults"
    batch_size = 4

    def __init__(self, plan: str = ""):
        super().__init__(plan=str(plan))
        self.plan: Dict[str, str] = json.loads(Path(plan).read_text()) if plan else {}

    def edit(self, images, prompts, seeds, extras):
        outs: List[Any] = []
        for img, e in zip(images, extras):
            fault = self.plan.get(e["sample_id"])
            if fault == "raise":
                raise RuntimeError(f"planted editor crash on {e['sample_id']}")
            if fault == "nan":
                outs.append(np.full(img.shape, np.nan, dtype=np.float32))
            elif fault == "wrong_size":
                outs.append(np.ascontiguousarray(img[: img.shape[0] // 2, : img.shape[1] // 2]))
            else:
                outs.append(np.array(img))
        return outs


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python tests/support/make_bad_corpus.py OUT", file=sys.stderr)
        return 2
    print(json.dumps(make_bad_corpus(argv[0]), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
