"""The BLIP3o-NEXT benchmark runs end to end on the tiny checkpoint (the GPU run uses the same code)."""

from __future__ import annotations

import json

from blip3o_rl.scripts.bench_blip3o_next import main


def test_tiny_benchmark_reports_both_halves(capsys):
    assert (
        main(["--tiny", "--batch", "3", "--steps", "2", "--chunk", "2", "--repeats", "1", "--device", "cpu"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["ar_images_per_s"] > 0 and result["decode_images_per_s"] > 0
    assert result["tokens_per_image"] == 16 and result["image_size"] == 32
    # Hidden states collected step by step with the KV cache (plus one extra step for the last code)
    # equal those of one full forward over prompt + codes.
    assert result["cached_vs_full_forward_hidden_max_abs_diff"] < 1e-4
