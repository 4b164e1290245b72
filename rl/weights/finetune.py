"""Fine-tuning modes (LoRA via peft, or full) and the frozen reference policy for the KL term.

With LoRA the reference is the same model with its adapter disabled (no second copy of the
weights); with full fine-tuning it is a frozen copy taken before training.
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


class FinetuneSetup:
    """Prepares ``policy.model`` for training and answers which parameters train and what the reference is."""

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
        inference engine, `Distributed.prepare_reference`); nothing to do with LoRA or without a reference."""
        if self._reference is not None:
            self._reference = wrap(self._reference)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.policy.lm.parameters() if p.requires_grad]

    def trainable_state_dict(self, lm_state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
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

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
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
