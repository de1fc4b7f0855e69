#!/usr/bin/env bash
# Installs the pinned CPU torch, the package and the test dependencies, then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet torch==2.13.0
python3 -m pip install --quiet -e ".[test]"
python3 -m pip install --quiet ninja   # the fused CPU kernels are built with it (else: eager fallback, their tests skip)
python3 -c 'import snrprune.fused as f; f.kernels()'  # built (and cached) once, before the tests time anything
# The Lightning extra without dependency resolution, so that it cannot replace the pinned torch;
# its pure-Python dependencies are named explicitly (none of them requires torch).
python3 -m pip install --quiet --no-deps "lightning>=2.1,<3" "pytorch-lightning>=2.1,<3" "lightning-utilities>=0.10,<1" "torchmetrics>=0.7,<2"
python3 -m pip install --quiet "fsspec>=2022.5" "pyyaml>5.4" "packaging>=23" "typing-extensions>4.5" "tqdm>=4.57"
# The Hugging Face extra the same way: transformers and accelerate without their dependencies, then
# what their metadata requires except torch and `kernels` (no release of it matches; transformers
# imports without it). torch-pruning (it needs only torch and numpy) likewise.
python3 -m pip install --quiet --no-deps "transformers>=5,<6" "accelerate>=1,<2" "torch-pruning>=1.6,<2"
python3 - <<'PY' | xargs python3 -m pip install --quiet
from importlib.metadata import requires
from packaging.requirements import Requirement
for dist in ("transformers", "accelerate", "torch-pruning"):
    for text in requires(dist) or []:
        r = Requirement(text)
        if r.name.lower() not in ("torch", "kernels") and (r.marker is None or r.marker.evaluate({"extra": ""})):
            print(f"{r.name}{r.specifier}")
PY
python3 -c 'import torch, lightning, transformers, accelerate, torch_pruning; assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__'
python3 -m pytest tests
