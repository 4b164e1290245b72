"""The reward server's memory is bounded by its admission control, measured on real servers (127.0.0.1):
four concurrent requests of eight large RGBA PNGs raise the peak RSS by less than twice what one does,
and a refused request's decoded images are released at once (scripts/bench_reward_server_memory.py, at
1024² instead of 4096² to stay fast; docs/benchmarks.md has the full-size numbers)."""

from __future__ import annotations

from blip3o_rl.scripts.bench_reward_server_memory import _pngs, measure, measure_refusal

WAIT = ("--queue-timeout-s", "600")  # queued requests wait their turn (a loaded machine is slow)


def test_concurrent_requests_wait_for_the_budget_and_refusals_free_their_images():
    pngs = _pngs(8, 1024)
    decoded_mib = 8 * 4 * 1024**2 / 2**20  # 32 MiB per request
    one, four = measure(1, pngs, *WAIT), measure(4, pngs, *WAIT)
    assert one["rise_mib"] >= decoded_mib / 2, one  # the measurement sees the decoded images
    assert four["rise_mib"] < 2 * one["rise_mib"], (one, four)  # not 4x: decoding waits for admission
    refused = measure_refusal(pngs, *WAIT)
    assert refused["peak_mib"] - refused["base_mib"] >= decoded_mib / 4, refused  # it did decode some
    assert refused["kept_mib"] < decoded_mib / 4, refused  # and let them go before answering
