"""Saving and restoring ViT params (learngene directories: lgjax.learngene.directory).

On-disk layouts (all readers check shapes before anything is used):

  params directory      params/ (Orbax)  + model_config.json  (ViT fields)
  stitched directory    params/ (Orbax)  + stitched_config.json (a pool's stitched model)
  big_vision .npz       one array per '/'-joined param name
  timm .safetensors     a timm/DeiT VisionTransformer state dict

`load_params(path)` reads any of the params layouts, inferring the model
config from shapes where the file carries none; `save_params` writes them.

Nothing is ever unpickled: Orbax and `np.load(..., allow_pickle=False)`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import safetensors.numpy

from lgjax import tree as tree_lib
from lgjax.checkpoint import convert
from lgjax.models import ViT, ViTConfig, blocks, check_config, config_from_params, param_shapes, stitched

PyTree = Any
PARAMS, MODEL_CONFIG = 'params', 'model_config.json'


def save_tree(path: str, tree: PyTree) -> None:
  """Writes a pytree of arrays with Orbax (overwriting), blocking until done."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(path), tree, force=True)


def restore_tree(path: str) -> PyTree:
  """Reads a pytree written by `save_tree` as uncommitted jax arrays, whatever the number
  of devices or processes that wrote it (the saved shardings are ignored)."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'No Orbax checkpoint at {path!r}.')
  with ocp.StandardCheckpointer() as ckptr:  # numpy targets: read straight to the host, no topology
    saved = ckptr.metadata(path).item_metadata.tree
    restored = ckptr.restore(path, jax.tree.map(lambda m: np.empty(m.shape, m.dtype), saved))
  return jax.tree.map(jnp.asarray, restored)  # uncommitted: jit may place them anywhere


def write_json(path: str, obj: dict) -> None:
  """Atomic write, by process 0 only (Orbax coordinates the arrays)."""
  if jax.process_index() != 0:
    return
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def read_json(path: str) -> dict:
  if not os.path.isfile(path):
    directory, name = os.path.split(path)
    hint = (f'; did you mean {os.path.join(directory, "export")!r} (the run\'s export)?'
            if os.path.isfile(os.path.join(directory, 'export', name)) else '')
    raise FileNotFoundError(f'Missing {path!r}{hint}.')
  with open(path) as f:
    try:
      obj = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not valid JSON ({e}).') from None
  if not isinstance(obj, dict):
    raise ValueError(f'{path}: expected a JSON object, got a {type(obj).__name__}.')
  return obj


def load_from(field: str, path: str, load: Callable[[str], Any]) -> Any:
  """load(path) for the directory config field `field` holds: a missing file names the
  field, the flag to fix (--config.teacher.dir, ...)."""
  try:
    return load(path)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{field}={path!r}: {e}') from None


def image_shape_of(params: PyTree, model_config: dict) -> tuple[int, int, int]:
  """The smallest square (H, W, C) input that the params' shapes imply."""
  ph, pw, channels, _ = np.shape(params['embedding']['kernel'])
  tokens = np.shape(params['pos_embedding'])[1] if 'pos_embedding' in params else 1
  side = math.isqrt(tokens)
  if side * side != tokens:
    raise ValueError(f'pos_embedding has {tokens} tokens; lgjax reads square grids only.')
  return side * ph, side * pw, channels


def check_params(params: PyTree, model_config: dict, what: str = 'params') -> None:
  """Names every key whose presence or shape does not fit ViT(**model_config)."""
  check_config(model_config)
  if 'embedding' not in params:
    raise ValueError(f'{what}: missing key "embedding"; not a ViT param tree.')
  got = {'depth': blocks.depth(params), 'width': np.shape(params['embedding']['kernel'])[-1],
         'scan': blocks.is_scanned(params)}
  for field, value in got.items():
    if model_config.get(field, getattr(ViT, field)) != value:
      raise ValueError(f'{what} have {field}={value} but model_config has '
                       f'{field}={model_config.get(field, getattr(ViT, field))!r}.')
  expected = param_shapes(model_config, image_shape_of(params, model_config))
  tree_lib.check_shapes(params, expected, what)


FORMATS = ('orbax', 'npz', 'safetensors')
SAFETENSORS_CONFIG = 'lgjax_model_config'  # safetensors header key of an lgjax export's model config


def check_file_arrays(arrays: dict[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
  """Float arrays of a params file as float32, refusing other dtypes and NaN/Inf by file and key."""
  out = {}
  for key, x in arrays.items():
    x = np.asarray(x)
    if x.dtype.kind != 'f' and x.dtype.name != 'bfloat16':
      raise ValueError(f'{path}: {key!r} has dtype {x.dtype}; params must be floating point.')
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
      raise ValueError(f'{path}: {key!r} holds NaN or Inf.')
    out[key] = x
  return out


def _read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict]:
  """(arrays, the lgjax model config in its header or {})."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No safetensors file at {path!r}.')
  with safetensors.safe_open(path, framework='np') as f:
    header = f.metadata() or {}
    arrays = {k: f.get_tensor(k) for k in f.keys()}
  try:
    saved = json.loads(header[SAFETENSORS_CONFIG]) if SAFETENSORS_CONFIG in header else {}
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: header {SAFETENSORS_CONFIG!r} is not valid JSON ({e}).') from None
  return check_file_arrays(arrays, path), saved


def save_params(path: str, params: PyTree, model_config: dict, format: str = 'orbax') -> None:
  """Writes ViT params: 'orbax' (a directory: params/ + model_config.json),
  'npz' (big_vision's flat file) or 'safetensors' (a timm state dict)."""
  if format not in FORMATS:
    raise ValueError(f'format must be one of {FORMATS}, got {format!r}.')
  check_params(params, model_config)
  if format == 'npz':
    save_npz(path, params)
  elif format == 'safetensors':  # the config rides in the header: timm's keys cannot tell num_heads
    if jax.process_index() == 0:
      safetensors.numpy.save_file(convert.to_timm(params, model_config), path,
                                  metadata={SAFETENSORS_CONFIG: json.dumps(dict(model_config))})
  else:
    os.makedirs(path, exist_ok=True)
    save_tree(os.path.join(path, PARAMS), params)
    write_json(os.path.join(path, MODEL_CONFIG), dict(model_config))


def load_params(path: str, **overrides: Any) -> tuple[PyTree, ViTConfig]:
  """(params, model_config) such that ViT(**model_config).apply({'params': params}, x) runs.

  `path`: an lgjax params directory, a big_vision `.npz` or a timm
  `.safetensors` file. For files the config is read off the shapes (and,
  for timm, set to compute what timm computes) unless lgjax wrote the file
  (its config rides in the safetensors header); `overrides` set ViT fields
  shapes cannot tell, e.g. num_heads=12 for a timm model whose heads are not 64 wide.
  File arrays must be floating point and finite; they load as float32.
  """
  try:
    params, model_config = _read_params(path, overrides)
    model_config = ViTConfig.of(model_config)
    check_params(params, model_config, f'params in {path!r}')
  except (ValueError, TypeError, KeyError, IndexError) as e:  # say which file, whatever went wrong
    message = str(e) if path in str(e) else f'{path}: {e}'
    raise type(e)(message) if isinstance(e, ValueError) else ValueError(message) from None
  return params, model_config


def _read_params(path: str, overrides: dict) -> tuple[PyTree, dict]:
  if path.endswith('.npz'):
    params = convert.from_big_vision(_read_npz(path))
    model_config = config_from_params(params, **overrides)
  elif path.endswith('.safetensors'):
    arrays, saved = _read_safetensors(path)
    params, implied = convert.from_timm(arrays, overrides.get('num_heads', saved.get('num_heads')))
    # An lgjax export carries its config; other timm files get one read off the shapes.
    model_config = {**saved, **overrides} if saved else config_from_params(params, **{**implied, **overrides})
  else:
    model_config = {**read_json(os.path.join(path, MODEL_CONFIG)), **overrides}
    params = restore_tree(os.path.join(path, PARAMS))
  return params, model_config


STITCHED_CONFIG = 'stitched_config.json'


def save_stitched(directory: str, module: Any, params: PyTree) -> None:
  """Writes a stitched pool model: params/ (Orbax) + stitched_config.json (its fields)."""
  os.makedirs(directory, exist_ok=True)
  save_tree(os.path.join(directory, PARAMS), params)
  write_json(os.path.join(directory, STITCHED_CONFIG),
              {'front': module.front, 'end': module.end, 'j': module.j, 'k': module.k, 'stitch': module.stitch})


def load_model(directory: str) -> tuple[Any, PyTree]:
  """(module, params) of a params directory: a ViT, or a stitched pool model."""
  if not os.path.isfile(os.path.join(directory, STITCHED_CONFIG)):
    params, config = load_params(directory)
    return ViT(**config), params
  fields = read_json(os.path.join(directory, STITCHED_CONFIG))
  module = stitched.StitchedViT(**fields)
  params = restore_tree(os.path.join(directory, PARAMS))
  image = jnp.zeros((1, *image_shape_of(params, fields['front'])), jnp.float32)
  expected = jax.eval_shape(module.init, jax.random.key(0), image)['params']
  tree_lib.check_shapes(params, expected, f'stitched params in {directory!r}')
  return module, params


def save_npz(path: str, params: PyTree) -> None:
  """big_vision's flat layout: one array per '/'-joined param name."""
  flat = {name: np.asarray(x) for name, x in tree_lib.flatten_with_names(params)}
  np.savez(path, **flat)


def _read_npz(path: str) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No npz file at {path!r}.')
  with np.load(path, allow_pickle=False) as data:
    return check_file_arrays({k: data[k] for k in data.files}, path)


def load_npz(path: str) -> PyTree:
  """Reads a flat '/'-keyed npz into a nested tree; never unpickles."""
  return tree_lib.unflatten_names(_read_npz(path))
