"""The benchmarks: the studies run end to end on a micro plan (slow tier), their wiring, not their
numbers; the profiler's trace and HLO reading against hand-made inputs."""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from lgjax.learngene import load_learngene


@pytest.mark.slow  # a dozen tiny training runs
def test_width_study_runs_end_to_end(tmp_path):
  from benchmarks import claims, claims_width as cw
  plan = cw.Plan(upstream_steps=2, finetune_steps=25, scaler_steps=2, widths=(32,), depths=(2,), seeds=(0,))
  work = str(tmp_path)
  for stage in ('teacher', 'rest', 'scalers'):
    claims.run_all(cw.upstream_jobs(work, plan, 0, stage), 1, None)
  curves = claims.run_all({t: cw.tune_job(work, plan, *t) for t in cw.tunes(plan)}, 1, None)
  assert sorted(t[0] for t in curves) == sorted(a for a in cw.ARMS if a != 'tleg')  # TLEG: width 64 only
  assert all(0.0 <= c[25] <= 1.0 for c in curves.values())
  stored, fl = cw.costs(work, plan)
  lines = cw.report(plan, curves, stored, fl, minutes=0.0)
  assert any(line.startswith('| 32 | 2 | wave | ') for line in lines)
  assert fl['wave'] > fl['tleg'] > fl['weight_selection'] == 0.0  # templates + scalers > an aux run alone
  cw.plot(plan, curves, str(tmp_path / 'plot.png'))
  assert os.path.getsize(tmp_path / 'plot.png') > 0
  # WAVE's stage-2 export holds the stage-1 templates as they were.
  first = load_learngene(os.path.join(work, 'upstream', 'u0', 'wave', 'export'))[0]['templates']
  second = load_learngene(os.path.join(work, 'upstream', 'u0', 'wave_w32_d2', 'export'))[0]['templates']
  jax.tree.map(np.testing.assert_array_equal, first, second)


@pytest.mark.slow  # a subprocess compiling two train steps
def test_sharding_benchmark_reports_memory_per_device():
  import subprocess
  import sys
  from conftest import ROOT
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.sharding', '--width', '64', '--heads', '2', '--depth', '2', '--batch', '8',
       '--image', '16', '--patch', '8', '--fsdp', '1,4', '--min-size', '0', '--repeats', '1'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  assert result.returncode == 0, result.stderr[-3000:]
  rows = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]]
          for line in result.stdout.splitlines() if line.startswith('| replicated') or line.startswith('| fsdp')}
  assert set(rows) == {'replicated', 'fsdp 4'}
  replicated, sharded = float(rows['replicated'][0]), float(rows['fsdp 4'][0])  # MiB, to 0.1
  assert sharded == pytest.approx(replicated / 4, abs=0.1)  # --min-size 0: every leaf but step and rng split
  assert float(rows['fsdp 4'][1]) < float(rows['replicated'][1]) / 2  # creating the state, per device
  assert float(rows['fsdp 4'][2]) < float(rows['replicated'][2])  # XLA's arguments per device
  gathered, reduced = ({name: float(row[i]) for name, row in rows.items()} for i in (5, 6))
  assert gathered['replicated'] == 0 and gathered['fsdp 4'] >= sharded * 4 / 3 - 0.1  # every param, f32
  assert reduced['replicated'] == pytest.approx(replicated / 3, abs=0.1)  # the gradients, a third of the state


COLLECTIVES_HLO = '''HloModule collectives

%all-reduce-scatter (input: f32[8,4]) -> f32[2,4] {
  %input = f32[8,4]{1,0:T(8,128)} parameter(0)
  %all-reduce.1 = f32[8,4]{1,0:T(8,128)} all-reduce(%input), channel_id=1, replica_groups={{0,1,2,3}}, to_apply=%add
  %offset = s32[] constant(0)
  ROOT %slice = f32[2,4]{1,0} dynamic-slice(%all-reduce.1, %offset, %offset), dynamic_slice_sizes={2,4}
}

ENTRY %main (w: bf16[2,16], g: (f32[8,4], f32[6]), h: f32[16,3]) -> f32[2,4] {
  %w = bf16[2,16]{1,0} parameter(0)
  %gathered = bf16[8,16]{1,0} all-gather(%w), channel_id=2, replica_groups={{0,1,2,3}}, dimensions={0}
  %start = (bf16[2,16]{1,0}, bf16[8,16]{1,0}) all-gather-start(%w), channel_id=3, dimensions={0}
  %done = bf16[8,16]{1,0} all-gather-done(%start)
  %g = (f32[8,4]{1,0}, f32[6]{0}) parameter(1)
  %combined = (f32[8,4]{1,0}, f32[6]{0}) all-reduce(%g), channel_id=4, to_apply=%add
  %h = f32[16,3]{1,0} parameter(2)
  %scattered = f32[4,3]{1,0} reduce-scatter(%h), channel_id=5, dimensions={0}, to_apply=%add
  %first = f32[8,4]{1,0} get-tuple-element(%combined), index=0
  ROOT %fused = f32[2,4]{1,0} fusion(%first), kind=kCustom, calls=%all-reduce-scatter
}
'''


def test_collected_bytes_are_the_whole_arrays_gathered_and_reduced():
  """All-gathers by their output (an async pair once), all-reduces by their output (a
  combined one's tuple summed; XLA:TPU's fused reduce-scatter by its all-reduce), and a
  reduce-scatter by its input."""
  from benchmarks import sharding
  assert sharding.collected_bytes(COLLECTIVES_HLO) == {
      'gathered': 2 * 8 * 16 * 2,  # two bf16[8,16]
      'all-reduced': (8 * 4 + 6) * 4,  # the combined one
      'reduce-scattered': 8 * 4 * 4 + 16 * 3 * 4}  # TPU's fused one, and an explicit one


@pytest.mark.slow  # a command's wiring, four compiles: the slow tier
def test_sharding_benchmark_compiles_for_a_tpu_slice_that_is_not_here(monkeypatch, capsys):
  """--topology: the rows from compiling alone (no step times), the budget the chip's HBM;
  here libtpu's description of a slice is stood in for by the 8 CPU devices."""
  import sys
  import types
  from benchmarks import kernel_bytes, sharding
  monkeypatch.setattr(kernel_bytes.topologies, 'get_topology_desc',
                      lambda platform, **_: types.SimpleNamespace(devices=jax.devices()))
  argv = ['sharding', '--topology', 'v5e:2x4', '--width', '32', '--heads', '2', '--depth', '2', '--batch', '8',
          '--image', '16', '--patch', '8', '--fsdp', '1,-1', '--min-size', '0']
  monkeypatch.setattr(sys, 'argv', argv)
  with pytest.raises(SystemExit, match=re.escape("--budget-gb: no HBM size known for 'cpu'")):
    sharding.main()
  monkeypatch.setattr(sharding, 'HBM_GIB', {'cpu': 1e-4})  # ~105 KB: the replicated step does not fit
  sharding.main()
  out = capsys.readouterr().out
  assert '8 x cpu (v5e:2x4, compiled for, not run); budget 0.0001 GiB per device' in out and 'step s' not in out
  rows = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]]
          for line in out.splitlines() if line.startswith('| replicated') or line.startswith('| fsdp')}
  assert float(rows['fsdp 8'][0]) < float(rows['replicated'][0]) / 4 and rows['replicated'][4] == 'no'

  compile_step = sharding.compile_step  # a TPU compiler refusing the replicated step: a row that does not fit

  def refusing(cfg, shape, batch, backend):
    if isinstance(backend, sharding.parallel.FsdpBackend):
      return compile_step(cfg, shape, batch, backend)
    raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm.\nmore')
  monkeypatch.setattr(sharding, 'compile_step', refusing)
  sharding.main()
  out = capsys.readouterr().out
  assert re.search(r'\| replicated \| +[\d.]+ \| +[\d.]+ \| +- \| +- \| +no \| +- \| +- \| +- \|', out), out
  assert out.endswith('replicated: XLA did not compile the step: RESOURCE_EXHAUSTED: Ran out of memory in memory '
                      'space hbm.\n') and '| fsdp 8 ' in out


def test_sharding_benchmark_without_libtpu_or_cuda_says_what_to_install(monkeypatch):
  from benchmarks import kernel_bytes

  def no_libtpu(platform, **_):
    raise RuntimeError(f'Unable to initialize backend {platform!r}')

  monkeypatch.setattr(kernel_bytes.topologies, 'get_topology_desc', no_libtpu)
  with pytest.raises(SystemExit, match=re.escape(f'Compiling for v5e:4x4 needs libtpu '
                                                 f'(pip install "jax[tpu]=={jax.__version__}"')):
    kernel_bytes.topology_devices('v5e:4x4')
  with pytest.raises(SystemExit, match=re.escape(f'Compiling for h200:8 needs JAX\'s CUDA plugin '
                                                 f'(pip install "jax[cuda12]=={jax.__version__}"')):
    kernel_bytes.topology_devices('h200:8')


@pytest.mark.slow  # worker processes
def test_input_benchmark_reads_the_generated_set_in_workers(tmp_path):
  import subprocess
  import sys
  from conftest import ROOT
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.input_pipeline', '--examples', '48', '--batch', '8', '--batches', '2',
       '--workers', '0,2', '--threads', '0', '--source-size', '64x48', '--dir', str(tmp_path),
       '--splits', 'train,eval'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line.split('|')[1:-1] for line in result.stdout.splitlines() if line.startswith('|')]
  rates = {(r[0].strip(), r[1].strip(), int(r[2])): float(r[4])  # (format, split, workers) -> img/s
           for r in rows if r[2].strip().isdigit()}
  assert set(rates) == {(f, s, w) for f in ('jpeg', 'pixels') for s in ('train', 'eval') for w in (0, 2)}
  assert all(r > 0 for r in rates.values())
  assert os.path.exists(tmp_path / 'train_64x48.array_record') and os.path.exists(tmp_path / 'pixels_64x48.array_record')


def test_profile_counts_a_gpus_kernels_once_and_names_what_a_fusion_computes(tmp_path):
  import gzip
  import json
  from benchmarks import profile_step
  lane = lambda pid, name: {'ph': 'M', 'name': 'process_name', 'pid': pid, 'args': {'name': name}}
  run = lambda pid, name, us: {'ph': 'X', 'pid': pid, 'name': name, 'dur': us}
  host, device = [lane(1, '/host:CPU')], [lane(2, '/device:GPU:0')]
  events = [run(2, 'loop_add_fusion_3', 1000), run(2, 'loop_add_fusion_3', 3000), run(2, 'nvjet_x', 500),
            run(1, 'PjRtCApiLoadedExecutable::Execute', 9000)]  # spans the kernels it launches
  on_host = [{**e, 'pid': 1} for e in events]  # a CPU's trace: the thunks are the host's
  for case, trace, want in (('gpu', host + device + events, {'loop_add_fusion_3': 2.0, 'nvjet_x': 0.25}),  # 2 steps
                            ('cpu', host + on_host, {'loop_add_fusion_3': 2.0, 'nvjet_x': 0.25,
                                                     'PjRtCApiLoadedExecutable::Execute': 4.5})):
    folder = tmp_path / case / 'plugins' / 'profile' / 'run'
    folder.mkdir(parents=True)
    with gzip.open(folder / 'host.trace.json.gz', 'wt') as f:
      json.dump({'traceEvents': trace}, f)
    times, launches = profile_step.op_times(str(tmp_path / case), steps=2)
    assert dict(times) == want
  assert dict(launches)['loop_add_fusion_3'] == 1.0 and dict(launches)['nvjet_x'] == 0.5

  hlo = '''HloModule m

%fused_computation.1 (param_0: f32[4], param_1: bf16[4]) -> bf16[4] {
  %param_0 = f32[4]{0} parameter(0)
  %param_1 = bf16[4]{0} parameter(1)
  %convert.2 = f32[4]{0} convert(%param_1)
  %constant.1 = f32[] constant(1)
  %broadcast.1 = f32[4]{0} broadcast(%constant.1), dimensions={}
  %add.1 = f32[4]{0} add(%param_0, %convert.2)
  %multiply.1 = f32[4]{0} multiply(%add.1, %broadcast.1)
  ROOT %convert.3 = bf16[4]{0} convert(%multiply.1)
}

ENTRY %main.2 (p: f32[4], q: bf16[4]) -> bf16[4] {
  %p = f32[4]{0} parameter(0)
  %q = bf16[4]{0} parameter(1)
  ROOT %loop_add_fusion.3 = bf16[4]{0} fusion(%p, %q), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(train_step)/ViT/LayerNorm_0/add" source_file="vit.py"}
}
'''
  ops = profile_step.parse_hlo(hlo)
  fusion = ops['loop_add_fusion_3']  # the kernel's name for loop_add_fusion.3
  assert fusion == ops['loop_add_fusion.3'] and fusion.shape == 'bf16[4]' and not fusion.matmul
  assert fusion.fuses == 'convert add multiply' and fusion.where == 'ViT/LayerNorm_0/add'
  assert fusion.bytes == 4 * 4 + 4 * 2 + 4 * 2  # reads p (f32) and q (bf16), writes bf16
  row = profile_step.describe('loop_add_fusion_3', ms=1e-6, launches=2.0, ops=ops)  # 2 x 32 bytes a nanosecond
  assert row.endswith('2x  loop_add_fusion_3 -> bf16[4]  [elementwise / reduction]  64 GB/s  convert add multiply'
                      '  @ ViT/LayerNorm_0/add')
  assert profile_step.shape_bytes('(f32[2,3]{1,0}, pred[5], bf16[])') == 24 + 5 + 2
  compiled = jax.jit(lambda a, b: a @ b).lower(np.ones((8, 8), np.float32), np.ones((8, 8), np.float32)).compile()
  assert any(op.matmul for op in profile_step.parse_hlo(compiled.as_text()).values())  # the GEMM, fused or not


KERNEL_HLO = '''HloModule m

%gemm_computation (p0: bf16[8,4], p1: bf16[4,4]) -> bf16[8,4] {
  %p0 = bf16[8,4]{1,0} parameter(0)
  %p1 = bf16[4,4]{1,0} parameter(1)
  ROOT %dot.1 = bf16[8,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%add_computation (p0: bf16[8,4], p1: bf16[4]) -> bf16[8,4] {
  %p0 = bf16[8,4]{1,0} parameter(0)
  %p1 = bf16[4]{0} parameter(1)
  %broadcast.1 = bf16[8,4]{1,0} broadcast(%p1), dimensions={1}
  ROOT %add.1 = bf16[8,4]{1,0} add(%p0, %broadcast.1)
}

%transpose_computation (p0: bf16[8,4]) -> bf16[4,8] {
  %p0 = bf16[8,4]{1,0} parameter(0)
  ROOT %transpose.1 = bf16[4,8]{1,0} transpose(%p0), dimensions={1,0}
}

ENTRY %main (x: bf16[8,4], w: bf16[4,4], b: bf16[4]) -> (bf16[8,4], bf16[4,8]) {
  %x = bf16[8,4]{1,0} parameter(0)
  %w = bf16[4,4]{1,0} parameter(1)
  %b = bf16[4]{0} parameter(2)
  %gemm_fusion_dot.1 = bf16[8,4]{1,0} fusion(%x, %w), kind=kCustom, calls=%gemm_computation, metadata={op_name="jit(train_step)/jvp(ViT)/Transformer/encoderblock_1/MlpBlock_0/Dense_0/dot_general"}
  %loop_add_fusion.2 = bf16[8,4]{1,0} fusion(%gemm_fusion_dot.1, %b), kind=kLoop, calls=%add_computation, metadata={op_name="jit(train_step)/jvp(ViT)/Transformer/encoderblock_1/MlpBlock_0/Dense_0/add"}
  %attn = (bf16[8,4]{1,0}, u8[0]{0}) custom-call(%loop_add_fusion.2, %x, %x), custom_call_target="__cudnn$fmhaSoftmax", metadata={op_name="jit(train_step)/transpose(jvp(ViT))/Transformer/encoderblock_1/checkpoint/rematted_computation/MultiHeadDotProductAttention_0/dot_product_attention_bwd"}
  %get-tuple-element.1 = bf16[8,4]{1,0} get-tuple-element(%attn), index=0
  %transpose_fusion.3 = bf16[4,8]{1,0} fusion(%get-tuple-element.1), kind=kInput, calls=%transpose_computation
  ROOT %tuple.1 = (bf16[8,4]{1,0}, bf16[4,8]{1,0}) tuple(%get-tuple-element.1, %transpose_fusion.3)
}
'''


def test_kernel_bytes_reads_a_gpu_steps_kernels_and_their_bytes():
  from benchmarks import kernel_bytes
  found = kernel_bytes.kernels(KERNEL_HLO)
  assert [(k.name, k.kind, k.bytes) for k in found] == [
      ('gemm_fusion_dot.1', 'GEMM', 64 + 32 + 64),  # reads x and w, writes (8, 4), 2 bytes each
      ('loop_add_fusion.2', 'elementwise / reduction', 64 + 8 + 64),
      ('attn', 'attention', 64 + 64 + 64 + 64),  # its u8[0] workspace is no bytes
      ('transpose_fusion.3', 'copy', 64 + 64)]
  assert kernel_bytes.by_kind(found) == {'GEMM': (1, 160), 'attention': (1, 256),
                                         'elementwise / reduction': (1, 136), 'copy': (1, 128)}
  rows = kernel_bytes.block_kernels(found, 1)
  assert [(phase, op, k.name) for phase, op, k in rows] == [
      ('forward', 'MlpBlock_0/Dense_0/add', 'loop_add_fusion.2'),  # a GEMM is not listed
      ('backward', 'MultiHeadDotProductAttention_0/dot_product_attention_bwd', 'attn')]  # through remat
  assert kernel_bytes.block_kernels(found, 0) == []


SCANNED_HLO = '''HloModule scanned

%slice_computation (p0: bf16[3,8,4], p1: s32[]) -> bf16[1,8,4] {
  %p0 = bf16[3,8,4]{2,1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %c0 = s32[] constant(0)
  ROOT %ds = bf16[1,8,4]{2,1,0} dynamic-slice(%p0, %p1, %c0, %c0), dynamic_slice_sizes={1,8,4}
}

%update_computation (p0: bf16[3,8,4], p1: bf16[1,8,4], p2: s32[]) -> bf16[3,8,4] {
  %p0 = bf16[3,8,4]{2,1,0} parameter(0)
  %p1 = bf16[1,8,4]{2,1,0} parameter(1)
  %p2 = s32[] parameter(2)
  %c1 = s32[] constant(0)
  ROOT %dus = bf16[3,8,4]{2,1,0} dynamic-update-slice(%p0, %p1, %p2, %c1, %c1)
}

%body (arg: (s32[], bf16[3,8,4], bf16[3,8,4])) -> (s32[], bf16[3,8,4], bf16[3,8,4]) {
  %arg = (s32[], bf16[3,8,4]{2,1,0}, bf16[3,8,4]{2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %xs = bf16[3,8,4]{2,1,0} get-tuple-element(%arg), index=1
  %ys = bf16[3,8,4]{2,1,0} get-tuple-element(%arg), index=2
  %slice-start = ((bf16[3,8,4]{2,1,0}, s32[]), bf16[1,8,4]{2,1,0}, u32[]) fusion-start(%xs, %i), kind=kLoop, calls=%slice_computation
  %slice-done = bf16[1,8,4]{2,1,0} fusion-done(%slice-start)
  %update_fusion = bf16[3,8,4]{2,1,0} fusion(%ys, %slice-done, %i), kind=kLoop, calls=%update_computation
  ROOT %out = (s32[], bf16[3,8,4]{2,1,0}, bf16[3,8,4]{2,1,0}) tuple(%i, %xs, %update_fusion)
}

%cond (arg: (s32[], bf16[3,8,4], bf16[3,8,4])) -> pred[] {
  %carry = (s32[], bf16[3,8,4]{2,1,0}, bf16[3,8,4]{2,1,0}) parameter(0)
  %step = s32[] get-tuple-element(%carry), index=0
  %trips = s32[] constant(3)
  ROOT %more = pred[] compare(%step, %trips), direction=LT
}

ENTRY %main (a: bf16[3,8,4], b: bf16[3,8,4]) -> (s32[], bf16[3,8,4], bf16[3,8,4]) {
  %a = bf16[3,8,4]{2,1,0} parameter(0)
  %b = bf16[3,8,4]{2,1,0} parameter(1)
  %start = s32[] constant(0)
  %init = (s32[], bf16[3,8,4]{2,1,0}, bf16[3,8,4]{2,1,0}) tuple(%start, %a, %b)
  ROOT %loop = (s32[], bf16[3,8,4]{2,1,0}, bf16[3,8,4]{2,1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
}
'''


def test_kernel_bytes_counts_a_loops_kernels_per_trip_and_only_the_slices_they_move():
  """A scan's body, once per trip: an (async) fusion slicing one layer out of a stacked
  (3, 8, 4) array reads that slice, and one updating a layer in place writes only it."""
  from benchmarks import kernel_bytes
  found = kernel_bytes.kernels(SCANNED_HLO)
  layer, index = 1 * 8 * 4 * 2, 4  # bf16 bytes of a slice; the s32 layer index
  assert [(k.name, k.kind, k.bytes) for k in found] == [
      ('slice-start', 'elementwise / reduction', layer + index + layer),  # not the stack's 192 bytes
      ('update_fusion', 'elementwise / reduction', layer + index + layer)] * 3  # the stack neither read nor rewritten
  assert kernel_bytes.by_kind(found) == {'elementwise / reduction': (6, 6 * (2 * layer + index))}


def test_kernel_bytes_without_the_cuda_plugin_says_what_to_install(monkeypatch):
  from benchmarks import kernel_bytes

  def no_plugin(platform, **_):  # what JAX without its CUDA plugin raises
    raise NotImplementedError(f'topology not implemented for {platform}')

  monkeypatch.setattr(kernel_bytes.topologies, 'get_topology_desc', no_plugin)
  with pytest.raises(SystemExit, match=re.escape(f'pip install "jax[cuda12]=={jax.__version__}"')):
    kernel_bytes.compile_for('h200', {}, (8, 8, 3), 2)


@pytest.mark.slow  # a command's wiring: the slow tier
def test_kernel_bench_times_both_implementations_of_each_kernel():
  from conftest import ROOT
  run = subprocess.run([sys.executable, '-m', 'benchmarks.kernel_bench', '--batch', '2', '--tokens', '5', '--width', '16',
                        '--rounds', '1'], capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  rows = [line.split('|')[1:-1] for line in run.stdout.splitlines() if line.startswith('| ') and 'ms' not in line]
  names = [r[0].strip() for r in rows]
  from lgjax.models.pallas_gemm import TILES  # the tiles the model runs
  kernels = (('norm', 'residual_norm'), ('MLP', f'gelu_mlp {TILES}'), ('QKV', f'qkv_projection {TILES}'))
  assert names == [f'{op}, {impl}: {part}' for op, kernel in kernels
                   for impl in ('XLA ops', kernel) for part in ('forward', 'forward + backward')]
  assert all(float(r[1]) > 0 for r in rows)
  assert [r[3].strip() for r in rows[:2] + rows[4:6] + rows[8:10]] == ['1.00x'] * 6
  assert [r[2].split()[-1] for r in rows] == ['GB/s'] * 4 + ['TFLOP/s'] * 8
