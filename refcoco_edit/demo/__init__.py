"""A deterministic synthetic mini-RefCOCO in the real "refer" layout: the default data of `build`.

Why: `refcoco-edit build` must run end to end on any laptop without the 13 GB COCO download, and the
tests need real-format data with look-alike objects, occlusions and crowd masks. So this package
draws photo-like table-top scenes with numpy/cv2 (textured wall and table, shaded objects with
highlights and soft shadows, vignette, sensor noise) and writes them exactly as the refer toolkit
ships RefCOCO, RefCOCO+ and RefCOCOg::

    out_dir/
      refcoco/instances.json   refcoco/refs(unc).p   refcoco/refs(google).p
      refcoco+/instances.json  refcoco+/refs(unc).p
      refcocog/instances.json  refcocog/refs(umd).p  refcocog/refs(google).p
      images/COCO_train2014_{image_id:012d}.jpg

* ``instances.json``: COCO style {info, licenses, images, annotations, categories}; all 80 COCO
  categories with their real ids; polygons (a list of flat [x1, y1, x2, y2, ...] lists, two of them
  when an occluder splits an object) or, for ``iscrowd=1``, an uncompressed column-major RLE.
  The three datasets share the same images and annotations (same file content).
* Scenes: 320-640 px per side, 3-6 objects on a table (plus, in some, a potted plant that no
  ref points at); at least two look-alikes of one category in every image; a tall object in front
  of a wide one in every sixth image (a two-part polygon); a shelf of books on the wall in every
  sixteenth one (its visible part is one ``iscrowd=1`` "book" annotation, never a ref).
  Hard cases of the selection rules: every eighth image (from the fourth) is a close-up of one big
  referred subject with two small look-alikes in front of it (rule 1 must drop the subject; every
  other close-up is a book over 60% of a square frame), and single objects are referred to by
  their category (rule 2 must drop those that nothing resembles).
* ``refs(*).p``: a protocol-2 pickle of a list of plain dicts, one per referred object (every
  object but the potted plant):
  {ref_id, ann_id, image_id, split, sent_ids, sentences: [{tokens, raw, sent_id, sent}],
  category_id, file_name}. Splits are per image. RefCOCO expressions are short and may use
  location words; RefCOCO+ ones use appearance only (colour, size, pattern); RefCOCOg ones are
  longer sentences. Every expression identifies its object among the same-category objects of
  its image (positions by x-order, colours only when they tell the objects apart).

Every random choice comes from ``numpy.random.default_rng([seed, image_index, stream])``, so the
first N images are the same whatever ``num_images`` is, and two runs give byte-identical files.

``render_clean_plate(ann_id, seed)`` re-renders an object's image without that object and its
shadows (same streams, same noise): the ground truth of its removal, made on demand so that the
files on disk never change for it (``perf/bench_removal.py`` scores removers against it).
``render_attribute_plate(ann_id, target, seed)`` re-renders it with that object in another colour
or material under the same light (every other pixel as in the image): the ground truth of its
attribute edit (``perf/bench_recolor.py`` scores the recolouring against it).

Modules, by concern (the API is this package's ``__all__``; the modules are internal)::

    layout.py    the refer layout: datasets, split schemes, id blocks, DEMO_VERSION
    scene.py     scene planning: categories, look-alike groups, colours, patterns, placement
    shapes.py    shading and shape primitives (Lambert/Blinn-Phong, lathes, ellipsoid blobs)
    objects.py   one renderer per drawable category
    backdrop.py  wall and table, the shelf of books, lighting, shadows, camera
    grammar.py   the referring-expression grammar of RefCOCO, RefCOCO+ and RefCOCOg
    image.py     one image: render, annotate (polygons, crowd RLE), describe; clean and attribute plates
    plates.py    attribute plates: an object's look in another colour or material
    writer.py    write_demo / ensure_demo: instances.json, refs(*).p, images, the done-marker
"""
from __future__ import annotations

from .grammar import LOCATION_WORDS
from .layout import DEFAULT_NUM_IMAGES, DEMO_VERSION, MARKER_NAME
from .image import render_attribute_plate, render_attribute_plates, render_clean_plate
from .writer import ensure_demo, write_demo

__all__ = ["DEFAULT_NUM_IMAGES", "DEMO_VERSION", "MARKER_NAME", "LOCATION_WORDS", "write_demo", "ensure_demo",
           "render_clean_plate", "render_attribute_plate", "render_attribute_plates"]
