"""Load a trained policy back from a run's checkpoint, for evaluation and generation.

A checkpoint holds only the trainable weights (the LoRA adapter, or every weight with full
fine-tuning), so the policy is rebuilt as the trainer built it: the run's ``config.yaml`` gives the
policy kind, base model, dtype and fine-tuning mode; the base model is ``model.name_or_path``, or
the run's ``base_model`` folder when the run made a random tiny world.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from safetensors.torch import load_file

from blip3o_rl.policies import ImageTokenPolicy, load_policy
from blip3o_rl.rl.checkpoint import latest_checkpoint
from blip3o_rl.rl.config import config_from_dict
from blip3o_rl.rl.finetune import FinetuneSetup


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder (``.../checkpoints/step_N``), or a run folder's latest checkpoint."""
    path = Path(path)
    if (path / "weights.safetensors").is_file():
        return path
    latest = latest_checkpoint(path / "checkpoints")
    if latest is None:
        raise FileNotFoundError(f"{path} is neither a checkpoint (no weights.safetensors) nor a run with checkpoints/")
    return latest


def restore_policy(
    checkpoint: str | Path, *, model: str | Path | None = None, policy: str | None = None, dtype: str | None = None
) -> ImageTokenPolicy:
    """The policy of ``checkpoint`` (or of a run folder's latest one) with its trained weights loaded.

    ``model``, ``policy`` and ``dtype`` override what the run's ``config.yaml`` says.
    """
    ckpt = resolve_checkpoint(checkpoint)
    run = ckpt.parent.parent
    config_file = run / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt}: the run's {config_file} is missing (it says how to rebuild the policy)")
    cfg = config_from_dict(yaml.safe_load(config_file.read_text()), source=str(config_file))
    base = Path(model) if model is not None else Path(cfg.model.name_or_path or run / "base_model")
    loaded = load_policy(policy or cfg.model.policy, base, dtype or cfg.model.dtype)
    FinetuneSetup(loaded, cfg.model, need_reference=False).load_trainable_state_dict(load_file(ckpt / "weights.safetensors"))
    loaded.model.requires_grad_(False).eval()
    return loaded
