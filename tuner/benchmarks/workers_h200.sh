#!/usr/bin/env bash
# Issue 13 on the H200: one study worked by 1 and by 4 worker processes sharing the GPU, against the
# exhaustive grid of the same keys (wall time to within 2% of the grid's best, configs measured twice).
# Steps (one device call each, back to back while the machine stays warm; /tmp is lost when cold):
#   bash tuner/benchmarks/vllm_h200.sh setup        wheels + the project snapshot (.whl, .snap carried)
#   bash tuner/benchmarks/workers_h200.sh grid      --sampler grid, 4 workers (resumes: call again
#                                                   until it says "grid exhausted" for every key)
#   bash tuner/benchmarks/workers_h200.sh runs      TPE, --workers 1 then --workers 4, same seed and trials
#   bash tuner/benchmarks/workers_h200.sh report    python -m tuner.benchmarks.workers_bench -> $OUT
# KEYS: mm keys (default: the H100 grid study's three decode keys, results/search); TRIALS (default 60).
# Cost: the grid is ~2,655 valid configs per key on sm_90 (fg_tma 445, split-K 810, persistent 1200,
# stream-K 200; counted with grid_configs on CPU); the H100's single-process grid ran ~10 configs/s,
# so plan two or three `grid` calls (each resumes the last) before `runs`.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); stamp() { echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
export PYTHONPATH=/tmp/tuner:/tmp/site PYTHONUNBUFFERED=1
KEYS=${KEYS:-"16,4608,3584 16,3584,3584 16,3584,18944"}
SHAPES=(); for s in $KEYS; do SHAPES+=(--shape "$s"); done
WK=/tmp/workers; mkdir -p "$WK"
tune() {  # DB LIMIT ARGS...: one tune, stopped by SIGINT (it stores what it measured) before the call's limit
  local db=$1 limit=$2; shift 2
  timeout -s INT "$limit" python3 cli.py tune --op mm "${SHAPES[@]}" --db "sqlite:///$WK/$db" "$@"
  echo "tune exit $?"
}
cd /tmp/tuner || exit 1
case "${1:?usage: workers_h200.sh grid|runs|report}" in
grid)
  stamp "grid, 4 workers"
  tune grid.db "${TUNE_LIMIT:-540}" --sampler grid --trials 100000 --workers 4 > "$OUT/grid.log" 2>&1
  tail -20 "$OUT/grid.log" ;;
runs)
  for W in 1 4; do
    stamp "tpe, $W worker(s)"
    tune "w$W.db" "${TUNE_LIMIT:-270}" --trials "${TRIALS:-60}" --seed 0 --workers "$W" > "$OUT/w$W.log" 2>&1
    tail -12 "$OUT/w$W.log"
  done ;;
report)
  python3 -m tuner.benchmarks.workers_bench --grid "$WK/grid.db" w1="$WK/w1.db" w4="$WK/w4.db" | tee "$OUT/workers.jsonl"
  cp "$WK"/*.db "$OUT/" ;;
esac
