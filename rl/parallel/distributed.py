"""Multi-process training: launcher checks, the wrapper around the one trainable module, collectives.

One GRPO run is N processes (``torchrun``, ``accelerate launch``, SLURM), each holding whole prompt
groups or a slice of one (``grpo.batch_size`` samples *per process*; rl/batch_layout.py). This module is all the trainer knows about that:

- `make_accelerator`: the `Accelerator`, built so that the launcher's world size is really the
  trainer's: on a machine without CUDA it is created with ``cpu=True`` (with the default
  ``cpu=False`` a ``torchrun`` launch gives every rank world size 1 and no process group: N
  independent copies would train without an error), the process group is gloo on CPU / NCCL on GPU
  with a collective timeout (``distributed.timeout_minutes``), and `check_world_size` refuses a
  launcher/accelerator disagreement, naming both numbers.
- `Strategy` and `wrap`: ``ddp`` (accelerate's DDP), ``fsdp2`` (torch's ``fully_shard`` applied here,
  per decoder layer then the whole `ImageTokenLM`: the same code path on CPU and GPU; accelerate's own
  FSDP plugin is silently ignored on CPU) and ``deepspeed`` (ZeRO-1/2/3 from the accelerate config).
  The engine samples through ``policy.lm``, which *is* the wrapped module's inner module (DDP and
  DeepSpeed wrap it, ``fully_shard`` converts it in place), so sampling runs the same hooks (FSDP
  unshards, ZeRO-3 gathers) as the trainer's forward.
- Collectives the trainer needs, each a no-op on one process: `all_sum`, `all_min_max`,
  `all_gather_objects`, `any_rank`, `all_ranks`; `collective_error` turns a timed-out collective into
  an error naming the rank that gave up.

Gradient scale: every wrapper *averages* gradients over ranks, while `rl/grpo/loss.py` already divides by
the global token / sample counts, so the backward loss is multiplied by the world size
(`Distributed.loss_scale`): the update is then the one a single process makes over the global batch.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs
from torch import nn

from ..errors import RunError
from ..rollout.engines.base import RolloutEngine

STRATEGIES = ("auto", "ddp", "fsdp2", "deepspeed")


class LaunchError(RunError):
    """The processes were launched in a way that would not train one model (the message says how to fix it)."""


class CollectiveTimeout(RunError):
    """A collective did not complete within ``distributed.timeout_minutes``: a peer died or hangs."""


def launcher_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun / accelerate launch / the SLURM script (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_strategy(strategy: str) -> str:
    """``auto``: what the launcher asked for (``accelerate launch --config_file`` with FSDP → ``fsdp2``,
    DeepSpeed → ``deepspeed``), else ``ddp``."""
    if strategy != "auto":
        return strategy
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
        return "fsdp2"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true"):
        return "deepspeed"
    return "ddp"


def make_accelerator(strategy: str, mixed_precision: str = "none", timeout_minutes: float = 30.0) -> Accelerator:
    """The run's `Accelerator` for ``strategy`` (already resolved; ``mixed_precision`` none | bf16 | fp16),
    after `check_world_size`."""
    no_cuda = not torch.cuda.is_available()
    # DeepSpeed brings its own CPU accelerator (cpu=True would silently drop it); it needs gloo spelt out.
    cpu = no_cuda and strategy != "deepspeed"
    kwargs = InitProcessGroupKwargs(backend="gloo" if no_cuda else "nccl",
                                    timeout=datetime.timedelta(minutes=timeout_minutes))
    if strategy == "deepspeed" and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() not in ("1", "true"):
        raise LaunchError("distributed.strategy=deepspeed needs `accelerate launch --config_file "
                          "configs/accelerate/zero{1,2,3}.yaml` (the DeepSpeed settings live in that file)")
    hidden = {}
    if strategy == "fsdp2":
        # FSDP is applied here with torch's fully_shard; accelerate must not wrap the module a second time.
        hidden = {k: os.environ.pop(k) for k in list(os.environ) if k == "ACCELERATE_USE_FSDP"}
    if launcher_world_size() == 1:
        # One process (a test suite, a notebook): accelerate's state is a process-wide singleton, and a second
        # run with another precision would be refused; nothing is shared with another process to reset.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    # One process: no process group at all (accelerate would otherwise look for one for the given backend).
    handlers = [kwargs] if launcher_world_size() > 1 or strategy == "deepspeed" else []
    try:
        acc = Accelerator(cpu=cpu, mixed_precision="no" if mixed_precision == "none" else mixed_precision,
                          kwargs_handlers=handlers)
    finally:
        os.environ.update(hidden)
    check_world_size(acc, strategy)
    return acc


def check_world_size(acc: Accelerator, strategy: str) -> None:
    """Refuse a launch whose processes do not form one process group of ``WORLD_SIZE`` ranks."""
    expected = launcher_world_size()
    got = acc.num_processes
    pg = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if got != expected or pg != expected:
        raise LaunchError(
            f"the launcher started {expected} processes (WORLD_SIZE={expected}) but this process sees "
            f"{got} (accelerate) / {pg} (torch.distributed): they would train independent copies. On a "
            "machine without CUDA launch with `torchrun --standalone --nproc_per_node N -m blip3o_rl train ...` "
            "(`accelerate launch --cpu --num_processes N` starts only one process); see docs/multi-process.md")
    if strategy == "deepspeed" and acc.distributed_type != DistributedType.DEEPSPEED:
        raise LaunchError(f"distributed.strategy=deepspeed but accelerate runs {acc.distributed_type.value}")
    if strategy != "deepspeed" and acc.distributed_type == DistributedType.DEEPSPEED:
        raise LaunchError(f"the accelerate config asks for DeepSpeed but distributed.strategy={strategy}")


# --------------------------------------------------------------------------- the wrapper


@dataclass
class Distributed:
    """The run's processes: rank, world size, strategy, and the collectives the trainer calls."""

    acc: Accelerator
    strategy: str  # ddp | fsdp2 | deepspeed (ddp on one process means no wrapper at all)

    @property
    def rank(self) -> int:
        return self.acc.process_index

    @property
    def world(self) -> int:
        return self.acc.num_processes

    @property
    def loss_scale(self) -> float:
        """Factor on the backward loss undoing the wrappers' gradient averaging (see the module docstring)."""
        return float(self.world)

    @property
    def zero_stage(self) -> int:
        if self.strategy != "deepspeed":
            return 0
        plugin = self.acc.state.deepspeed_plugin
        return int(plugin.zero_stage) if plugin is not None else 0

    # -- collectives (all no-ops on one process) ---------------------------------------------------------

    def _tensor(self, values: Sequence[float]) -> torch.Tensor:
        return torch.tensor(list(values), dtype=torch.float64, device=self.acc.device)

    def all_sum(self, values: Sequence[float]) -> list[float]:
        if self.world == 1:
            return [float(v) for v in values]
        t = self._tensor(values)
        with collective_error(self.rank, "all_sum"):
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t.tolist()

    def all_min_max(self, mins: Sequence[float], maxs: Sequence[float]) -> tuple[list[float], list[float]]:
        if self.world == 1:
            return [float(v) for v in mins], [float(v) for v in maxs]
        t = self._tensor([-v for v in mins] + list(maxs))
        with collective_error(self.rank, "all_min_max"):
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        vals = t.tolist()
        return [-v for v in vals[: len(mins)]], vals[len(mins) :]

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any (a stop signal, a skipped update)."""
        return self.all_sum([1.0 if flag else 0.0])[0] > 0

    def all_ranks(self, flag: bool) -> bool:
        return not self.any_rank(not flag)

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable, small: eval scores), in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        with collective_error(self.rank, "all_gather_object"):
            torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        with collective_error(self.rank, "broadcast_object"):
            torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self, what: str) -> None:
        if self.world > 1:
            with collective_error(self.rank, what):
                torch.distributed.barrier()

    # -- the wrapper ----------------------------------------------------------------------------------

    def shard(self, lm: nn.Module, reference: nn.Module | None = None) -> None:
        """FSDP2 only (in place, before the optimizer is built): `fully_shard_lm`, the full-fine-tuning
        reference sharded the same way. Other strategies wrap in `prepare`."""
        if self.strategy == "fsdp2" and self.world > 1:
            fully_shard_lm(lm, () if reference is None else (reference,))

    def prepare(self, lm: nn.Module, optimizer: torch.optim.Optimizer, micro_batch_size: int,
                accumulation_steps: int, max_grad_norm: float | None) -> tuple[nn.Module, Any]:
        """``(the module every trainer forward runs through, the optimizer)``: DDP / DeepSpeed wrap ``lm``
        (accelerate's ``prepare``); FSDP2 has sharded it already; one process returns it as it is."""
        if self.strategy == "fsdp2":
            return lm, self.acc.prepare(optimizer)
        if self.strategy == "deepspeed":
            ds = self.acc.state.deepspeed_plugin.deepspeed_config
            # No dataloader: the batch shape DeepSpeed checks comes from the recipe; we call its backward
            # and step ourselves (`backward`, `DeepSpeedStep`), so accumulation and clipping follow the recipe.
            ds["train_micro_batch_size_per_gpu"] = micro_batch_size
            ds["gradient_accumulation_steps"] = accumulation_steps
            ds["train_batch_size"] = micro_batch_size * accumulation_steps * self.world
            ds["gradient_clipping"] = 0.0 if max_grad_norm is None else float(max_grad_norm)
        model, opt = self.acc.prepare(lm, optimizer)
        return model, opt

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        """Around loading the policy: under ZeRO-3 every rank loads the weights whole (transformers would
        otherwise create them already partitioned, `zero.Init`, because accelerate registers the DeepSpeed
        config with it), so the frozen reference can be copied and a checkpoint loaded into them; DeepSpeed
        partitions them in `prepare`. (Models too large to load once per device are out of scope.)"""
        if self.zero_stage != 3:
            yield
            return
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        try:
            yield
        finally:
            self.acc.state.deepspeed_plugin.set_deepspeed_weakref()

    def prepare_reference(self, reference: nn.Module) -> nn.Module:
        """The frozen full-fine-tuning reference as the trainer calls it: under ZeRO-3 partitioned like the
        policy (its own DeepSpeed engine, no optimizer: each rank keeps 1/N of the copy and gathers a layer's
        weights in its forward); otherwise the module itself (ZeRO-1/2 and DDP keep replicas; FSDP2 has
        sharded it in `shard`). Call after `prepare` (the DeepSpeed config is complete then)."""
        if self.zero_stage != 3 or self.world == 1:
            return reference
        import copy

        import deepspeed

        ds = copy.deepcopy(self.acc.state.deepspeed_plugin.deepspeed_config)
        for key in ("optimizer", "scheduler"):  # an engine without an optimizer
            ds.pop(key, None)
        ds.get("zero_optimization", {}).pop("offload_optimizer", None)
        engine, *_ = deepspeed.initialize(model=reference, config=ds)
        engine.eval()
        return engine

    def rollout_engine(self, engine: RolloutEngine, lm: nn.Module, gather: bool) -> RolloutEngine:
        """ZeRO-3 with ``gather``: the engine samples inside one gather of the partitioned weights."""
        if self.zero_stage == 3 and gather:
            return GatheredRollouts(engine, lm)
        return engine

    # -- gradients ------------------------------------------------------------------------------------

    def backward(self, lm: nn.Module, loss: torch.Tensor, last: bool) -> None:
        """Backward of a micro-batch's share of the update loss (see `loss_scale`); ``last`` closes the update."""
        scaled = loss * self.loss_scale
        if self.strategy == "deepspeed":
            lm.set_gradient_accumulation_boundary(last)  # type: ignore[operator]
            lm.backward(scaled, scale_wrt_gas=False)  # type: ignore[operator]
        else:
            self.acc.backward(scaled)

    def clip_grad_norm(self, params: Sequence[nn.Parameter], max_norm: float) -> float:
        """The total gradient norm before clipping (DeepSpeed clips inside its step: NaN until then)."""
        if self.strategy == "deepspeed":
            return 0.0  # DeepSpeed computes (and clips, and checks) the norm in its own step
        return gradient_norm(self.acc.clip_grad_norm_(params, max_norm))

    def optimizer_for_guard(self, lm: nn.Module, optimizer: Any) -> Any:
        """What `FiniteUpdateGuard` steps: the optimizer, or DeepSpeed's engine step."""
        return DeepSpeedStep(lm) if self.strategy == "deepspeed" else optimizer

    def grad_norm_after_step(self, lm: nn.Module, before: float) -> float:
        if self.strategy != "deepspeed":
            return before
        norm = lm.get_global_grad_norm()  # type: ignore[operator]
        return float("nan") if norm is None else float(norm)

    def no_sync(self, model: nn.Module, last: bool):
        """Skip the gradient all-reduce on all but the last micro-batch (DDP; FSDP2's reduce-scatter)."""
        if last or self.world == 1:
            return contextlib.nullcontext()
        if self.strategy == "fsdp2":
            return _fsdp_no_sync(model)
        if self.strategy == "deepspeed":
            return contextlib.nullcontext()  # DeepSpeed reduces at its accumulation boundary
        return self.acc.no_sync(model)


class DeepSpeedStep:
    """``step`` / ``zero_grad`` of a DeepSpeed engine, shaped like an optimizer for `FiniteUpdateGuard`.

    The engine's step clips to ``optim.max_grad_norm`` and skips an update whose gradient norm is not
    finite by itself; the guard adds the loss check and the agreement of all ranks.
    """

    def __init__(self, engine: Any):
        self.engine = engine
        self._stepped = False

    def step(self) -> None:
        self.engine.step()
        self._stepped = True

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not self._stepped:  # a skipped update: drop the accumulated gradients
            self.engine.zero_grad()
        self._stepped = False


class GatheredRollouts(RolloutEngine):
    """An engine sampling inside one ZeRO-3 gather of all weights (`DistributedConfig.zero3_gather_for_rollout`)."""

    def __init__(self, inner: RolloutEngine, lm: nn.Module):
        self.inner, self.lm = inner, lm
        self.provides_hidden_states = inner.provides_hidden_states
        self.exact_logprobs = inner.exact_logprobs

    def setup(self, policy) -> None:
        self.inner.setup(policy)
        self.policy = policy

    def _generate(self, prompts, num_generations, params, seeds, return_hidden, samples):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.lm.parameters()), modifier_rank=None):
            return self.inner.generate(prompts, num_generations, params, seeds, return_hidden, samples)

    def update_weights(self, policy) -> None:
        self.inner.update_weights(policy)


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)  # type: ignore[operator]


@contextlib.contextmanager
def collective_error(rank: int, what: str) -> Iterator[None]:
    """A collective that timed out (a dead or stuck peer) becomes `CollectiveTimeout` naming this rank."""
    try:
        yield
    except (RuntimeError, pickle.PickleError) as exc:
        text = str(exc)
        if "timed out" in text.lower() or "timeout" in text.lower() or "connection" in text.lower():
            raise CollectiveTimeout(
                f"rank {rank}: {what} did not complete ({type(exc).__name__}: {text.splitlines()[0] if text else ''}); "
                "another rank died or hangs (see its log). Raise distributed.timeout_minutes for slow steps "
                "(long rewards, big evaluations), or --resume from the last checkpoint") from exc
        raise


def fully_shard_lm(lm: nn.Module, extra: Sequence[nn.Module] = ()) -> None:
    """FSDP2 in place: each decoder layer, then the whole module (embeddings, final norm, lm_head).

    ``extra`` modules (the frozen full-fine-tuning reference) are sharded the same way.
    """
    from torch.distributed.fsdp import fully_shard

    for module in (lm, *extra):
        body = module.causal_lm.get_decoder()  # type: ignore[operator,union-attr]
        for layer in body.layers:
            fully_shard(layer)
        fully_shard(module)


def gradient_norm(total: torch.Tensor | float | None) -> float:
    """``clip_grad_norm_``'s result as a float (a DTensor under FSDP2)."""
    if total is None:
        return float("nan")
    if hasattr(total, "full_tensor"):
        total = total.full_tensor()
    return float(total)  # host sync: the guard needs it


def is_main_process() -> bool:
    """Rank 0 of the launch (before any `Accelerator` exists)."""
    return int(os.environ.get("RANK", "0")) == 0
