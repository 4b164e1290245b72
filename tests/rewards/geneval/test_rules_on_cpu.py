"""GenEval rule engine: every tag, thresholds, the cap, exclude, colour, position and the reward quirks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blip3o_rl.rewards.geneval import COLORS, TAGS, MetadataError, evaluate_detections, relative_position
from blip3o_rl.rewards.geneval.rules import colour_targets, keep_detections


def det(name, score, box=(0, 0, 10, 10), color=None):
    return {"class": name, "score": score, "box": list(box), "color": color}


def row(tag, include, exclude=None, prompt="a prompt"):
    out = {"tag": tag, "include": include, "prompt": prompt}
    if exclude is not None:
        out["exclude"] = exclude
    return out


SINGLE_DOG = row("single_object", [{"class": "dog", "count": 1}])
TWO_CLOCKS = row("counting", [{"class": "clock", "count": 2}], [{"class": "clock", "count": 3}])
RED_CAR = row("colors", [{"class": "car", "count": 1, "color": "red"}])
DOG_LEFT_OF_CAT = row("position", [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}])
LEFT, RIGHT = (0, 0, 10, 10), (50, 0, 60, 10)  # LEFT is left of RIGHT


# --- every tag -------------------------------------------------------------------------------------------


def test_single_object_needs_one_detection():
    assert evaluate_detections(SINGLE_DOG, [det("dog", 0.8)])["correct"]
    result = evaluate_detections(SINGLE_DOG, [det("cat", 0.8)])
    assert not result["correct"] and result["reason"] == "expected dog>=1, found 0"
    assert result["partial"] == 0.0 and result["bounded"] == 0.0


def test_two_object_needs_both():
    meta = row("two_object", [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}])
    assert evaluate_detections(meta, [det("dog", 0.8), det("cat", 0.7)])["correct"]
    result = evaluate_detections(meta, [det("dog", 0.8)])
    assert not result["correct"]
    assert result["partial"] == 0.5 and result["bounded"] == 0.5  # one clause of two


def test_counting_exact_number_and_exclude():
    clocks = [det("clock", 0.95), det("clock", 0.97)]
    ok = evaluate_detections(TWO_CLOCKS, clocks)
    assert ok["correct"] and ok["partial"] == 1.0 and ok["strict_correct"]
    too_few = evaluate_detections(TWO_CLOCKS, clocks[:1])
    assert not too_few["correct"] and "expected clock>=2, found 1" in too_few["reason"]
    too_many = evaluate_detections(TWO_CLOCKS, [*clocks, det("clock", 0.99)])
    # The include clause passes on the top 2; the exclude clause (>= 3 clocks) fails the image.
    assert not too_many["correct"] and too_many["reason"] == "expected clock<3, found 3"


def test_colors_checks_the_colour():
    assert evaluate_detections(RED_CAR, [det("car", 0.8, color="red")])["correct"]
    result = evaluate_detections(RED_CAR, [det("car", 0.8, color="blue")])
    assert not result["correct"]
    assert result["reason"] == "expected red car>=1, found 0 red; and 1 blue"


def test_position_checks_the_relation():
    assert evaluate_detections(DOG_LEFT_OF_CAT, [det("cat", 0.8, RIGHT), det("dog", 0.8, LEFT)])["correct"]
    result = evaluate_detections(DOG_LEFT_OF_CAT, [det("cat", 0.8, LEFT), det("dog", 0.8, RIGHT)])
    assert not result["correct"] and result["reason"] == "expected dog left of target, found right of target"


def test_color_attr_needs_both_colours():
    meta = row(
        "color_attr",
        [{"class": "car", "count": 1, "color": "red"}, {"class": "bus", "count": 1, "color": "blue"}],
    )
    assert evaluate_detections(meta, [det("car", 0.8, color="red"), det("bus", 0.8, color="blue")])["correct"]
    swapped = evaluate_detections(meta, [det("car", 0.8, color="blue"), det("bus", 0.8, color="red")])
    assert not swapped["correct"] and swapped["partial"] == 0.5 and swapped["bounded"] == 0.5


# --- thresholds, ordering, cap ---------------------------------------------------------------------------


@pytest.mark.parametrize(("score", "kept"), [(0.3, False), (0.30001, True), (0.29, False)])
def test_threshold_is_strictly_above_0_3(score, kept):
    assert evaluate_detections(SINGLE_DOG, [det("dog", score)])["correct"] is kept


@pytest.mark.parametrize(("score", "kept"), [(0.9, False), (0.90001, True), (0.5, False)])
def test_counting_threshold_is_strictly_above_0_9(score, kept):
    clocks = [det("clock", 0.99), det("clock", score)]
    assert evaluate_detections(TWO_CLOCKS, clocks)["correct"] is kept
    # A third clock under the counting threshold does not trip the exclude clause either.
    assert evaluate_detections(TWO_CLOCKS, [det("clock", 0.99), det("clock", 0.95), det("clock", score)])["correct"] is not kept


def test_counting_threshold_only_for_counting_tag():
    assert evaluate_detections(SINGLE_DOG, [det("dog", 0.5)])["correct"]
    count_one = row("counting", [{"class": "dog", "count": 1}])
    assert not evaluate_detections(count_one, [det("dog", 0.5)])["correct"]


def test_keep_caps_at_16_per_class_best_first():
    dets = [det("dog", 0.31 + i * 0.03) for i in range(20)] + [det("cat", 0.5)]
    kept = keep_detections(SINGLE_DOG, dets)
    assert len(kept["dog"]) == 16 and len(kept["cat"]) == 1
    assert [d["score"] for d in kept["dog"]] == sorted((d["score"] for d in dets[4:20]), reverse=True)


def test_cap_limits_exclude_and_partial():
    many = [det("dog", 0.5 + i * 0.01) for i in range(20)]
    never = row("single_object", [{"class": "dog", "count": 1}], [{"class": "dog", "count": 17}])
    result = evaluate_detections(never, many)
    assert result["correct"]  # at most 16 are kept, so ">= 17 dogs" cannot fail
    assert result["partial"] == pytest.approx(-14.0)  # 1 - |1 - 16| / 1: the reference's lower bound


# --- colour only on the top `count` objects --------------------------------------------------------------


def test_colour_is_judged_on_the_top_count_objects_only():
    best_blue = det("car", 0.9, color="blue")
    other_red = det("car", 0.5)  # no colour: the rules never look at it
    result = evaluate_detections(RED_CAR, [other_red, best_blue])
    assert not result["correct"]  # a red car exists, but the most confident car is blue
    assert colour_targets(RED_CAR, keep_detections(RED_CAR, [other_red, best_blue])) == [best_blue]


def test_missing_colour_on_a_needed_detection_is_an_error():
    with pytest.raises(ValueError, match="needs a colour"):
        evaluate_detections(RED_CAR, [det("car", 0.9)])


def test_no_colour_needed_when_too_few_objects():
    meta = row("colors", [{"class": "car", "count": 2, "color": "red"}])
    assert colour_targets(meta, keep_detections(meta, [det("car", 0.9)])) == []
    assert not evaluate_detections(meta, [det("car", 0.9)])["correct"]


# --- positions ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("box_a", "box_b", "relations"),
    [
        (LEFT, RIGHT, {"left of"}),
        (RIGHT, LEFT, {"right of"}),
        ((0, 0, 10, 10), (0, 50, 10, 60), {"above"}),
        ((0, 50, 10, 60), (0, 0, 10, 10), {"below"}),
        ((0, 0, 10, 10), (50, 50, 60, 60), {"left of", "above"}),  # diagonal: both hold
        ((50, 50, 60, 60), (0, 0, 10, 10), {"right of", "below"}),
        ((0, 0, 10, 10), (1, 1, 11, 11), set()),  # offset within 0.1 x (sizes): no relation
        ((0, 0, 10, 10), (4, 0, 14, 10), set()),  # shrunk offset 2 / offset 4 = 0.5: not > 0.5
        ((0, 0, 10, 10), (5, 0, 15, 10), {"left of"}),  # 3 / 5 = 0.6
        ((0, 0, 10, 10), (30, 15, 40, 25), {"left of"}),  # mostly horizontal: dy = -13 / 33.5 > -0.5
    ],
)
def test_relative_position(box_a, box_b, relations):
    assert relative_position(box_a, box_b) == relations


def test_every_relation_through_the_rules():
    pairs = {"left of": (LEFT, RIGHT), "right of": (RIGHT, LEFT), "above": ((0, 0, 10, 10), (0, 50, 10, 60))}
    pairs["below"] = (pairs["above"][1], pairs["above"][0])
    for relation, (dog_box, cat_box) in pairs.items():
        meta = row("position", [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": [relation, 0]}])
        assert evaluate_detections(meta, [det("cat", 0.8, cat_box), det("dog", 0.8, dog_box)])["correct"], relation
        assert not evaluate_detections(meta, [det("cat", 0.8, dog_box), det("dog", 0.8, cat_box)])["correct"], relation


def test_position_needs_every_object_pair():
    meta = row("position", [{"class": "cat", "count": 1}, {"class": "dog", "count": 2, "position": ["left of", 0]}])
    cat = det("cat", 0.8, (50, 0, 60, 10))
    both_left = [cat, det("dog", 0.9, (0, 0, 10, 10)), det("dog", 0.8, (20, 0, 30, 10))]
    one_right = [cat, det("dog", 0.9, (0, 0, 10, 10)), det("dog", 0.8, (90, 0, 100, 10))]
    assert evaluate_detections(meta, both_left)["correct"]
    result = evaluate_detections(meta, one_right)
    assert not result["correct"] and result["bounded"] == pytest.approx((1 + 1 + 0.5) / 3)


def test_position_against_a_failed_clause():
    result = evaluate_detections(DOG_LEFT_OF_CAT, [det("dog", 0.8, LEFT)])
    assert not result["correct"]
    assert result["reason"] == "expected cat>=1, found 0\nno target for dog to be left of"


# --- the reference reward's quirks, with the terms worked out ---------------------------------------------


def test_partial_counts_all_kept_objects_and_goes_negative():
    result = evaluate_detections(SINGLE_DOG, [det("dog", 0.9), det("dog", 0.8), det("dog", 0.7)])
    assert result["correct"] and result["bounded"] == 1.0  # GenEval looks at the best dog only
    assert result["partial"] == -1.0 and not result["strict_correct"]  # 1 - |1 - 3| / 1


def test_partial_wrong_count_adds_a_single_zero():
    # cat: [1]; dog: 2 found for count 1 -> [1 - 1, 0] (one 0 for the position it cannot check). Mean 1/3.
    dets = [det("cat", 0.8, RIGHT), det("dog", 0.9, LEFT), det("dog", 0.8, LEFT)]
    result = evaluate_detections(DOG_LEFT_OF_CAT, dets)
    assert result["correct"] and result["bounded"] == 1.0
    assert result["partial"] == pytest.approx(1 / 3)


def test_partial_failed_relation_still_adds_one():
    # cat: [1]; dog: [1, 0 (pair fails), 1 (always added)] -> 3/4. Bounded: [1], [1, 0] -> 2/3.
    result = evaluate_detections(DOG_LEFT_OF_CAT, [det("cat", 0.8, LEFT), det("dog", 0.8, RIGHT)])
    assert result["partial"] == pytest.approx(0.75)
    assert result["bounded"] == pytest.approx(2 / 3) and not result["strict_correct"]


def test_partial_failed_colour_adds_no_position_term():
    meta = row(
        "position",
        [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "color": "red", "position": ["left of", 0]}],
    )
    result = evaluate_detections(meta, [det("cat", 0.8, RIGHT), det("dog", 0.8, LEFT, color="blue")])
    assert result["partial"] == pytest.approx(2 / 3)  # cat [1]; dog [1, 0 (colour)] and nothing for position
    assert result["bounded"] == pytest.approx(0.5)  # cat [1]; dog [1, 0, 0]


def test_partial_failed_target_adds_zero():
    result = evaluate_detections(DOG_LEFT_OF_CAT, [det("dog", 0.8, LEFT)])
    assert result["partial"] == pytest.approx(1 / 3)  # cat [0]; dog [1, 0]


def test_partial_colour_term_counts_matching_objects():
    meta = row("colors", [{"class": "car", "count": 2, "color": "red"}])
    result = evaluate_detections(meta, [det("car", 0.9, color="red"), det("car", 0.8, color="blue")])
    assert not result["correct"]
    assert result["partial"] == pytest.approx(0.75)  # [1, 1 - |2 - 1| / 2]
    assert result["bounded"] == pytest.approx(0.75)


def test_partial_ignores_exclude():
    three = [det("clock", 0.95), det("clock", 0.96), det("clock", 0.97)]
    result = evaluate_detections(TWO_CLOCKS, three)
    assert result["partial"] == pytest.approx(0.5)  # only 1 - |2 - 3| / 2; no term for the exclude clause
    assert result["bounded"] == pytest.approx(0.5)  # [1 (top 2 present), 0 (exclude fails)]


def test_exclude_that_holds():
    meta = row("two_object", [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}], [{"class": "car", "count": 1}])
    assert evaluate_detections(meta, [det("dog", 0.8), det("cat", 0.8), det("car", 0.2)])["correct"]
    result = evaluate_detections(meta, [det("dog", 0.8), det("cat", 0.8), det("car", 0.4)])
    assert not result["correct"] and result["reason"] == "expected car<1, found 1"


# --- input checks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"class": "mouse", "score": 0.9, "box": [0, 0, 1, 1]}, "field 'class'"),
        ({"class": "dog", "score": float("nan"), "box": [0, 0, 1, 1]}, "field 'score'"),
        ({"class": "dog", "score": 0.9, "box": [0, 0, 1]}, "field 'box'"),
        ({"class": "dog", "score": 0.9, "box": [5, 0, 1, 1]}, "x1 < x0"),
        ({"class": "dog", "score": 0.9, "box": [0, 0, 1, 1], "color": "teal"}, "field 'color'"),
    ],
)
def test_malformed_detections_are_named(bad, message):
    with pytest.raises(ValueError, match=message) as info:
        evaluate_detections(SINGLE_DOG, [det("dog", 0.5), bad])
    assert "detection 1" in str(info.value)


def test_invalid_metadata_raises():
    with pytest.raises(MetadataError, match=r"include\[0\]\.class"):
        evaluate_detections(row("single_object", [{"class": "unicorn", "count": 1}]), [])


# --- properties --------------------------------------------------------------------------------------------

NAMES = ["dog", "cat", "car"]


@st.composite
def metadata_rows(draw):
    n = draw(st.integers(1, 3))
    include = []
    for i in range(n):
        clause = {"class": draw(st.sampled_from(NAMES)), "count": draw(st.integers(1, 3))}
        if draw(st.booleans()):
            clause["color"] = draw(st.sampled_from(COLORS[:3]))
        if i > 0 and draw(st.booleans()):
            clause["position"] = [draw(st.sampled_from(["left of", "right of", "above", "below"])), draw(st.integers(0, i - 1))]
        include.append(clause)
    exclude = [{"class": draw(st.sampled_from(NAMES)), "count": draw(st.integers(1, 4))} for _ in range(draw(st.integers(0, 2)))]
    return row(draw(st.sampled_from(TAGS)), include, exclude)


@st.composite
def detection_lists(draw):
    dets = []
    for _ in range(draw(st.integers(0, 20))):
        x, y = draw(st.integers(0, 90)), draw(st.integers(0, 90))
        w, h = draw(st.integers(1, 30)), draw(st.integers(1, 30))
        score = draw(st.floats(0, 1, allow_nan=False))
        dets.append(det(draw(st.sampled_from(NAMES)), score, (x, y, x + w, y + h), draw(st.sampled_from(COLORS[:3]))))
    return dets


@settings(max_examples=150, deadline=None)
@given(metadata_rows(), detection_lists())
def test_properties_of_the_three_scores(meta, dets):
    result = evaluate_detections(meta, dets)
    assert 0.0 <= result["bounded"] <= 1.0
    assert result["correct"] == (result["bounded"] == 1.0)
    assert -14.0 <= result["partial"] <= 1.0
    assert result["strict_correct"] == (result["partial"] == 1.0)
    kept = keep_detections(meta, dets)
    excludes_hold = all(len(kept.get(c["class"], [])) < c["count"] for c in meta.get("exclude", []))
    if result["strict_correct"] and excludes_hold:
        assert result["correct"]


@settings(max_examples=80, deadline=None)
@given(metadata_rows(), detection_lists(), st.randoms(use_true_random=False))
def test_order_and_irrelevant_detections_do_not_matter(meta, dets, rnd):
    scores = [d["score"] for d in dets]
    if len(set(scores)) != len(scores):
        return  # tie order is unspecified in the reference
    base = evaluate_detections(meta, dets)
    shuffled = dets[:]
    rnd.shuffle(shuffled)
    noise = [det("bus", 0.99), det("dog", 0.3), det("cat", 0.0)]  # another class, or at/below every threshold
    assert evaluate_detections(meta, shuffled + noise) == {**base, "kept": {**base["kept"], "bus": 1}}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 100), min_size=8, max_size=8))
def test_relations_are_antisymmetric(coords):
    a = (coords[0], coords[1], coords[0] + coords[2] + 1, coords[1] + coords[3] + 1)
    b = (coords[4], coords[5], coords[4] + coords[6] + 1, coords[5] + coords[7] + 1)
    flip = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    assert {flip[r] for r in relative_position(a, b)} == relative_position(b, a)

