#!/usr/bin/env bash
# DeiT-S bf16 train-step MFU on one GPU under candidate settings, one process per row
# (benchmarks/train_throughput.py, cuDNN attention): batch size past gpu_check's 1024, and
# cuDNN LayerNorm at 1024. About 6 minutes. (At batch 512 the XLA flags for cuBLASLt
# epilogues, cuDNN LayerNorm and Triton GEMMs moved throughput by at most 1 %: gpu_h200.md.)
# Writes gpu_sweep.md to $OUT (default benchmarks/results). Setup as gpu_check.sh.
source "$(dirname "$0")/gpu_setup.sh"
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu_sweep.md"
run() {  # batch, XLA_FLAGS
  echo "## batch $1, XLA_FLAGS='$2'" | tee -a "$OUT/gpu_sweep.md"
  XLA_FLAGS="$2" timeout 100 $PY -m benchmarks.train_throughput --width 384 --heads 6 --depth 12 --image 224 \
    --patch 16 --batch "$1" --dtype bfloat16 --attention-impl cudnn --repeats 3 2>&1 | grep -v "^W\|^I" | tail -4 \
    | tee -a "$OUT/gpu_sweep.md"
}
run 1024 ""
run 1536 ""
run 2048 ""
run 1024 "--xla_gpu_enable_cudnn_layer_norm=true"
