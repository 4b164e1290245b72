"""One rank of a distributed test run (launched by tests/rl/distributed_helpers.py under torchrun).

    python dist_worker.py OUT [--resume] [--crash-at K] [key=value ...]

Trains the tiny world with the given overrides, then writes ``OUT/result_rank<r>.pt``: the world size
seen by the launcher and by the trainer, and the trainable parameters (this rank's own copy under DDP;
gathered on rank 0 under FSDP2 / ZeRO). ``--crash-at K``: rank 1 (or 0 on one process) dies at step K,
before it runs (a hard exit, as a killed node would).
"""

import gc
import os
import sys
import weakref

import torch

from blip3o_rl.rl.config import load_config
from blip3o_rl.rl.parallel.checkpoint_shards import trainable_state
from blip3o_rl.rl.trainer import GRPOTrainer


def main(argv: list[str]) -> None:
    out, args = argv[0], argv[1:]
    resume = "--resume" in args
    crash_at = None
    if "--crash-at" in args:
        i = args.index("--crash-at")
        crash_at = int(args[i + 1])
        args = args[:i] + args[i + 2 :]
    overrides = [a for a in args if a != "--resume"]
    trainer = GRPOTrainer(load_config("demo", overrides))
    try:
        trainer.setup(resume=resume)
        if crash_at is not None:
            step = trainer.step

            def crashing(k: int):
                if k == crash_at and trainer.rank == min(1, trainer.world - 1):
                    os._exit(3)
                return step(k)

            trainer.step = crashing  # type: ignore[method-assign]
        trainer.train()
        full = trainable_state(trainer.dist, trainer.lm, trainer.finetune)
        own = {k: v.detach().cpu().clone() for k, v in trainer.finetune.trainable_state_dict().items()
               if not hasattr(v, "full_tensor")}
        ref = trainer.finetune.reference_module  # the full-FT KL reference: a ZeRO-3 engine of its own under ZeRO-3
        ref_stage = ref.zero_optimization_stage() if hasattr(ref, "zero_optimization_stage") else 0
        ref_shard = (sum(p.ds_tensor.numel() for p in ref.parameters()),  # (this rank's part, the whole)
                     sum(p.ds_numel for p in ref.parameters())) if ref_stage == 3 else (0, 0)
        torch.save({"env_world": int(os.environ.get("WORLD_SIZE", "1")), "world": trainer.world,
                    "pg_world": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
                    "rank": trainer.rank, "full": full, "own": own, "ref_stage": ref_stage, "ref_shard": ref_shard},
                   os.path.join(out, f"result_rank{trainer.rank}.pt"))
    finally:
        ddp = isinstance(getattr(trainer, "lm", None), torch.nn.parallel.DistributedDataParallel)
        wrapper = weakref.ref(trainer.lm) if ddp else None
        trainer.cleanup()
    gc.collect()
    # DDP (its C++ reducer owns the gloo group) is gone before interpreter exit: see GRPOTrainer._release_wrapper
    assert wrapper is None or wrapper() is None, "the DDP wrapper outlived cleanup()"


if __name__ == "__main__":
    main(sys.argv[1:])
