#!/usr/bin/env bash
# Create .venv-verl: verl 0.9.1 in its own environment (it pins transformers<5.11), with our base
# package installed into it the way a verl user would, by plain `pip install`.
#
#   scripts/setup_verl_env.sh            # creates or updates .venv-verl, prints the time it took
#   VERL_VENV=/path PYTHON=python3.11 scripts/setup_verl_env.sh
#
# Order matters: torch first, so pip takes this machine's CPU wheel (the local file that
# `pip install torch==2.13.0` finds) instead of letting verl's unpinned `torch` pull a
# multi-GB CUDA build. Idempotent: stamps record what was installed, so a rerun with nothing
# changed only checks; a change under src/ or pyproject.toml reinstalls only our package.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VERL_VENV:-$ROOT/.venv-verl}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
VERL_VERSION=0.9.1
CONSTRAINTS=$ROOT/scripts/constraints-verl.txt
PY=$VENV/bin/python
PIP=("$PY" -m pip --disable-pip-version-check -q)
START=$SECONDS

log() { echo "[setup_verl_env] $*" >&2; }

# A content hash of the given files; a stamp holds the hash of what was installed.
content_hash() { cat "$@" | sha256sum | cut -d' ' -f1; }

versions() {
  "$PY" - <<'EOF'
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in ("torch", "transformers", "numpy")))
EOF
}

if [[ ! -x $PY ]]; then
  log "creating $VENV with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi

verl_stamp=$VENV/.stamp-verl
verl_hash=$(content_hash "$ROOT/scripts/setup_verl_env.sh" "$CONSTRAINTS")
if [[ -f $verl_stamp && $(cat "$verl_stamp") == "$verl_hash" ]]; then
  log "verl $VERL_VERSION already installed"
else
  log "installing torch==$TORCH_VERSION (local CPU wheel), then verl[verl-core]==$VERL_VERSION"
  "${PIP[@]}" install -c "$CONSTRAINTS" "torch==$TORCH_VERSION"
  # verl-core is the part of verl's [vllm]/[fsdp] extras that is not GPU-specific: main_ppo's
  # default (v1) trainer imports transfer_queue, cachetools, fastapi... and fails without them.
  "${PIP[@]}" install -c "$CONSTRAINTS" "verl[verl-core]==$VERL_VERSION"
  echo "$verl_hash" > "$verl_stamp"
  rm -f "$VENV/.stamp-project"
fi

project_stamp=$VENV/.stamp-project
project_hash=$(cd "$ROOT" && content_hash pyproject.toml $(find src -type f ! -path '*/__pycache__/*' ! -path '*.egg-info/*' | LC_ALL=C sort))
if [[ -f $project_stamp && $(cat "$project_stamp") == "$project_hash" ]]; then
  log "diagnosis-zero already installed and up to date"
else
  before=$(versions)
  log "before installing our base: $before"
  # Plain `pip install`, no constraints, exactly what the docs tell verl users to run.
  "${PIP[@]}" install "$ROOT"
  # pip skips a same-version reinstall from a directory; force our own files (not deps) fresh.
  "${PIP[@]}" install --no-deps --force-reinstall "$ROOT"
  after=$(versions)
  log "after installing our base:  $after"
  if [[ $before != "$after" ]]; then
    log "ERROR: installing diagnosis-zero changed verl's environment: '$before' -> '$after'"
    exit 1
  fi
  echo "$project_hash" > "$project_stamp"
fi

"$PY" -c "import verl, diagnosis_zero; print('verl', verl.__version__, '+ diagnosis_zero', diagnosis_zero.__version__)" 2>/dev/null
log "done in $((SECONDS - START)) s: $VENV"
