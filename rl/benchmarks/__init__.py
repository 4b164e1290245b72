"""Benchmarks of a policy outside training (``blip3o-rl eval ocr``)."""
