"""The distribution the trainer scores sampled codes under (``grpo.score_space``).

- ``kept_set`` (default, exact): the distribution the sampler drew from, over the image codes, at the
  sampling temperature, truncated to the sampler's kept set (`rl/grpo/sampling.py` `scored_logits`).
  The importance ratio, the KL and the engine agreement are then all about one distribution.
- ``official``: what the official BLIP3o-NEXT GRPO trainer (a TRL 0.21 copy) scores: the untruncated
  **full-vocabulary** log-softmax at temperature 1 (``log_softmax(lm_head(h))[code]`` over all 217k rows,
  image and text), whatever the sampler's top-k / top-p / temperature and its restriction to image tokens.
  The ratio and the k3 KL then match the official run's; its bias comes with it (under top-k 50 sampling
  the codes are scored by a distribution they were not drawn from). The engine's log-probs live in the
  sampling space, so in this mode the engine-mismatch correction is off and the agreement metrics are
  logged without their bound (their values are that bias).

A space is a class behind `ScoreSpace`; `SCORE_SPACES` maps the recipe names to them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ...policies.base import SamplingParams
from .sampling import scored_logits


class ScoreSpace(ABC):
    """How a forward's logits become the log-prob (and entropy) of each sampled code."""

    #: the logits carry one extra last column, the log-sum-exp of every non-image row of ``lm_head``
    #: (`ImageTokenLM.forward`'s ``full_vocabulary``), so a log-softmax over them is the full vocabulary's
    full_vocabulary: bool = False
    #: True when this is the distribution the sampler drew from (engine log-probs comparable with it)
    is_sampling_distribution: bool = True

    @abstractmethod
    def logprobs(self, logits: torch.Tensor, codes: torch.Tensor, params: SamplingParams,
                 kept: torch.Tensor | None) -> torch.Tensor:
        """``logits [B, n, K(+1)]`` -> the log-probs ``[B, n, K(+1)]`` the codes ``[B, n]`` are scored with."""

    def score(self, logits: torch.Tensor, codes: torch.Tensor, params: SamplingParams,
              kept: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-prob of ``codes`` ``[B, n]`` and the (detached) entropy of the scored distribution ``[B, n]``."""
        logp = self.logprobs(logits, codes, params, kept)
        picked = logp.gather(-1, codes[..., None]).squeeze(-1)
        with torch.no_grad():
            p = logp.exp()
            entropy = -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)
        return picked, entropy


class KeptSetSpace(ScoreSpace):
    """``kept_set``: the sampler's own distribution (the sampled code always in the set)."""

    def logprobs(self, logits, codes, params, kept):
        return torch.log_softmax(scored_logits(logits, codes, params.temperature, params.top_k, params.top_p, kept), -1)


class OfficialSpace(ScoreSpace):
    """``official``: full-vocabulary, temperature 1, untruncated (the non-image rows enter through the extra
    column; the entropy lumps them into one outcome)."""

    full_vocabulary = True
    is_sampling_distribution = False

    def logprobs(self, logits, codes, params, kept):
        return torch.log_softmax(logits.float(), -1)


SCORE_SPACES: dict[str, type[ScoreSpace]] = {"kept_set": KeptSetSpace, "official": OfficialSpace}


def build_score_space(name: str) -> ScoreSpace:
    """The `ScoreSpace` named ``name`` (``grpo.score_space``)."""
    if name not in SCORE_SPACES:
        raise ValueError(f"score_space must be one of {tuple(SCORE_SPACES)}, got {name!r}")
    return SCORE_SPACES[name]()
