"""Presets shared by the recipes: datasets, model sizes and run lengths.

  mnist5k       the embedded 5,000 MNIST digits: offline, minutes on a laptop
                CPU. Teachers/learngenes train on digits 0-4 ('source'),
                descendants on digits 5-9 ('downstream').
  cifar100      tfds cifar100 at 224x224, as the papers fine-tune on it.
  imagenet2012  tfds imagenet2012, DeiT sizes and recipe.

Run lengths are epochs, as in the papers' tables (total_epochs,
optimizer.warmup_epochs), turned into steps at run time from the training
split's size and the batch size, so --config.batch_size keeps the epochs.
--config.total_steps=N (or optimizer.warmup_steps) sets steps instead and
wins over epochs, as in big_vision.
"""

import os

import ml_collections
from ml_collections import config_dict

from lgjax.models import inits
from lgjax.train import parallel

PRESETS = ('mnist5k', 'cifar100', 'imagenet2012')
EXAMPLES = {'mnist5k': 2000, 'cifar100': 50_000, 'imagenet2012': 1_281_167}  # train split (per role for mnist5k)

# Model sizes: (width, heads, mlp, depth, patch). DeiT's Ti/S/B and ViT's L/16 and H/14,
# the ancestry models: 'imagenet2012,L' picks one for a recipe that takes a size.
SIZES = {'Ti': (192, 3, 768, 12, 16), 'S': (384, 6, 1536, 12, 16), 'B': (768, 12, 3072, 12, 16),
         'L': (1024, 16, 4096, 24, 16), 'H': (1280, 16, 5120, 32, 14)}


RUNLOCAL = 'runlocal'


def check_preset(arg: str, sized: bool = False) -> str:
  """The preset of `arg`: 'PRESET', 'PRESET,SIZE' (a recipe that is `sized`, on the
  tfds presets), and either with ',runlocal' for a tiny, seconds-long run."""
  preset, *options = arg.split(',')
  if options and options[-1] == RUNLOCAL:
    options.pop()
  sizes = sized and preset != 'mnist5k' and options and options[0] in SIZES
  if preset not in PRESETS or len(options) > bool(sizes):
    form = (f'PRESET[,SIZE][,{RUNLOCAL}] (SIZE one of {tuple(SIZES)}, not for mnist5k)' if sized
            else f'PRESET[,{RUNLOCAL}]')
    raise ValueError(f'config arg must be {form} with PRESET one of {PRESETS}, got {arg!r}.')
  return preset


def size(arg: str, default: str) -> str:
  """The SIZE of 'PRESET,SIZE', else `default`."""
  options = arg.split(',')[1:]
  return options[0] if options and options[0] in SIZES else default


def is_runlocal(arg: str) -> bool:
  return arg.endswith(',' + RUNLOCAL)


def runlocal(config: ml_collections.ConfigDict, arg: str) -> ml_collections.ConfigDict:
  """With 'PRESET,runlocal' (big_vision's name for it): the recipe shrunk to a seconds-long
  run of a width-32, depth-2 ViT, 4 steps of batch 16, for tests and smoke runs."""
  if is_runlocal(arg):
    config.model.update(width=32, num_heads=2, mlp_dim=64, depth=2)
    config.update(batch_size=16, total_steps=4, eval_every=1000, checkpoint_every=1000, log_every=1)
    config.optimizer.warmup_steps = 1
  return config


def steps(preset: str, epochs: float, batch_size: int) -> int:
  return max(1, round(epochs * EXAMPLES[preset] / batch_size))


def dataset(preset: str, role: str) -> ml_collections.ConfigDict:
  """role: 'source' (teachers, learngenes) or 'downstream' (descendants)."""
  if preset == 'mnist5k':
    return ml_collections.ConfigDict(dict(
        name='mnist5k', classes=role, train_split='train', eval_split='test',
        image_size=28, num_classes=5, augment='none', data_dir='', pixels_dir='', train_fraction=1.0))
  if preset == 'cifar100':
    return ml_collections.ConfigDict(dict(
        name='cifar100', train_split='train', eval_split='test', image_size=224,
        num_classes=100, augment='inception', data_dir='', pixels_dir='', train_fraction=1.0))
  return ml_collections.ConfigDict(dict(
      name='imagenet2012', train_split='train', eval_split='validation', image_size=224,
      num_classes=1000, augment='inception', data_dir='', pixels_dir='', train_fraction=1.0))


def model(preset: str, depth: int | None, size: str = 'S', num_classes: int | None = None,
          drop_path: float = 0.0) -> ml_collections.ConfigDict:
  """ViT fields; tiny for mnist5k (width 64, patch 7, cls token, exact GELU: the
  transfer protocol of benchmarks/transfer.py), `size` of SIZES otherwise. depth None:
  the size's own (12 for DeiT, 24 for L, 32 for H)."""
  if preset == 'mnist5k':
    width, heads, mlp, patch, pool, exact_gelu = 64, 4, 256, 7, 'tok', True
  else:
    (width, heads, mlp, size_depth, patch), pool, exact_gelu = SIZES[size], 'gap', False
    depth = depth or size_depth
  return ml_collections.ConfigDict(dict(
      num_classes=num_classes or config_dict.placeholder(int), patch_size=patch,
      width=width, depth=depth, mlp_dim=mlp, num_heads=heads, posemb='learn', pool_type=pool,
      dropout=0.0, drop_path=drop_path, scan=False, param_init=inits.DEFAULT, head_zeroinit=False,
      gelu_approximate=not exact_gelu, layer_norm_epsilon=1e-6, final_norm='tokens',
      attention_impl=config_dict.placeholder(str), norm_impl=config_dict.placeholder(str),
      mlp_impl=config_dict.placeholder(str), qkv_impl=config_dict.placeholder(str),
      remat_policy=config_dict.placeholder(str)))


def base(preset: str, *, kind: str, batch_size: int, epochs: float, lr: float,
         warmup_epochs: float = 0.0) -> ml_collections.ConfigDict:
  """Fields every recipe has. optimizer.lr is per 512 examples (lr · batch / 512, DeiT)."""
  config = ml_collections.ConfigDict()
  config.kind = kind
  config.seed = 0
  config.batch_size = batch_size
  config.total_epochs = float(epochs)
  config.total_steps = config_dict.placeholder(int)  # set: wins over total_epochs
  small = preset == 'mnist5k'
  nominal = steps(preset, epochs, batch_size)
  config.eval_every = max(1, nominal // 5) if small else 5000
  config.checkpoint_every = max(1, nominal // 2) if small else 5000
  config.log_every = 10 if small else 100
  config.keep_checkpoints = 2
  config.profile_steps = 0
  config.grad_accum_steps = 1
  config.parallelism = 'jit'
  config.sharding = ml_collections.ConfigDict(dict(fsdp=1, min_size=parallel.MIN_SHARD_SIZE))
  config.compute_dtype = 'float32' if small else 'bfloat16'
  # JPEG decoding is CPU-bound: the tfds presets decode in worker processes, one per core
  # but two (benchmarks/input_pipeline.py: 7.6x on 16 cores). Any count reads the same batches.
  config.input_threads = 0  # grain threads reading and augmenting (in each worker, if any)
  config.input_workers = 0 if small else max(0, min(32, (os.cpu_count() or 1) - 2))
  config.optimizer = ml_collections.ConfigDict(dict(
      lr=lr, warmup_epochs=float(warmup_epochs), warmup_steps=config_dict.placeholder(int), min_lr=0.0, weight_decay=0.05, b1=0.9, b2=0.999,
      clip_norm=0.0 if small else 1.0, frozen=()))
  config.loss = ml_collections.ConfigDict(dict(label_smoothing=0.0 if small else 0.1, alpha=0.0,
                                               temperature=1.0))
  config.teacher = ml_collections.ConfigDict(dict(dir=''))
  return config


FIELD_DOCS = {  # what `python train.py --config=... --print_config` says of each field
    'kind': "what trains: model | aux (a learngene) | descendant | pool_distill | stitched | recipe",
    'seed': 'seeds init, data order and dropout: same config + seed, same numbers',
    'batch_size': 'global batch, over all devices and processes',
    'total_epochs': 'passes over the training split (steps = epochs · examples / batch, at run time)',
    'total_steps': 'optimizer steps; when set, wins over total_epochs',
    'eval_every': 'steps between evaluations on the eval split',
    'checkpoint_every': 'steps between checkpoints (a run resumes from the newest intact one)',
    'log_every': 'steps between metric records',
    'keep_checkpoints': 'checkpoints kept',
    'profile_steps': 'train steps traced with jax.profiler from the second step a process runs, into '
                     'workdir/tensorboard (TensorBoard\'s Profile tab; 0: none)',
    'grad_accum_steps': 'micro-batches per step: the same update in less memory',
    'parallelism': 'jit (a mesh over all devices, batch sharded) | pmap',
    'sharding.fsdp': 'devices each param, optimizer moment and teacher weight is split over (FSDP); '
                     '1: replicated (data parallel), -1: all devices',
    'sharding.min_size': 'leaves with fewer elements stay replicated under FSDP (biases, norms)',
    'compute_dtype': 'float32 | bfloat16 | float16 activations; params stay float32',
    'input_threads': 'grain threads reading and preprocessing train and eval batches (0: in the main thread)',
    'input_workers': 'grain worker processes reading and preprocessing train and eval batches '
                     '(0: none; tfds presets: cores - 2)',
    'optimizer.lr': 'peak AdamW learning rate per 512 examples (lr * batch / 512)',
    'optimizer.warmup_epochs': 'linear warmup, then cosine decay',
    'optimizer.warmup_steps': 'warmup in steps; when set, wins over warmup_epochs',
    'optimizer.min_lr': 'learning rate at the end of the cosine',
    'optimizer.weight_decay': 'AdamW weight decay',
    'optimizer.b1': 'Adam beta1, in [0, 1)', 'optimizer.b2': 'Adam beta2, in [0, 1)',
    'optimizer.clip_norm': 'global gradient-norm clip (0: none)',
    'optimizer.frozen': 'regexes of trainable params that are not updated, e.g. (\'^templates/\',)',
    'loss.label_smoothing': 'label smoothing of the cross-entropy',
    'loss.alpha': 'distillation weight: (1 - alpha) * CE + alpha * KL(teacher || student) * T^2',
    'loss.temperature': 'distillation temperature T',
    'teacher.dir': 'params directory of the teacher (a run\'s export/), when alpha > 0',
    'dataset.name': 'mnist5k | shapes (embedded, offline) | a tfds name (prepared as array_record)',
    'dataset.classes': 'mnist5k: source (0-4) | downstream (5-9) | all',
    'dataset.image_size': 'input side in pixels',
    'dataset.augment': 'none | inception (random resized crop + flip)',
    'dataset.train_fraction': 'fraction of the training split used, in (0, 1]',
    'dataset.data_dir': 'the TFDS data dir of a tfds dataset (\'\': TFDS\'s default)',
    'dataset.pixels_dir': 'read the splits as decoded pixels written by python -m lgjax.data.pixels '
                          '(no JPEG decoding while training; \'\': the tfds or embedded dataset)',
    'model.depth': 'blocks', 'model.width': 'token width', 'model.num_heads': 'attention heads',
    'model.mlp_dim': 'MLP hidden width (None: 4 * width)', 'model.patch_size': 'patch side in pixels',
    'model.num_classes': 'classes of the head (None: dataset.num_classes, at run time)', 'model.pool_type': 'gap (mean of tokens) | tok (cls token)',
    'model.param_init': 'deit (the papers\') | torch | big_vision',
    'model.head_zeroinit': 'start the head at zero (big_vision\'s default; slows an inherited body)',
    'model.attention_impl': 'None (JAX\'s choice) | xla | cudnn (fused, GPU)',
    'model.norm_impl': 'None (XLA) | pallas (each residual add + the LayerNorm after it in one kernel on GPUs)',
    'model.mlp_impl': 'None (XLA) | pallas (the MLP\'s bias + GELU in its matmuls\' epilogues on GPUs)',
    'model.qkv_impl': 'None (XLA) | pallas (the query\'s bias, and the sum of the input\'s three gradients, '
                      'in the attention projections\' matmuls on GPUs)',
    'model.remat_policy': 'None (keep activations) | nothing_saveable | dots_saveable | '
                          'dots_with_no_batch_dims_saveable: recompute each block in the backward pass '
                          '(less memory, more compute; use with model.scan)',
    'learngene.method': 'aux: the method whose learngene trains (lgjax.learngene.registry.trained())',
    'learngene.stage_depths': 'aux, sws: blocks per stage of the auxiliary model',
    'learngene.fit_from': 'aux, tleg: start from the least-squares fit to this ViT (any load_params path)',
    'learngene.template_width': 'aux, wave: width of the weight templates (divides model.width)',
    'learngene.num_templates': 'aux, wave: number of weight templates per param',
    'learngene.templates_from': 'aux, wave: a WAVE learngene directory whose templates stay frozen while '
                                "this model's scalers train",
    'init.method': 'descendant: scratch | a learngene method (lgjax.learngene.METHODS)',
    'init.learngene_dir': 'descendant: the learngene directory (an aux run\'s export/)',
    'init.source': 'descendant: a trained ViT (any load_params path), for methods that take one as it is',
    'init.stage_depths': 'descendant, sws: blocks per stage (empty: sws.split_depth)',
    'init.placement': 'descendant, condense: below | above the inherited layers',
    'init.reinit': 'regexes of params initialized fresh (e.g. the head for new classes)',
    'init.layers': 'descendant, condense from init.source: the block indices to inherit',
    'pool.supervise': 'pool_distill: every | last (the official code\'s)',
    'stitch.rule': 'stitched: snnet | pool (narrow -> wide at neighbouring cuts)',
}


def describe(config: ml_collections.ConfigDict) -> str:
  """One line per field: name = value, and what it means where FIELD_DOCS says."""
  def flat(d, prefix=''):
    for k, v in d.items():
      if isinstance(v, dict) and v:
        yield from flat(v, f'{prefix}{k}.')
      else:
        yield f'{prefix}{k}', v
  rows = list(flat(config.to_dict()))
  width = max(len(f'{k} = {v!r}') for k, v in rows)
  return '\n'.join((f'{f"{k} = {v!r}":<{width}}' + (f'  # {FIELD_DOCS[k]}' if k in FIELD_DOCS else '')).rstrip()
                   for k, v in rows)
