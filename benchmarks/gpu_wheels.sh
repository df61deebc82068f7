#!/usr/bin/env bash
# Run here, on a machine with the package registry, before carrying the tree to a GPU machine
# that has none: writes .whl/ (git-ignored through .git/info/exclude), the wheels gpu_setup.sh
# installs there: the dependencies the GPU image lacks, for its Python (3.12, x86-64; PYVER to
# change). Not lgjax: gpu_setup.sh puts the tree itself on the path, so the code that runs is
# the code carried. The image's own jax, flax, optax, orbax, numpy and protobuf stay theirs:
# these install with --no-deps beside them. Then carry it:
#   device run, carry: [".whl"], command: bash benchmarks/gpu_sweep.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo '/.whl/' >> .git/info/exclude; }
rm -rf .whl && mkdir .whl
# Missing from the GPU image (device/KINDS.md lists what it holds): lgjax's direct dependencies and theirs.
missing=(ml-collections grain array-record dm-tree more-itertools mlxtend tensorboardX tensorflow-datasets
         immutabledict simple-parsing docstring-parser tensorflow-metadata googleapis-common-protos termcolor toml
         portpicker)
python -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl "${missing[@]}"
python -m pip wheel -q --no-deps -w .whl promise  # tfds needs it; it is published as source only
ls .whl | wc -l | xargs echo "wheels in .whl/:"
du -sh .whl
