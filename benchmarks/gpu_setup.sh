# Sourced by the gpu_*.sh scripts: cd to the repository, $OUT and $PY set, JAX with CUDA
# (the installed one if it sees a GPU, else the CUDA build from the registry), lgjax importable
# (from wheels in .whl/ where the machine has no registry: benchmarks/gpu_wheels.sh makes them).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ! $PY -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
  $PY -m pip install -q -U "jax[cuda13]" || $PY -m pip install -q -U "jax[cuda12]" || exit 1
fi
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/lgjax_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/lgjax_site:$PWD
else
  $PY -m pip install -q -e . || exit 1
fi
