#!/usr/bin/env bash
# Accelerator check, about 5 minutes on one GPU:
#   1. JAX with CUDA: the installed one if it sees a GPU, else the CUDA build from the registry;
#   2. the model and expansion tests (ViT, blocks, TLEG, SWS) on the GPU;
#   3. train-step throughput and MFU in bf16 of DeiT-S (width 384) and ViT-B (width 768), depth 12,
#      224x224, patch 16, cuDNN attention, plain ViT and TLEG aux, against a bf16 matmul peak
#      measured in the same run.
# Writes gpu_tests.log and gpu_throughput.md to $OUT (default benchmarks/results).
# On a machine without a registry, carry lgjax's light dependencies as wheels in .whl/.
source "$(dirname "$0")/gpu_setup.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu_device.txt"
$PY -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$OUT/gpu_device.txt"

# Full f32 matmuls on the GPU: the tests compare against numpy at 1e-4..1e-6. The model and
# expansion math only (52 tests, 129 s on an H200: the GPU compiles each test afresh); checkpoints and
# converters are host-side and run in CI.
JAX_PLATFORMS=cuda XLA_FLAGS= JAX_DEFAULT_MATMUL_PRECISION=highest PYTHONUNBUFFERED=1 \
  timeout 200 $PY -m pytest -q -p no:cacheprovider -x tests/test_vit.py tests/test_blocks.py \
  tests/test_tleg.py tests/test_sws.py 2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}

# DeiT-S and ViT-B, cuDNN's fused attention (benchmarks/results/gpu_h200.md has XLA's for comparison).
rc=0
for model in "--width 384 --heads 6" "--width 768 --heads 12"; do
  timeout 120 $PY -m benchmarks.train_throughput $model --depth 12 --image 224 --patch 16 --batch 256 \
    --dtype bfloat16 --attention-impl cudnn --repeats 5 2>&1 | tee -a "$OUT/gpu_throughput.md"
  rc=$(( rc || PIPESTATUS[0] ))
done
exit $(( tests_rc || rc ))
