"""One GRPO update at BLIP3o-NEXT's full size on one GPU (random weights): peak memory and step time.

    python -m blip3o_rl.scripts.bench_grpo_step_gpu                 # LoRA (bf16 base) and full (fp32 + bf16 compute)
    python -m blip3o_rl.scripts.bench_grpo_step_gpu --modes full --group 16 --micro-batch 4

Prepared for a lent GPU, NOT RUN in the session that wrote it (no GPU there). Shapes: Qwen3-1.7B with the
217,210-token vocabulary + SANA 1.6B refiner (`bench_blip3o_next.full_size_policy`). Per mode: the
recipe's precision (LoRA: bf16 weights; full: float32 master weights with bf16 autocast, the
`blip3o_next_geneval` recipe), gradient checkpointing on, one prompt group of G samples rolled out by the
KV-cache engine and decoded, then the trainer's scoring forward + backward over micro-batches, the k3 KL
term against the reference (LoRA: adapter off; full: a frozen copy) and one AdamW step. Prints one JSON line
per mode (and writes them to --out): rollout, decode, reference, update seconds and peak GPU memory.
Fits in ~8 minutes on an H100/H200 (group 16); carry diffusers as a wheel to a machine without the index.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..rl.config import ModelConfig
from ..rl.grpo.logprobs import micro_batches, score_rollout, sequence_logprobs
from ..rl.grpo.loss import policy_loss
from ..rl.rollout.engines import KVCacheEngine, SamplingParams, stream_seed
from ..rl.rollout.generate import sample_and_decode
from ..rl.weights.finetune import FinetuneSetup
from .bench_blip3o_next import full_size_policy


def _sync() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def one_step(mode: str, group: int, micro: int, device: torch.device) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    dtype = torch.bfloat16 if mode == "lora" else torch.float32
    policy = full_size_policy(device, dtype)
    cfg = ModelConfig(policy="blip3o_next", finetune=mode, lora_r=32, lora_alpha=64, gradient_checkpointing=True,
                      mixed_precision="none" if mode == "lora" else "bf16")
    setup = FinetuneSetup(policy, cfg, need_reference=True)
    params = setup.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-6)
    engine = KVCacheEngine()
    engine.setup(policy)
    sampling = SamplingParams(temperature=1.0, top_k=50)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode == "full")
    captions = ["a photo of a red cube next to a blue ball"]
    out: dict = {"mode": mode, "group": group, "micro_batch": micro}
    t0 = _sync()
    with autocast:
        gen = sample_and_decode(policy, engine, captions, group, sampling, [stream_seed(0, "bench", 0)], micro)
    t1 = _sync()
    out["rollout_decode_s"] = t1 - t0
    ro = gen.rollout
    with torch.no_grad(), autocast, setup.reference(policy.lm) as ref_lm:
        ref = score_rollout(ref_lm, ro.prompts, ro.codes, sampling, micro, 128, kept=ro.kept_sizes)[0]
    t2 = _sync()
    out["reference_s"] = t2 - t1
    adv = torch.randn(group, device=device)
    mask = torch.ones(group, dtype=torch.bool, device=device)
    valid = group * ro.codes.shape[1]
    policy.lm.train()
    for sl in micro_batches(group, micro):
        with autocast:
            fwd = sequence_logprobs(policy.lm, ro.prompts.slice(sl), ro.codes[sl], 1.0, 50, 1.0, chunk_size=128,
                                    kept=None if ro.kept_sizes is None else ro.kept_sizes[sl])
            loss, _ = policy_loss(fwd.logprobs, fwd.logprobs.detach(), adv[sl], mask[sl], loss_type="bnpo",
                                  epsilon=0.2, epsilon_high=None, beta=0.001, ref_logprobs=ref[sl],
                                  global_valid_tokens=valid, global_valid_samples=group)
        loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    t3 = _sync()
    out["update_s"] = t3 - t2
    out["step_s"] = t3 - t0
    out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--group", type=int, default=16, help="samples (one prompt group)")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON lines here too")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    rows = []
    for mode in args.modes:
        row = one_step(mode, args.group, args.micro_batch, torch.device("cuda"))
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out is not None:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
