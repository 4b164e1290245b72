"""The tiny world's glyph signs: non-square grids, the glyph renderer, the sign task's prompts and targets,
and the round trip through the real OCR engine that the OCR demo trains against."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import yaml

from blip3o_rl.rewards import load_reward
from blip3o_rl.rl.config import packaged_recipe
from blip3o_rl.rl.data import load_prompts
from blip3o_rl.tiny.glyphs import BLANK_CODE, GLYPH_ALPHABET, GlyphRenderer
from blip3o_rl.tiny.signs import SIGN_PROMPT, glyph_target_codes, spelled_by_character
from blip3o_rl.tiny.world import TinyWorldPolicy, build_tokenizer, grid_shape, make_tiny_world

RECIPE = yaml.safe_load(packaged_recipe("demo_ocr").read_text())
WORLD = RECIPE["model"]["build"]
DATA = packaged_recipe("demo_ocr").parent / "data"


def _words(name: str) -> list[str]:
    return [re.search(r'"(.*)"', r.prompt)[1] for r in load_prompts(DATA / name)]


@pytest.fixture(scope="module")
def sign_world(tmp_path_factory):
    """A random glyph world shaped like the OCR demo's (1 x 5 tiles of 24 px)."""
    out = make_tiny_world(tmp_path_factory.mktemp("signs"), grid=WORLD["grid"], tile=WORLD["tile"],
                          renderer="glyphs", extra_words=WORLD["extra_words"])
    return TinyWorldPolicy.from_pretrained(out)


def test_grid_is_an_int_for_a_square_or_rows_and_cols():
    assert grid_shape(4) == (4, 4)
    assert grid_shape([1, 5]) == (1, 5)
    for bad in (0, [2], [1, 0], [1.0, 5], "4", True):
        with pytest.raises(ValueError, match="grid"):
            grid_shape(bad)


def test_a_one_row_world_generates_strips(sign_world):
    assert sign_world.grid == (1, 5)
    assert sign_world.layout.tokens_per_image == 5
    assert sign_world.layout.num_codes == len(GLYPH_ALPHABET) == 27
    codes = torch.tensor([[0, 1, 2, 3, BLANK_CODE]])
    (image,) = sign_world.decode(codes)
    assert image.size == (5 * 24, 24)
    pixels = np.asarray(image)
    assert (pixels[:, -24:] == 255).all()  # the blank tile is white
    for tile in range(4):  # every letter tile has ink
        assert (pixels[:, tile * 24 : (tile + 1) * 24] < 128).any()


def test_renderer_lays_tiles_out_row_major():
    r = GlyphRenderer({"tile": 16})
    codes = np.array([[[0, 1, 2], [3, 4, BLANK_CODE]]])  # [B=1, rows=2, cols=3]
    pix = r.render(codes)
    assert pix.shape == (1, 32, 48, 3)
    assert np.array_equal(pix[0, 16:32, 16:32], r.tiles[4])
    assert np.array_equal(pix[0, 0:16, 32:48], r.tiles[2])


def test_target_is_the_quoted_word_right_aligned():
    codes = glyph_target_codes({"prompt": SIGN_PROMPT.format(word="cat")}, (1, 5))
    assert "".join(GLYPH_ALPHABET[c] for c in codes) == "  CAT"
    with pytest.raises(ValueError, match="longer than a row of 5 tiles"):
        glyph_target_codes({"prompt": SIGN_PROMPT.format(word="CASTLE")}, (1, 5))
    with pytest.raises(ValueError, match=r"no glyph for \['4'\]"):
        glyph_target_codes({"prompt": SIGN_PROMPT.format(word="C4T")}, (1, 5))


def test_prompt_files_hold_held_out_words_spelled_one_token_per_letter():
    train, held_out = _words("tiny_ocr_train.txt"), _words("tiny_ocr_eval.txt")
    assert len(held_out) == 64 and len(train) > 500
    assert not set(train) & set(held_out)
    tokenizer = build_tokenizer(len(GLYPH_ALPHABET), WORLD["extra_words"])
    for word in train + held_out:
        assert re.fullmatch("[A-Z]{3,5}", word), word
        assert spelled_by_character(word, tokenizer), word
    # The prompt's fixed words are whole tokens, so the quoted word always ends at the same offset.
    assert tokenizer.tokenize(SIGN_PROMPT.format(word="CAT")) == ["a", "sign", "that", "says", '"', "c", "##a", "##t", '"']


def test_rendered_targets_read_back_exactly_with_the_recipe_ocr_reward(sign_world):
    """The round trip the demo relies on: the images that spell a word score 1 with the real engine.

    Measured: all 904 words of both files read back exactly (rapidocr 3.10, PP-OCRv6 small); 24 are
    checked here to keep the test short.
    """
    (spec,) = RECIPE["rewards"]
    reward = load_reward(spec["reward"], **spec["kwargs"])
    prompts = [SIGN_PROMPT.format(word=w) for w in _words("tiny_ocr_eval.txt")[:24]]
    codes = torch.stack([glyph_target_codes({"prompt": p}, sign_world.grid) for p in prompts])
    out = reward(sign_world.decode(codes), prompts, [{}] * len(prompts))
    misread = [(d["target"], d["recognized"]) for d, s in zip(out.details, out.scores, strict=True) if s != 1.0]
    assert out.num_failed == 0
    assert len(misread) <= 1, misread
    # Controls: a blank strip reads nothing, and another word scores below 1.
    blank = torch.full((1, 5), BLANK_CODE)
    other = glyph_target_codes({"prompt": SIGN_PROMPT.format(word="DOG")}, sign_world.grid)[None]
    controls = reward(sign_world.decode(torch.cat([blank, other])), [prompts[0], SIGN_PROMPT.format(word="CAT")],
                      [{}, {}])
    assert controls.scores[0] == 0.0 and controls.scores[1] < 1.0
