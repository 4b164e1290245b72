"""blip3o-rl: GRPO post-training for BLIP3o-NEXT and other autoregressive image-token generators.

The repository root is this package. Its subpackages are its folders: `blip3o_rl.rl` (trainer, rollout,
losses, config), `blip3o_rl.policies`, `blip3o_rl.rewards`, `blip3o_rl.configs` (packaged recipes) and
`blip3o_rl.scripts` (the `blip3o-rl` command). Importing `blip3o_rl` itself imports none of them.
"""

__version__ = "0.1.0"
