"""The one owner of the trainable weights: LoRA (via peft) or full fine-tuning.

`TrainableWeights` answers which parameters train, what a checkpoint holds (`state_dict`), what the KL
reference is (LoRA: the same model with its adapter disabled, no second copy of the weights; full: a frozen
copy taken before training), and the merged Hugging Face state dict (`merged_hf_state_dict`, peft's merge)
that both ``blip3o-rl export`` and the vLLM weight pushes read.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ...policies.base import ImageTokenPolicy
from ..config import ModelConfig


class TrainableWeights:
    """Prepares ``policy.model`` for training (LoRA injected in place, or all weights trainable) and owns
    what trains, what a checkpoint holds, the reference and the merged weights (module docstring)."""

    def __init__(self, policy: ImageTokenPolicy, cfg: ModelConfig, need_reference: bool):
        self.policy, self.cfg = policy, cfg
        self.peft_model = None
        self._reference: nn.Module | None = None
        if cfg.finetune == "lora":
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=list(cfg.lora_target_modules),
                exclude_modules=policy.lora_exclude_modules,
                bias="none",
            )
            # Injects the adapter into policy.model in place and freezes its base weights.
            with warnings.catch_warnings():  # peft 0.21 reads transformers 5's deprecated is_gradient_checkpointing
                warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated",
                                        category=FutureWarning)
                self.peft_model = get_peft_model(policy.model, lora)
        else:
            if need_reference:
                self._reference = copy.deepcopy(policy.lm).requires_grad_(False).eval()
            policy.model.requires_grad_(True)
            for p in policy.frozen_parameters():  # parts of the model generation does not use stay frozen
                p.requires_grad_(False)
        if cfg.gradient_checkpointing:
            # transformers 5 renamed gradient_checkpointing_enable (the old name warns); older ones have only it.
            model, kwargs = policy.model, {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            if self.peft_model is not None:
                policy.model.enable_input_require_grads()

    @property
    def reference_module(self) -> nn.Module | None:
        """The frozen full-fine-tuning reference (None with LoRA, whose reference is the adapter off)."""
        return self._reference

    def wrap_reference(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Replace the frozen full-fine-tuning reference by ``wrap(reference)`` (ZeRO-3: a partitioned
        inference engine, `ParallelStrategy.wrap_reference`); nothing to do with LoRA or without a reference."""
        if self._reference is not None:
            self._reference = wrap(self._reference)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.policy.lm.parameters() if p.requires_grad]

    def state_dict(self, lm_state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold to restore training: the adapter, or all policy weights.

        ``lm_state``: a full state dict of ``policy.lm`` gathered elsewhere (a sharded run), used instead
        of the module's own (which then holds only this rank's shards).
        """
        model_state = None
        if lm_state is not None:
            model_state = {k.removeprefix("causal_lm."): v for k, v in lm_state.items()}
        if self.peft_model is not None:
            from peft import get_peft_model_state_dict

            if model_state is None:
                return get_peft_model_state_dict(self.peft_model)
            return get_peft_model_state_dict(self.peft_model, state_dict={
                f"base_model.model.{k}": v for k, v in model_state.items()})
        return self.policy.model.state_dict() if model_state is None else model_state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.peft_model is not None:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.peft_model, state)
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise ValueError(f"adapter checkpoint has unexpected keys: {unexpected[:5]}")
        else:
            self.policy.model.load_state_dict(state, strict=True)

    @contextlib.contextmanager
    def reference(self, lm: nn.Module | None = None) -> Iterator[nn.Module]:
        """The reference `ImageTokenLM`, for use under ``torch.no_grad()``: with LoRA, ``lm`` (default: the
        policy's; pass the trainer's wrapped module) with its adapter disabled; with full fine-tuning, the
        frozen copy."""
        if self.peft_model is not None:
            with self.peft_model.disable_adapter():
                yield self.policy.lm if lm is None else lm
        elif self._reference is not None:
            yield self._reference
        else:
            raise RuntimeError("no reference policy was kept (full fine-tuning with beta = 0)")

    def merged_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """``policy.model``'s Hugging Face state dict with the adapter merged (`merged_hf_state_dict`)."""
        return merged_hf_state_dict(self.policy.model, dtype)

    def merge_into_base(self) -> None:
        """LoRA: merge the adapter into ``policy.model`` for good and drop peft's wrappers (export: the
        policy is not trained afterwards); full fine-tuning: nothing to do."""
        if self.peft_model is not None:
            self.policy.model = self.peft_model.merge_and_unload()
            self.peft_model = None


def merged_hf_state_dict(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict of ``model`` (a ``*ForCausalLM``, with or without peft's LoRA layers
    injected) as a plain model of its class would hold it: each active adapter merged into its base weight
    by peft's own ``merge`` (``W + ΔW``), the adapter tensors left out, a tied ``lm_head.weight`` left out.
    ``model`` is left exactly as it was (its base weights are restored bit for bit, not un-merged by
    subtraction). Detached, contiguous, cast to ``dtype`` when given. What vLLM pushes load."""
    layers = _lora_layers(model)
    originals = [layer.get_base_layer().weight.detach().clone() for layer in layers]
    try:
        with torch.no_grad():
            for layer in layers:
                layer.merge()  # peft's merge of the active adapters, in place
            out: dict[str, torch.Tensor] = {}
            merged = {id(layer.get_base_layer().weight) for layer in layers}
            for key, tensor in model.state_dict(keep_vars=True).items():
                if ".lora_" in key or "lora_magnitude" in key:
                    continue
                clean = key.replace(".base_layer.", ".")
                if id(tensor) in merged:  # merged in place: copied before the base weight is restored
                    out[clean] = tensor.detach().clone()
                else:
                    out[clean] = tensor.detach()
    finally:
        with torch.no_grad():
            for layer, original in zip(layers, originals, strict=True):
                if layer.merged:
                    layer.unmerge()  # peft's bookkeeping; the weight itself is restored exactly below
                layer.get_base_layer().weight.copy_(original)
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "tie_word_embeddings", False):
        out.pop("lm_head.weight", None)
    return {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in out.items()}


def _lora_layers(model: nn.Module) -> list:
    """peft's tuner layers in ``model`` with an active, unmerged adapter (none without peft injected)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # peft is a dependency; a model without its layers needs nothing merged
        return []
    return [m for m in model.modules()
            if isinstance(m, BaseTunerLayer) and not m.merged and not m.disable_adapters and m.active_adapters]
