#!/usr/bin/env bash
# Issue 12 on the H200: the MiniCPM-o GEMM set tuned with tuner's persistent TMA GEMM in the search
# (beside FlagGems' kernels and split-K), FlagGems untuned and cuBLAS timed beside it in one run.
# Steps (one device call each, back to back while the machine stays warm):
#   bash tuner/benchmarks/vllm_h200.sh setup      wheels + the project snapshot (.whl, .snap carried)
#   bash tuner/benchmarks/gemm_h200.sh probe      GPU tests of the persistent kernel, copy bandwidth
#   bash tuner/benchmarks/gemm_h200.sh tune OP SHAPE...   `tuner tune` into $GEMM_DB (TRIALS, KEY_TIMEOUT)
# The database ($GEMM_DB) lives in /tmp while the machine stays warm (the stored H200 databases
# hold records of kernel sources since changed: a new run starts empty) and comes back under $OUT
# with `db show --json` and the report.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); stamp() { echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
export PYTHONPATH=/tmp/tuner:/tmp/site PYTHONUNBUFFERED=1
RES=tuner/benchmarks/results/gemm_h200
GEMM_DB=${GEMM_DB:-/tmp/gemm.db}

[ -f /tmp/copy_bw.json ] || { [ -f "$RES/copy_bw.json" ] && cp "$RES/copy_bw.json" /tmp/copy_bw.json; }
case "${1:?usage: gemm_h200.sh probe|tune OP SHAPE...}" in
probe)
  cd /tmp/tuner || exit 1
  stamp "copy bandwidth"; python3 -m tuner.benchmarks.copy_bw | tee /tmp/copy_bw.json; cp /tmp/copy_bw.json "$OUT/"
  # stream-K first and on its own short limit: its programs spin on flags, and a kernel that never
  # finishes would otherwise hold the machine for the whole limit below
  stamp "pytest -m gpu stream-K"
  timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider -k streamk tests/gpu/test_persistent_mm_gpu.py \
      > "$OUT/probe_streamk.log" 2>&1
  echo "pytest exit $?"; grep -E "passed|failed|Error|error:" "$OUT/probe_streamk.log" | tail -12
  stamp "warp specialisation: what Triton compiled"
  timeout 120 python3 -m tuner.benchmarks.ws_probe | tee "$OUT/ws_probe.jsonl"
  stamp "pytest -m gpu persistent, split-K, router"
  timeout 400 python3 -m pytest -q -m gpu -p no:cacheprovider -k "not streamk" tests/gpu/test_persistent_mm_gpu.py \
      > "$OUT/probe_tests.log" 2>&1
  echo "pytest exit $?"; grep -E "passed|failed|Error|error:" "$OUT/probe_tests.log" | tail -25 ;;
tune)
  OP=${2:?op}; shift 2
  SHAPES=(); for s in "$@"; do SHAPES+=(--shape "$s"); done
  cd /tmp/tuner || exit 1
  stamp "tune $OP ${#SHAPES[@]} args"
  timeout -s INT "${TUNE_LIMIT:-520}" python3 cli.py tune --op "$OP" "${SHAPES[@]}" --trials "${TRIALS:-40}" --timeout "${KEY_TIMEOUT:-12}" \
      --seed 0 --db "sqlite:///$GEMM_DB" > "$OUT/tune_$OP.log" 2>&1
  echo "tune exit $?"; tail -40 "$OUT/tune_$OP.log"
  cp "$GEMM_DB" "$OUT/gemm.db"
  python3 cli.py db show --db "sqlite:///$GEMM_DB" --json > "$OUT/db_show.json" 2>/dev/null
  python3 -m tuner.benchmarks.report_mm --copy-bw /tmp/copy_bw.json --ops mm,addmm "$GEMM_DB" > "$OUT/REPORT.md" 2>&1
  tail -8 "$OUT/REPORT.md" ;;
esac
