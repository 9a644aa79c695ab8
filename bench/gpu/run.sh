#!/usr/bin/env bash
# The GPU checks of issue #3 §5 in one device call (build .gpu-kit/ first: bench/gpu/make_kit.sh).
#
#   run(command="bash bench/gpu/run.sh", carry=[".gpu-kit"], timeout_s=600)
#
# 1. the device, torch and the packages (device.txt);
# 2. the CUDA tests: attention, probabilities and masks against the CPU (tests.log);
# 3. bench/inference.py at feature size 48 on the GPU: asa segment against MONAI's BTCV recipe on the real
#    sample and the 512 x 512 x 300 CT, --fast and --organs (inference_gpu.json, inference.log).
# Everything lands in $OUT, which the device tool brings back. Rehearse it here on the CPU with
#   PYVER=3.11 MAX_GLIBC=36 KIT=.gpu-kit-311 bench/gpu/make_kit.sh
#   KIT=.gpu-kit-311 PY=<a Python with torch and none of the project's packages> DEVICE=cpu QUICK=1 \
#       OUT=/tmp/gpu-out bash bench/gpu/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
KIT=${KIT:-.gpu-kit}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
SITE=$(mktemp -d /tmp/asa-site.XXXX)

"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$KIT"/whl/*.whl || exit 1
export PYTHONPATH="$PWD:$SITE" PYTHONUNBUFFERED=1 ASA_CACHE_DIR="$PWD/$KIT/cache"
mkdir -p "$SITE/bin"  # `asa` as bench/inference.py calls it, without installing the project
printf '#!/bin/sh\nexec %s -m models.cli "$@"\n' "$(command -v "$PY")" > "$SITE/bin/asa"
chmod +x "$SITE/bin/asa"
export PATH="$SITE/bin:$PATH"

{
    date -u
    nvidia-smi 2>&1 | head -15
    "$PY" -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
          torch.cuda.get_device_name() if torch.cuda.is_available() else '-'); print('monai', monai.__version__)"
    nproc
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

"$PY" -m pytest -q -p no:cacheprovider -o addopts="" --timeout 300 tests/test_cuda.py tests/test_window_attention.py \
    > "$OUT/tests.log" 2>&1
tests_rc=$?
echo "tests: rc $tests_rc"
tail -5 "$OUT/tests.log"

if [ "${QUICK:-0}" = 1 ]; then  # a rehearsal of the plumbing: a cpu-demo-sized model, the real sample, once
    "$PY" -c "
import torch
from pathlib import Path
from models.modeldir import ModelSpec, Preprocessing, SegNetwork, btcv_labels, build_segmentation_network, save_model
spec = ModelSpec(labels=btcv_labels(), network=SegNetwork(feature_size=12),
                 preprocessing=Preprocessing(spacing=(3.0, 3.0, 4.0), roi=(64, 64, 64)))
torch.manual_seed(0)
save_model(Path('/tmp/asa-bench-gpu/model-quick'), build_segmentation_network(spec), spec)"
    bench=(--cases real --repeats 1 --model /tmp/asa-bench-gpu/model-quick --no-bf16)
else
    bench=(--repeats 3 --feature-size 48 --no-bf16)
fi
"$PY" bench/inference.py --device "$DEVICE" "${bench[@]}" --workdir /tmp/asa-bench-gpu \
    --out "$OUT/inference_gpu.json" > "$OUT/inference.log" 2>&1
bench_rc=$?
echo "bench: rc $bench_rc"
tail -20 "$OUT/inference.log"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
