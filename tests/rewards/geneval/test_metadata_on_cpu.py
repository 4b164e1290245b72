"""GenEval metadata: the official file validates; bad rows are reported with file, line and field."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from blip3o_rl.rewards.geneval import GENEVAL_OBJECTS, TAGS, MetadataError, load_metadata, validate_metadata


def test_object_names_match_the_official_list(shared_data_file):
    names = shared_data_file("geneval/object_names.txt").read_text().splitlines()
    assert list(GENEVAL_OBJECTS) == [n.strip() for n in names if n.strip()]


def test_official_evaluation_file_validates(shared_data_file):
    rows = load_metadata(shared_data_file("geneval/evaluation_metadata.jsonl"))
    assert len(rows) == 553
    assert Counter(r["tag"] for r in rows) == {
        "single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100, "color_attr": 100,
    }  # fmt: skip
    assert set(Counter(r["tag"] for r in rows)) == set(TAGS)


GOOD = {"tag": "two_object", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}], "prompt": "p"}


def _with(**changes):
    return {**GOOD, **changes}


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        (_with(tag="three_object"), "tag", "unknown tag"),
        ({k: v for k, v in GOOD.items() if k != "tag"}, "tag", "is missing"),
        (_with(prompt=""), "prompt", "non-empty"),
        (_with(include=[]), "include", "non-empty list"),
        (_with(include=[{"class": "unicorn", "count": 1}]), "include[0].class", "unknown class"),
        (_with(include=[{"class": "mouse", "count": 1}]), "include[0].class", "unknown class"),  # COCO, not GenEval
        (_with(include=[{"class": "dog", "count": 0}]), "include[0].count", "integer >= 1"),
        (_with(include=[{"class": "dog", "count": True}]), "include[0].count", "integer >= 1"),
        (_with(include=[{"class": "dog"}]), "include[0].count", "is missing"),
        (_with(include=[{"class": "dog", "count": 1, "colour": "red"}]), "include[0].colour", "unknown key"),
        (_with(include=[{"class": "dog", "count": 1, "color": "teal"}]), "include[0].color", "unknown colour"),
        (
            _with(include=[{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["next to", 0]}]),
            "include[1].position[0]",
            "unknown relation",
        ),
        (
            _with(include=[{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["above", 1]}]),
            "include[1].position[1]",
            "earlier include clause",
        ),
        (
            _with(include=[{"class": "dog", "count": 1, "position": ["above", 0]}]),
            "include[0].position[1]",
            "earlier include clause",
        ),
        (
            _with(include=[{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["above", -1]}]),
            "include[1].position[1]",
            "earlier include clause",
        ),
        (_with(include=[{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": "above"}]), "include[1].position", "[relation, clause index]"),
        (_with(exclude=[{"class": "dog", "count": 2, "color": "red"}]), "exclude[0].color", "unknown key"),
        (_with(exclude={"class": "dog"}), "exclude", "list"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, row, field, words):
    path = tmp_path / "meta.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(MetadataError) as info:
        load_metadata(path)
    message = str(info.value)
    assert f"{path}:3" in message and repr(field) in message and words in message


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "meta.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"tag": "single_object", "include": [\n')
    with pytest.raises(MetadataError, match=f"{path}:2: malformed JSON"):
        load_metadata(path)


def test_non_object_row_and_empty_file(tmp_path):
    path = tmp_path / "meta.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(MetadataError, match=":1: a metadata row must be a JSON object"):
        load_metadata(path)
    path.write_text("\n")
    with pytest.raises(MetadataError, match="no metadata rows"):
        load_metadata(path)


def test_extra_top_level_keys_are_allowed():
    assert validate_metadata({**GOOD, "id": 7})["id"] == 7
