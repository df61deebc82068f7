import importlib

import pytest

from configs import common
from lgjax import tree as tree_lib
from lgjax.models import check_config, param_shapes
from lgjax.train import kinds, loop

RECIPES = ('teacher', 'tleg_aux', 'sws_aux', 'descendant')


@pytest.mark.parametrize('recipe', RECIPES)
@pytest.mark.parametrize('preset', common.PRESETS)
def test_every_config_loads(recipe, preset):
  config = importlib.import_module(f'configs.{recipe}').get_config(preset)
  for field in ('total_epochs', 'total_steps', 'batch_size', 'seed', 'checkpoint_every', 'eval_every'):
    assert field in config
  check_config(config.model.to_dict())
  assert config.kind in kinds.KINDS
  assert config.model.num_classes is None  # the dataset's, set at run time
  if config.kind == 'aux':
    assert config.loss.alpha == 1.0  # the papers distill the aux model from a teacher
  if preset == 'mnist5k':  # big presets need a prepared tfds dir: the rest must pass the checks
    config.teacher.dir = '/teacher' if config.loss.alpha else ''
    if config.kind == 'descendant':
      config.init.learngene_dir = '/learngene'
    loop.check_config(config)
    assert loop.resolve(config).model.num_classes == config.dataset.num_classes


def test_paper_settings():
  tleg = importlib.import_module('configs.tleg_aux').get_config('imagenet2012')
  assert tleg.model.depth == 12 and tleg.model.width == 384  # DeiT-S aux, 12 layers
  assert tleg.optimizer.lr == 5e-4 and tleg.optimizer.weight_decay == 0.05
  assert tleg.optimizer.warmup_epochs == 5 and tleg.total_epochs == 150
  sws = importlib.import_module('configs.sws_aux').get_config('imagenet2012')
  assert list(sws.learngene.stage_depths) == [3, 3, 4, 3, 3] and sws.model.depth == 16
  desc = importlib.import_module('configs.descendant').get_config('cifar100')
  assert desc.dataset.num_classes == 100 and desc.optimizer.warmup_epochs == 0
  assert desc.total_epochs == 40 and desc.total_steps is None  # resolved to steps at run time


def test_durations_resolve_from_epochs_at_run_time():
  """Epochs become steps from the training split and the batch: a new batch size keeps the
  epochs; total_steps / warmup_steps, when set, win (big_vision's rule)."""
  config = importlib.import_module('configs.pool_distill').get_config('mnist5k')  # 15 epochs, 1 warmup
  resolved = loop.resolve(config)
  assert (resolved.total_steps, resolved.optimizer.warmup_steps) == (round(15 * 2000 / 128), round(2000 / 128))
  config.batch_size = 256
  resolved = loop.resolve(config)
  assert (resolved.total_steps, resolved.optimizer.warmup_steps) == (round(15 * 2000 / 256), round(2000 / 256))
  config.dataset.train_fraction = 0.5  # epochs over the examples actually used
  assert loop.resolve(config).total_steps == round(15 * 1000 / 256)
  config.total_steps, config.optimizer.warmup_steps = 7, 2
  resolved = loop.resolve(config)
  assert (resolved.total_steps, resolved.optimizer.warmup_steps) == (7, 2)
  assert config.total_epochs == 15  # the caller's config is left as it was


def test_unknown_preset():
  for recipe, arg, form in [('teacher', 'mnist', r'PRESET\[,SIZE\]\[,runlocal\] \(SIZE one of '
                                                 r"\('Ti', 'S', 'B', 'L', 'H'\), not for mnist5k\)"),
                            ('teacher', 'mnist5k,tiny', r'PRESET\[,SIZE\]'),
                            ('teacher', 'mnist5k,L', r'PRESET\[,SIZE\]'),
                            ('teacher', 'imagenet2012,XL', r'PRESET\[,SIZE\]'),
                            ('teacher', 'imagenet2012,runlocal,L', r'PRESET\[,SIZE\]'),
                            ('pool_distill', 'imagenet2012,L', r'PRESET\[,runlocal\]')]:
    with pytest.raises(ValueError, match=rf"config arg must be {form}.* with PRESET one of \('mnist5k', "
                       rf"'cifar100', 'imagenet2012'\), got {arg!r}"):
      importlib.import_module(f'configs.{recipe}').get_config(arg)


def vit_params(width, heads, mlp, depth, patch, classes=1000, image=224):
  """Parameters of a gap-pooled ViT (no cls token), counted by hand."""
  del heads  # q, k, v and out are width x width whatever the heads
  block = 4 * (width * width + width) + 2 * width * mlp + mlp + width + 2 * 2 * width
  embed = patch * patch * 3 * width + width + (image // patch) ** 2 * width
  return embed + depth * block + 2 * width + width * classes + classes


@pytest.mark.parametrize('size, millions', [('B', 86.57), ('L', 304.33), ('H', 632.05)])  # timm's, with a cls token
def test_sizes_are_the_papers_models(size, millions):
  config = importlib.import_module('configs.teacher').get_config(f'imagenet2012,{size}')
  width, heads, mlp, depth, patch = common.SIZES[size]
  assert (config.model.width, config.model.num_heads, config.model.mlp_dim, config.model.depth,
          config.model.patch_size) == (width, heads, mlp, depth, patch)
  config.model.num_classes = 1000
  count = tree_lib.num_params(param_shapes(config.model.to_dict(), (224, 224, 3)))
  assert count == vit_params(width, heads, mlp, depth, patch)
  assert round((count + 2 * width) / 1e6, 2) == millions  # + cls token and its position
  descendant = importlib.import_module('configs.descendant').get_config(f'cifar100,{size}')
  assert (descendant.model.width, descendant.model.depth) == (width, 12)  # a size sets the width, not the depth
  small = importlib.import_module('configs.tleg_aux').get_config(f'imagenet2012,{size},runlocal')
  assert (small.model.width, small.total_steps) == (32, 4)


def parse(recipe, *overrides):
  """The config train.py gets for --config=configs/RECIPE.py:mnist5k and `overrides`."""
  from absl import flags
  from ml_collections import config_flags
  argv = ['train.py', f'--config=configs/{recipe}.py:mnist5k', *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=values, sys_argv=argv)  # as train.py, on argv
  values(argv)
  return values.config


def test_sequence_fields_are_settable_from_the_command_line():
  init = parse('descendant', '--config.init.layers=(4, 5)', "--config.init.reinit=('^head/', '^cls$')",
               '--config.init.stage_depths=(1, 2)').init
  assert (init.layers, init.reinit, init.stage_depths) == ((4, 5), ('^head/', '^cls$'), (1, 2))
  assert parse('sws_aux', '--config.learngene.stage_depths=(3, 3)').learngene.stage_depths == (3, 3)
  assert parse('stitched', '--config.stitch.specs=((0, 2, 1, 2),)').stitch.specs == ((0, 2, 1, 2),)


@pytest.mark.parametrize('recipe', [*RECIPES, 'pool_distill', 'stitched', 'wave_aux', 'wave_scalers'])
def test_every_recipe_takes_the_vits_runtime_fields_from_the_command_line(recipe):
  """attention_impl (cuDNN's fused attention on GPUs), norm_impl, mlp_impl, qkv_impl and remat_policy
  are unset (None) in the presets, and settable: a field a preset leaves out cannot be set
  with --config.model.X."""
  from lgjax.models import ViTConfig
  fields = ('attention_impl', 'norm_impl', 'mlp_impl', 'qkv_impl', 'remat_policy')
  defaults = parse(recipe).model
  assert [defaults[f] for f in fields] == [None] * 5
  values = ('cudnn', 'pallas', 'pallas', 'pallas', 'dots_saveable')
  model = parse(recipe, *(f'--config.model.{f}={v}' for f, v in zip(fields, values))).model
  config = ViTConfig.of({**model.to_dict(), 'num_classes': 5})
  assert tuple(getattr(config, f) for f in fields) == values


@pytest.mark.parametrize('args, message', [
    (['--config.total_step=3'], "train.py: unknown config field 'total_step'. Did you mean \"total_steps\""),
    pytest.param(['--config.model.flash=1'], "train.py: unknown config field 'model.flash' (--helpshort",
                 marks=pytest.mark.slow),  # the cases that are like another: a fresh process each, the slow tier
    (['--config.loss.alpha=2'], 'train.py: loss.alpha (distillation weight) must be in [0, 1], got 2.0.\n'),
    # a recipe's runs are all checked before the first trains
    (['--config=configs/demo.py:mnist5k', '--config.runs.depth6_tleg.model.depth=0'],
     'train.py: runs.depth6_tleg: model.depth must be an integer >= 1, got 0.\n'),
    pytest.param(['--config=configs/demo.py:mnist5k', "--config.order=('teacher', 'depth3_tleg')"],
                 "train.py: order names runs that runs lacks: ['depth3_tleg']; runs has ['depth2_scratch', ",
                 marks=pytest.mark.slow),
    # the recipe file or its preset
    (['--config=configs/techer.py:mnist5k', '--config.total_steps=3'],
     "train.py: --config: [Errno 2] No such file or directory: 'configs/techer.py'; the recipes are configs/demo.py, "),
    pytest.param(['--config=configs/teacher.py:mnist'], "train.py: flag --config=configs/teacher.py:mnist: config arg "
                 "must be PRESET[,SIZE][,runlocal] (SIZE one of ('Ti', 'S', 'B', 'L', 'H'), not ", marks=pytest.mark.slow),
    # a directory the config names that holds nothing to read: the field, before anything is written
    (['--config=configs/tleg_aux.py:mnist5k', '--config.teacher.dir=/nonexistent/teacher'],
     "train.py: teacher.dir='/nonexistent/teacher': Missing '/nonexistent/teacher/model_config.json'.\n"),
])
def test_a_config_typo_or_bad_value_is_one_line_before_any_work(args, message, tmp_path):
  import subprocess
  import sys
  from conftest import ROOT
  config = [] if args[0].startswith('--config=') else ['--config=configs/teacher.py:mnist5k']
  out = subprocess.run([sys.executable, 'train.py', *config, *args, f'--workdir={tmp_path / "run"}'],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and out.stderr.count('\n') == 1, out.stderr
  assert out.stderr.startswith(message), out.stderr
  assert not (tmp_path / 'run').exists()


def test_print_config_lists_fields_values_and_meaning():
  from configs import common, descendant
  lines = common.describe(descendant.get_config('mnist5k')).splitlines()
  assert any(line.startswith("init.method = 'tleg'") and line.endswith('# descendant: scratch | a learngene method (lgjax.learngene.METHODS)')
             for line in lines)
  assert any(line.startswith('optimizer.lr = 0.008') and 'per 512 examples' in line for line in lines)
  assert all(line == line.rstrip() for line in lines)


def test_the_data_extra_brings_tensorflow_for_tfds_build():
  import configparser
  import os
  from conftest import ROOT
  setup = configparser.ConfigParser()
  setup.read(os.path.join(ROOT, 'setup.cfg'))
  assert any(line.startswith('tensorflow') for line in setup['options.extras_require']['data'].split())
