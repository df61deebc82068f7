#!/usr/bin/env bash
# bf16 train-step MFU on one GPU, one process per row (benchmarks/train_throughput.py, cuDNN
# attention): DeiT-S at gpu_check's batch 1024 and at 2048, ViT-B at gpu_check's 256 and at 512,
# then a profile of DeiT-S's 1024 step with every kernel's row and the compiled HLO (its fusions
# are the kernels) written to $OUT/profile_deit_s. About 5 minutes. Measured before (gpu_h200.md):
# batch 512-2048, XLA's dot merger, cuBLASLt epilogues, cuDNN LayerNorm and Triton GEMM flags (each
# within 2.5 %; batch 2048 is 4 % faster), the patch embedding as a matmul (slower).
# Writes gpu_sweep.md to $OUT (default benchmarks/results). Setup as gpu_check.sh.
source "$(dirname "$0")/gpu_setup.sh"
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu_sweep.md"
common="--depth 12 --image 224 --patch 16 --dtype bfloat16 --attention-impl cudnn"
deit_s="--width 384 --heads 6 $common"
vit_b="--width 768 --heads 12 $common"
run() {  # model, batch
  echo "## $1 --batch $2" | tee -a "$OUT/gpu_sweep.md"
  timeout 100 $PY -m benchmarks.train_throughput $1 --batch "$2" --repeats 3 2>&1 \
    | grep -v "^W\|^I" | tail -5 | tee -a "$OUT/gpu_sweep.md"
}
run "$deit_s" 1024
run "$deit_s" 2048
run "$vit_b" 256
run "$vit_b" 512
echo "## profile, DeiT-S batch 1024" | tee -a "$OUT/gpu_sweep.md"
timeout 120 $PY -m benchmarks.profile_step $deit_s --batch 1024 --top 30 --out "$OUT/profile_deit_s" 2>&1 \
  | grep -v "^W\|^I" | tail -42 | tee -a "$OUT/gpu_sweep.md"
