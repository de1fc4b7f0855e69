#!/usr/bin/env bash
# Installs the pinned CPU torch, the package and the test dependencies, then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet torch==2.13.0
python3 -m pip install --quiet -e ".[test]"
python3 -m pytest tests
