#!/usr/bin/env bash
# One device call of the study; every call is this same command (scripts/gpu_study/README.md):
#   bash scripts/gpu_study/call.sh [BUDGET_S] [CONFIG]        (default 570 scripts/gpu_study/study.yaml)
# Installs the carried wheels (once per warm machine), unpacks the carried data packs, runs the
# unfinished steps until BUDGET_S seconds after the start, then packs the results into $OUT.
# Env: SEMLIC_GIT_REV (the revision the rows record: no git checkout travels), STUDY_WORKDIR
# (default build/gpu-run: ignored, never carried, kept while the machine is warm), PACKS
# (default build/gpu-data), PACK_MODELS=1 (also bring the models back, fp16, in 15 MiB parts).
set -uo pipefail
start=$(date +%s)
cd "$(dirname "$0")/../.."
BUDGET=${1:-570}
CONFIG=${2:-scripts/gpu_study/study.yaml}
WORK=${STUDY_WORKDIR:-build/gpu-run}
OUTDIR=${OUT:-build/gpu-out}
mkdir -p "$WORK/logs" "$OUTDIR"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if [ -z "${STUDY_NO_INSTALL:-}" ]; then   # STUDY_NO_INSTALL=1: a Python that has everything (the dry run here)
  source scripts/gpu_study/install_wheels.sh build/gpu-wheels build/gpu-site || exit 3
fi
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv,noheader 2>/dev/null || true
"${PYTHON:-python3}" scripts/gpu_study/run.py auto --workdir "$WORK" --config "$CONFIG" --packs "${PACKS:-build/gpu-data}" \
  --deadline $((start + BUDGET - 35))
status=$?
"${PYTHON:-python3}" scripts/gpu_study/run.py pack --workdir "$WORK" --config "$CONFIG" --out "$OUTDIR" \
  ${PACK_MODELS:+--models}
cp "$WORK/logs/runner.log" "$OUTDIR/runner.log" 2>/dev/null
echo "call.sh: auto exit $status ($( [ $status = 0 ] && echo 'STUDY COMPLETE' || echo 'make the next call')), $(( $(date +%s) - start )) s"
exit $status
