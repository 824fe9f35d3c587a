#!/usr/bin/env bash
# Issue 4 (b) on the H100: the MiniCPM-o 2.6 LLM end to end (decode step in a CUDA graph at batch
# 1, 16, 64; prefill of 512 and 2048 tokens at batch 1), native vs FlagGems untuned vs FlagGems
# with tuned configs, each mode in its own process (python -m tuner.benchmarks.e2e_llm).
# 1. tunes, on this machine, the mm keys transformers' Qwen2 meets: o (3584x3584), gate and up
#    (unfused, 18944x3584), down (3584x18944) at M = 1, 16, 64 (decode) and 512, 2048 (prefill),
#    and lm_head (151700x3584) at M = 1, 16, 64 only: the prefill step keeps the last position's
#    logits (logits_to_keep=1), so lm_head sees M = 1 there. q/k/v carry a bias and go to FlagGems'
#    addmm, which tuner does not tune. Most useful keys first, so a tune cut at TUNE_CAP keeps them:
#    M=1; lm_head M=16 (FlagGems' general kernel keys on the exact M); M=64; 2048; 512; last o, gate/up,
#    down at M=16, which share FlagGems' align32 bucket with M=1 (the seeded row takes M=1's config)
#    and matter only if split-K wins there.
# 2. runs the three modes (native, tuned, untuned: the slow untuned warm-up last, on what is left).
# Run from the repo root with $OUT set:  bash tuner/benchmarks/e2e_h100.sh
# TUNE_ADDMM=1 also tunes FlagGems' addmm for q/k/v (ADDMM_CAP s), TUNE_BMM=1 the prefill lm_head
# bmm (BMM_CAP s), with or without REUSE_DB.
# REUSE_DB=FILE skips the tune (a DB tuned on this GPU model before); MODES picks the modes
# (default native,tuned,untuned; untuned_memo = untuned + tuner's in-memory config cache).
# Budget: < 9.5 min wall (DEADLINE s, default 550, for everything; the tune has a hard cap).
# Outputs under $OUT: env.txt, e2e.db (tuner DB), e2e_tune.json / .log, e2e_db_show.txt,
# e2e_records.json, e2e_{native,tuned,untuned}.json / .log, e2e.jsonl, e2e_table.md.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
T0=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
source tuner/benchmarks/gpu_env.sh >/dev/null || { echo "gpu_env.sh failed" >&2; exit 1; }
stamp "environment ready"
DB=$OUT/e2e.db
EXCL=${EXCL:-arange_start,layer_norm,mul,weight_norm_interface}  # the H100 consistency check's exclude list (results/profile)
DEADLINE=${DEADLINE:-550}
TUNE_CAP=${TUNE_CAP:-240}

O=3584,3584; GU=18944,3584; DOWN=3584,18944; LM=151700,3584
S=""
for k in 1,$O 1,$GU 1,$DOWN 1,$LM 16,$LM 64,$O 64,$GU 64,$DOWN 64,$LM \
         2048,$O 2048,$GU 2048,$DOWN 512,$O 512,$GU 512,$DOWN 16,$O 16,$GU 16,$DOWN; do
    S="$S --shape $k"
done
if [ -n "${REUSE_DB:-}" ]; then
    # a DB tuned on this GPU model in an earlier run (e.g. results/e2e/e2e.db): no tune stage
    cp "$REUSE_DB" "$DB" && stamp "tune skipped: reusing $REUSE_DB"
else
    stamp "tune: 18 mm keys, at most $TUNE_CAP s"
    timeout -s INT -k 20 "$TUNE_CAP" python3 cli.py tune --op mm $S --trials 6 --timeout 8 --seed 0 \
        --db "$DB" --json > "$OUT/e2e_tune.json" 2> "$OUT/e2e_tune.log"
    echo "tune exit $? (124: cut at $TUNE_CAP s; keys finished before that are stored)"
    python3 cli.py db show --op mm --db "$DB" > "$OUT/e2e_db_show.txt" 2>&1
    python3 cli.py db show --op mm --db "$DB" --json > "$OUT/e2e_records.json" 2>> "$OUT/e2e_db_show.txt"
    stamp "tune done: $(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))), 'tuned keys stored')" \
        "$OUT/e2e_records.json" 2>/dev/null || echo '? tuned keys')"
fi
if [ -n "${TUNE_ADDMM:-}" ]; then  # q/k/v (bias: FlagGems' addmm) at the same Ms, also on a reused DB
    stamp "tune addmm: q/k/v keys"
    timeout -s INT -k 20 "${ADDMM_CAP:-150}" python3 cli.py tune --op addmm --shapes minicpmo-llm --trials 6 \
        --timeout 8 --seed 0 --db "$DB" --json > "$OUT/e2e_tune_addmm.json" 2>> "$OUT/e2e_tune.log"
    echo "addmm tune exit $?"
    python3 cli.py db show --op addmm --db "$DB" > "$OUT/e2e_db_show_addmm.txt" 2>&1
fi
if [ -n "${TUNE_BMM:-}" ]; then  # lm_head on the prefill's last position runs as bmm (kernels/bmm.py)
    stamp "tune bmm: prefill lm_head"
    timeout -s INT -k 20 "${BMM_CAP:-150}" python3 cli.py tune --op bmm --shapes minicpmo-llm --trials 20 \
        --timeout 60 --seed 0 --db "$DB" --json > "$OUT/e2e_tune_bmm.json" 2>> "$OUT/e2e_tune.log"
    echo "bmm tune exit $?"
    python3 cli.py db show --op bmm --db "$DB" > "$OUT/e2e_db_show_bmm.txt" 2>&1
fi

LEFT=$(( DEADLINE - ($(date +%s) - T0) ))
stamp "e2e: ${MODES:-native,tuned,untuned} in $LEFT s"
MODES=${MODES:-native,tuned,untuned}
python3 -m tuner.benchmarks.e2e_llm --modes "$MODES" --db "$DB" --exclude "$EXCL" \
    --timeout native=100,tuned=150,untuned=330,untuned_memo=200 --budget "$LEFT" \
    --out-dir "$OUT" --json-out "$OUT/e2e.jsonl" --table-out "$OUT/e2e_table.md"
echo "e2e exit $?"
for m in ${MODES//,/ }; do
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], r.get('wall_s'))" \
        "$OUT/e2e_$m.json" "$m" 2>/dev/null || echo "$m: no JSON"
done
stamp "done"
