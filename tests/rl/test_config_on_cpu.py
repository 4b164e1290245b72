import re
from pathlib import Path

import pytest

from blip3o_rl.rl.config import ConfigError, TrainConfig, config_from_dict, config_to_dict, load_config
from blip3o_rl.rl.trainer import GRPOTrainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads_through_the_schema(recipe):
    cfg = load_config(str(recipe))
    assert isinstance(cfg, TrainConfig)
    # round trip: the saved form of a config loads back to the same config
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_recipe_launch_comments_name_real_files_and_the_recipe(recipe):
    """A launch line in a recipe's comments uses an accelerate config that exists (each of those is run by
    the multi-process tests) and trains this very recipe through ``-m blip3o_rl train``."""
    comments = "\n".join(line for line in recipe.read_text().splitlines() if line.lstrip().startswith("#"))
    for config in re.findall(r"--config_file (\S+)", comments):
        assert (CONFIGS.parent / config).is_file(), (recipe.name, config)
    for line in re.findall(r"(?:accelerate launch|torchrun)[^\n]*", comments):
        assert re.search(rf"-m blip3o_rl train {re.escape(recipe.stem)}\b", line), (recipe.name, line)
    for config in re.findall(r"ACCELERATE_CONFIG=([\w./-]+\.yaml)", comments):
        assert (CONFIGS.parent / config).is_file(), (recipe.name, config)


def test_packaged_recipe_by_name_and_yaml_relative_paths():
    cfg = load_config("demo")
    assert Path(cfg.data.train_file).is_file()  # relative to the YAML file, not the cwd
    assert load_config("configs/demo.yaml") == cfg


def test_overrides_are_typed():
    cfg = load_config("demo", ["grpo.beta=0.01", "optim.learning_rate=1e-4", "max_steps=3",
                               "grpo.epsilon_high=0.28", "model.lora_target_modules=[q_proj,v_proj]",
                               "rewards.0.weight=2"])
    assert cfg.grpo.beta == 0.01 and cfg.optim.learning_rate == 1e-4 and cfg.max_steps == 3
    assert cfg.grpo.epsilon_high == 0.28
    assert cfg.model.lora_target_modules == ("q_proj", "v_proj")
    assert cfg.rewards[0].weight == 2.0


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return str(p)


BASE = "rewards: [{reward: tiny_layout}]\ndata: {train_file: x.jsonl}\nmodel: {policy: tiny}\n"


@pytest.mark.parametrize(
    ("text", "overrides", "match"),
    [
        (BASE + "grpo:\n  betta: 0.1\n", [], r"r\.yaml, line 5: unknown key 'grpo\.betta'"),
        (BASE + "grpo:\n  beta: high\n", [], r"line 5: grpo\.beta must be a number, got str 'high'"),
        (BASE + "max_steps: 1.5\n", [], r"line 4: max_steps must be an integer"),
        (BASE + "logging: {tensorboard: 1}\n", [], r"logging\.tensorboard must be true or false"),
        (BASE, ["grpo.num_generations=1"], r"grpo\.num_generations: group size must be >= 2"),
        (BASE, ["grpo.batch_size=10", "grpo.num_generations=4"],
         r"grpo\.batch_size: batch_size=10 samples per process and num_generations=4: one must divide the other"),
        (BASE, ["grpo.batch_size=6", "grpo.num_generations=4"], r"grpo\.batch_size: batch_size=6 .* one must divide"),
        (BASE, ["grpo.loss_type=ppo"], r"grpo\.loss_type"),
        (BASE, ["grpo.beta=abc"], r"override 'grpo\.beta=abc': grpo\.beta must be a number"),
        (BASE, ["nonsense"], r"expected key=value"),
        (BASE, ["model.lora_target_modules=[lm_head]"], r"lm_head cannot be a LoRA target"),
        ("data: {train_file: x.jsonl}\n", [], r"rewards: at least one reward"),
        (BASE + "rewards: [{weight: 1}]\n", [], r"rewards"),
        ("- 1\n- 2\n", [], r"must be a mapping"),
        (BASE.replace("model: {policy: tiny}\n", ""), [], r"model\.policy: required: one of \['blip3o_next', 'tiny'\]"),
        (BASE, ["model.name_or_path=m", "model.build.seed=1"], r"model\.build: is read only when model\.name_or_path is null"),
        (BASE, ["model.tiny_world.seed=1"], r"unknown key 'model\.tiny_world'"),
        (BASE, ["optim.optimizer=adamx"], r"optim\.optimizer: unknown 'adamx': one of \['adam', 'adamw', 'sgd'\]"),
        (BASE, ["optim.lr_scheduler_type=cosin"], r"optim\.lr_scheduler_type: unknown 'cosin'"),
        ("a: [1,\n", [], r"invalid YAML"),
    ],
)
def test_bad_configs_fail_with_clear_messages(tmp_path, text, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text), overrides)


def test_missing_recipe():
    with pytest.raises(FileNotFoundError, match="no recipe"):
        load_config("does_not_exist")


def test_config_is_frozen():
    cfg = load_config("demo")
    with pytest.raises(AttributeError):
        cfg.grpo.beta = 1.0  # type: ignore[misc]


def test_docs_document_every_config_key():
    import dataclasses
    import typing

    readme = (CONFIGS.parent / "docs" / "configuration.md").read_text()

    def keys(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from keys(hints[f.name], f"{prefix}{f.name}.")
            else:
                yield prefix + f.name

    missing = [k for k in keys(TrainConfig) if f"`{k}`" not in readme]
    assert not missing, f"docs/configuration.md lacks {missing}"


# ---------------------------------------------------------------- issue 12: validation up front


@pytest.mark.parametrize(
    ("override", "match"),
    [
        # the reported cases: accepted before, some silently harmful (max_grad_norm=-1 flipped the gradient)
        ("optim.max_grad_norm=-1", r"optim\.max_grad_norm: must be > 0 \(or null: no clipping\), got -1"),
        ("optim.warmup_steps=-3", r"optim\.warmup_steps: must be >= 0"),
        ("checkpoint.save_every=-1", r"checkpoint\.save_every: must be >= 0"),
        ("checkpoint.keep_last=-1", r"checkpoint\.keep_last: must be >= 0 \(0: keep all\)"),
        ("eval.eval_every=-1", r"eval\.eval_every: must be >= 0"),
        ("eval.num_prompts=0", r"eval\.num_prompts: must be >= 1"),
        ("logging.log_every=0", r"logging\.log_every: must be >= 1"),
        ("optim.adam_beta1=2", r"optim\.adam_beta1: must be in \[0, 1\)"),
        ("model.lora_r=0", r"model\.lora_r: must be >= 1"),
        ("model.lora_dropout=1.5", r"model\.lora_dropout"),
        ("optim.weight_decay=-0.1", r"optim\.weight_decay"),
        ("grpo.epsilon=1.5", r"grpo\.epsilon: must be in \[0, 1\)"),
        ("grpo.max_failed_reward_steps=-1", r"grpo\.max_failed_reward_steps"),
        ("rewards.0.weight=.nan", r"rewards\.0\.weight: must be finite"),
        ("optim.learning_rate=.nan", r"optim\.learning_rate: must be > 0"),
    ],
)
def test_every_value_is_range_checked_and_the_override_is_named(override, match):
    with pytest.raises(ConfigError, match=rf"^override '{re.escape(override)}': {match}"):
        load_config("demo", [override])


def test_a_bad_value_in_the_file_is_blamed_on_its_line(tmp_path):
    (tmp_path / "p.txt").write_text("a red image\n")
    path = _write(tmp_path, "rewards: [{reward: tiny_layout}]\ndata: {train_file: p.txt}\nmodel: {policy: tiny}\n"
                            "optim:\n  max_grad_norm: -1\n")
    with pytest.raises(ConfigError, match=r"r\.yaml, line 5: optim\.max_grad_norm: must be > 0"):
        load_config(path)


def test_duplicate_yaml_keys_are_errors(tmp_path):
    path = _write(tmp_path, BASE + "grpo:\n  beta: 0.1\n  epsilon: 0.2\n  beta: 0.5\n")
    with pytest.raises(ConfigError, match=r"r\.yaml, line 7: duplicate key 'grpo\.beta' \(first given on line 5\)"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("model.policy=tinyy", r"override 'model\.policy=tinyy': model\.policy: unknown policy 'tinyy'"),
        ("rollout.engine=vllmm", r"rollout\.engine: unknown engine 'vllmm'"),
        ("rollout.engine_kwargs={warp: 1}", r"override 'rollout\.engine_kwargs=\{warp: 1\}': rollout\.engine_kwargs: "
                                            r"engine 'kv_cache' takes no argument 'warp'"),
        ("rewards=[{reward: tiny_layot}]", r"override 'rewards=\[\{reward: tiny_layot\}\]': rewards\.0\.reward: unknown"),
        ("rewards.0.kwargs={tolerence: 1}", r"rewards\.0\.kwargs: reward 'tiny_layout' takes no argument 'tolerence'"),
        ("data.train_file=nope.jsonl", r"override 'data\.train_file=nope\.jsonl': data\.train_file: prompt file nope"),
        ("eval.prompts_file=nope.txt", r"eval\.prompts_file: prompt file nope\.txt does not exist"),
        ("model.name_or_path=no/such/model", r"model\.name_or_path: model folder no/such/model does not exist"),
    ],
)
def test_names_and_files_are_resolved_before_any_model_loads(override, match):
    """`blip3o-rl config` and `train` both go through load_config: they refuse the same recipes."""
    extra = ["model.build={}"] if override.startswith("model.name_or_path") else []
    with pytest.raises(ConfigError, match=match) as by_command:
        load_config("demo", [*extra, override], check_inputs=True)
    with pytest.raises(ConfigError, match=r"^config: ") as by_trainer:  # the trainer checks the same, first
        GRPOTrainer(load_config("demo", [*extra, override])).setup()
    assert str(by_command.value).endswith(str(by_trainer.value).removeprefix("config: "))


def test_a_reward_file_that_fails_to_import_is_a_config_error(tmp_path):
    bad = tmp_path / "bad_reward.py"
    bad.write_text("import no_such_module_xyz\n")
    with pytest.raises(ConfigError, match=r"rewards\.0\.reward: .*cannot be loaded: ModuleNotFoundError"):
        load_config("demo", [f"rewards=[{{reward: '{bad}:fn'}}]"], check_inputs=True)
