"""One rank of a distributed test run (launched by tests/rl/distributed_helpers.py under torchrun).

    python dist_worker.py OUT [--resume] [--crash-at K] [--nonfinite-grad-at K] [--nonfinite-loss-at K]
                          [key=value ...]

Trains the tiny world with the given overrides, then writes ``OUT/result_rank<r>.pt``: the world size
seen by the launcher and by the trainer, and the trainable parameters (this rank's own copy under DDP;
gathered on rank 0 under FSDP2 / ZeRO). ``--crash-at K``: rank 1 (or 0 on one process) dies at step K,
before it runs (a hard exit, as a killed node would). ``--nonfinite-grad-at K``: at step K the last rank's
backward produces an infinite gradient while its loss stays finite (only the gradient norm can tell), and
``--nonfinite-loss-at K``: at step K the last rank's loss is NaN while every gradient stays finite. Every
rank records how many updates its guard skipped.
"""

import gc
import math
import os
import sys
import weakref

import torch

from blip3o_rl.rl.config import load_config
from blip3o_rl.rl.trainer import GRPOTrainer


def main(argv: list[str]) -> None:
    out, args = argv[0], argv[1:]
    resume = "--resume" in args
    options = ("--crash-at", "--nonfinite-grad-at", "--nonfinite-loss-at")
    crash_at, grad_at, loss_at = (_option(args, name) for name in options)
    args = [a for i, a in enumerate(args) if a not in options and (i == 0 or args[i - 1] not in options)]
    overrides = [a for a in args if a != "--resume"]
    trainer = GRPOTrainer(load_config("demo", overrides))
    try:
        trainer.setup(resume=resume)
        if grad_at is not None or loss_at is not None:
            poison = _NonFinite(trainer.update.loss, grad_at, loss_at, trainer.rank == trainer.world - 1)
            trainer.update.loss = poison
            step_fn = trainer.step

            def counting(k: int):
                poison.step = k
                return step_fn(k)

            trainer.step = counting  # type: ignore[method-assign]
        if crash_at is not None:
            step = trainer.step

            def crashing(k: int):
                if k == crash_at and trainer.rank == min(1, trainer.world - 1):
                    os._exit(3)
                return step(k)

            trainer.step = crashing  # type: ignore[method-assign]
        trainer.train()
        full = trainer.strategy.trainable_state(trainer.trainable)
        own = {k: v.detach().cpu().clone() for k, v in trainer.trainable.state_dict().items()
               if not hasattr(v, "full_tensor")}
        ref = trainer.trainable.reference_module  # the full-FT KL reference: a ZeRO-3 engine of its own under ZeRO-3
        ref_stage = ref.zero_optimization_stage() if hasattr(ref, "zero_optimization_stage") else 0
        ref_shard = (sum(p.ds_tensor.numel() for p in ref.parameters()),  # (this rank's part, the whole)
                     sum(p.ds_numel for p in ref.parameters())) if ref_stage == 3 else (0, 0)
        torch.save({"env_world": int(os.environ.get("WORLD_SIZE", "1")), "world": trainer.world,
                    "pg_world": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
                    "rank": trainer.rank, "full": full, "own": own, "ref_stage": ref_stage, "ref_shard": ref_shard,
                    "skipped": trainer.guard.total_skipped},
                   os.path.join(out, f"result_rank{trainer.rank}.pt"))
    finally:
        ddp = isinstance(getattr(trainer, "lm", None), torch.nn.parallel.DistributedDataParallel)
        wrapper = weakref.ref(trainer.lm) if ddp else None
        trainer.cleanup()
    gc.collect()
    # DDP (its C++ reducer owns the gloo group) is gone before interpreter exit: see GRPOTrainer._release_wrapper
    assert wrapper is None or wrapper() is None, "the DDP wrapper outlived cleanup()"


def _option(args: list[str], name: str) -> int | None:
    return int(args[args.index(name) + 1]) if name in args else None


class _InfGrad(torch.autograd.Function):
    """Identity forward; an infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, math.inf)


class _NonFinite:
    """The update's loss, on this rank if ``here``: its log-probs get an infinite gradient at step ``grad_at``,
    its value (not its gradient) is NaN at step ``loss_at``."""

    def __init__(self, loss, grad_at: int | None, loss_at: int | None, here: bool):
        self.loss, self.grad_at, self.loss_at, self.here, self.step = loss, grad_at, loss_at, here, 0

    def __call__(self, logprobs, *args, **kwargs):
        if self.here and self.step == self.grad_at:
            logprobs = _InfGrad.apply(logprobs)
        loss, stats = self.loss(logprobs, *args, **kwargs)
        if self.here and self.step == self.loss_at:
            loss = loss + torch.tensor(math.nan)  # a constant: the gradients stay finite
        return loss, stats


if __name__ == "__main__":
    main(sys.argv[1:])
