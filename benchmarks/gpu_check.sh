#!/usr/bin/env bash
# Accelerator check, about 5 minutes on one GPU:
#   1. JAX with CUDA: the installed one if it sees a GPU, else the CUDA build from the registry;
#   2. the model and expansion tests (ViT, blocks, TLEG, SWS) on the GPU;
#   3. train-step throughput and MFU in bf16 of DeiT-S (width 384, batch 1024) and ViT-B (width 768,
#      batch 256), depth 12, 224x224, patch 16, cuDNN attention, plain ViT and TLEG aux, against a
#      bf16 matmul peak measured in the same run;
#   4. replicated vs sharded (FSDP) state, per-device memory and step time, on 8 CPU devices of the
#      host (one GPU has nothing to shard over), run beside step 2;
#   5. train.py end to end on the GPU (the embedded shapes task, bf16): its logged MFU and a trace;
#   6. input images/s of the host's cores on the ImageNet-style pipeline (generated JPEGs, and the same
#      images as decoded pixel records, lgjax.data.pixels).
# Writes gpu_tests.log, gpu_throughput.md, gpu_train.log, gpu_sharding.md and gpu_input.md to $OUT
# (default benchmarks/results).
# On a machine without a registry, carry lgjax's light dependencies as wheels in .whl/: make them
# with `bash benchmarks/gpu_wheels.sh` where the registry is, and carry .whl with the tree.
source "$(dirname "$0")/gpu_setup.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu_device.txt"
$PY -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$OUT/gpu_device.txt"

# ViT-L layers (width 1024, 16 heads, depth 8 of 24: 101M params) on the host's CPU, beside the tests.
JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=8 timeout 200 $PY -m benchmarks.sharding --width 1024 --heads 16 --depth 8 \
  --budget-gb 1.5 --fsdp 1,2,-1 > "$OUT/gpu_sharding.md" 2>&1 &
sharding_pid=$!

# Full f32 matmuls on the GPU: the tests compare against numpy at 1e-4..1e-6 (the Pallas matmuls
# follow jax_default_matmul_precision too). The model and expansion math only, with residual_norm's,
# gelu_mlp's and qkv_projection's Pallas kernels compiled by Triton (about 90 tests; not the two that need 8 devices;
# 55 took 189 s in one process on an H200, nearly all of it compiling on the host); checkpoints and
# converters are host-side and run in CI. With pytest-xdist (a wheel in .whl/
# where the machine has no registry), 4 processes share the GPU, each allocating only what it uses.
workers=$($PY -c "import pytest, xdist; assert int(pytest.__version__.split('.')[0]) >= 7" 2>/dev/null && echo "-n 4")
JAX_PLATFORMS=cuda XLA_FLAGS= JAX_DEFAULT_MATMUL_PRECISION=highest PYTHONUNBUFFERED=1 \
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 240 $PY -m pytest -q -p no:cacheprovider -x $workers \
  --durations=5 tests/test_vit.py tests/test_residual_norm.py tests/test_gelu_mlp.py tests/test_qkv_projection.py \
  tests/test_blocks.py \
  tests/test_tleg.py tests/test_sws.py -k "not a_batch_split_over_devices" 2>&1 \
  | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}

# DeiT-S and ViT-B, cuDNN's fused attention (benchmarks/results/gpu_h200.md has XLA's for comparison).
rc=0
for model in "--width 384 --heads 6 --batch 1024" "--width 768 --heads 12 --batch 256"; do
  timeout 120 $PY -m benchmarks.train_throughput $model --depth 12 --image 224 --patch 16 \
    --dtype bfloat16 --attention-impl cudnn --repeats 5 2>&1 | tee -a "$OUT/gpu_throughput.md"
  rc=$(( rc || PIPESTATUS[0] ))
done
# The product end to end on the GPU: train.py on the embedded shapes task in bf16, logging its
# images/s, TFLOP/s per device and MFU, and tracing 2 steps for TensorBoard (profile_steps).
run=/tmp/lgjax_gpu_run
if $PY -c "import tensorboardX, matplotlib" 2>/dev/null; then
  rm -rf $run
  timeout 120 $PY train.py --config=configs/teacher.py:mnist5k --config.dataset.name=shapes \
    --config.dataset.classes=all --config.compute_dtype=bfloat16 --config.total_steps=30 \
    --config.log_every=10 --config.profile_steps=2 --workdir=$run 2>&1 | grep -v "^W\|^I" | tail -3 \
    | tee "$OUT/gpu_train.log"
  rc=$(( rc || PIPESTATUS[0] ))
  { grep '"mfu"' $run/metrics.jsonl | tail -1; ls $run/tensorboard/plugins/profile/*/; } 2>&1 | tee -a "$OUT/gpu_train.log"
else
  echo "train.py on the GPU: not run, this machine lacks tensorboardX or matplotlib" | tee "$OUT/gpu_train.log"
fi
wait $sharding_pid; rc=$(( rc || $? ))
cat "$OUT/gpu_sharding.md"
JAX_PLATFORMS=cpu timeout 150 $PY -m benchmarks.input_pipeline --examples 1536 --batch 128 --batches 20 \
  --workers 0,14 --threads 0 2>&1 | tee "$OUT/gpu_input.md"
rc=$(( rc || PIPESTATUS[0] ))
exit $(( tests_rc || rc ))
