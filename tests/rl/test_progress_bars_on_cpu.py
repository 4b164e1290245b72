"""On a terminal each bar shows once: the tiny world's build covers its own model saves and loads.

The build writes the model, loads it for the warm start and writes it again; the trainer then loads it.
Without care transformers' "Writing model shards" and "Loading weights" bars each appeared twice.
"""

from transformers.utils import logging as hf_logging

from blip3o_rl.rl.config import load_config
from blip3o_rl.rl.run import progress
from blip3o_rl.rl.trainer import GRPOTrainer


def test_library_bars_off_restores_what_was_set():
    was = hf_logging.is_progress_bar_enabled()
    try:
        for before in (True, False):
            (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()
            with progress.library_bars_off():
                assert not hf_logging.is_progress_bar_enabled()
            assert hf_logging.is_progress_bar_enabled() is before
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def test_a_terminal_sees_the_warm_start_bar_and_one_loading_bar(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(progress, "on_terminal", lambda stream=None: True)  # as `make demo` in a terminal
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    cfg = load_config("demo", [f"output_dir={tmp_path / 'run'}", "model.build.sft_steps=2", "eval.eval_every=0",
                               "logging.tensorboard=false"])
    trainer = GRPOTrainer(cfg)
    try:
        trainer.setup()
    finally:
        trainer.cleanup()
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()
    err = capsys.readouterr().err
    assert "tiny-world warm start" in err  # the build's own bar
    assert "Writing model shards" not in err
    assert err.count("Loading weights: 100%") == 1, err
