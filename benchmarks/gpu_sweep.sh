#!/usr/bin/env bash
# bf16 train-step MFU on one GPU, one process per row (benchmarks/train_throughput.py, cuDNN
# attention): DeiT-S at gpu_check's batch 1024, plain; with ViT.norm_impl='pallas' (each residual
# add and the LayerNorm after it as one kernel: kernel_bytes predicts 16 % fewer elementwise bytes);
# with mlp_impl='pallas' too (the MLP's bias and GELU in its matmuls' epilogues: 43 % fewer again);
# with qkv_impl='pallas' too (the query's bias and the sum of the input's gradients in the
# projections' matmuls: 26 % fewer again), alone, at batch 2048 and with the DeiT recipes' drop
# path 0.1; ViT-B at 512 without and with the three; the kernels alone against XLA's ops
# (benchmarks/kernel_bench.py); then a profile of DeiT-S's 1024 step with the three, every
# kernel's row and the compiled HLO (its fusions are the kernels) written to $OUT/profile_deit_s.
# About 8 minutes (9 with BASELINE): run it alone in one device call (at most 10 minutes).
# With BASELINE=DIR (a checkout of an earlier commit, e.g. `git worktree add .baseline COMMIT`,
# carried to the GPU machine), DeiT-S 1024 also runs on that code, before and after this tree's
# row, to measure a change side by side. Measured before (gpu_h200.md): batch 512-2048, XLA's
# dot merger, cuBLASLt epilogues, cuDNN LayerNorm and Triton GEMM flags on the code of
# 2026-11-27 (each within 2.5 %), the patch embedding as a matmul (slower). (cuBLASLt with the
# kernels: XLA_FLAGS="--xla_gpu_enable_triton_gemm=false --xla_gpu_enable_cublaslt=true".)
# Writes gpu_sweep.md to $OUT (default benchmarks/results). Setup as gpu_check.sh.
source "$(dirname "$0")/gpu_setup.sh"
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu_sweep.md"
common="--depth 12 --image 224 --patch 16 --dtype bfloat16 --attention-impl cudnn"
deit_s="--width 384 --heads 6 $common"
vit_b="--width 768 --heads 12 $common"
run() {  # model, batch[, XLA_FLAGS[, directory of the code]]
  echo "## $1 --batch $2 ${3:+XLA_FLAGS=$3} ${4:+(code: $4)}" | tee -a "$OUT/gpu_sweep.md"
  (cd "${4:-.}" && XLA_FLAGS="${3:-}" timeout 100 $PY -m benchmarks.train_throughput $1 --batch "$2" --repeats 3 2>&1) \
    | grep -v "^W\|^I" | tail -5 | tee -a "$OUT/gpu_sweep.md"
}
[ -n "${BASELINE:-}" ] && run "$deit_s" 1024 "" "$BASELINE"
run "$deit_s" 1024
[ -n "${BASELINE:-}" ] && run "$deit_s" 1024 "" "$BASELINE"
kernels="--norm-impl pallas --mlp-impl pallas --qkv-impl pallas"
run "$deit_s --norm-impl pallas" 1024
run "$deit_s --norm-impl pallas --mlp-impl pallas" 1024
run "$deit_s $kernels" 1024
run "$deit_s $kernels" 2048
run "$deit_s $kernels --drop-path 0.1" 1024  # the DeiT recipe's drop path: batched, draws per example
run "$vit_b" 512
run "$vit_b $kernels" 512
# The GEMM kernels' tiles: the default and others ptxas fits without spills. Registers a thread
# (gelu_mlp fwd / bwd, qkv_projection fwd / bwd): 116/104/98/120, 116/104/98/128, 152/242/104/255,
# 134/134/96/166. With 8 warps two programs fit an SM at 128 registers or fewer; with 4, at any count.
echo "## the Pallas kernels alone (DeiT-S's activations), the GEMM kernels in 4 tilings" | tee -a "$OUT/gpu_sweep.md"
timeout 180 $PY -m benchmarks.kernel_bench --tiles 128x128x64x8x3,128x128x64x8x4,64x256x64x8x4,128x64x64x4x4 2>&1 \
  | grep -v "^W\|^I" | tail -28 | tee -a "$OUT/gpu_sweep.md"
echo "## profile, DeiT-S batch 1024, norm_impl, mlp_impl and qkv_impl 'pallas'" | tee -a "$OUT/gpu_sweep.md"
timeout 120 $PY -m benchmarks.profile_step $deit_s $kernels --batch 1024 --top 30 --out "$OUT/profile_deit_s" 2>&1 \
  | grep -v "^W\|^I" | tail -42 | tee -a "$OUT/gpu_sweep.md"
