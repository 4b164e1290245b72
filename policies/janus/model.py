"""`JanusImageTokenLM`: Janus-Pro's image-generation path as a (guided) `ImageTokenLM`.

Janus writes images with parts of its own, not with rows of ``lm_head``: an image code is embedded by
``generation_embeddings`` then ``generation_aligner`` (`JanusForConditionalGeneration
.prepare_embeddings_for_image_generation`), the Llama body runs on ``inputs_embeds``, and the next code's
logits come from ``generation_head`` over the 16,384-code vocabulary, read at the body's last hidden state
(after its final norm), as the official ``generate(generation_mode="image")`` does. Prompt tokens are
embedded by the language model's token embeddings. Codes are never text token ids (the layout's
``image_token_start`` is 0 and unused).
"""

from __future__ import annotations

import torch
from torch import nn

from ..guidance import GuidedImageTokenLM


class JanusImageTokenLM(GuidedImageTokenLM):
    """``causal_lm``: a ``JanusForConditionalGeneration``; see the module docstring."""

    @property
    def scores_full_vocabulary(self) -> bool:  # type: ignore[override]
        return False  # the codes have their own generation head, no rows of the text lm_head

    def decoder_body(self) -> nn.Module:
        return self.causal_lm.model.language_model

    def body_inputs(self, input_ids: torch.Tensor | None, codes: torch.Tensor | None) -> dict[str, torch.Tensor]:
        parts = []
        if input_ids is not None:
            parts.append(self.causal_lm.get_input_embeddings()(input_ids))  # [B, P, H]
        if codes is not None:
            parts.append(self.causal_lm.prepare_embeddings_for_image_generation(codes))  # [B, N, H]
        return {"inputs_embeds": parts[0] if len(parts) == 1 else torch.cat(parts, 1)}

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden [..., H] → [..., num_codes]`` from the generation head (call it inside `forward` only)."""
        head = self.causal_lm.model.generation_head
        return head(hidden.to(head.proj_out.weight.dtype))
