#!/usr/bin/env bash
# Issue 3 on the H100: consistency check + end-to-end logits, then the full-size profile of each
# workload natively and under FlagGems (minus the failing ops), with the profiler's overhead.
# Run from the repo root with $OUT set:  bash tuner/benchmarks/profile_h100.sh
# Parts of it (env): CHECK=all|text|...|none (the check's workloads, default all), CHECK_LIMIT
# (s, default 230), PROFILES="image speech" (default all four; none), LIMIT=<s> (every profile step),
# START_DB=<file> (copied first: a stored check's exclude list is reused, new runs add to it).
# Budget: ~9.2 min wall at most (each step has a hard timeout), < 60 GB GPU memory (bf16, one model at a time).
# Outputs under $OUT (8 files): env.txt (gpu_env.sh), run.log (all tables), check.json,
# profile-{text,image,audio,speech}.json, tuner.db (every stored row; open with `tuner db show`
# or sqlite3). Chrome traces stay in /tmp/tuner-traces (too large to bring back).
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/tuner-traces
source tuner/benchmarks/gpu_env.sh || { echo "gpu_env.sh failed" >&2; exit 1; }
DB=/tmp/tuner-h100.db
CHECK=${CHECK:-all}
PROFILES=${PROFILES:-text image audio speech}
[ "$PROFILES" = none ] && PROFILES=""
[ -n "${START_DB:-}" ] && cp "$START_DB" "$DB"
LOG="$OUT/run.log"
SIZES=(--prompt-tokens 512 --decode-batches 1,8 --decode-steps 4)
T0=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - T0 )) s] $*" | tee -a "$LOG"; }

nvidia-smi --query-gpu=memory.used,memory.total --format=csv | tee -a "$LOG"

# 1. consistency check of every FlagGems op the four workloads use (one subprocess per op, 4 at a
#    time), stored as the exclude list; then end-to-end logits (LLM, 8 decode steps) with FlagGems
#    minus that list vs native. JSON to check.json, the table to run.log.
if [ "$CHECK" != none ]; then
stamp "check --workload $CHECK"
timeout "${CHECK_LIMIT:-230}" python3 cli.py check --workload "$CHECK" "${SIZES[@]}" --e2e-steps 8 --timeout 90 --jobs 12 \
    --db "$DB" --json > "$OUT/check.json" 2>> "$LOG"
echo "check exit $?" | tee -a "$LOG"
python3 - "$OUT/check.json" >> "$LOG" 2>&1 <<'PY'
import json, sys
try:
    rep = json.load(open(sys.argv[1]))
except Exception as e:
    print("check.json unreadable:", e); sys.exit()
print("counts", rep["counts"], "exclude", rep["exclude"])
for r in rep["results"]:
    if r["status"] in ("crash", "mismatch"):
        print(f"  {r['status']:8s} {r['op']:24s} fn={r['gems_fn']} err={r['max_abs_error']} rel={r['rel_error']} "
              f"inputs={r['inputs'][:100]} :: {(r['detail'] or '')[:200]}")
e = rep.get("e2e") or {}
print("e2e", {k: v for k, v in e.items() if k != "per_step"})
PY
fi

# 2. each workload at full size: native, then FlagGems minus the stored exclude list (top 15);
#    text also measures the profiler's overhead.
for w in $PROFILES; do
  extra=(); limit=50; [ "$w" = image ] && limit=60
  [ "$w" = text ] && { extra=(--overhead); limit=140; }  # FlagGems autotunes each new decode GEMM once
  limit=${LIMIT:-$limit}
  stamp "profile --workload $w"
  timeout $limit python3 cli.py profile --workload "$w" "${SIZES[@]}" --top 15 --no-check "${extra[@]}" \
      --trace "/tmp/tuner-traces/$w.json.gz" --db "$DB" --json > "$OUT/profile-$w.json" 2>> "$LOG"
  echo "profile $w exit $?" | tee -a "$LOG"
  python3 - "$OUT/profile-$w.json" >> "$LOG" 2>&1 <<'PY'
import json, sys
from tuner.report import profile_tables
try:
    profile_tables(json.load(open(sys.argv[1])))
except Exception as e:
    print("profile json unreadable:", e)
PY
done
nvidia-smi --query-gpu=memory.used,memory.total --format=csv | tee -a "$LOG"
cp "$DB" "$OUT/tuner.db"
stamp "done"
