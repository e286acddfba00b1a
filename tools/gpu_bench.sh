#!/usr/bin/env bash
# The lesson-sized training speed on a CUDA machine:   bash tools/gpu_bench.sh [STEPS]   (default 3000)
# It runs the project's environment (.venv, or $PYTHON) and refuses, with a non-zero exit, where torch sees
# no CUDA device. It trains the `lesson` preset's network (14.6M parameters, 32x32, batch 16, 768-d text
# embeddings, fp32) through the whole training loop, eager and compiled (CUDA graphs), and prints steps/s and
# the projected time of the lesson's 20 000 steps; then the same step against diffusers' UNet2DModel of equal
# size. Images come decoded from data/image_cache and embeddings from data/text_cache: on a machine without
# internet, run `make gpu-prep` where the repository was set up and copy data/ along (README: On a CUDA machine).
# Results: JSON on stdout, and $OUT (default benchmarks/) results.json and results.md.
set -eo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if ! command -v "$PY" >/dev/null; then
  echo "error: no project environment at $PY. Create it with \`make .venv/.installed\` (on a CUDA machine, install" \
       "a CUDA build of torch first: README, 'On a CUDA machine'), or point PYTHON at one." >&2
  exit 2
fi
if ! version=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
  echo "error: $PY cannot import torch: install the project's requirements (README, 'On a CUDA machine')." >&2
  exit 2
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "error: tools/gpu_bench.sh measures the CUDA path, and this environment's torch ($version) sees no CUDA" \
       "device. Run it on a machine with an NVIDIA GPU and a CUDA build of torch (README, 'On a CUDA machine');" \
       "on a CPU use \`make bench-quick\`." >&2
  exit 3
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
"$PY" -m lib_cfg.bench --only train lesson_run --lesson_steps "${1:-3000}" --out "${OUT:-benchmarks}"
