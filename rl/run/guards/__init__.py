"""The run's guards, one module each, named for what they guard: ``finite_update`` (no non-finite update
reaches the weights), ``over_optimisation`` (a held-out reward falling while the training reward rises),
``reward_failures`` (a run whose rewards keep failing stops)."""
