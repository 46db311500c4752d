#!/usr/bin/env bash
# GPU check (issue 23, item 6): align's headline figures on one GPU, in at most 8 minutes.
#
# How to run on a GPU machine (run it first, before anything else):
#   bash benchmarks/gpu_check.sh [OUTDIR]              # default OUTDIR ./gpu_check_out; on the device: "$OUT"
#   bash benchmarks/gpu_check.sh --dry-run [OUTDIR]    # CPU, tiny sizes, every step (what the test runs)
# Python: $PYTHON (default python3) must import torch and align's dependencies; the script puts this checkout
# first on PYTHONPATH. The lent H200 (no network) lacks ~24 MB of them: here, `bash benchmarks/gpu_check_wheels.sh`
# puts them in .whl/; then one device call with carry [".whl"] and timeout_s 600:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site && PYTHON=python3 bash benchmarks/gpu_check.sh "$OUT"
# and put the figures of $OUT/gpu_check.md into benchmarks/RESULTS.md with the machine and this command.
# open_clip_train (the baseline) runs from $OPENCLIP_PYTHON, else .bench_env/bin/python
# (tools/make_openclip_env.sh), else $PYTHON when that imports open_clip_train.main (open_clip_torch ships
# it; its synthetic data needs no old webdataset); $OPENCLIP_PYTHONPATH is its PYTHONPATH (default: none
# for a separate python, $PYTHONPATH when it is $PYTHON). Without it the
# output says so and align is still measured. Scratch files go to $GPU_CHECK_WORK (default
# ${TMPDIR:-/tmp}/gpu_check_work, ~1 GB); OUTDIR receives only gpu_check.json, gpu_check.md, gpu_check.log.
#
# Parts, each with its own time budget (seconds; the sum stays under 8 min), each in its own process;
# a part that fails or runs out of time is recorded as such in the JSON and the next one runs:
#   env        machine, versions, the peak FLOP/s (align/train/perf.py's table: H100/H200 dense bf16 989e12)
#   data       10k random 256 px JPEGs in 100 classes -> align's shard writer, CLIP_benchmark layout
#   throughput ViT-B/32 224 px bf16 batch 256: align, align untrimmed, open_clip_train; samples/s, MFU, peak memory
#   maxbatch   largest batch whose training step fits in 80 GB with the chunked loss (doubling, then bisection)
#   zeroshot   `align bench zeroshot` vs the clip_benchmark CLI on the GPU, 10k items, wall time each
#   retrieval  exact 100k x 100k search on the GPU (FAISS GPU if present, else torch matmul + topk)
# An optional part runs only when named, in a second device call after the check (the parts' JSON of the first
# stays in $GPU_CHECK_WORK and the report covers both):
#   bash benchmarks/gpu_check.sh --parts compile "$OUT"     # align with train.compile (240 s budget)
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
OUTDIR=""
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --parts) ONLY=${2:-}; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $1 (use --dry-run, --parts LIST, OUTDIR)" >&2; exit 2 ;;
    *) OUTDIR="$1" ;;
  esac
  shift
done
PARTS_RUN="env data throughput maxbatch zeroshot retrieval"
if [ -n "$ONLY" ]; then PARTS_RUN=${ONLY//,/ }; fi
OUTDIR=${OUTDIR:-./gpu_check_out}
PY=${PYTHON:-python3}
WORK=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/gpu_check_work}
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG="$OUTDIR/gpu_check.log"
if [ -z "$ONLY" ]; then rm -rf "$WORK/parts"; fi      # --parts: the earlier call's parts stay in the report
mkdir -p "$WORK/parts" || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

if [ "$DRY" = 1 ]; then
  FLAGS=(--dry-run)
  declare -A BUDGET=([env]=60 [data]=60 [throughput]=300 [maxbatch]=150 [zeroshot]=240 [retrieval]=60 [compile]=300)
else
  FLAGS=()
  declare -A BUDGET=([env]=25 [data]=45 [throughput]=150 [maxbatch]=75 [zeroshot]=120 [retrieval]=40 [compile]=240)
fi

if [ "$DRY" = 0 ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  echo "gpu_check.sh: $PY sees no CUDA device (or no torch): these are GPU figures; use --dry-run on CPU" >&2
  exit 2
fi

# the open_clip_train baseline's python, if any
OCPY=${OPENCLIP_PYTHON:-}
if [ -z "$OCPY" ] && [ -x .bench_env/bin/python ]; then OCPY=$PWD/.bench_env/bin/python; fi
if [ -z "$OCPY" ] && PYTHONPATH=${OPENCLIP_PYTHONPATH-$PYTHONPATH} "$PY" -c "import open_clip_train.main" >/dev/null 2>&1; then
  OCPY=$(command -v "$PY")
  export OPENCLIP_PYTHONPATH=${OPENCLIP_PYTHONPATH-$PYTHONPATH}    # e.g. the wheels' --target dir
fi

T0=$(date +%s)
RCS=""
BUDGETS=""
echo "gpu_check: $( [ "$DRY" = 1 ] && echo dry-run || echo gpu ) -> $OUTDIR (work $WORK, python $PY, open_clip_train: ${OCPY:-none})" | tee "$LOG"
for part in $PARTS_RUN; do
  b=${BUDGET[$part]:-}
  if [ -z "$b" ]; then echo "gpu_check.sh: no part $part (parts: ${!BUDGET[*]})" >&2; exit 2; fi
  echo "== $part (budget ${b}s) $(date -u +%H:%M:%S)" | tee -a "$LOG"
  timeout -k 10 "$b" "$PY" benchmarks/gpu_check.py part "$part" --out "$OUTDIR" --work "$WORK" \
    --budget "$b" --openclip-python "$OCPY" "${FLAGS[@]}" >>"$LOG" 2>&1
  rc=$?
  echo "== $part exit $rc after $(( $(date +%s) - T0 ))s total" | tee -a "$LOG"
  RCS="$RCS$part=$rc,"
  BUDGETS="$BUDGETS$part=$b,"
done
"$PY" benchmarks/gpu_check.py report --out "$OUTDIR" --work "$WORK" --rcs "$RCS" --budgets "$BUDGETS" \
  --total "$(( $(date +%s) - T0 ))" "${FLAGS[@]}" 2>&1 | tee -a "$LOG"
echo "gpu_check: wrote $OUTDIR/gpu_check.json and $OUTDIR/gpu_check.md in $(( $(date +%s) - T0 ))s" | tee -a "$LOG"
