#!/usr/bin/env bash
# Here (with network): download the wheels the GPU machine lacks into build/gpu-wheels/.
#   bash scripts/gpu_study/fetch_wheels.sh [PYTHON_VERSION] [DEST]      (default 3.12 build/gpu-wheels)
# The GPU machine's python3 (/opt/torch/.venv) is 3.12 (as seen in 2026-11); it has torch 2.11,
# torchvision, numpy, pandas, pyarrow, pyyaml, safetensors, tqdm, scipy and an older Pillow.
# Carried: the codec plugins at the versions of this checkout's .venv, and Pillow itself, so
# that JPEG, WebP, JPEG 2000 and AVIF come from the same libraries as here (byte-identical files).
# EXTRA="safetensors tqdm pyyaml" adds packages for a machine without them.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYVER=${1:-3.12}
DEST=${2:-build/gpu-wheels}
PIP=${PIP:-.venv/bin/pip}
version() { .venv/bin/python -c "from importlib.metadata import version; print(version('$1'))"; }
pins=""
for name in pillow pillow-heif pillow-jxl-plugin pytorch-msssim compressai ${EXTRA:-}; do
  pins="$pins $name==$(version "$name")"
done
rm -rf "$DEST"
mkdir -p "$DEST"
$PIP download --quiet --no-deps --only-binary=:all: --implementation cp --python-version "$PYVER" \
  --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST" $pins
echo "$PYVER" > "$DEST/PYTHON_VERSION"
ls -l "$DEST"
du -cb "$DEST"/*.whl | tail -1 | awk '{printf "wheels: %.2f MiB\n", $1 / 1048576}'
