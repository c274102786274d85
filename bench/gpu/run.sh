#!/usr/bin/env bash
# Every GPU figure of lorapipe in one run that ends within 8 minutes: bench/gpu/run.sh [--dry-run] OUT [--skip STEP..]
#
# On a bare CUDA machine with python3 + torch (+ transformers, peft, accelerate, safetensors): installs lorapipe from
# this working tree and the wheels `make gpu-wheels` put in bench/gpu/wheels/ into a private folder (no index, no
# dependency resolution, so the machine's own torch/transformers/peft stay), then runs bench/gpu/check.py.
# Writes OUT/gpu-check.json (figures and ratios), OUT/gpu-check.log, OUT/gpu-check-steps.log and
# OUT/memory_savings.json. --dry-run: every step on the CPU with the tiny preset, from the source tree (proves the
# script, measures nothing).
set -uo pipefail
dry=""
if [ "${1:-}" = "--dry-run" ]; then dry="--dry-run"; shift; fi
out="${1:?usage: bench/gpu/run.sh [--dry-run] OUT [--skip STEP...]}"
shift
root="$(cd "$(dirname "$0")/../.." && pwd)"
py="${PYTHON:-python3}"
mkdir -p "$out"
log="$out/gpu-check.log"
: >"$log"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DIFFUSERS_VERBOSITY=error TRANSFORMERS_VERBOSITY=error

if [ -z "$dry" ]; then
  site="$(mktemp -d /tmp/lorapipe-site.XXXXXX)"
  trap 'rm -rf "$site"' EXIT
  shopt -s nullglob
  wheels=("$root"/bench/gpu/wheels/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "bench/gpu/wheels/ is empty: run 'make gpu-wheels' on a machine with a package index first" | tee -a "$log"
    exit 2
  fi
  echo "== install: ${#wheels[@]} wheels + lorapipe into $site" | tee -a "$log"
  timeout 120 "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" "${wheels[@]}" >>"$log" 2>&1 \
    || { echo "wheel install failed (see $log)"; exit 2; }
  # The project itself: built from the tree without isolation (needs setuptools there); else straight from src/.
  if timeout 120 "$py" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$site" \
      "$root" >>"$log" 2>&1; then
    export PYTHONPATH="$site"
  else
    echo "note: pip could not build lorapipe here; using $root/src directly" | tee -a "$log"
    export PYTHONPATH="$site:$root/src"
  fi
  "$py" - <<'PY' 2>&1 | tee -a "$log"
import importlib.metadata as md
import lorapipe
print("lorapipe from", lorapipe.__file__)
print(", ".join(f"{n} {md.version(n)}" for n in ("torch", "transformers", "peft", "accelerate", "safetensors",
                                                  "huggingface-hub", "diffusers", "bitsandbytes")))
PY
else
  export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
fi
# 460 s for the steps (check.py boxes each one and stops starting new ones in time); the install above is ~30 s.
timeout 470 "$py" "$root/bench/gpu/check.py" $dry --out "$out" "$@" 2>&1 | tee -a "$log"
exit "${PIPESTATUS[0]}"
