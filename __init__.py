"""blip3o-rl: GRPO post-training for autoregressive image-token generators (BLIP3o-NEXT and others).

The repository root is this package; its folders are the subpackages (`blip3o_rl.rl`, `.policies`,
`.rewards`, `.tiny`, `.configs`, `.scripts`). Importing it imports no subpackage.
"""

__version__ = "0.1.0"
