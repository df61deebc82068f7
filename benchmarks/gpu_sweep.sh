#!/usr/bin/env bash
# DeiT-S bf16 train-step MFU on one GPU under candidate settings, one process per row
# (benchmarks/train_throughput.py, cuDNN attention): batch size past gpu_check's 1024, XLA's
# dot merger at 1024, and a profile of the 1024 step. About 7 minutes. (At batch 512 the XLA
# flags for cuBLASLt epilogues, cuDNN LayerNorm and Triton GEMMs moved throughput by at most
# 1 %: gpu_h200.md. The dot merger joins GEMMs that share an input, here q/k/v, only when one's
# input + output is under --xla_gpu_dot_merger_threshold_mb; at batch 1024 each is 308 MB.)
# Writes gpu_sweep.md to $OUT (default benchmarks/results). Setup as gpu_check.sh.
source "$(dirname "$0")/gpu_setup.sh"
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu_sweep.md"
deit_s="--width 384 --heads 6 --depth 12 --image 224 --patch 16 --dtype bfloat16 --attention-impl cudnn"
run() {  # batch, XLA_FLAGS
  echo "## batch $1, XLA_FLAGS='$2'" | tee -a "$OUT/gpu_sweep.md"
  XLA_FLAGS="$2" timeout 100 $PY -m benchmarks.train_throughput $deit_s --batch "$1" --repeats 3 2>&1 \
    | grep -v "^W\|^I" | tail -5 | tee -a "$OUT/gpu_sweep.md"
}
run 1024 ""
run 1536 ""
run 2048 ""
run 1024 "--xla_gpu_dot_merger_threshold_mb=1024"
echo "## profile, batch 1024" | tee -a "$OUT/gpu_sweep.md"
timeout 100 $PY -m benchmarks.profile_step $deit_s --batch 1024 --top 20 2>&1 | grep -v "^W\|^I" | tail -32 \
  | tee -a "$OUT/gpu_sweep.md"
