#!/usr/bin/env bash
# Create .venv-dgl: DGL 2.1 (CPU, from PyPI) with the torch it supports, plus this project,
# for the DGL comparison tests and benchmarks. Idempotent: does nothing when the stamp
# file records the same requirements.
#
# DGL 2.1.0 needs torch 2.2.x, numpy<2, setuptools<70 (pkg_resources), torchdata 0.7.1,
# pandas, pydantic and pyyaml. PyPI's torch 2.2.1 is the CUDA build; it runs on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-dgl}
REQS="dgl==2.1.0 torch==2.2.1 numpy<2 setuptools<70 torchdata==0.7.1 pandas pydantic pyyaml"
# pytest: `make test-dgl` runs tests/dgl_backend here; PyG 2.6 (it runs on torch 2.2): the
# heterogeneous DGL tests compare to_dgl and the DGL models with to_pyg and the PyG models.
RUNTIME="numba lmdb scipy<1.14 psutil tqdm pytest torch_geometric==2.6.1"
STAMP="$VENV/.dgl-env-stamp"
WANT="$REQS | $RUNTIME | $(sha1sum pyproject.toml | cut -c1-12)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    echo "$VENV is up to date"
    exit 0
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# shellcheck disable=SC2086
"$VENV/bin/pip" install -q $REQS
"$VENV/bin/pip" install -q -e . --no-deps
# oocstore's runtime dependencies that fit numpy<2 (zarr 3 needs numpy>=1.25, fine; it is
# only used by ingest, not by the DGL tests).
# shellcheck disable=SC2086
"$VENV/bin/pip" install -q $RUNTIME "numpy<2"
"$VENV/bin/python" -c "import dgl, torch, numpy, oocstore; print('dgl', dgl.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__)"
echo "$WANT" > "$STAMP"
