#!/usr/bin/env bash
# Runs the paper suite cell by cell, cheapest first, resumable (run it again after any interruption).
# Each finished run's small files land in benchmarks/results/paper/ (commit them as they come).
# Arguments, if any, are --only patterns run in that order instead (e.g. 'mnist-lenet300/snr-auto/*').
set -u
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}
if [ $# -gt 0 ]; then
    patterns=("$@")
else
    patterns=()
    for cell in mnist-lenet300 digits-mlp letter-mlp magic-mlp pendigits-mlp satimage-mlp optdigits-mlp adult-mlp \
                mnist1d-mlp mnist1d-conv1d mnist-lenet5 fashion-mnist-lenet5 fashion-mnist-resnet20; do
        patterns+=("$cell/*")
    done
fi
for pattern in "${patterns[@]}"; do
    nice -n 5 python3 -m snrprune bench benchmarks/suites/paper.py --resume --jobs "$JOBS" --threads 1 --only "$pattern"
done
