"""The text-to-image prompt exactly as Janus-Pro's official generation builds it.

The folder's chat template (``chat_template.json``, applied by `JanusProcessor`) turns one user turn into
``<|User|>: {caption}\\n\\n<|Assistant|>:``; the processor's image mode appends ``<begin_of_image>`` and the
tokenizer prepends BOS: ``<｜begin▁of▁sentence｜><|User|>: {caption}\\n\\n<|Assistant|>:<begin_of_image>``,
DeepSeek's ``sft_format + image_start_tag``. Rows are left padded with the pad token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..base import PromptBatch

#: A chat template giving the official one's text for user / assistant turns (used by the tiny builder; a
#: real folder brings its own ``chat_template.json``, which is what the policy applies).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set role = message['role'] | lower -%}"
    "{%- if role == 'user' -%}<|User|>: {% elif role == 'assistant' -%}<|Assistant|>: "
    "{%- else -%}{{ message['role'] | capitalize }}: {% endif -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] | trim }}"
    "{%- elif part['type'] == 'image' -%}<image_placeholder>{%- endif -%}"
    "{%- endfor -%}"
    "{%- if role == 'user' -%}{{ '\\n\\n' }}{%- else -%}<｜end▁of▁sentence｜>{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|Assistant|>:{%- endif -%}"
)


def chat_text(processor: Any, caption: str) -> str:
    """The folder's chat template applied to one user turn, with the assistant turn opened."""
    messages = [{"role": "user", "content": [{"type": "text", "text": caption}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_prompts(processor: Any, captions: Sequence[str]) -> PromptBatch:
    """Tokenise ``chat_text(caption)`` in the processor's image mode (``<begin_of_image>`` appended, BOS
    prepended), left padded: the last column predicts the first image token."""
    if isinstance(captions, str) or not captions:
        raise ValueError("captions must be a non-empty list of strings")
    texts = [chat_text(processor, c) for c in captions]
    enc = processor(text=texts, generation_mode="image", padding=True, padding_side="left", return_tensors="pt")
    return PromptBatch(input_ids=enc["input_ids"].long(), attention_mask=enc["attention_mask"].long())

