"""The refer layout of the demo: datasets and split schemes, id blocks, version and file names."""
from __future__ import annotations

from typing import Dict, Tuple

from ..vocab import COCO_CATEGORIES, COCO_SUPERCATEGORIES

DEFAULT_NUM_IMAGES = 48
DEMO_VERSION = 2  # bump when the generator's output changes: ensure_demo then rewrites old demos
MARKER_NAME = ".demo-complete.json"
FIRST_IMAGE_ID = 1000
MAX_IMAGES = 100_000  # keeps the per-image id blocks below from colliding
JPEG_QUALITY = 92

# dataset -> split schemes written as refs({scheme}).p
DATASETS: Dict[str, Tuple[str, ...]] = {
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc",),
    "refcocog": ("umd", "google"),
}
SENT_ID_BASE = {"refcoco": 0, "refcoco+": 10_000_000, "refcocog": 20_000_000}
# Deterministic per-image split cycles (about 60% train; every split present from 8 images on).
SPLIT_CYCLES = {
    "unc": ("train", "val", "train", "testA", "train", "train", "testB", "train"),
    "google": ("train", "train", "val", "train", "test"),
    "umd": ("train", "val", "train", "test", "train"),
}

CAT_IDS = {name: cid for cid, name in COCO_CATEGORIES.items()}
SUPER_OF = {cid: sup for sup, ids in COCO_SUPERCATEGORIES.items() for cid in ids}
