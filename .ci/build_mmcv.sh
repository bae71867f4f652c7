#!/usr/bin/env bash
# Build mmcv 2.1.0 (with compiled ops) once per machine and torch version, into a wheel cache.
# Usage: .ci/build_mmcv.sh PYTHON   (PYTHON: an interpreter whose environment already has torch==2.13.0)
# Prints the wheel path. Never builds twice: a cached wheel is reused.
set -euo pipefail
PY=${1:?python interpreter}
TORCH=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
CACHE=${AIQVIT_WHEEL_CACHE:-$HOME/.cache/aiqvit/wheels}/torch-$TORCH
mkdir -p "$CACHE"
if ls "$CACHE"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then ls "$CACHE"/mmcv-2.1.0-*.whl | head -1; exit 0; fi
"$PY" -m pip install -q "setuptools>=77,<82" wheel ninja >&2
SRC=$(mktemp -d)
# pip prepares the sdist's metadata while downloading: without --no-build-isolation it does so
# with the newest setuptools, whose missing pkg_resources breaks mmcv's setup.py
"$PY" -m pip download -q --no-deps --no-build-isolation --no-binary :all: mmcv==2.1.0 -d "$SRC" >&2
tar -xzf "$SRC"/mmcv-2.1.0.tar.gz -C "$SRC"
TMPW=$(mktemp -d)
( cd "$SRC/mmcv-2.1.0" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} \
    "$PY" -m pip wheel -q --no-build-isolation --no-deps . -w "$TMPW" >&2 )
mv "$TMPW"/mmcv-2.1.0-*.whl "$CACHE"/   # atomic within one filesystem is not guaranteed; the glob check above only sees complete files after mv
ls "$CACHE"/mmcv-2.1.0-*.whl | head -1
