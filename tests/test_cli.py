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
