#!/usr/bin/env bash
# Issue 4 (a) on the H100: serve cold start with and without --use-tuned (transformers engine).
# Tunes, on this machine, the mm keys the served LLM meets (transformers' Qwen2: o, gate, up, down
# and lm_head at decode M=1 and prefill M=24; q/k/v carry a bias and go to FlagGems' addmm, which
# tuner does not tune), writes the random-weight checkpoint, then probes both servers.
# Run from the repo root with $OUT set. Outputs: serve_tune.json, serve.db, serve_{untuned,tuned}.log, serve.jsonl
set -u
source tuner/benchmarks/gpu_env.sh >/dev/null || exit 1
DB=$OUT/serve.db
S=""; for nk in 3584,3584 18944,3584 3584,18944; do S="$S --shape 1,$nk --shape 24,$nk"; done
T0=$(date +%s)
python3 cli.py tune --op mm $S --shape 1,151700,3584 --trials 8 --timeout 10 --seed 0 --db $DB --json \
    > $OUT/serve_tune.json 2>/dev/null; echo "tune rc=$? $(( $(date +%s) - T0 )) s"
python3 cli.py checkpoint /tmp/ck 2>&1 | tail -1; echo "checkpoint $(( $(date +%s) - T0 )) s"
EXCL=${EXCL:-mul}  # the H100 consistency check's exclude list (results/profile/check.json)
python3 -m tuner.benchmarks.serve_probe $OUT/serve_untuned.log 8101 240 -- /tmp/ck --engine transformers \
    --exclude "$EXCL" --db $DB --runtime-dir /tmp/rt_untuned | tee -a $OUT/serve.jsonl
python3 -m tuner.benchmarks.serve_probe $OUT/serve_tuned.log 8102 240 -- /tmp/ck --engine transformers \
    --use-tuned --exclude "$EXCL" --db $DB --runtime-dir /tmp/rt_tuned | tee -a $OUT/serve.jsonl
