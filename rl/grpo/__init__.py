"""The GRPO maths: the sampler's distribution (`sampling`), the trainer's log-probs of it (`logprobs`),
group advantages (`advantages`) and the clipped policy loss with its normalisations (`loss`)."""
