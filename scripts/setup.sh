#!/usr/bin/env bash
# Fresh machine (Python 3.11, pip, root): the pinned CPU torch, the package, the offline data sets.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet torch==2.13.0          # pinned first: nothing may pull a CUDA build
python3 -m pip install --quiet -e ".[data]"
python3 -m pip install --quiet ninja                  # builds the fused CPU kernels (snrprune.fused)
python3 -c 'import snrprune.fused as f; f.kernels()'  # built now (~30 s, cached), not at the first pruning step
bash scripts/install-datasets.sh
