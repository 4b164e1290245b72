"""The OCR reward formula (Flow-GRPO's, used by BLIP3o-NEXT) and OCR prompt files. No OCR engine here."""

import random

import pytest

from blip3o_rl.rewards.ocr import (
    OCRPromptError,
    extract_target,
    load_ocr_prompts,
    normalize_text,
    ocr_reward,
    text_reward,
)

PROMPT = 'A shop window with a sign that says "Hello World" in neon'


def levenshtein(a: str, b: str) -> int:
    """Textbook dynamic-programming edit distance, to check the library call against."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([("Hello World", 0.99)], 1.0),  # exact
        ([("Welcome! Hello World 2024", 0.9)], 1.0),  # target inside more text: substring -> 1
        ([("HELLOWORLD", 0.6)], 1.0),  # case and spaces ignored
        ([("h e l l o  w o r l d", 0.6)], 1.0),
        ([("Hello", 0.9), ("World", 0.8)], 1.0),  # lines are joined in engine order
        ([("Hello Wrld", 0.9)], 0.9),  # 1 edit over the 10 characters of "helloworld"
        ([("Hallo Warld", 0.9)], 0.8),  # 2 substitutions
        ([("World", 0.9), ("Hello", 0.9)], 0.2),  # "worldhello" is 8 edits from "helloworld": 1 - 8/10
        ([], 0.0),  # nothing read: distance = len(target)
        ([("x" * 40, 0.9)], 0.0),  # 40 edits, capped at len(target) = 10: never negative
        ([("Hello World", 0.0)], 0.0),  # confidence 0 is dropped (reference keeps > 0 only)
        ([("Hello World", -1.0), ("Hello Wrld", 0.3)], 0.9),  # dropped line; the kept one is 1 edit off
        ([("Hello", 0.0), ("Hello World", 0.7)], 1.0),
    ],
)
def test_formula_hand_made_cases(lines, expected):
    assert ocr_reward(PROMPT, lines) == pytest.approx(expected)


def test_formula_partial_credit_and_cap():
    # target "cat": "cart" needs 1 deletion -> 1 - 1/3; "cart" is not a substring match
    assert ocr_reward('a "cat"', [("cart", 0.9)]) == pytest.approx(2 / 3)
    # 9 edits from "xyzxyzxyz" to "abc", capped at 3
    assert ocr_reward('a "abc"', [("xyzxyzxyz", 0.9)]) == 0.0
    assert ocr_reward('a "abc"', [("abd", 0.9)]) == pytest.approx(2 / 3)


def test_only_plain_spaces_are_removed_like_the_reference():
    # The reference calls .replace(" ", ""): a tab stays and costs one edit over "ab".
    assert normalize_text("A\tB c") == "a\tbc"
    assert ocr_reward('x "a b"', [("A\tB", 0.9)]) == pytest.approx(0.5)
    assert ocr_reward('x "J L"', [("jl", 0.9)]) == 1.0


def test_target_is_the_first_pair_of_double_quotes():
    assert extract_target('He said "one" and then "two"') == "one"
    assert extract_target('"Open 24/7" neon sign') == "Open 24/7"
    assert ocr_reward('He said "one" and then "two"', [("two", 0.9)]) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a sign without any quoted text", "no text in straight double quotes"),
        ("a sign saying “curly quotes”", "no text in straight double quotes"),
        ('a sign saying "unclosed', "never closes it"),
        ('a sign saying "" here', "empty quoted text"),
        ('a sign saying "   " here', "empty quoted text"),
    ],
)
def test_prompt_without_usable_quotes_raises_naming_the_prompt(prompt, message):
    with pytest.raises(OCRPromptError, match=message) as info:
        ocr_reward(prompt, [("anything", 0.9)])
    assert repr(prompt) in str(info.value)


def random_case(rng: random.Random) -> tuple[str, list[tuple[str, float]]]:
    """A random target and OCR lines over a small alphabet, so substrings and near misses both occur."""
    alphabet = "abAB c1"
    target = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
    if not target.replace(" ", ""):
        target += "a"
    lines = [
        ("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))), rng.choice([-0.5, 0.0, 0.3, 0.9]))
        for _ in range(rng.randint(0, 3))
    ]
    return target, lines


def test_formula_matches_a_direct_reading_of_the_reference():
    rng = random.Random(0)
    for _ in range(2000):
        target, lines = random_case(rng)
        want = target.replace(" ", "").lower()
        got = "".join(t for t, c in lines if c > 0).replace(" ", "").lower()
        dist = 0 if want in got else min(levenshtein(got, want), len(want))
        reward = text_reward(target, lines)
        assert reward == pytest.approx(1 - dist / len(want)), (target, lines)
        assert 0.0 <= reward <= 1.0
        # Lines at confidence <= 0 never change the reward.
        assert text_reward(target, [*lines, ("noise", 0.0), (target, -0.5)]) == reward


# --- prompt files ------------------------------------------------------------------------------


def test_flow_grpo_ocr_test_set_loads(shared_data_file):
    rows = load_ocr_prompts(shared_data_file("ocr/test.txt"))
    # 1,017 newlines, and the last prompt has none after it: 1,018 prompts.
    assert len(rows) == 1018
    assert rows[0]["target"] == "Spring Collection 2024"
    assert all(f'"{r["target"]}"' in r["prompt"] for r in rows)
    assert set(rows[0]) == {"prompt", "target"}
    lengths = [len(r["target"]) for r in rows]
    assert 15 < sum(lengths) / len(lengths) < 19  # ~17 characters on average (REFERENCE.md §4)


def test_prompt_file_skips_blank_lines_and_handles_crlf(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(b'a "one"\r\n\r\n  b "two words"  \r\nc "three"')
    assert load_ocr_prompts(path) == [
        {"prompt": 'a "one"', "target": "one"},
        {"prompt": 'b "two words"', "target": "two words"},
        {"prompt": 'c "three"', "target": "three"},
    ]


def test_prompt_file_error_names_file_and_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text('a "one"\n\nno quotes on this line\nc "three"\n', encoding="utf-8")
    with pytest.raises(OCRPromptError, match=r"prompts\.txt:3: .*no text in straight double quotes") as info:
        load_ocr_prompts(path)
    assert "no quotes on this line" in str(info.value)


def test_prompt_file_bad_encoding_and_empty_file(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b'a "one"\nb "caf\xe9"\n')
    with pytest.raises(OCRPromptError, match=r"bad\.txt:2: not valid UTF-8"):
        load_ocr_prompts(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(OCRPromptError, match="no prompts"):
        load_ocr_prompts(empty)
