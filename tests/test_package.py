"""The wheel: built from this tree, installed into a fresh virtual environment (no site packages, no
PYTHONPATH), it finds `--recipe demo` and every Qwen recipe by name, as a `pip install` user would."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from diagnosis_zero import configs

REPO = Path(__file__).resolve().parent.parent
PACKAGED = REPO / "src" / "diagnosis_zero" / "recipes"


def test_recipes_have_one_copy_and_the_checkout_folder_points_at_it():
    packaged = sorted(p.name for p in PACKAGED.glob("*.yaml"))
    assert "demo.yaml" in packaged and len(packaged) >= 7
    linked = sorted(p.name for p in (REPO / "recipes").glob("*.yaml"))
    assert linked == packaged
    for name in linked:
        # a symbolic link, not a second copy that could drift
        assert (REPO / "recipes" / name).is_symlink()
        assert (REPO / "recipes" / name).resolve() == (PACKAGED / name).resolve()
    assert configs.RECIPES_DIR.resolve() == PACKAGED.resolve()


def test_wheel_installed_in_a_fresh_venv_resolves_the_shipped_recipes(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_NO_INPUT"] = "1"

    def run(*command, cwd=tmp_path):
        proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
        "-w", str(tmp_path / "dist"), str(tree))
    wheel = next((tmp_path / "dist").glob("diagnosis_zero-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        shipped = {Path(n).name for n in archive.namelist() if n.startswith("diagnosis_zero/recipes/")}
    assert shipped == {p.name for p in PACKAGED.glob("*.yaml")}

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))  # plain: no system site packages
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel))
    names = ["demo", *sorted(p.stem for p in PACKAGED.glob("qwen2.5-*.yaml"))]
    script = (
        "import json, sys\n"
        "import diagnosis_zero\n"
        "from diagnosis_zero import configs\n"
        f"paths = {{name: str(configs.resolve_recipe_path(name)) for name in {names!r}}}\n"
        "paths[None] = str(configs.resolve_recipe_path(None))\n"
        "print(json.dumps({'package': diagnosis_zero.__file__, 'names': configs.recipe_names(),\n"
        "                  'paths': {str(k): v for k, v in paths.items()}, 'no_yaml': 'yaml' not in sys.modules}))\n")
    found = json.loads(run(str(python), "-I", "-c", script))  # -I: isolated, ignores the user site too
    site = venv.resolve()
    assert Path(found["package"]).resolve().is_relative_to(site)  # the installed copy, not src/
    assert found["no_yaml"]  # resolving a recipe needs only the standard library
    assert set(names) <= set(found["names"])
    assert Path(found["paths"]["None"]).name == "demo.yaml"
    for name in names:
        path = Path(found["paths"][name])
        assert path.resolve().is_relative_to(site) and path.name == f"{name}.yaml"
        assert yaml.safe_load(path.read_text()) == yaml.safe_load((PACKAGED / f"{name}.yaml").read_text())
