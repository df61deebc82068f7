"""The import layering: lower packages never import higher ones, so each can be used alone.

  models, data   nothing above them (tree is below everything)
  checkpoint     models only: never learngene or train
  learngene      models, checkpoint: never train
  train          anything in the library
  the library    never its command lines (train.py, expand.py) or benchmarks
"""
import ast
import os

import pytest

from conftest import ROOT

LIB = os.path.join(ROOT, 'lgjax')
FORBIDDEN = {
    'models': ('lgjax.data', 'lgjax.checkpoint', 'lgjax.learngene', 'lgjax.train'),
    'data': ('lgjax.models', 'lgjax.checkpoint', 'lgjax.learngene', 'lgjax.train'),
    'checkpoint': ('lgjax.learngene', 'lgjax.train', 'lgjax.data'),
    'learngene': ('lgjax.train',),
    'train': (),
}
CLIS = ('train', 'expand', 'benchmarks', 'configs')


def imports(path):
  """Every module a file imports, at any depth (function-level imports count too)."""
  tree = ast.parse(open(path).read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module
      yield from (f'{node.module}.{a.name}' for a in node.names)


def files(package):
  for root, _, names in os.walk(os.path.join(LIB, package)):
    yield from (os.path.join(root, n) for n in names if n.endswith('.py'))


@pytest.mark.parametrize('package', sorted(FORBIDDEN))
def test_packages_import_nothing_above_them(package):
  bad = sorted({(os.path.relpath(f, ROOT), m) for f in files(package) for m in imports(f)
                if any(m == x or m.startswith(x + '.') for x in FORBIDDEN[package] + CLIS)})
  assert not bad, f'{package} imports above its layer: {bad}'


def test_the_checker_sees_function_level_imports(tmp_path):
  path = tmp_path / 'x.py'
  path.write_text('def f():\n  from lgjax.train import loop\n  import expand\n')
  assert set(imports(str(path))) >= {'lgjax.train', 'lgjax.train.loop', 'expand'}
