import subprocess
import sys

from diagnosis_zero import cli


def test_help_lists_every_verb(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in ["prepare", "train", "evaluate", "evaluate-mcq", "diagnose", "judge", "metrics", "report", "browse"]:
        assert f"  {verb} " in out


def test_unknown_verb_exits_2(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown verb" in capsys.readouterr().err


def test_console_script_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "diagnosis_zero", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith("diagnosis-zero ")


def test_train_help_lists_recipe_fields_value_syntax_and_shipped_recipes(capsys):
    import pytest

    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for text in ("--recipe", "--resume", "--output-dir", "--reward-preset", "  reward_levels (default",
                 "TrlParser", "--no-x", "qwen2.5-7b-instruct-original"):
        assert text in out


def test_train_arguments_are_checked_by_trls_parser_before_anything_loads(capsys):
    # every flag after the verb reaches the recipe parser; errors name the field, exit 2
    assert cli.main(["train", "--use-peft", "false", "--learning-rat", "1e-5"]) == 2
    assert "field 'learning_rat': unknown recipe field (did you mean 'learning_rate'?)" in capsys.readouterr().err
    assert cli.main(["train", "--max-steps", "ten"]) == 2
    assert "field 'max_steps': invalid int value: 'ten'" in capsys.readouterr().err
    assert cli.main(["train", "--recipe", "demo", "--use-peft", "maybe"]) == 2
    assert "field 'use_peft'" in capsys.readouterr().err
    assert cli.main(["train", "--recipe", "nope"]) == 2
    assert "no recipe named 'nope'" in capsys.readouterr().err
