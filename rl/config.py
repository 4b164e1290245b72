"""Typed, frozen run configuration: YAML recipes plus dotted ``key=value`` overrides.

    cfg = load_config("configs/demo.yaml", ["grpo.beta=0.01", "max_steps=50"])

Every key is checked: an unknown key or a value of the wrong type fails with the file, line and
dotted key. Names follow TRL's GRPOConfig where the concept exists there (``num_generations``,
``beta``, ``epsilon``, ``epsilon_high``, ``loss_type``, ``scale_rewards``, ``num_iterations``,
``temperature``, ``top_k``, ``top_p``, ``learning_rate``, ``max_grad_norm``, ...).

Paths written in a YAML file are relative to that file (so packaged recipes find their data);
paths given as command-line overrides are relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .. import registry
from ..rewards.base import REMOTE_PREFIX
from ..rewards.remote import RemoteReward
from .batch_layout import batch_split_problem
from .grpo.advantages import REWARD_AGGREGATIONS, SCALE_REWARDS
from .grpo.is_correction import IMPORTANCE_SAMPLING_LEVELS, IS_MODES
from .grpo.loss import loss_types
from .grpo.score_space import SCORE_SPACES


class ConfigError(ValueError):
    """A bad configuration value; the message names where it came from and the dotted key."""


def _path_field(default: Any = None) -> Any:
    return field(default=default, metadata={"path": True})


@dataclass(frozen=True)
class ModelConfig:
    policy: str | None = None  # required: a registered policy name, or "package.module:PolicyClass"
    name_or_path: str | None = _path_field()  # model folder; null: the policy class builds one (model.build)
    dtype: str = "float32"  # float32 | bfloat16 | float16
    policy_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the policy's from_pretrained
    finetune: str = "lora"  # lora | full
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    gradient_checkpointing: bool = False
    # "none": compute in `dtype`; "bf16" / "fp16": autocast compute with the weights (and optimizer) kept
    # in `dtype` (float32 for full fine-tuning: bf16 compute with fp32 master weights). ("none", not "no":
    # YAML reads a bare no as false.)
    mixed_precision: str = "none"
    # name_or_path null: kwargs of the policy class's `build(path, prompts, progress, **build)`, which
    # writes the model folder <output_dir>/base_model (a policy without `build` needs name_or_path)
    build: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutConfig:
    engine: str = "kv_cache"  # kv_cache (alias hf) | static | vllm | vllm_server | "package.module:Class"
    engine_kwargs: dict[str, Any] = field(default_factory=dict)  # the engine's constructor arguments
    # Importance sampling between the engine's and the trainer's log-probs on each sample's policy-gradient
    # term (rl/grpo/is_correction.py, TRL's vllm_importance_sampling_correction / _mode / _clip_max / _clip_min):
    # "auto" when the engine's numerics differ from the trainer's (vLLM: its own kernels), "on", or "off"
    is_correction: str = "auto"
    is_mode: str = "sequence_mask"  # token_truncate | token_mask | sequence_truncate | sequence_mask (TRL's default)
    is_clip_max: float | None = 3.0  # TRL's default
    is_clip_min: float | None = None  # null: no lower bound (TRL's default)
    # Engine vs trainer log-probs, measured every step (rl/rollout/agreement.py): the run stops when a valid
    # token's |log π_trainer − log π_engine| exceeds this (null: never)
    max_logprob_diff: float | None = 1.0
    # After every weight push, a fixed probe sampled by the engine and scored by the trainer (rl/rollout/
    # sync_probe.py): "auto" (engines with their own copy of the weights: vLLM), "always", "never" (not
    # on/off: YAML reads those as booleans); the run stops when the push did not take effect or the probe's
    # mean |log-prob difference| exceeds max_sync_probe_diff (null: no bound)
    sync_probe: str = "auto"
    sync_probe_samples: int = 2
    max_sync_probe_diff: float | None = 0.1
    temperature: float = 1.0
    top_k: int = 0  # 0 = untruncated (the RL default); the trainer applies the same truncation
    top_p: float = 1.0
    # "config": temperature / top_k / top_p above; "checkpoint": top_k / top_p as the official rollout's
    # generate() resolved them (the checkpoint's generation_config.json, else transformers' top-k 50)
    sampling_from: str = "config"
    logprob_chunk_size: int = 128  # positions per chunk of image-head logits in the trainer's forward
    # Samples per decode call, a multiple of grpo.num_generations (whole groups), or of grpo.batch_size when
    # a group is split across processes (null: the whole batch at once).
    decode_chunk_size: int | None = None
    # Score each decoded chunk while the next one decodes (rl/rollout/pipeline.py); same results as without.
    pipeline_rewards: bool = False
    max_pending_chunks: int = 4  # decoded chunks waiting for their rewards before decoding pauses


@dataclass(frozen=True)
class GRPOConfig:
    num_generations: int = 8  # group size G
    # samples per step on each process: a multiple of G (whole groups), or a divisor of G (one group split over
    # G / batch_size consecutive processes; rl/batch_layout.py)
    batch_size: int = 64
    micro_batch_size: int = 16  # samples per forward/backward; gradients accumulate over the batch
    beta: float = 0.0  # KL coefficient (k3 against the reference policy)
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None: same as epsilon
    loss_type: str = "bnpo"
    scale_rewards: str = "group"  # group | batch | none
    # several rewards: "sum" (weighted total, then normalised) or "normalize_then_sum" (each reward
    # normalised within its group, weighted, summed, then normalised as scale_rewards says; rl/grpo/advantages.py)
    reward_aggregation: str = "sum"
    num_iterations: int = 1  # μ: optimizer passes over each rollout batch
    # the policy ratio per token ("token": GRPO) or one per sample from its mean token log-ratio ("sequence":
    # GSPO); TRL's name and values (rl/grpo/is_correction.py)
    importance_sampling_level: str = "token"
    # the distribution the trainer scores the codes under (rl/grpo/score_space.py): "kept_set" (the
    # sampler's own, exact) or "official" (full-vocabulary, temperature 1, untruncated: the official trainer's)
    score_space: str = "kept_set"
    max_failed_reward_steps: int = 3  # steps in a row in which every sample's reward failed that stop the run (0: never)


@dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    optimizer: str = "adamw"  # registered name (adamw, adam, sgd) or "package.module:Class"; see rl/weights/optim.py
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)  # extra constructor arguments
    lr_scheduler_type: str = "constant"  # registered name (constant, cosine, linear, ...) or "module:function"
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0  # None: no clipping
    # LR-schedule horizon in GRPO steps (x num_iterations optimizer steps); null: max_steps. Or
    # schedule_epochs: that many passes over data.train_file, as TRL's TrainingArguments count them
    schedule_steps: int | None = None
    schedule_epochs: float | None = None
    max_nonfinite_steps: int = 3  # non-finite updates in a row (each skipped) that stop the run


@dataclass(frozen=True)
class RewardSpec:
    reward: str  # registered name, "package.module:attr" or "path/to/file.py:attr"
    name: str | None = None  # name in the logs (default: `reward`)
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Seconds one call of this reward may take; past it the batch's samples fail (excluded, counted) and
    # training goes on. null: no limit. The hung call is left running in a daemon thread (rewards/base.py).
    timeout_s: float | None = None

    @property
    def log_name(self) -> str:
        return self.name or self.reward


@dataclass(frozen=True)
class DataConfig:
    train_file: str | None = _path_field()  # JSONL rows {"prompt": ..., <metadata>} or one prompt per line
    shuffle: bool = True


@dataclass(frozen=True)
class GuardSpec:
    """One ``eval.guard`` entry: watch ``eval/<reward>/mean`` for a drop while training rises
    (rl/run/guards/over_optimisation.py)."""

    reward: str  # the name of an eval reward (its log name)
    margin: float = 0.05  # drop from its best (in the reward's units) that triggers
    stop: bool = False  # true: stop the run (after a checkpoint) when triggered; false: warn and log only


@dataclass(frozen=True)
class EvalConfig:
    eval_every: int = 0  # steps between evaluations; 0 disables
    prompts_file: str | None = _path_field()
    num_prompts: int | None = None  # None: all
    num_generations: int = 1
    rewards: tuple[RewardSpec, ...] = ()  # empty: the training rewards
    # "rollout": sample like training; "inference": the policy's inference values (BLIP3o-NEXT: top-k
    # 1200, top-p 0.95, as published GenEval / OCR numbers)
    sampling: str = "rollout"
    # over-optimisation guard per eval reward: warn (or stop) when it falls by more than `margin` from
    # its best while the training reward rises (rl/run/guards/over_optimisation.py)
    guard: tuple[GuardSpec, ...] = ()


@dataclass(frozen=True)
class LoggingConfig:
    log_every: int = 1
    progress_bar: bool = True
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "blip3o-rl"
    image_every: int = 0  # steps between sample grids; 0 disables
    num_images: int = 16


@dataclass(frozen=True)
class CheckpointConfig:
    save_every: int = 0  # steps between checkpoints; 0: only the final one
    keep_last: int = 2  # 0: keep every checkpoint
    save_final: bool = True
    # keep the checkpoint of the best value of this eval metric in checkpoints/best/ (never pruned by
    # keep_last), e.g. "eval/geneval/mean"; null: off (rl/run/best_checkpoint.py)
    best_metric: str | None = None
    best_mode: str = "max"  # max | min


@dataclass(frozen=True)
class DistributedConfig:
    # auto: what the launcher's accelerate config asks for (FSDP -> fsdp2, DeepSpeed -> deepspeed), else ddp;
    # fsdp2: torch's fully_shard per decoder layer (rl/parallel/native.py); ddp on one process is no wrapper
    strategy: str = "auto"
    timeout_minutes: float = 30.0  # a collective waiting longer (a dead peer) fails, naming the rank
    # ZeRO-3: gather the partitioned weights once per rollout instead of per layer and per decoded token
    # (faster sampling; needs the full model's memory on each GPU while sampling)
    zero3_gather_for_rollout: bool = True


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "runs/default"
    seed: int = 0
    max_steps: int = 100
    num_threads: int | None = None  # torch intra-op CPU threads (None: torch's default)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    rewards: tuple[RewardSpec, ...] = ()
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


# --------------------------------------------------------------------------- parsing


class _Where:
    """Names the origin of a value: file and line for YAML keys, the argument for overrides."""

    def __init__(self, source: str, lines: dict[str, int], overrides: dict[str, str] | None = None):
        self.source, self.lines, self.overrides = source, lines, overrides or {}

    def __call__(self, key: str) -> str:
        for given, item in self.overrides.items():  # the override that set this key or a section above it
            if key == given or key.startswith(given + "."):
                return f"override {item!r}"
        parts = key.split(".")
        for n in range(len(parts), 0, -1):  # the key's own line, else its nearest section's
            line = self.lines.get(".".join(parts[:n]))
            if line:
                return f"{self.source}, line {line}"
        return self.source


def _key_lines(node: yaml.Node, prefix: str = "", source: str = "") -> dict[str, int]:
    """Line of every dotted key; a key given twice in one mapping is a `ConfigError` (YAML would keep the last)."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            if key in out:
                raise ConfigError(f"{source}, line {k.start_mark.line + 1}: duplicate key {key!r} "
                                  f"(first given on line {out[key]})")
            out[key] = k.start_mark.line + 1
            out.update(_key_lines(v, key + ".", source))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[f"{prefix}{i}"] = v.start_mark.line + 1
            out.update(_key_lines(v, f"{prefix}{i}.", source))
    return out


_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, where: _Where, base_dir: Path | None, is_path: bool) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where(key)}: {key} must not be null")
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key, where, base_dir, is_path)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where(key)}: {key} must be a mapping, got {type(value).__name__}")
        return _build(typing.cast(type, tp), value, where, base_dir, key + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where(key)}: {key} must be a list, got {type(value).__name__} {value!r}")
        return tuple(_convert(v, args[0], f"{key}.{i}", where, base_dir, False) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where(key)}: {key} must be a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where(key)}: {key} must be true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.match(value):  # YAML 1.1 reads "1e-2" as a string
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where(key)}: {key} must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where(key)}: {key} must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where(key)}: {key} must be a string, got {type(value).__name__} {value!r}")
        if is_path and base_dir is not None and not Path(value).is_absolute():
            return str(base_dir / value)
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported config type {_type_name(tp)} for {key}")


def _build(cls: type, data: dict, where: _Where, base_dir: Path | None, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where(key)}: unknown key {key!r} (known keys here: {known})")
        kwargs[k] = _convert(v, hints[k], key, where, base_dir, fields[k].metadata.get("path", False))
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where(prefix.rstrip('.'))}: {prefix.rstrip('.') or 'config'}: {exc}") from None


def _to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_dict(v) for v in obj]
    return obj


def config_to_dict(cfg: TrainConfig) -> dict:
    """Plain nested dict of a config (for saving next to a run, and for `config_from_dict`)."""
    return _to_dict(cfg)


def _set_dotted(data: dict, key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{where}: {'.'.join(parts[: i + 1])} is not an index of a {len(node)}-item list")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"{where}: {'.'.join(parts[: i + 1])} is not a mapping")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"{where}: {key} is not an index of a {len(node)}-item list")
        node[int(last)] = value
    else:
        node[last] = value


def packaged_recipe(name: str) -> Path | None:
    """A recipe shipped with the package, by name ("demo", "demo.yaml" or "configs/demo.yaml")."""
    stem = Path(name).name
    if not stem.endswith((".yaml", ".yml")):
        stem += ".yaml"
    candidate = resources.files("blip3o_rl.configs") / stem
    # resolve(): in a strict editable install the packaged file is a link into the repository's configs/.
    return Path(str(candidate)).resolve() if candidate.is_file() else None


def resolve_recipe(path_or_name: str) -> Path:
    """A YAML path that exists, else the packaged recipe of that name."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    packaged = packaged_recipe(path_or_name)
    if packaged is None:
        raise FileNotFoundError(f"no recipe {path_or_name!r}: not a file, and not a packaged recipe")
    return packaged


def config_from_dict(data: dict, source: str = "<dict>", base_dir: Path | None = None) -> TrainConfig:
    cfg = _build(TrainConfig, data, _Where(source, {}), base_dir)
    validate(cfg, source)
    return cfg


def load_config(path_or_name: str, overrides: Sequence[str] = (), check_inputs: bool = False) -> TrainConfig:
    """Load a recipe (a YAML path or a packaged recipe name) and apply ``key=value`` overrides.

    Every value is range-checked (`validate`); with ``check_inputs`` (the ``config`` and ``train``
    commands) every named implementation is resolved and every input file checked as well
    (`check_components`, which the trainer also runs before loading a model)."""
    path = resolve_recipe(path_or_name)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    where = _Where(str(path), _key_lines(node, source=str(path)) if node is not None else {})
    # Resolve YAML-relative paths now, before overrides (whose paths are relative to the cwd).
    data = config_to_dict(_build(TrainConfig, data, where, path.parent.resolve()))
    given: dict[str, str] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. grpo.beta=0.01")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot parse value: {exc}") from None
        _set_dotted(data, key.strip(), value, f"override {item!r}")
        given[key.strip()] = item
    full = _Where(str(path), where.lines, given)
    cfg = _build(TrainConfig, data, full, None)
    validate(cfg, str(path), full)
    if check_inputs:
        check_components(cfg, full)
    return cfg


def validate(cfg: TrainConfig, source: str, where: Any = None) -> None:
    """Range and cross-field checks of every value; each message names where the key came from (the
    file and line, or the override) and the dotted key."""

    def check(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{where(key) if where is not None else source}: {key}: {msg}")

    g, r, o, m = cfg.grpo, cfg.rollout, cfg.optim, cfg.model
    check(g.num_generations >= 2, "grpo.num_generations", f"group size must be >= 2, got {g.num_generations}")
    split_problem = batch_split_problem(g.batch_size, g.num_generations)  # the world size is checked at setup
    check(split_problem is None, "grpo.batch_size", f"{split_problem} (batch_size is per process)")
    check(g.micro_batch_size >= 1, "grpo.micro_batch_size", "must be >= 1")
    check(g.loss_type in loss_types(), "grpo.loss_type", f"must be one of {loss_types()}, got {g.loss_type!r}")
    check(g.scale_rewards in SCALE_REWARDS, "grpo.scale_rewards", f"must be one of {SCALE_REWARDS}")
    check(g.reward_aggregation in REWARD_AGGREGATIONS, "grpo.reward_aggregation",
          f"must be one of {tuple(REWARD_AGGREGATIONS)}, got {g.reward_aggregation!r}")
    check(g.num_iterations >= 1, "grpo.num_iterations", "must be >= 1")
    check(g.beta >= 0, "grpo.beta", "must be >= 0")
    check(g.epsilon >= 0 and (g.epsilon_high is None or g.epsilon_high >= 0), "grpo.epsilon", "must be >= 0")
    check(r.temperature > 0, "rollout.temperature", "must be > 0 for RL sampling")
    check(r.top_k >= 0, "rollout.top_k", "must be >= 0 (0 disables)")
    check(0 < r.top_p <= 1, "rollout.top_p", "must be in (0, 1]")
    check(r.is_correction in ("auto", "on", "off"), "rollout.is_correction", "must be 'auto', 'on' or 'off'")
    check(r.is_mode in IS_MODES, "rollout.is_mode", f"must be one of {IS_MODES}, got {r.is_mode!r}")
    check(r.is_clip_max is None or r.is_clip_max >= 1, "rollout.is_clip_max", "must be >= 1 (or null)")
    check(r.is_clip_min is None or 0 <= r.is_clip_min <= 1, "rollout.is_clip_min", "must be in [0, 1] (or null)")
    check(g.score_space in SCORE_SPACES, "grpo.score_space", f"must be one of {tuple(SCORE_SPACES)}, got {g.score_space!r}")
    check(g.score_space == "kept_set" or r.is_correction != "on", "rollout.is_correction",
          "'on' needs grpo.score_space kept_set: the engine's log-probs are in the sampling space, not the "
          "official full-vocabulary one")
    check(g.importance_sampling_level in IMPORTANCE_SAMPLING_LEVELS, "grpo.importance_sampling_level",
          f"must be one of {IMPORTANCE_SAMPLING_LEVELS}, got {g.importance_sampling_level!r}")
    check(g.reward_aggregation != "normalize_then_sum" or g.scale_rewards != "none", "grpo.scale_rewards",
          "'none' does not apply to reward_aggregation normalize_then_sum (TRL's GDPO standardises over the "
          "batch); use normalize_then_sum_per_group")
    check(r.max_logprob_diff is None or r.max_logprob_diff > 0, "rollout.max_logprob_diff", "must be > 0 (or null)")
    check(r.sync_probe in ("auto", "always", "never"), "rollout.sync_probe", "must be 'auto', 'always' or 'never'")
    check(r.sync_probe_samples >= 1, "rollout.sync_probe_samples", "must be >= 1")
    check(r.max_sync_probe_diff is None or r.max_sync_probe_diff > 0, "rollout.max_sync_probe_diff",
          "must be > 0 (or null)")
    check(r.logprob_chunk_size >= 1, "rollout.logprob_chunk_size", "must be >= 1")
    unit = min(g.batch_size, g.num_generations)  # the samples of one prompt a process holds
    check(r.decode_chunk_size is None or (r.decode_chunk_size > 0 and r.decode_chunk_size % unit == 0),
          "rollout.decode_chunk_size", f"must be a positive multiple of {unit} (the samples of a prompt one process "
          f"holds: grpo.num_generations, or grpo.batch_size when a group is split), got {r.decode_chunk_size}")
    check(r.max_pending_chunks >= 1, "rollout.max_pending_chunks", "must be >= 1")
    check(r.sampling_from in ("config", "checkpoint"), "rollout.sampling_from", "must be 'config' or 'checkpoint'")
    check(r.sampling_from == "config" or (r.top_k, r.top_p) == (0, 1.0), "rollout.sampling_from",
          "'checkpoint' takes top_k / top_p from the checkpoint: leave rollout.top_k / top_p unset")
    check(o.schedule_steps is None or o.schedule_steps >= 1, "optim.schedule_steps", "must be >= 1 (or null)")
    check(o.schedule_epochs is None or o.schedule_epochs > 0, "optim.schedule_epochs", "must be > 0 (or null)")
    check(o.schedule_steps is None or o.schedule_epochs is None, "optim.schedule_epochs",
          "set optim.schedule_steps or optim.schedule_epochs, not both")
    check(cfg.eval.sampling in ("rollout", "inference"), "eval.sampling", "must be 'rollout' or 'inference'")
    check(m.finetune in ("lora", "full"), "model.finetune", f"must be 'lora' or 'full', got {m.finetune!r}")
    check(m.dtype in ("float32", "bfloat16", "float16"), "model.dtype", f"unsupported dtype {m.dtype!r}")
    check(m.mixed_precision in ("none", "bf16", "fp16"), "model.mixed_precision",
          f"must be 'none', 'bf16' or 'fp16', got {m.mixed_precision!r}")
    d = cfg.distributed
    check(d.strategy in ("auto", "ddp", "fsdp2", "deepspeed"), "distributed.strategy",
          f"must be auto, ddp, fsdp2 or deepspeed, got {d.strategy!r}")
    check(d.timeout_minutes > 0, "distributed.timeout_minutes", f"must be > 0, got {d.timeout_minutes}")
    check("lm_head" not in m.lora_target_modules, "model.lora_target_modules",
          "lm_head cannot be a LoRA target (image log-probs read its weight rows directly)")
    for key, kind, spec in (("optimizer", "optimizer", o.optimizer), ("lr_scheduler_type", "lr_scheduler", o.lr_scheduler_type)):
        check(":" in spec or spec in registry.names(kind), f"optim.{key}",
              f"unknown {spec!r}: one of {registry.names(kind)} or 'package.module:attr'")
    check(o.learning_rate > 0, "optim.learning_rate", "must be > 0")
    check(o.max_nonfinite_steps >= 1, "optim.max_nonfinite_steps", "must be >= 1")
    check(cfg.max_steps >= 1, "max_steps", "must be >= 1")
    check(cfg.num_threads is None or cfg.num_threads >= 1, "num_threads", "must be >= 1 (or null)")
    check(len(cfg.rewards) > 0, "rewards", "at least one reward is needed")
    check(cfg.data.train_file is not None, "data.train_file", "a prompt file is needed")
    for key, specs in (("rewards", cfg.rewards), ("eval.rewards", cfg.eval.rewards)):
        for i, rspec in enumerate(specs):
            check(rspec.timeout_s is None or rspec.timeout_s > 0, f"{key}.{i}.timeout_s", "must be > 0 (or null)")
    names = [s.log_name for s in cfg.rewards]
    check(len(set(names)) == len(names), "rewards", f"reward names must be unique, got {names}")
    check(cfg.eval.eval_every == 0 or cfg.eval.prompts_file is not None, "eval.prompts_file",
          "needed when eval.eval_every > 0")
    check(cfg.eval.num_generations >= 1, "eval.num_generations", "must be >= 1")
    eval_names = [s.log_name for s in (cfg.eval.rewards or cfg.rewards)]
    for i, gs in enumerate(cfg.eval.guard):
        check(gs.reward in eval_names, f"eval.guard.{i}.reward",
              f"{gs.reward!r} is not an eval reward (eval rewards: {eval_names})")
        check(gs.margin >= 0, f"eval.guard.{i}.margin", "must be >= 0")
    check(not cfg.eval.guard or cfg.eval.eval_every > 0, "eval.guard", "needs evaluations: set eval.eval_every > 0")
    c = cfg.checkpoint
    check(c.best_mode in ("max", "min"), "checkpoint.best_mode", f"must be 'max' or 'min', got {c.best_mode!r}")
    if c.best_metric is not None:
        known = [f"eval/{n}/mean" for n in eval_names]
        check(c.best_metric in known, "checkpoint.best_metric", f"{c.best_metric!r} is not an eval metric (one of {known})")
        check(cfg.eval.eval_every > 0, "checkpoint.best_metric", "needs evaluations: set eval.eval_every > 0")
    check(m.policy is not None, "model.policy",
          f"required: one of {registry.names('policy')} or 'package.module:PolicyClass'")
    check(not (m.build and m.name_or_path is not None), "model.build",
          "is read only when model.name_or_path is null (the policy then builds the model folder)")
    check(m.lora_r >= 1, "model.lora_r", f"must be >= 1, got {m.lora_r}")
    check(m.lora_alpha > 0, "model.lora_alpha", f"must be > 0, got {m.lora_alpha}")
    check(0 <= m.lora_dropout < 1, "model.lora_dropout", f"must be in [0, 1), got {m.lora_dropout}")
    check(m.finetune != "lora" or len(m.lora_target_modules) > 0, "model.lora_target_modules",
          "at least one module is needed for LoRA")
    check(cfg.seed >= 0, "seed", f"must be >= 0, got {cfg.seed}")
    check(g.epsilon < 1, "grpo.epsilon", f"must be in [0, 1) (the clip range is [1 - epsilon, ...]), got {g.epsilon}")
    check(g.max_failed_reward_steps >= 0, "grpo.max_failed_reward_steps", "must be >= 0 (0: never stop)")
    check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    for key in ("adam_beta1", "adam_beta2"):
        check(0 <= getattr(o, key) < 1, f"optim.{key}", f"must be in [0, 1), got {getattr(o, key)}")
    check(o.adam_epsilon > 0, "optim.adam_epsilon", f"must be > 0, got {o.adam_epsilon}")
    check(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    check(o.max_grad_norm is None or o.max_grad_norm > 0, "optim.max_grad_norm",
          f"must be > 0 (or null: no clipping), got {o.max_grad_norm}")
    for section, specs in (("rewards", cfg.rewards), ("eval.rewards", cfg.eval.rewards)):
        for i, reward in enumerate(specs):
            check(math.isfinite(reward.weight), f"{section}.{i}.weight", f"must be finite, got {reward.weight}")
    e, lg, c = cfg.eval, cfg.logging, cfg.checkpoint
    check(e.eval_every >= 0, "eval.eval_every", f"must be >= 0 (0: off), got {e.eval_every}")
    check(e.num_prompts is None or e.num_prompts >= 1, "eval.num_prompts", f"must be >= 1 (or null: all), got {e.num_prompts}")
    check(lg.log_every >= 1, "logging.log_every", f"must be >= 1, got {lg.log_every}")
    check(lg.image_every >= 0, "logging.image_every", f"must be >= 0 (0: off), got {lg.image_every}")
    check(lg.num_images >= 1, "logging.num_images", f"must be >= 1, got {lg.num_images}")
    check(c.save_every >= 0, "checkpoint.save_every", f"must be >= 0 (0: only the final one), got {c.save_every}")
    check(c.keep_last >= 0, "checkpoint.keep_last", f"must be >= 0 (0: keep all), got {c.keep_last}")


def check_components(cfg: TrainConfig, where: Any = None) -> None:
    """Resolve every named implementation and check every input file, before any model loads.

    Run by `load_config`, so ``blip3o-rl config`` and ``train`` refuse the same recipes.
    """

    def fail(key: str, msg: str) -> None:
        raise ConfigError(f"{where(key) if where is not None else 'config'}: {key}: {msg}")

    def resolve(kind: str, spec: str, key: str, kwargs: dict | None = None, kwargs_key: str = "") -> None:
        try:
            target = registry.resolve(kind, spec)
        except registry.ComponentError as exc:
            fail(key, str(exc))
        except Exception as exc:  # a plug-in file that fails to import
            fail(key, f"{spec!r} cannot be loaded: {type(exc).__name__}: {exc}")
        if kwargs is not None:
            try:
                registry.check_kwargs(kind, spec, target, kwargs)
            except registry.ComponentError as exc:
                fail(kwargs_key or key.rsplit(".", 1)[0] + ".kwargs", str(exc))

    m = cfg.model
    if m.policy is not None:
        resolve("policy", m.policy, "model.policy")
    resolve("engine", cfg.rollout.engine, "rollout.engine", dict(cfg.rollout.engine_kwargs), "rollout.engine_kwargs")
    for prefix, specs in (("rewards", cfg.rewards), ("eval.rewards", cfg.eval.rewards)):
        for i, spec in enumerate(specs):
            if spec.reward.startswith(REMOTE_PREFIX):  # a reward server: its client's settings are checked
                try:
                    registry.check_kwargs("reward", spec.reward, RemoteReward, dict(spec.kwargs))
                except registry.ComponentError as exc:
                    fail(f"{prefix}.{i}.kwargs", str(exc))
                continue
            resolve("reward", spec.reward, f"{prefix}.{i}.reward", dict(spec.kwargs))
    for key, f in (("data.train_file", cfg.data.train_file), ("eval.prompts_file", cfg.eval.prompts_file)):
        if f is not None and not Path(f).is_file():
            fail(key, f"prompt file {f} does not exist")
    if m.name_or_path is not None and not Path(m.name_or_path).is_dir():
        fail("model.name_or_path", f"model folder {m.name_or_path} does not exist")
