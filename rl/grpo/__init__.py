"""The GRPO maths: the sampler's distribution (`sampling`), the trainer's log-probs of it (`logprobs`),
group advantages (`advantages`), the clipped policy loss with its normalisations (`loss`) and the
engine-mismatch importance weights and the ratio's level (`is_correction`)."""
