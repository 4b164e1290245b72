"""Image logits of a Janus model computed with transformers' official modules only (test oracle)."""

from __future__ import annotations

import torch
from transformers import ClassifierFreeGuidanceLogitsProcessor


def official_image_logits(model, input_ids, attention_mask, codes) -> torch.Tensor:
    """``[B, N, K]`` at every code position: the language model over the prompt's token embeddings and the
    codes' generation embeddings, then the generation head, as ``generate(generation_mode="image")``."""
    embeds = torch.cat([model.get_input_embeddings()(input_ids),
                        model.prepare_embeddings_for_image_generation(codes)], 1)
    mask = torch.cat([attention_mask, torch.ones_like(codes)], 1)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask,
                                        position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).last_hidden_state
    return model.model.generation_head(hidden[:, input_ids.shape[1] - 1 : -1])


def official_unconditional_ids(model, input_ids) -> torch.Tensor:
    """The official generate's unconditional rows: all but BOS and <begin_of_image> masked to pad."""
    gen = model.generation_config
    keep = (input_ids == gen.bos_token_id) | (input_ids == gen.generation_kwargs["boi_token_id"])
    return input_ids.masked_fill(~keep, gen.pad_token_id)


def official_guided_logits(model, input_ids, attention_mask, codes, scale=None) -> torch.Tensor:
    """``[B, N, K]`` CFG-mixed by transformers' ``ClassifierFreeGuidanceLogitsProcessor`` (scale: the
    generation config's by default)."""
    cond = official_image_logits(model, input_ids, attention_mask, codes)
    uncond = official_image_logits(model, official_unconditional_ids(model, input_ids), attention_mask, codes)
    cfg = ClassifierFreeGuidanceLogitsProcessor(scale or model.generation_config.guidance_scale)
    return torch.stack([cfg(input_ids, torch.cat([cond[:, j], uncond[:, j]])) for j in range(codes.shape[1])], 1)
