"""RefCOCO / RefCOCO+ / RefCOCOg loader in the ``refer`` layout, safe and fast.

Layout (as distributed with the ``refer`` API)::

    DATA_ROOT/refcoco/instances.json   + refs(unc).p, refs(google).p
    DATA_ROOT/refcoco+/instances.json  + refs(unc).p
    DATA_ROOT/refcocog/instances.json  + refs(umd).p, refs(google).p
    IMAGES_DIR/COCO_train2014_000000xxxxxx.jpg

What differs from ``refer``:

* The refs pickle is read by a restricted unpickler that refuses every global (class, function)
  it names: a pickle is a program, and a downloaded ``refs(unc).p`` could run any of it. Plain
  data (dict, list, tuple, str, int, float, bool, None, bytes) needs no global, so real refs
  files load unchanged, at the speed of the C unpickler.
* Filters intersect and are exact (``refer``'s ``getRefIds`` built a list of lists for
  ``image_ids`` and matched ``testA`` against ``testAB``).
* Masks are decoded lazily, one annotation at a time, with validated polygons/RLE, and a
  multi-part polygon is the union of its parts (``refer`` summed them).
* Image file names are checked to stay inside the images folder.
* Broken refs (missing annotation, blank sentence) do not stop indexing; they are listed by
  ``ref_problems()`` for the caller to quarantine.
"""
from __future__ import annotations

import contextlib
import gc
import json
import pickle
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from . import rle as rle_mod
from .errors import InputError, SampleError, UnsafePickleError
from .imageio import LoadedImage, load_image as _load_image
from .schema import is_safe_name

try:  # optional: about 2x faster than the stdlib for a 300 MB instances.json
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    _orjson = None

__all__ = ["RefCOCO", "load_refs", "load_instances", "DATASETS", "DEFAULT_SPLIT_BY"]

# dataset -> valid split_by values (the published refs files).
DATASETS: Dict[str, Tuple[str, ...]] = {
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc",),
    "refcocog": ("umd", "google"),
}
DEFAULT_SPLIT_BY: Dict[str, str] = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}

# Keys every ref must have (the ones this loader uses). "sent_ids" and "file_name" exist in the
# published files but are not needed: sentences carry their own sent_id.
REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences", "category_id")
IMAGE_KEYS = ("id", "file_name", "width", "height")
ANN_KEYS = ("id", "image_id", "category_id")

IdArg = Union[None, int, Iterable[int]]


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------

class _DataOnlyUnpickler(pickle.Unpickler):
    """The C unpickler with every global refused: only plain data can be built.

    ``find_class`` is the only way a pickle reaches code (classes, functions such as
    ``os.system`` for ``__reduce__``-based payloads); ``persistent_load`` is the other hook and
    is refused too. Protocol-3+ ``bytes`` need no global and load; protocol-2 bytes written by
    Python 3 go through ``_codecs.encode`` and are refused (no refs file holds any).
    """

    def __init__(self, file: Any, name: str, encoding: str):
        super().__init__(file, encoding=encoding, errors="strict")
        self._name = name

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(
            f"{self._name} holds a non-data object '{module}.{name}'; refusing to load it "
            "(pickle is code execution)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self._name} holds a persistent reference {pid!r}; refusing to load it "
            "(only plain data is accepted)"
        )


def _unpickle(path: Path, encoding: str) -> Any:
    with open(path, "rb") as f:
        return _DataOnlyUnpickler(f, path.name, encoding).load()


def load_refs(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """Load a ``refs(*).p`` file as plain data (a list of ref dicts), refusing any code.

    Encoding of Python 2 byte strings (``str`` in Python 2, opcodes STRING/BINSTRING): decoded
    as UTF-8, which is what py2 code writing text read from UTF-8 files produced; ASCII (all of
    the published refs) is the same either way. A file whose byte strings are not valid UTF-8
    is read again as Latin-1, which maps every byte to one character and never fails. (Using
    Latin-1 first would turn UTF-8 text such as "café" into mojibake; ``encoding="bytes"`` would
    make the dict keys bytes.) Python 2 ``unicode`` and Python 3 ``str`` are UTF-8 in every
    protocol and need no choice.

    Raises UnsafePickleError for a pickle naming any class or function, InputError for a
    missing, corrupt or wrongly shaped file.
    """
    path = Path(path)
    try:
        try:
            refs = _unpickle(path, "utf-8")
        except UnicodeDecodeError:
            refs = _unpickle(path, "latin1")
    except UnsafePickleError:
        raise
    except FileNotFoundError as e:
        raise InputError(f"refs file {path} does not exist") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError, OverflowError, OSError) as e:
        raise InputError(f"refs file {path} is not a readable pickle ({type(e).__name__}: {e})") from e
    if not isinstance(refs, list):
        raise InputError(f"refs file {path} holds a {type(refs).__name__}, expected a list of refs")
    for i, r in enumerate(refs):
        if type(r) is not dict:
            raise InputError(f"refs file {path}: item {i} is a {type(r).__name__}, expected a dict")
    return refs


def load_instances(path: Union[str, Path]) -> Dict[str, Any]:
    """Load ``instances.json`` (with orjson when installed, else the stdlib C parser)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = None
        if _orjson is not None:
            try:
                data = _orjson.loads(raw)
            except _orjson.JSONDecodeError:
                data = None  # e.g. NaN, which the stdlib reads: let it decide, same result either way
        if data is None:
            data = json.loads(raw)
    except FileNotFoundError as e:
        raise InputError(f"instances file {path} does not exist") from e
    except (ValueError, OSError) as e:  # json.JSONDecodeError and orjson.JSONDecodeError are ValueErrors
        raise InputError(f"instances file {path} is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise InputError(f"instances file {path} holds a {type(data).__name__}, expected an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(f"instances file {path} has no '{key}' list")
    return data


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic GC while parsing and indexing.

    Parsing a RefCOCO-scale instances.json creates ~30M objects, and the collector would walk the
    growing heap again and again (about 40% of json.load's time); nothing built here forms
    reference cycles, so there is nothing for it to find. Restored in ``finally``.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _bad_file_name(fn: Any) -> bool:
    """True when an image file_name could point outside the images folder (cheap string test)."""
    if type(fn) is not str or not fn:
        return True
    if fn[0] == "/" or "\\" in fn or "\x00" in fn or (len(fn) > 1 and fn[1] == ":"):
        return True
    if ".." in fn:
        return ".." in fn.split("/")
    return False


def _as_id_set(ids: IdArg) -> Optional[set]:
    if ids is None:
        return None
    if isinstance(ids, (int, np.integer)):
        return {int(ids)}
    return set(ids)


# ----------------------------------------------------------------------------------------------
# the index
# ----------------------------------------------------------------------------------------------

@dataclass
class _Index:
    """What :func:`_build_index` makes of the two files; :class:`RefCOCO` adopts it as attributes."""

    refs: Dict[int, Dict[str, Any]]
    anns: Dict[int, Dict[str, Any]]
    images: Dict[int, Dict[str, Any]]
    cats: Dict[int, str]
    sents: Dict[int, Dict[str, Any]]
    image_to_refs: Dict[int, List[int]]
    image_to_anns: Dict[int, List[int]]
    cat_to_refs: Dict[int, List[int]]
    ref_to_ann: Dict[int, int]
    ann_to_ref: Dict[int, int]
    sent_to_ref: Dict[int, int]
    split_refs: Dict[str, List[int]]
    problems: List[Tuple[str, str, str]]


def _build_index(refs: List[Dict[str, Any]], instances: Dict[str, Any], refs_path: Path,
                instances_path: Path) -> _Index:
    """Index refs and instances in single passes (the paths only name the files in errors).

    Raises InputError for records the loader cannot use (missing keys, duplicate ids, a bad image
    size or file name, an unsafe split name); broken refs are not errors but ``problems``.
    """
    images = _index_images(instances["images"], instances_path)
    anns, image_to_anns = _index_annotations(instances["annotations"], instances_path)
    try:
        cats = {c["id"]: c["name"] for c in instances["categories"]}
    except (KeyError, TypeError) as e:
        raise InputError(f"{instances_path}: every category needs 'id' and 'name'") from e
    return _index_refs(refs, refs_path, images, anns, cats, image_to_anns)


def _index_images(image_list: List[Any], src: Path) -> Dict[int, Dict[str, Any]]:
    """image_id -> image record, one pass, with the size and file_name containment checks."""
    images: Dict[int, Dict[str, Any]] = {}
    try:
        for img in image_list:
            iid = img["id"]
            h, w = img["height"], img["width"]
            if not (type(h) is int and type(w) is int and h > 0 and w > 0):
                if not (isinstance(h, (int, float)) and isinstance(w, (int, float)) and h > 0 and w > 0
                        and float(h).is_integer() and float(w).is_integer()):
                    raise InputError(f"{src}: image {iid} has an invalid size {w!r}x{h!r} (width x height)")
            if _bad_file_name(img["file_name"]):
                raise InputError(
                    f"image file_name {img['file_name']!r} of image {iid} escapes the images folder "
                    "(absolute, '..', backslash or NUL); refusing the data set"
                )
            images[iid] = img
    except (KeyError, TypeError) as e:
        raise InputError(_explain_bad_records(src, "image", image_list, IMAGE_KEYS)) from e
    if len(images) != len(image_list):
        raise InputError(f"{src}: {len(image_list) - len(images)} duplicate image ids")
    return images


def _index_annotations(ann_list: List[Any], src: Path) -> Tuple[Dict[int, Dict[str, Any]], Dict[int, List[int]]]:
    """(ann_id -> annotation, image_id -> ann ids in file order), one pass."""
    anns: Dict[int, Dict[str, Any]] = {}
    image_to_anns: Dict[int, List[int]] = defaultdict(list)
    try:
        for ann in ann_list:
            aid = ann["id"]
            anns[aid] = ann
            image_to_anns[ann["image_id"]].append(aid)
    except (KeyError, TypeError) as e:
        raise InputError(_explain_bad_records(src, "annotation", ann_list, ("id", "image_id"))) from e
    if len(anns) != len(ann_list):
        raise InputError(f"{src}: {len(ann_list) - len(anns)} duplicate annotation ids")
    return anns, dict(image_to_anns)


def _index_refs(refs: List[Dict[str, Any]], refs_path: Path, images: Dict[int, Dict[str, Any]],
                anns: Dict[int, Dict[str, Any]], cats: Dict[int, str],
                image_to_anns: Dict[int, List[int]]) -> _Index:
    """Refs and sentences in one pass (adds ``ref_id`` to each sentence dict); the whole index."""
    refs_by_id: Dict[int, Dict[str, Any]] = {}
    image_to_refs: Dict[int, List[int]] = defaultdict(list)
    cat_to_refs: Dict[int, List[int]] = defaultdict(list)
    ref_to_ann: Dict[int, int] = {}
    ann_to_ref: Dict[int, int] = {}
    sents: Dict[int, Dict[str, Any]] = {}
    sent_to_ref: Dict[int, int] = {}
    split_refs: Dict[str, List[int]] = defaultdict(list)
    problems: List[Tuple[str, str, str]] = []
    n_sents = 0
    try:
        for ref in refs:
            rid = ref["ref_id"]
            aid = ref["ann_id"]
            iid = ref["image_id"]
            split = ref["split"]
            sentences = ref["sentences"]
            if split not in split_refs and not is_safe_name(split):
                raise InputError(f"{refs_path}: ref {rid} has the split {split!r}, which is not a plain "
                                 "name ([A-Za-z0-9_.-]); split names become export file names")
            refs_by_id[rid] = ref
            image_to_refs[iid].append(rid)
            cat_to_refs[ref["category_id"]].append(rid)
            split_refs[split].append(rid)
            ref_to_ann[rid] = aid
            ann_to_ref[aid] = rid
            if aid not in anns:
                problems.append((f"ref:{rid}", "missing_annotation",
                                 f"ref {rid} points to annotation {aid}, which instances.json does not have"))
            if iid not in images:
                problems.append((f"ref:{rid}", "missing_image",
                                 f"ref {rid} points to image {iid}, which instances.json does not have"))
            if not sentences:
                problems.append((f"ref:{rid}", "empty_sentence", f"ref {rid} has no sentences"))
            n_sents += len(sentences)
            for s in sentences:
                sid = s["sent_id"]
                s["ref_id"] = rid
                sents[sid] = s
                sent_to_ref[sid] = rid
                text = s.get("sent") or s.get("raw")
                if not text or type(text) is not str or text.isspace():
                    problems.append((f"sent:{sid}", "empty_sentence",
                                     f"sentence {sid} of ref {rid} is empty"))
    except (KeyError, TypeError, AttributeError) as e:
        raise InputError(_explain_bad_refs(refs, refs_path)) from e
    if len(refs_by_id) != len(refs):
        raise InputError(f"{refs_path}: {len(refs) - len(refs_by_id)} duplicate ref ids")
    if len(sents) != n_sents:
        raise InputError(f"{refs_path}: {n_sents - len(sents)} duplicate sentence ids")
    for split_name in split_refs:
        if not isinstance(split_name, str):
            raise InputError(f"{refs_path}: split names must be strings, got {split_name!r}")
    return _Index(refs=refs_by_id, anns=anns, images=images, cats=cats, sents=sents,
                  image_to_refs=dict(image_to_refs), image_to_anns=image_to_anns,
                  cat_to_refs=dict(cat_to_refs), ref_to_ann=ref_to_ann, ann_to_ref=ann_to_ref,
                  sent_to_ref=sent_to_ref, split_refs=dict(split_refs), problems=problems)


def _explain_bad_records(src: Path, what: str, records: List[Any], keys: Tuple[str, ...]) -> str:
    """Slow path, only after the fast loop failed: say which record and key is wrong."""
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            return f"{src}: {what} {i} is a {type(rec).__name__}, expected an object"
        for k in keys:
            if k not in rec:
                return f"{src}: {what} {rec.get('id', f'#{i}')} has no '{k}'"
    return f"{src}: malformed {what} records"


def _explain_bad_refs(refs: List[Dict[str, Any]], src: Path) -> str:
    """Slow path for refs: the first ref (and key or sentence) that made the fast loop fail."""
    for i, ref in enumerate(refs):
        rid = ref.get("ref_id", f"#{i}")
        for k in REF_KEYS:
            if k not in ref:
                return f"{src}: ref {rid} has no '{k}'"
        if not isinstance(ref["sentences"], list):
            return f"{src}: ref {rid}: 'sentences' is a {type(ref['sentences']).__name__}, expected a list"
        for j, s in enumerate(ref["sentences"]):
            if not isinstance(s, dict):
                return f"{src}: ref {rid}: sentence {j} is a {type(s).__name__}, expected a dict"
            if "sent_id" not in s:
                return f"{src}: ref {rid}: sentence {j} has no 'sent_id'"
        for k in ("ref_id", "ann_id", "image_id", "category_id"):
            try:
                hash(ref[k])
            except TypeError:
                return f"{src}: ref {rid}: '{k}' is a {type(ref[k]).__name__}, expected an int"
    return f"{src}: malformed refs"


# ----------------------------------------------------------------------------------------------
# the loader
# ----------------------------------------------------------------------------------------------

class RefCOCO:
    """An indexed RefCOCO(+/g) split: refs, sentences, annotations, images, categories.

    Index attributes (all ids are ints as in the files):

    * ``refs``: ref_id -> ref dict; ``anns``: ann_id -> annotation; ``images``: image_id ->
      image record; ``cats``: category_id -> name; ``sents``: sent_id -> sentence dict (the
      ref's own dict, with ``ref_id`` added).
    * ``image_to_refs``, ``image_to_anns``, ``cat_to_refs``: id -> list of ref/ann ids (in file
      order); ``ref_to_ann``, ``ann_to_ref``, ``sent_to_ref``: id -> id.
    * ``splits``: the sorted split names present.

    Construction reads the two files and builds the index in single passes; masks are decoded
    only when asked for (``ann_rle`` / ``ann_mask``).
    """

    def __init__(
        self,
        data_root: Union[str, Path],
        dataset: str = "refcoco",
        split_by: Optional[str] = None,
        images_dir: Union[str, Path, None] = None,
    ):
        self.data_root = Path(data_root)
        self.dataset = dataset
        if dataset not in DATASETS:
            raise InputError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
        self.split_by = split_by if split_by is not None else DEFAULT_SPLIT_BY[dataset]
        if self.split_by not in DATASETS[dataset]:
            raise InputError(
                f"{dataset} has no split_by {self.split_by!r}; valid: {', '.join(DATASETS[dataset])}"
            )
        ds_dir = self._dataset_dir()
        refs_path = ds_dir / f"refs({self.split_by}).p"
        inst_path = ds_dir / "instances.json"
        for p in (inst_path, refs_path):
            if not p.is_file():
                present = sorted(x.name for x in ds_dir.iterdir())
                raise InputError(f"{p} does not exist; {ds_dir} holds: {', '.join(present) or '(nothing)'}")
        self.images_dir = self._images_dir(images_dir)
        self.refs_path, self.instances_path = refs_path, inst_path

        with _gc_paused():
            index = _build_index(load_refs(refs_path), load_instances(inst_path), refs_path, inst_path)
        self.refs = index.refs
        self.anns = index.anns
        self.images = index.images
        self.cats = index.cats
        self.sents = index.sents
        self.image_to_refs = index.image_to_refs
        self.image_to_anns = index.image_to_anns
        self.cat_to_refs = index.cat_to_refs
        self.ref_to_ann = index.ref_to_ann
        self.ann_to_ref = index.ann_to_ref
        self.sent_to_ref = index.sent_to_ref
        self._split_refs = index.split_refs
        self.splits = sorted(index.split_refs)
        self._problems = index.problems

    # -- paths -----------------------------------------------------------------------------

    def _dataset_dir(self) -> Path:
        root = self.data_root
        if not root.is_dir():
            raise InputError(f"RefCOCO data root {root} is not a directory")
        ds_dir = root / self.dataset
        if ds_dir.is_dir():
            return ds_dir
        if root.name == self.dataset and (root / "instances.json").is_file():
            return root  # the dataset folder itself was given
        present = sorted(x.name for x in root.iterdir() if x.is_dir())
        raise InputError(
            f"{ds_dir} does not exist; the data root holds: {', '.join(present) or '(no folders)'} "
            f"(expected {', '.join(DATASETS)})"
        )

    def _images_dir(self, images_dir: Union[str, Path, None]) -> Path:
        if images_dir is not None:
            d = Path(images_dir)
            if not d.is_dir():
                raise InputError(f"images folder {d} is not a directory")
            return d
        # refer's own layout first, then the obvious ones; none existing -> data_root/images
        # (each sample then reports missing_image).
        for cand in (
            self.data_root / "images" / "mscoco" / "images" / "train2014",
            self.data_root / "images" / "train2014",
            self.data_root / "train2014",
        ):
            if cand.is_dir():
                return cand
        return self.data_root / "images"

    # -- indexing --------------------------------------------------------------------------

    # -- queries ---------------------------------------------------------------------------

    def _split_ref_ids(self, split: str) -> List[int]:
        if split == "test":
            names = [s for s in self.splits if s.startswith("test")]
            if names:
                return [r for s in names for r in self._split_refs[s]]
        elif split in self._split_refs:
            return self._split_refs[split]
        raise ValueError(
            f"unknown split {split!r} for {self.dataset}({self.split_by}); known: {', '.join(self.splits)}"
            + (" (and 'test' for all test* splits)" if any(s.startswith("test") for s in self.splits) else "")
        )

    def ref_ids(self, split: Optional[str] = None, image_ids: IdArg = None, cat_ids: IdArg = None,
                ref_ids: IdArg = None) -> List[int]:
        """Sorted ids of the refs that pass *all* given filters.

        ``split``: an exact split name ("testA" is not "testAB"), or "test" for every split whose
        name starts with "test"; an unknown split raises ValueError. A filter left at None does
        not filter; an empty list matches nothing.
        """
        cand: Optional[set] = None
        if split is not None:
            cand = set(self._split_ref_ids(split))
        wanted = _as_id_set(ref_ids)
        if wanted is not None:
            wanted = {r for r in wanted if r in self.refs}
            cand = wanted if cand is None else cand & wanted
        imgs = _as_id_set(image_ids)
        if imgs is not None:
            s = {r for i in imgs for r in self.image_to_refs.get(i, ())}
            cand = s if cand is None else cand & s
        cids = _as_id_set(cat_ids)
        if cids is not None:
            s = {r for c in cids for r in self.cat_to_refs.get(c, ())}
            cand = s if cand is None else cand & s
        if cand is None:
            return sorted(self.refs)
        return sorted(cand)

    def ann_ids(self, image_ids: IdArg = None, cat_ids: IdArg = None, ref_ids: IdArg = None,
                include_crowd: bool = True) -> List[int]:
        """Sorted ids of the annotations that pass all given filters (None = no filter)."""
        cand: Optional[set] = None
        imgs = _as_id_set(image_ids)
        if imgs is not None:
            cand = {a for i in imgs for a in self.image_to_anns.get(i, ())}
        rids = _as_id_set(ref_ids)
        if rids is not None:
            s = {self.ref_to_ann[r] for r in rids if r in self.ref_to_ann}
            s = {a for a in s if a in self.anns}
            cand = s if cand is None else cand & s
        if cand is None:
            cand = set(self.anns)
        cids = _as_id_set(cat_ids)
        if cids is not None:
            cand = {a for a in cand if self.anns[a].get("category_id") in cids}
        if not include_crowd:
            cand = {a for a in cand if not self.anns[a].get("iscrowd", 0)}
        return sorted(cand)

    def image_ids(self, ref_ids: IdArg = None, split: Optional[str] = None) -> List[int]:
        """Sorted image ids: all images when no filter is given, else the images of the refs that
        pass the filters."""
        if ref_ids is None and split is None:
            return sorted(self.images)
        return sorted({self.refs[r]["image_id"] for r in self.ref_ids(split=split, ref_ids=ref_ids)})

    def image_path(self, image_id: int) -> Path:
        """images_dir / file_name of an image (file names were checked to stay inside)."""
        img = self.images.get(image_id)
        if img is None:
            raise SampleError("missing_image", f"image {image_id} is not in {self.instances_path}")
        return self.images_dir / img["file_name"]

    def image_hw(self, image_id: int) -> Tuple[int, int]:
        """(height, width) of an image as instances.json gives it (the annotation frame)."""
        img = self.images.get(image_id)
        if img is None:
            raise SampleError("missing_image", f"image {image_id} is not in {self.instances_path}")
        return int(img["height"]), int(img["width"])

    def ann_rle(self, ann_id: int) -> Dict[str, Any]:
        """The annotation's mask as one merged RLE ``{size: [h, w], counts: str}``, in the
        annotation frame (instances.json's h, w). Raises rle.MaskError (bad_polygon / bad_rle)
        for a malformed segmentation, SampleError("missing_annotation") for an unknown id."""
        ann = self.anns.get(ann_id)
        if ann is None:
            raise SampleError("missing_annotation", f"annotation {ann_id} is not in {self.instances_path}")
        h, w = self.image_hw(ann["image_id"])
        return rle_mod.segmentation_to_rle(ann.get("segmentation"), h, w)

    def ann_mask(self, ann_id: int) -> np.ndarray:
        """Boolean HxW mask of an annotation: the union of its parts (never a sum)."""
        return rle_mod.decode(self.ann_rle(ann_id))

    def load_image(self, image_id: int, mode_policy: str = "convert") -> LoadedImage:
        """Decode an image, checking its size against instances.json (see imageio.load_image for
        the annotation-frame rule). Raises imageio.ImageError."""
        return _load_image(self.image_path(image_id), expected_hw=self.image_hw(image_id), mode_policy=mode_policy)

    def ref_problems(self) -> List[Tuple[str, str, str]]:
        """(key, reason, message) for refs found broken at index time: "missing_annotation" and
        "missing_image" (key "ref:<id>"), "empty_sentence" (key "sent:<id>", or "ref:<id>" when
        a ref has no sentences at all)."""
        return list(self._problems)

    def __len__(self) -> int:
        return len(self.refs)

    def __repr__(self) -> str:
        return (f"RefCOCO({self.dataset}({self.split_by}): {len(self.refs)} refs, {len(self.sents)} sentences, "
                f"{len(self.images)} images, {len(self.anns)} annotations, splits {self.splits})")
