"""Default hub models load at pinned commits; local folders and other ids are passed through unchanged."""

from __future__ import annotations

import re

from blip3o_rl.rewards import aesthetic, clip_score, pickscore
from blip3o_rl.rewards.geneval import color
from blip3o_rl.rewards.hub import PINNED_REVISIONS, hub_revision, revision_kwargs
from blip3o_rl.rewards.pretrained import load_pretrained


def test_every_default_clip_and_pickscore_model_is_pinned_to_a_commit():
    defaults = {clip_score.DEFAULT_MODEL, pickscore.DEFAULT_MODEL, pickscore.DEFAULT_PROCESSOR,
                aesthetic.DEFAULT_CLIP, color.DEFAULT_CLIP}
    for hub_id in defaults:
        assert re.fullmatch(r"[0-9a-f]{40}", PINNED_REVISIONS[hub_id]), hub_id


def test_load_pretrained_passes_the_pin_for_a_hub_id_only(tmp_path):
    seen = []

    def loader(source, **kwargs):
        seen.append((source, kwargs))
        return source

    load_pretrained(loader, clip_score.DEFAULT_MODEL, reward="clip_score", field="model", dtype="x")
    load_pretrained(loader, str(tmp_path), reward="clip_score", field="model")
    load_pretrained(loader, "someone/other-model", reward="clip_score", field="model")
    assert seen == [(clip_score.DEFAULT_MODEL, {"revision": PINNED_REVISIONS[clip_score.DEFAULT_MODEL], "dtype": "x"}),
                    (str(tmp_path), {}), ("someone/other-model", {})]
    assert hub_revision(str(tmp_path)) is None and revision_kwargs("someone/other-model") == {}
