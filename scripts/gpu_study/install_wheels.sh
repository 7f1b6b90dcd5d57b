#!/usr/bin/env bash
# There (GPU machine, no network): source it to install the carried wheels into an ignored
# folder of the working tree and put it first on PYTHONPATH (with the repository, for semlic).
#   source scripts/gpu_study/install_wheels.sh [WHEELS] [SITE]   (default build/gpu-wheels build/gpu-site)
# Installs once per set of wheels (a stamp holds their hash); the folder stays while the
# machine is warm, so later calls need not carry the wheels again.
_wheels=${1:-build/gpu-wheels}
_site=${2:-build/gpu-site}
_py=${PYTHON:-python3}
_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if ls "$_wheels"/*.whl >/dev/null 2>&1; then
  _stamp="$_site/.stamp-$(cat "$_wheels"/*.whl | sha256sum | cut -c1-16)"
  if [ ! -f "$_stamp" ]; then
    rm -rf "$_site"
    "$_py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$_site" "$_wheels"/*.whl \
      || { echo "install_wheels: pip failed (is the machine's Python $(cat "$_wheels/PYTHON_VERSION" 2>/dev/null)?" \
                "run fetch_wheels.sh with its version)"; return 3 2>/dev/null || exit 3; }
    touch "$_stamp"
  fi
elif [ ! -d "$_site" ]; then
  echo "install_wheels: no wheels in $_wheels and nothing installed in $_site (carry build/gpu-wheels)"
  return 3 2>/dev/null || exit 3
fi
export PYTHONPATH="$(cd "$_site" && pwd):$_repo${PYTHONPATH:+:$PYTHONPATH}"
"$_py" - <<'PY' || { return 3 2>/dev/null || exit 3; }
import PIL, pillow_heif, pillow_jxl, pytorch_msssim, safetensors, yaml, tqdm, torch
import compressai.models  # the hyperprior (CompressAI bmshj2018-hyperprior)
from PIL import Image, features
pillow_heif.register_heif_opener()  # as semlic.image_codecs does
missing = [f for f, ok in (("HEIF", "HEIF" in Image.SAVE), ("JXL", "JXL" in Image.SAVE),
                           ("AVIF", features.check("avif")), ("WEBP", features.check("webp")),
                           ("JPEG2000", features.check("jpg_2000"))) if not ok]
print(f"install_wheels: Pillow {PIL.__version__} from {PIL.__file__.rsplit('/', 2)[0]}, pillow-heif "
      f"{pillow_heif.__version__}, torch {torch.__version__}, cuda {torch.cuda.is_available()}"
      + (f"; MISSING codecs {missing}" if missing else ""))
raise SystemExit(3 if missing else 0)
PY
