"""Difficulty attributes (refcoco_edit.difficulty): the word rules on a table of expressions,
including the ones they must not match, the buckets, the hard rule and the --subset language."""
from __future__ import annotations

import numpy as np
import pytest

from refcoco_edit import rle
from refcoco_edit.difficulty import (BUCKETS, KINDS, attributes, buckets, counts, expression_kinds, expression_words,
                                     is_hard, size_class, subset_filter)

# (expression, category, kinds): every rule with the words it must match and must not match
WORD_RULES = [
    ("man on left", "person", ["location"]),
    ("right zebra", "zebra", ["location"]),
    ("far right cow", "cow", ["location"]),
    ("middle guy", "person", ["location"]),
    ("closest elephant", "elephant", ["location"]),
    ("the one in the back", "person", ["location"]),
    ("front guy", "person", ["location"]),
    ("the guy behind", "person", ["location"]),  # behind at the end: a place, not a relation
    ("top donut", "donut", ["location"]),
    # must NOT be location
    ("all right then the dog", "dog", ["plain"]),
    ("the one left over", "donut", ["plain"]),
    ("the cake left behind", "cake", ["plain"]),
    ("right now the cat", "cat", ["plain"]),
    ("man with his back to us", "person", ["plain"]),
    ("leftover pizza", "pizza", ["plain"]),
    # ordinal
    ("second from left", "person", ["location", "ordinal"]),
    ("first zebra", "zebra", ["ordinal"]),
    ("last one", "person", ["ordinal"]),
    ("3rd sheep", "sheep", ["ordinal"]),
    # attribute
    ("girl in red shirt", "person", ["attribute"]),
    ("the striped ball", "sports ball", ["attribute"]),
    ("biggest elephant", "elephant", ["attribute"]),
    ("dark horse", "horse", ["attribute"]),
    # must NOT be attribute
    ("orange", "orange", ["plain"]),  # the category's own name
    ("traffic light", "traffic light", ["plain"]),
    ("wine glass", "wine glass", ["plain"]),
    ("the orange on the plate", "orange", ["plain"]),  # "on" alone is no relation rule
    # relational
    ("guy next to the teddy", "person", ["relational"]),
    ("dog near the table", "dog", ["relational"]),
    ("car in front of the bus", "car", ["relational"]),
    ("the cat on top of the tv", "cat", ["relational"]),
    ("man holding umbrella", "person", ["relational"]),
    ("guy behind the fence", "person", ["relational"]),
    ("bowl between the cups", "bowl", ["relational"]),
    ("chair across from the sofa", "chair", ["relational"]),
    # several kinds, and none
    ("red car on the left next to the bus", "car", ["location", "attribute", "relational"]),
    ("zebra", "zebra", ["plain"]),
    ("", "zebra", ["plain"]),
]


@pytest.mark.parametrize("text,category,kinds", WORD_RULES)
def test_expression_word_rules(text, category, kinds):
    assert expression_kinds(text, category) == kinds


def test_kinds_come_in_a_fixed_order_and_words_are_counted():
    assert expression_kinds("Second RED man on the LEFT") == ["location", "ordinal", "attribute"]
    assert set(expression_kinds("red car on the left next to the bus")) <= set(KINDS)
    assert expression_words("the man's hat, left") == 4
    assert expression_words("") == 0


def test_size_class_is_cocos():
    assert [size_class(a) for a in (0, 1023, 1024, 9215, 9216)] == ["small", "small", "medium", "medium", "large"]


def _row(target: np.ndarray, others, n_same: int, text: str = "man on left", dataset: str = "refcoco+") -> dict:
    return {"source_mask": rle.encode(target), "other_masks": [rle.encode(o) for o in others],
            "other_ann_ids": list(range(len(others))), "selection": {"n_same_category": n_same},
            "category": "person", "referring_expression": text, "dataset": dataset}


def test_attributes_of_a_crafted_row():
    h, w = 60, 80
    target = np.zeros((h, w), bool)
    target[10:40, 10:30] = True
    touching = np.zeros((h, w), bool)
    touching[10:40, 30:50] = True  # shares the edge column 30 with the target's dilation
    far = np.zeros((h, w), bool)
    far[50:58, 60:78] = True
    a = attributes(_row(target, [touching, far], n_same=1))
    assert a == {"n_distractors": 1, "n_objects": 3, "area_fraction": pytest.approx(600 / 4800), "size_class": "small",
                 "occlusion": "touching", "likeness_only": False, "expression_kinds": ["location"],
                 "expression_words": 3, "source_dataset": "refcoco+", "hard": True}  # small -> hard
    split = target.copy()
    split[24:27] = False  # cut in two by an occluder
    assert attributes(_row(split, [far], n_same=0))["occlusion"] == "split"
    alone = attributes(_row(target, [far], n_same=0))
    assert alone["occlusion"] == "none" and alone["likeness_only"] is True
    # unknown inputs stay unknown (schema 1.0 rows: no other objects)
    old = _row(target, [], n_same=1)
    old["other_masks"] = old["other_ann_ids"] = None
    a = attributes(old)
    assert a["n_objects"] is None and a["occlusion"] is None


def test_the_hard_rule():
    base = {"n_distractors": 1, "size_class": "medium", "occlusion": "none", "expression_kinds": ["location"]}
    assert is_hard(base) is False
    assert is_hard({**base, "n_distractors": 2}) is True
    assert is_hard({**base, "size_class": "small"}) is True
    assert is_hard({**base, "occlusion": "split"}) is True
    assert is_hard({**base, "expression_kinds": ["relational"]}) is True
    assert is_hard({**base, "n_distractors": 0, "expression_kinds": ["ordinal"]}) is False  # nothing to tell apart
    assert is_hard({**base, "occlusion": None}) is None  # could be split: unknown


def test_buckets_and_counts():
    a = {"n_distractors": 4, "n_objects": 2, "area_fraction": 0.03, "size_class": "medium", "occlusion": "none",
         "likeness_only": False, "expression_kinds": ["location", "attribute"], "expression_words": 9,
         "source_dataset": "refcoco", "hard": True}
    b = buckets(a)
    assert set(b) == set(BUCKETS)
    assert b["attr_distractors"] == "3+" and b["attr_objects"] == "1-2" and b["attr_area"] == "1-5%"
    assert b["attr_expr_location"] == "yes" and b["attr_expr_plain"] == "no" and b["attr_expr_words"] == "9+"
    assert b["attr_hard"] == "yes" and b["attr_likeness_only"] == "no"
    assert [buckets({"n_distractors": n})["attr_distractors"] for n in (0, 1, 2, 3)] == ["0", "1", "2", "3+"]
    assert all(v is None for v in buckets(None).values())
    c = counts([{"difficulty": a}, {"difficulty": None}])
    assert c["attr_distractors"] == {"3+": 1, "unknown": 1}


def test_subset_language():
    f = subset_filter("n_distractors >= 2 and size_class == 'small'")
    assert f({"n_distractors": 2, "size_class": "small"}) and not f({"n_distractors": 1, "size_class": "small"})
    f = subset_filter("'location' in expression_kinds and not hard")
    assert f({"expression_kinds": ["location"], "hard": False}) and not f({"expression_kinds": ["plain"], "hard": False})
    f = subset_filter("edit_type in ('remove', 'replace') or occlusion != 'none'")
    assert f({"edit_type": "remove"}) and f({"edit_type": "attribute", "occlusion": "split"})
    # unknown values (None) are unknown, not false: Kleene logic, a sample matches only when True
    assert not subset_filter("not hard")({"hard": None})
    assert subset_filter("n_distractors >= 2 or edit_type == 'remove'")({"n_distractors": None, "edit_type": "remove"})
    assert not subset_filter("n_distractors >= 2 and edit_type == 'remove'")({"n_distractors": None,
                                                                               "edit_type": "remove"})
    assert subset_filter("1 <= n_distractors < 3")({"n_distractors": 2})


@pytest.mark.parametrize("expr,why", [
    ("__import__('os').system('x')", "Call is not allowed"),
    ("n_distractors.real > 1", "Attribute is not allowed"),
    ("colour == 'red'", "unknown name 'colour'"),
    ("n_distractors +", "not an expression"),
    ("n_distractors is None", "operator Is is not allowed"),
    ("", "empty expression"),
])
def test_subset_refuses_anything_else(expr, why):
    with pytest.raises(ValueError, match=why):
        subset_filter(expr)
    with pytest.raises(ValueError, match="cannot compare"):
        subset_filter("size_class < 2")({"size_class": "small"})
