#!/usr/bin/env bash
# Issue 4 (a) on the H100: serve cold start with and without --use-tuned (transformers engine).
# Run from the repo root with $OUT set. Outputs: serve_untuned.log, serve_tuned.log, serve.jsonl.
set -u
source tuner/benchmarks/gpu_env.sh >/dev/null || exit 1
R=tuner/benchmarks/results/set_a
python3 -m tuner.benchmarks.merge_dbs /tmp/tuned.db $R/set_a1.db $R/set_a2.db $R/set_a3.db $R/set_a4.db
python3 -c "from transformers.utils.import_utils import is_serve_available as a; import transformers; print('transformers', transformers.__version__, 'serve available', a())"
T0=$(date +%s)
python3 cli.py checkpoint /tmp/ck 2>&1 | tail -1; echo "checkpoint $(( $(date +%s) - T0 )) s"
EXCL=${EXCL:-mul}
python3 -m tuner.benchmarks.serve_probe $OUT/serve_untuned.log 8101 240 -- /tmp/ck --engine transformers \
    --exclude "$EXCL" --db /tmp/tuned.db --runtime-dir /tmp/rt_untuned | tee -a $OUT/serve.jsonl
python3 -m tuner.benchmarks.serve_probe $OUT/serve_tuned.log 8102 240 -- /tmp/ck --engine transformers \
    --use-tuned --exclude "$EXCL" --db /tmp/tuned.db --runtime-dir /tmp/rt_tuned | tee -a $OUT/serve.jsonl
