"""GenEval training prompts: valid, deterministic, all six tasks, no overlap with the evaluation set."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from blip3o_rl.rewards.geneval import TAGS, load_metadata, validate_metadata
from blip3o_rl.rewards.geneval.prompts import canonical_key, generate_prompts, plural, with_article
from blip3o_rl.scripts import cmd_geneval


@pytest.fixture(scope="module")
def evaluation(shared_data_file):
    return load_metadata(shared_data_file("geneval/evaluation_metadata.jsonl"))


def test_generated_rows_validate_and_do_not_overlap_the_evaluation_set(evaluation):
    rows = generate_prompts(300, seed=3, exclude=evaluation)
    for row in rows:
        validate_metadata(row)
    counts = Counter(r["tag"] for r in rows)
    # All 80 single objects are in the evaluation set; counting has 80 x 3 requirements, 80 of them taken.
    assert counts["single_object"] == 0 and counts["counting"] == 160
    assert [counts[t] for t in ("two_object", "colors", "position", "color_attr")] == [300] * 4
    keys = [canonical_key(r) for r in rows]
    assert len(set(keys)) == len(keys)
    assert not set(keys) & {canonical_key(r) for r in evaluation}
    assert not {r["prompt"] for r in rows} & {r["prompt"] for r in evaluation}
    assert all(r["include"][0]["class"] != "person" for r in rows if r["tag"] == "colors")


def test_all_six_tasks_without_exclusion():
    rows = generate_prompts(5, seed=0)
    assert Counter(r["tag"] for r in rows) == dict.fromkeys(TAGS, 5)


def test_deterministic_per_seed():
    assert generate_prompts(20, seed=1) == generate_prompts(20, seed=1)
    assert generate_prompts(20, seed=1) != generate_prompts(20, seed=2)


def test_canonical_key_ignores_order_and_phrasing():
    def two(a, b, colours=(None, None)):
        clauses = [{"class": a, "count": 1}, {"class": b, "count": 1}]
        for clause, colour in zip(clauses, colours, strict=True):
            if colour:
                clause["color"] = colour
        return {"tag": "color_attr" if colours[0] else "two_object", "include": clauses, "prompt": "p"}

    def pos(a, relation, b):
        return {"tag": "position", "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}], "prompt": "p"}

    assert canonical_key(two("dog", "cat")) == canonical_key(two("cat", "dog"))
    assert canonical_key(two("dog", "cat", ("red", "blue"))) == canonical_key(two("cat", "dog", ("blue", "red")))
    assert canonical_key(two("dog", "cat", ("red", "blue"))) != canonical_key(two("dog", "cat", ("blue", "red")))
    assert canonical_key(pos("dog", "left of", "cat")) == canonical_key(pos("cat", "right of", "dog"))
    assert canonical_key(pos("dog", "above", "cat")) == canonical_key(pos("cat", "below", "dog"))
    assert canonical_key(pos("dog", "left of", "cat")) != canonical_key(pos("dog", "right of", "cat"))


def test_english_helpers():
    assert with_article("orange") == "an orange" and with_article("dog") == "a dog"
    assert [plural(n) for n in ("bench", "sheep", "bus", "computer mouse", "wine glass", "dog")] == [
        "benches", "sheep", "buses", "computer mice", "wine glasses", "dogs",
    ]  # fmt: skip


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown tags"):
        generate_prompts(1, tags=["three_object"])
    with pytest.raises(ValueError, match="max_count"):
        generate_prompts(1, max_count=11)


def test_data_command_writes_a_valid_file(tmp_path, shared_data_file, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    cmd_geneval.configure_data(parser)
    out = tmp_path / "train.jsonl"
    args = parser.parse_args(
        ["--out", str(out), "--n", "50", "--seed", "7", "--exclude", str(shared_data_file("geneval/evaluation_metadata.jsonl"))]
    )
    assert cmd_geneval.run_data(args) == 0
    rows = load_metadata(out)
    assert len(rows) == 250 and rows == [json.loads(line) for line in out.read_text().splitlines()]
    printed = capsys.readouterr().out
    assert "wrote 250 prompts" in printed and "single_object  0  (asked for 50" in printed
