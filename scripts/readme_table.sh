#!/usr/bin/env bash
# Regenerates the README's "For scale" table: LeNet-300-100 on MNIST, 12 epochs, seed 0, one run per
# method, one after the other (run it on an otherwise idle machine: the wall times are the point).
# Prints the markdown rows; the runs go to a temporary folder that is removed afterwards.
set -euo pipefail
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
row() {  # label, then the train options
    local label=$1; shift
    python3 -m snrprune train --quiet --out "$out/$label" "$@" > /dev/null
    python3 - "$out/$label/summary.json" "$label" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"| {sys.argv[2]} | {100 * s['test_accuracy']:.2f}% | {100 * s['sparsity']:.2f}% | {s['wall_seconds']:.1f} s |")
EOF
}
echo "| method | test accuracy (pruned θ̂) | sparsity | wall time |"
echo "|---|---|---|---|"
row dense --method dense
row "snr (defaults)" --method snr
row "snr-auto (defaults)" --method snr-auto
row "dpf --target-sparsity 0.9" --method dpf --target-sparsity 0.9
echo
python3 -c 'import os, platform, torch; print(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")'
