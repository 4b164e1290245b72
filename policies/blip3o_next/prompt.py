"""The text-to-image prompt exactly as BLIP3o-NEXT was trained on it.

ChatML with the training code's chat template (not Qwen3's thinking template), a fixed system
message, the caption instruction, the assistant turn opened, then ``<im_start><S0>``: the model's next
token is the first image token. Prompts are left padded so every row ends at the same column.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from ..base import PromptBatch

#: The chat template the BLIP3o training code sets on the tokenizer.
CHAT_TEMPLATE = (
    r"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    r" + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SYSTEM_PROMPT = "You are a helpful assistant."
CAPTION_INSTRUCTION = "Please generate image based on the following caption: {caption}"


def chat_text(tokenizer: PreTrainedTokenizerBase, caption: str) -> str:
    """The ChatML text up to and including ``<|im_start|>assistant\\n`` (``<im_start><S0>`` come as ids)."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": CAPTION_INSTRUCTION.format(caption=caption)},
    ]
    return tokenizer.apply_chat_template(
        messages, chat_template=CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
    )


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, captions: Sequence[str], suffix_ids: Sequence[int], pad_id: int
) -> PromptBatch:
    """Tokenise ``chat_text(caption) + suffix_ids`` for each caption, left padded with ``pad_id``."""
    if isinstance(captions, str) or not captions:
        raise ValueError("captions must be a non-empty list of strings")
    rows = [
        tokenizer(chat_text(tokenizer, c), add_special_tokens=False)["input_ids"] + list(suffix_ids)
        for c in captions
    ]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return PromptBatch(input_ids=input_ids, attention_mask=attention_mask)
