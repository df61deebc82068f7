"""What a user sees: progress bar, metrics as JSON lines and TensorBoard, a PNG.

Only process 0 writes; other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time


import jax
import tqdm

from lgjax.models import flops

METRICS_FILE = 'metrics.jsonl'
PLOT_FILE = 'curves.png'
TENSORBOARD_DIR = 'tensorboard'  # scalars, and the Profile tab's traces (plugins/profile/)


def _drop_records_after(path: str, step: int) -> None:
  """Keeps only the metrics records of steps <= `step` (those a resumed run will not redo)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  keep = [line for line in lines if line.strip() and json.loads(line)['step'] <= step]
  if len(keep) != len(lines):
    with open(path + '.tmp', 'w') as f:
      f.writelines(keep)
    os.replace(path + '.tmp', path)


class Reporter:

  def __init__(self, workdir: str, *, total_steps: int, start_step: int, batch_size: int,
               enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.workdir, self.batch_size = workdir, batch_size
    self._last = (start_step, time.perf_counter())
    if not self.enabled:
      return
    import tensorboardX  # light writer, no TensorFlow needed
    self.tb = tensorboardX.SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))
    path = os.path.join(workdir, METRICS_FILE)
    _drop_records_after(path, start_step)  # a resumed run rewrites them: one record per step and kind
    self.jsonl = open(path, 'a')
    # On a terminal a live bar; in a log file one line per twentieth of the run and per eval.
    self.bar = tqdm.tqdm(total=total_steps, initial=start_step, unit='step', dynamic_ncols=True,
                         disable=not sys.stderr.isatty())
    self.total_steps, self.line_every = total_steps, max(1, total_steps // 20)

  def start_clock(self, step: int) -> None:
    """Rates from here on count from `step`, done now (e.g. after the step that compiled)."""
    self._last = (step, time.perf_counter())

  def throughput(self, step: int) -> float:
    """Images per second since the last call."""
    last_step, last_time = self._last
    now = time.perf_counter()
    self._last = (step, now)
    return (step - last_step) * self.batch_size / max(now - last_time, 1e-9)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    self.jsonl.write(json.dumps({'step': step, **metrics}) + '\n')
    self.jsonl.flush()
    for k, v in metrics.items():
      self.tb.add_scalar(k, v, step)
    shown = {k: f'{v:.4g}' for k, v in metrics.items()
             if k in ('loss', 'learning_rate', 'images_per_sec', 'mfu', 'eval_accuracy')}
    if not self.bar.disable:
      self.bar.n = step
      self.bar.set_postfix(shown)
    elif step % self.line_every == 0 or step == self.total_steps or 'eval_accuracy' in metrics:
      print(f'step {step}/{self.total_steps}: ' + ', '.join(f'{k}={v}' for k, v in shown.items()),
            file=sys.stderr, flush=True)

  def close(self) -> None:
    if self.enabled:
      self.bar.close()
      self.tb.close()
      self.jsonl.close()


def trace_dir(workdir: str) -> str:
  """Where this process writes its profiler traces: workdir/tensorboard for process 0,
  workdir/tensorboard/process_I for the others (TensorBoard shows each as a run). The
  trace files carry only the host's name, and a GPU host often runs a process per GPU."""
  index = jax.process_index()
  return os.path.join(workdir, TENSORBOARD_DIR, *([f'process_{index}'] if index else []))


class StepTrace:
  """A jax.profiler trace of the train steps in `steps` (a range) into `log_dir`, where
  TensorBoard's Profile tab reads it: started before the first step, stopped once the
  last has run on the devices, and stopped however the loop ends (close)."""

  def __init__(self, log_dir: str, steps: range):
    self.log_dir, self.steps, self.active = log_dir, steps, False

  def before(self, step: int) -> None:
    if self.steps and step == self.steps.start:
      jax.profiler.start_trace(self.log_dir)
      self.active = True

  def after(self, step: int, outputs) -> None:
    if self.active and step == self.steps[-1]:
      jax.block_until_ready(outputs)
      self.close()

  def close(self) -> None:
    if self.active:
      self.active = False
      jax.profiler.stop_trace()


def speed(images_per_sec: float, flops_per_image: float | None, dtype, devices=None) -> dict[str, float]:
  """The step's rate: images_per_sec and, where its model FLOPs per image are known,
  tflops_per_device and, on a chip whose `dtype` datasheet peak flops.chip_peak knows, mfu
  (each device's model FLOP/s over that peak), as big_vision and MaxText log them.
  `devices`: all the run's (jax.devices())."""
  metrics = {'images_per_sec': images_per_sec}
  if flops_per_image:
    devices = devices or jax.devices()
    per_device = images_per_sec * flops_per_image / len(devices)
    metrics['tflops_per_device'] = per_device / 1e12
    peak = flops.chip_peak(devices[0].device_kind, dtype)
    if peak:
      metrics['mfu'] = per_device / peak
  return metrics


def read_metrics(workdir: str) -> dict[int, dict[str, float]]:
  """Step -> metrics, the latest record winning (a resumed run rewrites some steps)."""
  by_step: dict[int, dict[str, float]] = {}
  path = os.path.join(workdir, METRICS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        by_step.setdefault(record.pop('step'), {}).update(record)
  return by_step


def eval_curve(workdir: str) -> dict[int, float]:
  """Step -> eval accuracy of a run."""
  return {s: m['eval_accuracy'] for s, m in read_metrics(workdir).items() if 'eval_accuracy' in m}


def run_title(workdir: str) -> str:
  """'NAME: kind K, depth D, width W on DATASET', from the run's config.json when it has one."""
  name = os.path.basename(os.path.normpath(os.path.abspath(workdir)))
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return name
  with open(path) as f:
    c = json.load(f)
  model, dataset = c.get('model', {}), c.get('dataset', {})
  return (f'{name}: {c.get("kind")}, depth {model.get("depth")}, width {model.get("width")} on '
          f'{dataset.get("name")} ({dataset.get("classes", "all")})')


def plot_curves(workdir: str) -> str:
  """Loss and accuracy against step, as workdir/curves.png."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  by_step = read_metrics(workdir)
  steps = sorted(by_step)
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  for ax, keys in ((ax_loss, ('loss', 'eval_loss')), (ax_acc, ('train_accuracy', 'eval_accuracy'))):
    for key in keys:
      xs = [s for s in steps if key in by_step[s]]
      if xs:
        ax.plot(xs, [by_step[s][key] for s in xs], marker='.' if key.startswith('eval') else None, label=key)
    ax.set_xlabel('step')
    ax.legend()
    ax.grid(alpha=0.3)
  ax_loss.set_ylabel('loss')
  ax_acc.set_ylabel('accuracy')
  fig.suptitle(run_title(workdir))
  fig.tight_layout()
  path = os.path.join(workdir, PLOT_FILE)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
