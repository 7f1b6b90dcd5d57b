#!/usr/bin/env bash
# The device call of the study: ONE call does everything (scripts/gpu_study/README.md):
#   bash scripts/gpu_study/call.sh [BUDGET_S] [CONFIG]        (default 540 scripts/gpu_study/study.yaml)
# Installs the carried wheels, unpacks the carried data packs, runs every step (three lanes at
# once, then the final steps) until BUDGET_S seconds after the start, refreshing
# $OUT/study_results.tar.gz after every step (a call stopped at its limit still brings back what
# is finished), then packs the results and the models into $OUT.
# Env: SEMLIC_GIT_REV (the revision the rows record: no git checkout travels), STUDY_WORKDIR
# (default build/gpu-run: ignored, never carried), PACKS (default build/gpu-data),
# PACK_MODELS=0 (leave the models out; by default they come back, fp16, in 15 MiB parts).
set -uo pipefail
start=$(date +%s)
cd "$(dirname "$0")/../.."
BUDGET=${1:-540}
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
  --deadline $((start + BUDGET - 30)) --out "$OUTDIR"
status=$?
models=--models
[ "${PACK_MODELS:-1}" = 0 ] && models=
"${PYTHON:-python3}" scripts/gpu_study/run.py pack --workdir "$WORK" --config "$CONFIG" --out "$OUTDIR" $models
cp "$WORK/logs/runner.log" "$OUTDIR/runner.log" 2>/dev/null
echo "call.sh: auto exit $status ($( [ $status = 0 ] && echo 'STUDY COMPLETE' || echo 'not complete: status.json in the results says which steps stopped and why')), $(( $(date +%s) - start )) s"
exit $status
