"""Recipes and GRPOConfig pass-through: parsing, type coercion, unknown fields, batch arithmetic, and the
shipped recipes' hyperparameters against the original study (REFERENCE.md section 1). No model is loaded."""

from pathlib import Path

import pytest
import yaml

from diagnosis_zero import configs
from diagnosis_zero.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
QWEN_RECIPES = ["qwen2.5-1.5b-instruct", "qwen2.5-3b-instruct", "qwen2.5-7b-instruct"]
ORIGINAL_RECIPES = [f"{name}-original" for name in QWEN_RECIPES]
RDC_FIXTURE = REPO / "tests" / "fixtures" / "rarearena" / "rdc.jsonl"


def test_command_line_values_are_typed_by_trls_parser():
    recipe, grpo = configs.split_fields({}, [
        "--learning-rate", "3e-7", "--bf16", "--num_generations=4", "--report-to", "none",
        "--reward-weights", "1", "0.5", "1", "--lora-target-modules", "q_proj", "v_proj",
        "--validation-max-cases", "null", "--use-peft", "false", "--generation-kwargs", "{top_k: 5}",
        "--seed", "-3", "--lr-scheduler-type", "constant"], "recipe.yaml")
    assert grpo["learning_rate"] == 3e-7 and isinstance(grpo["learning_rate"], float)
    assert grpo["bf16"] is True
    assert grpo["num_generations"] == 4
    assert grpo["report_to"] == "none"  # a real value of report_to, not null
    assert grpo["reward_weights"] == [1.0, 0.5, 1.0]
    assert grpo["generation_kwargs"] == {"top_k": 5}
    assert grpo["seed"] == -3 and grpo["lr_scheduler_type"] == "constant"
    assert recipe.lora_target_modules == ["q_proj", "v_proj"]
    assert recipe.validation_max_cases is None
    assert recipe.use_peft is False


def test_a_mapping_of_overrides_is_the_same_command_line():
    as_tokens = configs.split_fields({}, ["--max-steps", "5", "--use-vllm", "false", "--bf16"], None)
    as_mapping = configs.split_fields({}, {"max_steps": "5", "use_vllm": False, "bf16": None}, None)
    assert as_tokens == as_mapping
    assert as_mapping[1]["max_steps"] == 5 and as_mapping[1]["use_vllm"] is False and as_mapping[1]["bf16"] is True
    _, grpo = configs.split_fields({}, {"reward_weights": "[1, 0.5, 1]"}, None)
    assert grpo["reward_weights"] == [1.0, 0.5, 1.0]
    assert configs.split_fields({}, {"reward_weights": [1, 0.5, 1]}, None)[1]["reward_weights"] == [1.0, 0.5, 1.0]


@pytest.mark.parametrize("tokens,expected", [
    (["--use-peft"], True), (["--use-peft", "false"], False), (["--use-peft=true"], True),
    (["--use_peft", "no"], False)])
def test_boolean_flags(tokens, expected):
    recipe, _ = configs.split_fields({"use_peft": not expected}, tokens, None)
    assert recipe.use_peft is expected


def test_no_flag_for_a_boolean_that_defaults_to_true():
    # HfArgumentParser adds --no-x for booleans whose default is true (gradient_checkpointing in GRPOConfig)
    _, grpo = configs.split_fields({"gradient_checkpointing": True}, ["--no-gradient-checkpointing"], None)
    assert grpo["gradient_checkpointing"] is False
    _, grpo = configs.split_fields({}, ["--no_shuffle_dataset"], None)
    assert grpo["shuffle_dataset"] is False


def test_every_field_type_round_trips_from_recipe_and_command_line():
    recipe_yaml = yaml.safe_load("""
report_to: [tensorboard]
reward_levels: {wrong_reward: 0.0}
lora_target_modules: [q_proj, v_proj]
validation_max_cases: null
use_peft: true
lr_scheduler_type: cosine
optim: adamw_torch
generation_kwargs: {top_k: 5}
""")
    recipe, grpo = configs.split_fields(recipe_yaml, [], "r.yaml")
    assert grpo["report_to"] == ["tensorboard"]                     # a list in a str | list field
    assert recipe.reward_levels == {"wrong_reward": 0.0}            # a dict
    assert recipe.lora_target_modules == ["q_proj", "v_proj"]       # a list
    assert recipe.validation_max_cases is None                      # an optional
    assert recipe.use_peft is True                                  # a boolean
    assert grpo["lr_scheduler_type"] == "cosine" and grpo["optim"] == "adamw_torch"  # enums
    assert grpo["generation_kwargs"] == {"top_k": 5}
    recipe, grpo = configs.split_fields(recipe_yaml, [
        "--report-to", "wandb", "--reward-levels", "{format_tag_credit: 0.1, wrong_reward: 0.05}",
        "--lora-target-modules", "all-linear", "--validation-max-cases", "8", "--use-peft", "false",
        "--lr-scheduler-type", "constant"], "r.yaml")
    assert grpo["report_to"] == "wandb"
    assert recipe.reward_levels == {"format_tag_credit": 0.1, "wrong_reward": 0.05}
    assert recipe.lora_target_modules == ["all-linear"]
    assert recipe.validation_max_cases == 8 and recipe.use_peft is False
    assert grpo["lr_scheduler_type"] == "constant"
    # and the GRPOConfig that TRL builds from them accepts every value
    from trl import GRPOConfig

    config = GRPOConfig(**{**grpo, "output_dir": "unused", "use_cpu": True, "bf16": False})
    assert config.report_to == ["wandb"] and config.generation_kwargs == {"top_k": 5}


def test_a_recipe_with_report_to_as_a_list(tmp_path):
    """open-r1 recipes write `report_to: [tensorboard]`; the old hand-written parser crashed on it."""
    path = tmp_path / "open_r1_style.yaml"
    path.write_text("model: bundled:smollm2-135m-instruct\nreport_to:\n- tensorboard\nlearning_rate: 1.0e-6\n")
    mapping, found = configs.load_recipe(str(path))
    recipe, grpo = configs.split_fields(mapping, [], str(found))
    assert grpo["report_to"] == ["tensorboard"] and grpo["learning_rate"] == 1e-6


def test_recipe_values_are_checked_and_yaml_number_strings_parsed():
    # PyYAML reads `3e-7` (no dot) as a string; a float field still gets a float.
    recipe, grpo = configs.split_fields(yaml.safe_load("learning_rate: 3e-7\nmax_steps: 5.0\nlora_r: 8\n"), {}, "r.yaml")
    assert grpo["learning_rate"] == 3e-7 and grpo["max_steps"] == 5 and recipe.lora_r == 8
    with pytest.raises(ConfigError, match="r.yaml: field 'lora_r': invalid int value"):
        configs.split_fields({"lora_r": "eight"}, {}, "r.yaml")
    with pytest.raises(ConfigError, match="field 'use_peft'"):
        configs.split_fields({"use_peft": 3}, {}, "r.yaml")
    with pytest.raises(ConfigError, match="field 'lora_r': expected int, got null"):
        configs.split_fields({"lora_r": None}, {}, "r.yaml")
    with pytest.raises(ConfigError, match="field 'learning_rate': expected float, got a list"):
        configs.split_fields({"learning_rate": [1e-5]}, {}, "r.yaml")
    with pytest.raises(ConfigError, match="field 'reward_levels': expected a mapping"):
        configs.split_fields({"reward_levels": "wrong_reward"}, {}, "r.yaml")


@pytest.mark.parametrize("tokens,field", [
    (["--lora-r", "eight"], "lora_r"), (["--lr-scheduler-type", "constnt"], "lr_scheduler_type"),
    (["--use-peft", "maybe"], "use_peft"), (["--reward-levels", "{a: [1"], "reward_levels"),
    (["--reward-levels", "[1, 2]"], "reward_levels"), (["--reward-weights", "1,0.5"], "reward_weights")])
def test_a_bad_command_line_value_names_the_field(tokens, field):
    with pytest.raises(ConfigError) as info:
        configs.split_fields({}, tokens, None)
    assert info.value.field == field and info.value.source == "command line"


def test_unknown_field_is_named_with_a_suggestion():
    with pytest.raises(ConfigError) as info:
        configs.split_fields({"learning_rat": 1e-5}, {}, "my.yaml")
    assert info.value.field == "learning_rat"
    assert "did you mean 'learning_rate'" in str(info.value) and "my.yaml" in str(info.value)
    with pytest.raises(ConfigError) as info:
        configs.split_fields({}, ["--lora-rr", "8"], None)
    assert info.value.field == "lora_rr" and "command line" in str(info.value)
    assert "did you mean 'lora_r'" in str(info.value)
    # no prefix matching: an abbreviation is unknown, not silently another field
    with pytest.raises(ConfigError, match="field 'learning_rat'.*did you mean 'learning_rate'"):
        configs.split_fields({}, ["--learning-rat=1e-5"], None)
    with pytest.raises(ConfigError, match="field 'demo': unexpected argument"):
        configs.split_fields({}, ["demo"], None)


def test_bare_flag_needs_a_boolean_field():
    with pytest.raises(ConfigError, match="field 'learning_rate': expected one argument"):
        configs.split_fields({}, {"learning_rate": None}, None)


def test_precedence_defaults_recipe_command_line():
    _, grpo = configs.split_fields({"logging_steps": 5, "save_steps": 7}, ["--save-steps", "9"], None)
    assert grpo["report_to"] == ["tensorboard"]  # our default
    assert grpo["logging_steps"] == 5            # recipe over default
    assert grpo["save_steps"] == 9               # command line over recipe


def test_prompts_per_step_derives_accumulation():
    recipe = configs.RecipeConfig(prompts_per_step=8)
    grpo = {"num_generations": 16, "per_device_train_batch_size": 8}
    configs.derive_batch(recipe, grpo, num_processes=4)
    assert grpo["gradient_accumulation_steps"] == 4  # 8 x 4 x 4 = 128 = 8 prompts x 16
    with pytest.raises(ConfigError) as info:
        configs.derive_batch(recipe, {"num_generations": 16, "per_device_train_batch_size": 24}, num_processes=1)
    assert info.value.field == "prompts_per_step"
    with pytest.raises(ConfigError) as info:
        configs.derive_batch(recipe, {"num_generations": 16, "per_device_train_batch_size": 8,
                                      "gradient_accumulation_steps": 2}, num_processes=1)
    assert info.value.field == "gradient_accumulation_steps"


def test_batch_not_divisible_by_num_generations_names_the_field():
    with pytest.raises(ConfigError) as info:
        configs.derive_batch(configs.RecipeConfig(), {"num_generations": 3, "per_device_train_batch_size": 8}, 1)
    assert info.value.field == "num_generations" and "not divisible" in str(info.value)
    with pytest.raises(ConfigError) as info:
        configs.derive_batch(configs.RecipeConfig(), {"num_generations": 1}, 1)
    assert info.value.field == "num_generations"


def test_check_recipe_ranges():
    with pytest.raises(ConfigError, match="field 'dtype'"):
        configs.check_recipe(configs.RecipeConfig(dtype="int8"))
    with pytest.raises(ConfigError, match="field 'validation_steps'"):
        configs.check_recipe(configs.RecipeConfig(validation_steps=-1))
    with pytest.raises(ConfigError, match="field 'prompts_per_step'"):
        configs.check_recipe(configs.RecipeConfig(prompts_per_step=0))


def test_recipe_lookup_by_name_and_path(tmp_path):
    assert configs.resolve_recipe_path(None) == configs.RECIPES_DIR / "demo.yaml"
    assert configs.resolve_recipe_path("qwen2.5-7b-instruct").name == "qwen2.5-7b-instruct.yaml"
    with pytest.raises(ConfigError, match="no recipe named 'nope'.*demo"):
        configs.resolve_recipe_path("nope")
    with pytest.raises(ConfigError, match="recipe file not found"):
        configs.resolve_recipe_path(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        configs.load_recipe(str(bad))


def test_every_shipped_recipe_is_listed():
    assert set(configs.recipe_names()) == {"demo", "demo-tools", *QWEN_RECIPES, *ORIGINAL_RECIPES}


@pytest.mark.parametrize("name", ["demo", "demo-tools", *QWEN_RECIPES, *ORIGINAL_RECIPES])
def test_shipped_recipes_parse(name):
    mapping, path = configs.load_recipe(name)
    # the -original recipes read RDC.json from the working folder: point them at a fixture
    overrides = ["--rarearena-file", str(RDC_FIXTURE)] if name in ORIGINAL_RECIPES else []
    recipe, grpo = configs.split_fields(mapping, overrides, str(path))
    configs.check_recipe(recipe)
    configs.derive_batch(recipe, grpo, num_processes=1)


@pytest.mark.parametrize("name,gpus", [("qwen2.5-1.5b-instruct", 4), ("qwen2.5-3b-instruct", 4),
                                       ("qwen2.5-7b-instruct", 8)])
def test_qwen_recipes_reproduce_the_original_hyperparameters(name, gpus):
    mapping, path = configs.load_recipe(name)
    recipe, grpo = configs.split_fields(mapping, {}, str(path))
    configs.derive_batch(recipe, grpo, num_processes=gpus)
    completions = grpo["per_device_train_batch_size"] * gpus * grpo["gradient_accumulation_steps"]
    assert recipe.prompts_per_step == 8 and grpo["num_generations"] == 16 and completions == 128
    assert grpo.get("steps_per_generation") is None and grpo.get("num_iterations", 1) == 1  # one update a step
    assert grpo["learning_rate"] == 3e-7 and grpo["lr_scheduler_type"] == "constant"
    assert grpo.get("warmup_steps", 0) == 0 and grpo.get("warmup_ratio", 0) == 0
    assert grpo["weight_decay"] == 0.01 and grpo["max_grad_norm"] == 1.0
    assert grpo["optim"].startswith("adamw")
    assert grpo["beta"] == 0.001 and grpo["entropy_coef"] == 0.001 and grpo["epsilon"] == 0.2
    assert grpo["temperature"] == 1.0 and grpo.get("top_p", 1.0) == 1.0
    assert grpo["max_completion_length"] == 1024 and recipe.max_prompt_tokens == 1024
    assert recipe.validation_steps == 10 and recipe.validation_max_cases is None
    assert grpo["save_steps"] == 50 and grpo["num_train_epochs"] == 5
    assert grpo["use_vllm"] is True and grpo["vllm_mode"] == "colocate"
    assert grpo["bf16"] is True and grpo["gradient_checkpointing"] is True
    assert recipe.reward_preset == "clinical" and recipe.use_peft is False
    assert recipe.model.startswith("Qwen/Qwen2.5-") and recipe.model.endswith("-Instruct")


@pytest.mark.parametrize("name", QWEN_RECIPES)
def test_original_recipe_is_the_qwen_recipe_with_the_original_reward_and_effective_clip(name):
    """The original run (issue 10): reward preset `original`, clip 32 (verl 0.1's clip of 1.0 acted at a
    true gradient norm of about 32, REFERENCE.md section 1), the original data settings; nothing else
    differs from the Qwen recipe of the same size."""
    original, original_path = configs.load_recipe(f"{name}-original")
    base, _ = configs.load_recipe(name)
    changed = {key for key in original.keys() | base.keys() if original.get(key) != base.get(key)}
    assert changed == {"reward_preset", "max_grad_norm", "data", "rarearena_file"}
    recipe, grpo = configs.split_fields(original, [], str(original_path))
    assert recipe.reward_preset == "original" and grpo["max_grad_norm"] == 32.0
    assert recipe.max_prompt_tokens == 1024 and recipe.data is None and recipe.rarearena_file == "RDC.json"
    assert recipe.template is None  # the study's prompt (`prepare`'s default)
    text = original_path.read_text()
    assert "max_grad_norm: 32.0" in text and "about 32" in text and "REFERENCE.md section 1" in text
    assert "70%" in text and "--max-prompt-tokens 1024" in text
    # and the reward it resolves to is the original preset's
    from diagnosis_zero import reward

    assert reward.resolve_config(preset=recipe.reward_preset) == reward.resolve_config(preset="original")


def test_original_run_in_one_command_prepares_the_original_data(tmp_path, tiny_model_dir, monkeypatch):
    """plan_run resolves the original recipe with its reward preset and clip (model and RareArena file
    swapped for local ones, vLLM off on the CPU), loading no model; its data is then prepared from the
    RareArena file exactly as `prepare` does by default with the 1,024-token filter, once."""
    from diagnosis_zero import data, reward, train

    monkeypatch.setenv("DIAGNOSIS_ZERO_CACHE", str(tmp_path / "cache"))
    plan = train.plan_run("qwen2.5-1.5b-instruct-original", [
        "--model", str(tiny_model_dir), "--rarearena-file", str(RDC_FIXTURE), "--output-dir", str(tmp_path / "run"),
        "--use-vllm", "false", "--gradient-checkpointing", "false"], resume=False)
    assert plan.recipe.reward_preset == "original" and plan.args.max_grad_norm == 32.0
    assert plan.reward_config == reward.resolve_config(preset="original")
    prepared = train.prepared_data_dir(plan.recipe)
    assert prepared.parent == tmp_path / "cache" / "data"
    data.prepare_rarearena(RDC_FIXTURE, tmp_path / "by-hand", max_prompt_tokens=1024, tokenizer=str(tiny_model_dir))
    for split in data.SPLITS:
        assert data.load_cases(prepared / f"{split}.parquet") == data.load_cases(tmp_path / "by-hand" / f"{split}.parquet")
    stamp = (prepared / "train.parquet").stat().st_mtime_ns
    assert train.prepared_data_dir(plan.recipe) == prepared and (prepared / "train.parquet").stat().st_mtime_ns == stamp
    # a prepared folder given with --data wins; a missing RareArena file is named before anything loads
    plan = train.plan_run("qwen2.5-1.5b-instruct-original", [
        "--model", str(tiny_model_dir), "--data", str(tmp_path / "by-hand"), "--output-dir", str(tmp_path / "run2"),
        "--use-vllm", "false"], resume=False)
    assert train.prepared_data_dir(plan.recipe) == tmp_path / "by-hand"
    with pytest.raises(ConfigError, match="field 'rarearena_file': file not found: RDC.json"):
        train.plan_run("qwen2.5-1.5b-instruct-original", ["--model", str(tiny_model_dir), "--output-dir",
                                                          str(tmp_path / "run3"), "--use-vllm", "false"])


@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_are_valid_yaml(path):
    config = yaml.safe_load(path.read_text())
    assert config["distributed_type"] in ("MULTI_GPU", "DEEPSPEED")
    assert config["num_processes"] >= 2
    if config["distributed_type"] == "DEEPSPEED":
        assert config["deepspeed_config"]["zero_stage"] in (2, 3)
    if config.get("num_machines", 1) > 1:
        assert {"machine_rank", "main_process_ip", "main_process_port"} <= set(config)


def test_accelerate_configs_cover_ddp_zero2_zero3_multinode():
    names = {p.stem for p in (REPO / "recipes" / "accelerate").glob("*.yaml")}
    assert {"ddp", "zero2", "zero3", "multi_node"} <= names


def test_tool_fields_parse_from_the_recipe_and_the_command_line():
    mapping, path = configs.load_recipe("demo-tools")
    recipe, _ = configs.split_fields(mapping, [], str(path))
    assert (recipe.tools, recipe.max_tool_calls, recipe.free_tool_calls) == (
        ["search_by_phenotypes", "disease_info"], 2, 2)
    assert (recipe.tool_call_cost, recipe.tool_format_penalty) == (0.02, 0.05)
    assert (recipe.demo_max_phenotypes, recipe.demo_distractors, recipe.orphanet) == (8, 3, [])
    overrides = ["--tools", "disease_info", "--max-tool-calls", "3", "--free-tool-calls", "0",
                 "--tool-call-cost", "0.1", "--tool-format-penalty", "0.2", "--orphanet", str(RDC_FIXTURE),
                 "--demo-max-phenotypes", "5", "--demo-distractors", "1"]
    recipe, _ = configs.split_fields(mapping, overrides, str(path))
    assert (recipe.tools, recipe.max_tool_calls, recipe.free_tool_calls) == (["disease_info"], 3, 0)
    assert (recipe.tool_call_cost, recipe.tool_format_penalty) == (0.1, 0.2)
    assert (recipe.orphanet, recipe.demo_max_phenotypes, recipe.demo_distractors) == ([str(RDC_FIXTURE)], 5, 1)


def test_help_lists_recipe_fields():
    text = configs.describe_fields()
    for name in ("model", "data", "assistant_prefix", "reward_preset", "lora_r", "prompts_per_step",
                 "validation_steps"):
        assert f"  {name} (default" in text
