"""Export a training run's checkpoint as a standalone model folder (`blip3o-rl export`).

The run's ``config.yaml`` (written by the trainer into ``output_dir``) names the policy, the base
model and the fine-tuning mode. The base policy is loaded in float32, the checkpoint's weights are
applied (a LoRA adapter is merged into the base weights in float32; full fine-tuning weights replace
them), the model is cast to the output dtype (default: the run's ``model.dtype``) and the policy
writes itself with ``save_pretrained``: for BLIP3o-NEXT, an official-layout folder whose refiner
tensors are copied unchanged from the base checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml
from safetensors.torch import load_file

from ...policies import DTYPES, ImageTokenPolicy, load_policy
from ..config import TrainConfig, config_from_dict
from ..run.checkpoint import latest_checkpoint, verify_checkpoint
from .finetune import FinetuneSetup

RUN_CONFIG = "config.yaml"
EXPORT_INFO = "blip3o_rl_export.json"


def read_run_config(run_dir: Path) -> TrainConfig:
    path = run_dir / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a training run folder (its output_dir)")
    return config_from_dict(yaml.safe_load(path.read_text()), source=str(path))


def find_checkpoint(run_dir: Path, name: str | None = None) -> Path:
    """The checkpoint folder: ``name`` as a path, ``step_N`` or ``N`` (any zero padding), else the latest."""
    root = run_dir / "checkpoints"
    if name is None:
        path = latest_checkpoint(root)
        if path is None:
            raise FileNotFoundError(
                f"no checkpoint in {root} (the run saves one at its end unless save_final: false)"
            )
        return path
    if Path(name).is_dir():
        return Path(name)
    step = name.removeprefix("step_")
    if step.isdigit() and (root / f"step_{int(step):06d}").is_dir():
        return root / f"step_{int(step):06d}"
    found = sorted(p.name for p in root.glob("step_*") if p.is_dir())
    raise FileNotFoundError(f"checkpoint {name!r} not found in {root} (found: {', '.join(found) or 'none'})")


def load_run_policy(
    run_dir: str | Path, checkpoint: str | None = None, base_model: str | Path | None = None
) -> tuple[ImageTokenPolicy, Path, Path]:
    """The run's policy in float32 with a checkpoint's weights applied: ``(policy, checkpoint, base)``.

    A LoRA adapter is merged into the base weights (in float32); full fine-tuning weights replace
    them. ``checkpoint`` and ``base_model`` as in `export_run`.
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    m = cfg.model
    base = Path(base_model) if base_model is not None else _base_model(cfg, run_dir)
    ckpt = find_checkpoint(run_dir, checkpoint)
    weights_file = ckpt / "weights.safetensors"
    if not weights_file.is_file():
        raise FileNotFoundError(f"{weights_file} is missing: incomplete checkpoint")
    verify_checkpoint(ckpt, required=("weights.safetensors",))  # checksums (rl/run/checkpoint.py): a corrupt file fails naming it

    if m.policy is None:
        raise ValueError(f"{run_dir / RUN_CONFIG}: model.policy is not set")
    policy = load_policy(m.policy, base, "float32", **m.policy_kwargs)
    weights = load_file(weights_file)
    if m.finetune == "lora":
        setup = FinetuneSetup(
            policy, dataclasses.replace(m, gradient_checkpointing=False), need_reference=False
        )
        setup.load_trainable_state_dict(weights)
        assert setup.peft_model is not None  # finetune == "lora"
        policy.model = setup.peft_model.merge_and_unload()
    else:
        policy.model.load_state_dict(weights, strict=True)
    return policy, ckpt, base


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    checkpoint: str | None = None,
    base_model: str | Path | None = None,
    dtype: str | None = None,
) -> Path:
    """Merge (LoRA) or apply (full) the run's checkpoint onto its base model and save it to ``out_dir``.

    ``base_model`` overrides the run's ``model.name_or_path`` (e.g. when the run used a path relative
    to another working directory); ``dtype`` ("float32", "bfloat16", "float16") the saved dtype.
    """
    run_dir, out = Path(run_dir), Path(out_dir)
    if out.exists() and any(out.iterdir()):  # checked before the (slow) model load
        raise FileExistsError(f"export folder {out} is not empty: choose a new folder or remove it")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    m = read_run_config(run_dir).model
    policy, ckpt, base = load_run_policy(run_dir, checkpoint, base_model)
    if not hasattr(policy, "save_pretrained"):
        raise TypeError(
            f"policy {m.policy!r} ({type(policy).__name__}) has no save_pretrained: cannot export it"
        )
    policy.model.to(DTYPES[dtype or m.dtype])
    policy.save_pretrained(out)
    info = {
        "run": str(run_dir.resolve()),
        "checkpoint": ckpt.name,
        "base_model": str(base),
        "finetune": m.finetune,
        "policy": m.policy,
        "dtype": dtype or m.dtype,
    }
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return out


def _base_model(cfg: TrainConfig, run_dir: Path) -> Path:
    name = cfg.model.name_or_path
    path = run_dir / "base_model" if name is None else Path(name)  # None: the folder the policy built (model.build)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{run_dir / RUN_CONFIG}: model.name_or_path = {name!r}: base model folder {path} not found "
            "(pass --base-model PATH)"
        )
    return path
