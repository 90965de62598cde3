"""Tests of the edit instruction writer: spans exact by construction, target choice, paraphrasing."""
from __future__ import annotations

import random
import re

import numpy as np
import pytest

from refcoco_edit import prompts as P
from refcoco_edit.errors import SampleError
from refcoco_edit.prompts import (
    BUILD_EDIT_TYPES,
    TEMPLATE_VERSION,
    TEMPLATES,
    Prompt,
    PromptWriter,
    TemplateParaphraser,
    choose_edit_target,
    compose,
    find_span,
    indefinite_article,
    make_prompt,
    needs_determiner,
    normalize_expression,
    render_target,
    template_ids,
)
from refcoco_edit.vocab import COCO_CATEGORIES, COLOURS, IMAGINATIVE_TARGETS, MATERIALS

EXPRESSIONS = [
    "man in red shirt",
    "the dog on the left",
    "left guy",
    "Woman holding an umbrella.",
    "  guy   in\tblue  jacket!! ",
    "café table near the window",
    "Giraffe, far right...",
    "one on left",
    "one of the two cows",
    "his bike",
    "remove the zebra",  # contains a removal verb and a category
    "a giraffe behind the fence",  # contains the likely replace target phrase
    "red car",
    "zebra (the small one)",
    "2nd from left",
    "Ü-bahn sign? no, the bus",
    "x",
]

CATEGORIES = list(COCO_CATEGORIES.values())


def _check(prompt: Prompt, expression: str) -> None:
    prompt.validate()
    a, b = prompt.referring_span
    c, d = prompt.edit_span
    assert prompt.text[a:b] == prompt.referring_phrase == normalize_expression(expression)
    assert prompt.text[c:d] == prompt.edit_phrase
    assert prompt.edit_phrase and prompt.edit_phrase == prompt.edit_phrase.strip()
    assert b <= c or d <= a, "spans overlap"


def _target_for(template_id: str, rng: np.random.Generator) -> str:
    tpl = TEMPLATES[template_id]
    if tpl.edit_type == "remove":
        return ""
    if tpl.edit_type == "replace":
        return str(rng.choice(CATEGORIES + list(IMAGINATIVE_TARGETS)))
    pool = (list(COLOURS) if "colour" in tpl.forms else []) + (
        list(MATERIALS) if set(tpl.forms) & {"adj", "made_of", "noun"} else []
    )
    return str(rng.choice(pool))


# ---------------------------------------------------------------------------------------------
# templates
# ---------------------------------------------------------------------------------------------

def test_constants():
    assert BUILD_EDIT_TYPES == ("replace", "remove", "attribute")
    assert isinstance(TEMPLATE_VERSION, str) and TEMPLATE_VERSION


def test_template_counts_and_distinct():
    minimum = {"replace": 12, "remove": 10, "attribute": 10}
    for edit_type, n in minimum.items():
        ids = template_ids(edit_type)
        patterns = {TEMPLATES[t].pattern for t in ids}
        assert len(ids) >= n and len(patterns) == len(ids)
        assert all(TEMPLATES[t].edit_type == edit_type for t in ids)
    assert set(template_ids()) == set(TEMPLATES)


def test_attribute_templates_cover_colours_and_materials():
    ids = template_ids("attribute")
    assert sum("colour" in TEMPLATES[t].forms for t in ids) >= 8
    assert sum(bool(set(TEMPLATES[t].forms) - {"colour"}) for t in ids) >= 8


@pytest.mark.parametrize("template_id", sorted(TEMPLATES))
def test_every_template_spans_exact(template_id):
    tpl = TEMPLATES[template_id]
    for seed in range(12):
        for expr in EXPRESSIONS:
            rng = np.random.default_rng(seed)
            target = _target_for(template_id, rng)
            prompt = compose(tpl.edit_type, expr, target, rng, template_id=template_id)
            _check(prompt, expr)
            assert prompt.source == "template" and prompt.template_id == template_id
            if tpl.edit_type == "replace":
                assert prompt.edit_phrase == render_target(target)
            elif tpl.edit_type == "attribute":
                phrase = prompt.edit_phrase
                if target in COLOURS:
                    assert phrase.split()[-1] == target
                else:
                    assert phrase in {"wooden", "metallic", "golden", "marble", "glass", "stone"} or \
                        re.fullmatch(r"(made of )?(wood|metal|gold|marble|glass|stone)", phrase)
            else:
                assert prompt.edit_phrase in {"remove", "erase", "get rid of", "take out", "delete",
                                              "removed", "disappear"}


def test_the_glue_outside_span_and_no_recasing():
    p = compose("remove", "left guy", "", np.random.default_rng(0), template_id="remove.01")
    assert p.text == "remove the left guy"
    assert p.referring_phrase == "left guy" and p.text[: p.referring_span[0]] == "remove the "
    # an expression with its own determiner: no glue, and never re-cased even at sentence start
    p = compose("replace", "the dog on the left", "horse", np.random.default_rng(0), template_id="replace.07")
    assert p.text == "the dog on the left should become a horse."
    assert p.referring_span == (0, len("the dog on the left"))
    # without a determiner the glue is capitalised, not the expression
    p = compose("replace", "dog on the left", "horse", np.random.default_rng(0), template_id="replace.07")
    assert p.text == "The dog on the left should become a horse."
    assert p.referring_phrase == "dog on the left"
    # capitals in the expression survive verbatim
    p = compose("remove", "Giraffe, far right.", "", np.random.default_rng(0), template_id="remove.06")
    assert p.text == "Please remove the Giraffe, far right."
    assert p.referring_phrase == "Giraffe, far right"


def test_non_ascii_expression():
    p = compose("attribute", "café table", "blue", np.random.default_rng(0), template_id="attribute.04")
    assert p.text == "Change the colour of the café table to blue."
    assert p.referring_phrase == "café table" and p.edit_phrase == "blue"


def test_expression_containing_edit_phrase_spans_by_construction():
    p = compose("replace", "a giraffe behind a giraffe", "giraffe", np.random.default_rng(0),
                template_id="replace.06")
    assert p.text == "Put a giraffe where a giraffe behind a giraffe is."
    assert p.edit_span == (4, 13)  # the template's, not a search hit inside the expression
    assert p.referring_phrase == "a giraffe behind a giraffe"
    p = compose("remove", "remove sign", "", np.random.default_rng(0), template_id="remove.01")
    assert p.text == "remove the remove sign" and p.edit_span == (0, 6)
    assert p.referring_span == (11, 22)


def test_determiners():
    for expr in ["the dog", "a man", "An apple", "this one", "those two", "his bike", "her hat",
                 "their car", "its tail", "my cup", "your chair", "our table", "some sheep",
                 "each", "both dogs", "him", "someone's bag", "one of the cows", "all cows"]:
        assert not needs_determiner(expr), expr
    for expr in ["man", "left guy", "one on left", "2nd from left", "other zebra", "x", "Café"]:
        assert needs_determiner(expr), expr


def test_normalize_expression():
    assert normalize_expression("  the   man \n in red.  ") == "the man in red"
    assert normalize_expression("Left Guy!!?") == "Left Guy"
    assert normalize_expression("zebra (small)") == "zebra (small)"
    assert normalize_expression("café table…") == "café table"
    assert normalize_expression("...") == ""


def test_empty_expression_is_a_sample_error():
    with pytest.raises(SampleError) as e:
        compose("remove", " .. ", "", np.random.default_rng(0))
    assert e.value.reason == "empty_sentence"


def test_compose_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        compose("add", "the dog", "cat", rng)
    with pytest.raises(ValueError):
        compose("replace", "the dog", "cat", rng, template_id="nope.01")
    with pytest.raises(ValueError):
        compose("replace", "the dog", "cat", rng, template_id="remove.01")
    with pytest.raises(ValueError):
        compose("attribute", "the dog", "wooden", rng, template_id="attribute.04")  # colour only
    with pytest.raises(ValueError):
        compose("attribute", "the dog", "sparkly", rng)
    with pytest.raises(ValueError):
        compose("replace", "the dog", "  ", rng)


def test_compose_only_picks_compatible_templates():
    for seed in range(60):
        p = compose("attribute", "the dog", "glass", np.random.default_rng(seed))
        assert TEMPLATES[p.template_id].accepts("glass")
        assert set(TEMPLATES[p.template_id].forms) - {"colour"}
        assert "glass" in p.edit_phrase


# ---------------------------------------------------------------------------------------------
# articles and renderings
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "target,expected",
    [
        ("orange", "an orange"), ("elephant", "an elephant"), ("umbrella", "an umbrella"),
        ("airplane", "an airplane"), ("oven", "an oven"), ("apple", "an apple"),
        ("unicorn", "a unicorn"), ("hot dog", "a hot dog"), ("hour glass", "an hour glass"),
        ("horse", "a horse"), ("tv", "a tv"), ("skis", "a pair of skis"),
        ("scissors", "a pair of scissors"), ("broccoli", "some broccoli"),
        ("a robot", "a robot"), ("a unicorn", "a unicorn"), ("hair drier", "a hair drier"),
        ("one-eyed monster", "a one-eyed monster"), ("eucalyptus tree", "a eucalyptus tree"),
    ],
)
def test_render_target_articles(target, expected):
    assert render_target(target) == expected


def test_every_vocab_target_has_an_article():
    for name in CATEGORIES:
        phrase = render_target(name)
        assert phrase.endswith(name) and phrase.split()[0] in {"a", "an", "some"}
    for t in IMAGINATIVE_TARGETS:
        assert render_target(t) == t


def test_indefinite_article_for_attribute_colour():
    assert indefinite_article("orange") == "an"
    assert indefinite_article("bright red") == "a"
    p = compose("attribute", "the bus", "orange", np.random.default_rng(0), template_id="attribute.10")
    assert p.text in {"Give the bus an orange colour.", "Give the bus a bright orange colour.",
                      "Give the bus a vivid orange colour."}
    p = compose("attribute", "vase", "marble", np.random.default_rng(0), template_id="attribute.15")
    assert p.text == "Give the vase a marble finish." and p.edit_phrase == "marble"


def test_material_renderings():
    seen = set()
    for seed in range(200):
        p = compose("attribute", "chair", "wooden", np.random.default_rng(seed))
        seen.add(p.edit_phrase)
    assert seen == {"wooden", "made of wood", "wood"}
    p = compose("attribute", "chair", "golden", np.random.default_rng(0), template_id="attribute.05")
    assert p.text == "Make the chair look like it is made of gold." and p.edit_phrase == "made of gold"


def test_colour_intensifier_stays_in_span():
    phrases = {compose("attribute", "car", "red", np.random.default_rng(s), template_id="attribute.01").edit_phrase
               for s in range(100)}
    assert "red" in phrases and any(len(x.split()) == 2 for x in phrases)
    assert all(x.endswith("red") for x in phrases)


# ---------------------------------------------------------------------------------------------
# target choice
# ---------------------------------------------------------------------------------------------

def test_replace_target_not_source_nor_named():
    for seed in range(300):
        rng = np.random.default_rng(seed)
        t = choose_edit_target("replace", "dog", "dog next to the man on a bench", rng)
        assert t in CATEGORIES
        assert t not in {"dog", "person", "bench"}
    for seed in range(100):
        t = choose_edit_target("replace", "car", "car behind the two giraffes", np.random.default_rng(seed))
        assert t not in {"car", "giraffe"}


def test_replace_target_plausibility_keeps_variety():
    picks = [choose_edit_target("replace", "cow", "cow on left", np.random.default_rng(s)) for s in range(600)]
    animals = {"horse", "sheep", "elephant", "bear", "zebra", "giraffe", "dog", "cat", "bird"}
    assert sum(p in animals for p in picks) > 600 * 9 / 79  # above a uniform draw
    assert len(set(picks)) > 40  # still varied


def test_available_categories_restrict_and_empty_pool():
    for seed in range(50):
        t = choose_edit_target("replace", "dog", "dog", np.random.default_rng(seed),
                               available_categories=["cat", "dog", "horse"])
        assert t in {"cat", "horse"}
    with pytest.raises(SampleError) as e:
        choose_edit_target("replace", "dog", "dog by the cat", np.random.default_rng(0),
                           available_categories=["cat", "dog"])
    assert e.value.reason == "no_exemplar"
    with pytest.raises(SampleError) as e:
        choose_edit_target("replace", "dog", "dog", np.random.default_rng(0), available_categories=[])
    assert e.value.reason == "no_exemplar"
    # imaginative targets need no exemplar
    t = choose_edit_target("replace", "dog", "dog", np.random.default_rng(0), available_categories=[],
                           imaginative=True)
    assert t in IMAGINATIVE_TARGETS


def test_imaginative_targets_join_the_pool():
    picks = [choose_edit_target("replace", "dog", "dog", np.random.default_rng(s), imaginative=True)
             for s in range(300)]
    n_fancy = sum(p in IMAGINATIVE_TARGETS for p in picks)
    assert 40 < n_fancy < 200
    assert not any(p in IMAGINATIVE_TARGETS for p in
                   (choose_edit_target("replace", "dog", "dog", np.random.default_rng(s)) for s in range(100)))
    picks = [choose_edit_target("replace", "teddy bear", "panda toy", np.random.default_rng(s), imaginative=True)
             for s in range(300)]
    assert "a panda" not in picks


def test_attribute_target_not_mentioned():
    for seed in range(300):
        t = choose_edit_target("attribute", "cup", "the red cup near the Blue plate", np.random.default_rng(seed))
        assert t not in {"red", "blue"}
        assert t in COLOURS or t in MATERIALS
    for seed in range(100):
        t = choose_edit_target("attribute", "orange", "grey one, wooden bowl", np.random.default_rng(seed))
        assert t not in {"orange", "gray", "wooden"}


def test_attribute_material_share():
    picks = [choose_edit_target("attribute", "cup", "cup", np.random.default_rng(s)) for s in range(1000)]
    share = sum(p in MATERIALS for p in picks) / len(picks)
    assert 0.2 < share < 0.4
    assert set(picks) == set(COLOURS) | set(MATERIALS)


def test_remove_target_and_unknown_type():
    assert choose_edit_target("remove", "dog", "dog", np.random.default_rng(0)) == ""
    with pytest.raises(ValueError):
        choose_edit_target("add", "dog", "dog", np.random.default_rng(0))


def test_determinism():
    def run(seed):
        rng = np.random.default_rng(seed)
        out = []
        for et in BUILD_EDIT_TYPES:
            t = choose_edit_target(et, "dog", "dog on the left", rng, imaginative=True)
            out.append(make_prompt(et, "dog on the left", t, rng, paraphraser=TemplateParaphraser()))
        return out

    assert run(7) == run(7)
    assert any(run(7) != run(s) for s in range(8, 12))


# ---------------------------------------------------------------------------------------------
# paraphraser
# ---------------------------------------------------------------------------------------------

def test_paraphraser_keeps_spans_and_changes_text():
    para = TemplateParaphraser()
    changed = 0
    for seed in range(300):
        rng = np.random.default_rng(seed)
        expr = EXPRESSIONS[seed % len(EXPRESSIONS)]
        et = BUILD_EDIT_TYPES[seed % 3]
        target = choose_edit_target(et, "dog", expr, rng, imaginative=True)
        base = compose(et, expr, target, rng)
        out = para.paraphrase(base, rng)
        _check(out, expr)
        assert out.edit_phrase == base.edit_phrase
        assert out.source == base.source
        if out.text != base.text:
            changed += 1
            assert out.template_id == base.template_id + "+para"
        else:
            assert out == base
    assert changed > 50


def test_paraphraser_all_on_is_natural():
    para = TemplateParaphraser(p_politeness=1.0, p_suffix=1.0, p_synonym=1.0)
    for tid in sorted(TEMPLATES):
        for seed in range(5):
            rng = np.random.default_rng(seed)
            base = compose(TEMPLATES[tid].edit_type, "dog", _target_for(tid, rng), rng, template_id=tid)
            out = para.paraphrase(base, rng)
            _check(out, "dog")
            assert out.text != base.text
            assert out.text.count("please") + out.text.count("Please") <= 1
            assert not re.search(r"[.?!]\s*[,a-z]", out.text), out.text  # no text after an end mark
            assert out.text.count("?") <= 1
            assert "background and" not in out.text  # no "... and ... and ..." suffix chains


def test_paraphraser_phrase_twice():
    # the edit phrase also occurs inside the referring expression: spans still exact
    base = compose("remove", "remove sign", "", np.random.default_rng(0), template_id="remove.01")
    para = TemplateParaphraser(p_politeness=1.0, p_suffix=1.0)
    for seed in range(20):
        out = para.paraphrase(base, np.random.default_rng(seed))
        _check(out, "remove sign")
        assert out.edit_phrase == "remove"


def test_paraphraser_specific_rewrites():
    para = TemplateParaphraser(p_politeness=0.0, p_suffix=0.0, p_synonym=1.0)
    base = compose("replace", "dog", "cat", np.random.default_rng(0), template_id="replace.02")
    outs = {para.paraphrase(base, np.random.default_rng(s)).text for s in range(50)}
    assert outs == {"Swap out the dog for a cat.", "Switch out the dog for a cat.", "Exchange the dog for a cat.",
                    "Swap the dog for a cat.", "Replace the dog by a cat."}
    base = compose("remove", "dog", "", np.random.default_rng(0), template_id="remove.02")
    outs = {para.paraphrase(base, np.random.default_rng(s)).text for s in range(50)}
    assert outs == {"erase the dog from the photo", "erase the dog from the image", "erase the dog from the scene"}


def test_paraphraser_works_on_llm_prompts():
    text = "Turn the dog sitting left into a fluffy cat."
    p = Prompt(text, find_span(text, "the dog sitting left"), find_span(text, "a fluffy cat"), source="llm:x")
    para = TemplateParaphraser(p_politeness=1.0, p_suffix=1.0)
    for seed in range(20):
        out = para.paraphrase(p, np.random.default_rng(seed))
        out.validate()
        assert out.referring_phrase == "the dog sitting left" and out.edit_phrase == "a fluffy cat"
        assert out.source == "llm:x"


def test_paraphraser_rejects_bad_probabilities():
    with pytest.raises(ValueError):
        TemplateParaphraser(p_politeness=1.5)


# ---------------------------------------------------------------------------------------------
# Prompt, find_span, protocol
# ---------------------------------------------------------------------------------------------

def test_find_span():
    assert find_span("remove the dog and the dog", "the dog") == (7, 14)
    assert find_span("Remove the dog", "remove") is None  # case-sensitive
    assert find_span("remove the dog", "cat") is None
    assert find_span("remove the dog", "") is None
    assert find_span("café table", "table") == (5, 10)


def test_prompt_validate():
    Prompt("remove the dog", (11, 14), (0, 6)).validate()
    bad = [
        ((11, 15), (0, 6)),  # out of range
        ((-1, 3), (4, 6)),
        ((3, 3), (4, 6)),  # empty
        ((5, 3), (0, 2)),  # reversed
        ((0, 10), (7, 14)),  # overlap
        ((0, 6), (0, 6)),
    ]
    for r, e in bad:
        with pytest.raises(ValueError):
            Prompt("remove the dog", r, e).validate()
    with pytest.raises(ValueError):
        Prompt("", (0, 1), (1, 2)).validate()
    with pytest.raises(ValueError):
        Prompt("remove the dog", (0, 1.5), (3, 4))
    p = Prompt("remove the dog", [11, 14], [0, 6])
    assert p.referring_span == (11, 14) and p.edit_phrase == "remove" and p.referring_phrase == "dog"
    assert p.to_fields() == {"prompt": "remove the dog", "referring_span": [11, 14], "edit_span": [0, 6],
                             "prompt_source": "template"}


def test_prompt_writer_protocol():
    class Echo:
        def write(self, items):
            return [it["prompt"] for it in items]

    assert isinstance(Echo(), PromptWriter)
    assert not isinstance(object(), PromptWriter)


# ---------------------------------------------------------------------------------------------
# random combos (a property-style loop without hypothesis)
# ---------------------------------------------------------------------------------------------

_WORDS = ["man", "the", "left", "Red", "café", "über", "dog", "a", "giraffe", "remove", "one", "of",
          "with", "hat", "2nd", ",", "(far)", "right", "His", "blue", "wooden", "ümlaut", "x", "'s",
          "turn", "into", "please", "."]


def test_random_combos_span_exactness():
    r = random.Random(1234)
    para = TemplateParaphraser(p_politeness=0.5, p_suffix=0.5, p_synonym=0.5)
    for i in range(500):
        expr = " ".join(r.choice(_WORDS) for _ in range(r.randint(1, 7)))
        expr = r.choice(["", " ", "  "]) + expr + r.choice(["", ".", "!", " ?", "  "])
        if not normalize_expression(expr):
            continue
        rng = np.random.default_rng(r.randrange(2**32))
        et = r.choice(BUILD_EDIT_TYPES)
        category = r.choice(CATEGORIES)
        avail = r.sample(CATEGORIES, r.randint(0, 5)) if r.random() < 0.3 else None
        try:
            target = choose_edit_target(et, category, expr, rng, available_categories=avail,
                                        imaginative=r.random() < 0.5)
        except SampleError as e:
            assert e.reason == "no_exemplar" and avail is not None
            continue
        if et == "replace":
            assert target != category
        prompt = make_prompt(et, expr, target, rng, paraphraser=para if r.random() < 0.5 else None)
        _check(prompt, expr)
        if et == "replace":
            assert prompt.edit_phrase == render_target(target)


def test_module_has_no_heavy_imports():
    import sys
    from pathlib import Path

    assert "torch" not in vars(P)
    files = sorted(Path(P.__file__).parent.glob("*.py"))  # the package's modules
    assert len(files) > 1
    for f in files:
        assert "import torch" not in f.read_text(encoding="utf-8"), f.name
    assert "refcoco_edit.prompts" in sys.modules


# -- shape-aware replace targets ------------------------------------------------------------------
def test_shape_rule_never_turns_a_standing_man_into_a_bus():
    """'turn the man with grey hair into a bus': with the shape rule a bus (11 m, 1.3:1) is never
    drawn for a person's 60 x 180 box, whatever the seed; without it, it is."""
    import numpy as np

    from refcoco_edit.errors import SampleError
    from refcoco_edit.prompts import choose_edit_target
    from refcoco_edit.prompts.fit import fits

    pool = ["bus", "car", "dog", "bottle", "fire hydrant", "refrigerator", "umbrella"]
    picks = {choose_edit_target("replace", "person", "the man with grey hair", np.random.default_rng(s),
                                available_categories=pool, source_box=(60, 180), aspect_tolerance=2.0,
                                size_ratio=4.0) for s in range(200)}
    assert "bus" not in picks and "car" not in picks and "dog" not in picks
    assert picks == {"refrigerator"}  # the one person-sized, person-shaped category of the pool
    assert not fits("person", (60, 180), "bus", 2.0, 4.0)
    assert not fits("person", (200, 200), "bus", 2.0, 4.0)  # size alone rules it out
    assert fits("person", (200, 200), "bus", 2.0, 0.0)      # rules off: allowed
    loose = {choose_edit_target("replace", "person", "the man with grey hair", np.random.default_rng(s),
                                available_categories=pool) for s in range(200)}
    assert "bus" in loose
    with pytest.raises(SampleError) as e:
        choose_edit_target("replace", "person", "the man", np.random.default_rng(0), available_categories=["bus"],
                           source_box=(40, 200), aspect_tolerance=2.0, size_ratio=4.0)
    assert e.value.reason == "no_fitting_target"


def test_measured_aspects_win_over_the_table():
    from refcoco_edit.prompts.fit import fits, typical_aspect

    assert typical_aspect("bottle") == pytest.approx(0.4)
    assert typical_aspect("bottle", {"bottle": 1.5}) == 1.5
    assert not fits("cup", (100, 100), "bottle", 2.0, 4.0)
    assert fits("cup", (100, 100), "bottle", 2.0, 4.0, aspects={"bottle": 0.9})
