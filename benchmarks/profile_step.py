"""Where a train step's time goes: jax.profiler trace of the lgjax step, by XLA op.

Traces a few steps of the same step vs_pytorch times, reads the trace the
profiler writes (plugins/profile/*/*.trace.json.gz, Chrome trace events, one
per XLA thunk), and prints time per step by kind of op (matrix multiplies,
layout copies/transposes, other fused elementwise/reduction kernels) and the
slowest ops with, from the compiled HLO, their launches per step, output shapes,
the memory rate their operand and output bytes imply, what a fusion fuses and the
model op it comes from. Thunks may overlap on the CPU's threads,
so the kinds can add up to more than the step's wall time. On a GPU only the
device's kernels count (the host's launch events span them); XLA gives identical
fusions one kernel, so one name can run many times a step (e.g. once per layer).

  python -m benchmarks.profile_step [--width 192 --depth 12 --image 32 --patch 4 --batch 128 --grad-accum-steps 1]
      [--out DIR]   # every op's row, and the compiled step's HLO, whose fusions the GPU's kernels are
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
from typing import NamedTuple

import jax
import numpy as np

from benchmarks.common import add_model_args, median_time, model_config, random_batch, step_runner
from lgjax.models import ViT, flops

KINDS = (('GPU matmul kernels', re.compile(r'gemm|xmma|cutlass|cublas|nvjet', re.I)),
         ('GPU fused attention kernels', re.compile(r'fmha|flash|cudnn', re.I)),
         ('copy / transpose', re.compile(r'copy|transpose')),
         ('elementwise / reduction', re.compile(r'fusion|wrapped_|reduce|broadcast')))
NOT_OPS = re.compile(r'^(ThunkExecutor|\$|SlinkyThreadPool|end: |PjitFunction|CommonPjRt|ParseArguments)')


def op_times(trace_dir: str, steps: int) -> tuple[collections.Counter, collections.Counter]:
  """XLA op (GPU: kernel) name -> milliseconds per step, and -> launches per step, from the
  profiler's Chrome trace. Where the trace has device lanes (a GPU's '/device:...'
  processes), only their kernels count: the host's launch and wait events span them."""
  (path,) = glob.glob(f'{trace_dir}/plugins/profile/*/*.trace.json.gz')
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  devices = {e['pid'] for e in events if e.get('ph') == 'M' and e.get('name') == 'process_name'
             and str(e.get('args', {}).get('name', '')).startswith('/device:')}
  times, launches = collections.Counter(), collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and not NOT_OPS.match(e['name']) and (not devices or e.get('pid') in devices):
      times[e['name']] += e['dur'] / 1e3 / steps
      launches[e['name']] += 1 / steps
  return times, launches


def kernel_name(hlo_name: str) -> str:
  """The name a GPU kernel of HLO instruction `hlo_name` carries ('.' and '-' become '_')."""
  return re.sub(r'[.-]', '_', hlo_name)


class HloOp(NamedTuple):
  """What the compiled HLO says of one instruction (a fusion is one kernel)."""
  shape: str    # its output, e.g. 'bf16[1024,196,384]'
  matmul: bool  # is or calls a dot / convolution (XLA:CPU fuses elementwise ops into its GEMMs)
  fuses: str    # a fusion's opcodes, in order: what an elementwise kernel computes
  bytes: int    # its operands' and output's bytes: what it moves to and from memory, at least
  where: str    # the model op it comes from (metadata op_name), e.g. 'transpose(jvp(ViT))/...'
  opcode: str   # e.g. 'fusion', 'custom-call'
  target: str   # a custom call's, e.g. '__cudnn$fmhaSoftmax' ('' for other ops)


_SKIP = ('parameter', 'constant', 'bitcast', 'broadcast', 'tuple', 'get-tuple-element')


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape string, tuples summed: 'bf16[2,3]{1,0}' -> 12."""
  total = 0
  for dtype, dims in re.findall(r'([a-z]\w*)\[([\d,]*)\]', shape):
    bits = re.match(r'[a-z]+(\d+)', dtype)
    size = 0 if dtype == 'token' else int(bits.group(1)) // 8 if bits else 1  # pred: a byte
    total += size * int(np.prod([int(d) for d in dims.split(',') if d]))
  return total


INSTRUCTION = re.compile(  # (name, shape, opcode, the text after the opcode's '(')
    r'^\s*(?:ROOT )?%(\S+) = (\(.*?\)|\S+?)(?:\{[^}]*\})? ([\w-]+)\((.*)$', re.M)


def computations(hlo_text: str) -> dict[str, str]:
  """Each computation's name -> its instructions' text (ENTRY's, fusions', loop bodies')."""
  return {m.group(1): m.group(2) for m in re.finditer(r'^(?:ENTRY )?%(\S+) .*?\{\n(.*?)\n\}', hlo_text, re.M | re.S)}


def operands(rest: str) -> list[str]:
  """The instruction names an instruction's text (after its opcode's '(') takes."""
  return re.findall(r'%([^\s,()]+)', rest.split(')', 1)[0])


def fusion_bytes(body: str, operand_shapes: list[str], shape: str) -> int:
  """Bytes a fusion moves: each operand read and its output written whole, but for an
  operand it only dynamic-slices (it reads the slices) or only updates in place
  (dynamic-update-slice: it writes the update and leaves the rest), so that a scan
  body's kernel counts its layer's slice of a stacked (depth, ...) array, not all of it."""
  inner = INSTRUCTION.findall(body)
  shapes = {name: s for name, s, _, _ in inner}
  params = {name: int(re.match(r'\d+', rest).group()) for name, _, op, rest in inner if op == 'parameter'}
  uses = collections.defaultdict(list)  # operand index -> (opcode, position, shape, operands) of each use
  for _, s, op, rest in inner:
    args = operands(rest)
    for position, arg in enumerate(args):
      if arg in params:
        uses[params[arg]].append((op, position, s, args))
  reads, written = [shape_bytes(s) for s in operand_shapes], shape_bytes(shape)
  for i, used in uses.items():
    if i < len(reads) and all(op == 'dynamic-slice' and pos == 0 for op, pos, _, _ in used):
      reads[i] = sum(shape_bytes(s) for _, _, s, _ in used)
    elif i < len(reads) and all(op == 'dynamic-update-slice' and pos == 0 for op, pos, _, _ in used):
      reads[i] = 0
      written -= sum(shape_bytes(s) - shape_bytes(shapes.get(args[1], '')) for _, _, s, args in used)
  return written + sum(reads)


def parse_hlo(hlo_text: str) -> dict[str, HloOp]:
  """Compiled HLO -> instruction name -> HloOp, each name also keyed as its kernel_name
  (how a GPU trace shows it)."""
  instructions = INSTRUCTION.findall(hlo_text)
  bodies = computations(hlo_text)
  shapes = {name: shape for name, shape, _, _ in instructions}
  # An async fusion (XLA:GPU's dynamic slices in a scan) runs its kernel from its start, whose
  # output its done has; the start's own shape is a tuple of operands, output and context.
  outputs = {operands(rest)[0]: shape for _, shape, opcode, rest in instructions if opcode == 'fusion-done'}
  ops = {}
  for name, shape, opcode, rest in instructions:
    if opcode == 'fusion-start':
      opcode, shape = 'fusion', outputs.get(name, shape)
    callee = re.search(r'calls=%([^,\s]+)', rest)
    body = bodies.get(callee.group(1), '') if callee else ''
    inner = [op for _, op in re.findall(r'= (\(.*?\)|\S+) ([\w-]+)\(', body) if op not in _SKIP]
    operand_shapes = [shapes.get(o, '') for o in operands(rest)]
    where = re.search(r'op_name="(?:jit\([^)]*\)/)?([^"]*)"', rest)
    target = re.search(r'custom_call_target="([^"]+)"', rest)
    op = HloOp(shape, bool({opcode, *inner} & {'dot', 'convolution'}),
               ' '.join(dict.fromkeys(inner)) if opcode == 'fusion' else '',
               fusion_bytes(body, operand_shapes, shape),
               where.group(1) if where else '', opcode, target.group(1) if target else '')
    ops[name] = ops[kernel_name(name)] = op
  return ops


def kind_of(name: str, ops: dict[str, HloOp]) -> str:
  if name in ops and ops[name].matmul:
    return 'matmul (with what XLA fused into it)'
  return next((kind for kind, pattern in KINDS if pattern.search(name)), 'other')


def describe(name: str, ms: float, launches: float, ops: dict[str, HloOp]) -> str:
  """One op's row: ms and launches per step, name, shape, kind, memory rate, what it fuses, where from."""
  op = ops.get(name)
  row = f'{ms:7.2f}  {launches:4.0f}x  {name} -> {op.shape if op else "?"}  [{kind_of(name, ops)}]'
  if op:
    row += f'  {op.bytes * launches / ms / 1e6:.0f} GB/s' if op.bytes and ms else ''
    row += (f'  {op.fuses}' if op.fuses else '') + (f'  @ {op.where}' if op.where else '')
  return row


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_model_args(p)
  p.add_argument('--channels', type=int, default=3)
  p.add_argument('--grad-accum-steps', type=int, default=1, help='micro-batches per step')
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--top', type=int, default=12)
  p.add_argument('--out', default=None, help='directory for every op\'s row and the compiled HLO')
  args = p.parse_args()
  cfg = model_config(vars(args), num_classes=10)
  batch = random_batch(args.batch, (args.image, args.image, args.channels), 10)
  params = jax.jit(ViT(**cfg).init)(jax.random.key(0), batch['image'][:1])['params']
  one = step_runner(cfg, params, batch, grad_accum_steps=args.grad_accum_steps)
  wall = median_time(one, args.steps)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(args.steps):
        jax.block_until_ready(one())
    times, launches = op_times(trace_dir, args.steps)

  hlo = one.compiled().as_text()
  ops = parse_hlo(hlo)
  gflop = 3 * flops.forward_flops(cfg, batch['image'].shape[1:]) * args.batch / 1e9
  by_kind = collections.Counter()
  for name, ms in times.items():
    by_kind[kind_of(name, ops)] += ms
  print(f'ViT width {args.width} depth {args.depth}, {args.image}px/p{args.patch}, batch {args.batch} '
        f'in {args.grad_accum_steps} micro-batch(es): '
        f'step {wall * 1e3:.0f} ms wall, {gflop / wall:.1f} GFLOP/s; {len(times)} ops')
  print('| kind | ms / step | of op time |\n|---|---|---|')
  total = sum(by_kind.values())
  for kind, ms in by_kind.most_common():
    print(f'| {kind} | {ms:.1f} | {ms / total:.0%} |')
  matmul_ms = sum(ms for kind, ms in by_kind.items() if kind.startswith('matmul'))
  if matmul_ms:
    print(f'Model FLOPs / matmul time: {gflop / (matmul_ms / 1e3):.1f} GFLOP/s (the GEMMs\' own rate: '
          'nearly all model FLOPs are matmul FLOPs)')
  rows = [describe(name, ms, launches[name], ops) for name, ms in times.most_common()]
  print(f'\nSlowest {args.top} ops (ms and launches per step; GB/s: the HLO\'s operand and output bytes):')
  print(''.join(f'  {row}\n' for row in rows[:args.top]), end='')
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'profile_ops.txt'), 'w') as f:
      f.write(''.join(row + '\n' for row in rows))
    with open(os.path.join(args.out, 'step_hlo.txt'), 'w') as f:
      f.write(hlo)
    print(f'Every op: {args.out}/profile_ops.txt; the compiled step: {args.out}/step_hlo.txt')


if __name__ == '__main__':
  main()
