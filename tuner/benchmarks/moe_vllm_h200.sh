#!/usr/bin/env bash
# Issue 16 on the H200 (written on a CPU host, not yet run) as a queue that outlives the 10-minute
# call limit, like gpu_queue.sh: each call runs the steps not yet done (a marker per step in
# /tmp/mq) until LIMIT seconds; a tune stopped at the limit (SIGINT) resumes in the next call.
# Results land in /tmp/mres and come back as $OUT/moe_res.tar.gz (plus REPORT.md and the bench
# JSON on their own).
# Before it (back to back, one warm machine): vLLM staged as in vllm_h200.sh's header, plus its
# fused-MoE CUDA ops (MOE=1 ../shared/scripts/vllm-offline.sh .vllm writes .vllm/moe, 39 MiB),
# then run(carry=[".vllm/moe1"], command="bash tuner/benchmarks/vllm_stage.sh moe1") and run(carry=[".vllm/moe2"],
# command="bash tuner/benchmarks/vllm_stage.sh moe2 && LIMIT=540 bash tuner/benchmarks/moe_vllm_h200.sh")
# (.vllm/moe whole with the tracked tree passed the 64 MiB carry limit in session 11).
# Steps:
#   tests       pytest -m gpu: vLLM's kernel runner, its baselines, vLLM's MoE injection
#   bf16, fp8   `tuner tune --op vllm_fused_moe --shapes moe-bench`: E=128 top-8 K=2048 N=768/384 and
#               E=8 top-2 K=4096 N=14336/7168, M in 1,16,64,256,1024,4096; tuned vs vLLM's shipped H200
#               config (where vLLM ships one) vs vLLM's default vs FlagGems' default, in vLLM's kernel
#   serve       the served model's key (E=128 N=768 K=2048 top-8) at the M that cover its batches
#   report      python -m tuner.benchmarks.report_vllm_moe
#   bench       a random-weight Qwen3-MoE with Qwen3-30B-A3B's dimensions (LAYERS of 48, default 8:
#               every layer has the real shapes), `tuner bench --modes native,tuned` with only the
#               vllm_fused_moe records (tuned = vLLM + tuner's MoE JSON through the plugin; a compiling
#               engine gets no FlagGems op that no GEMM route asks for), profiled, and the config file
#               each mode's MoE layers read ("Using configuration from ... for MoE layer.")
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); END=$(( T0 + ${LIMIT:-540} ))
stamp() { echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
left() { echo $(( END - $(date +%s) )); }
export PYTHONPATH=/tmp/tuner:/tmp/vsite:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_USE_FLASHINFER_SAMPLER=0
Q=/tmp/mq R=/tmp/mres; mkdir -p "$Q" "$R"
for s in ${SKIP:-}; do touch "$Q/$s"; done
DB="sqlite:///$R/moe.db"
CK=/tmp/qwen3-moe-${LAYERS:-8}l
[ -f /tmp/tuner/cli.py ] || { echo "set up first: bash tuner/benchmarks/vllm_h200.sh setup (carry .whl, .snap)"; exit 1; }
[ -f /tmp/vsite/vllm/_moe_C_stable_libtorch.abi3.so ] || { echo "vLLM's MoE ops are not staged (.vllm/moe)"; exit 1; }
cd /tmp/tuner || exit 1

tune() {  # NAME ARGS...: stopped by SIGINT 45 s before the call's end; done only when it ended by itself
  local name=$1; shift
  local t=$(( $(left) - 45 )); [ "$t" -gt 30 ] || { echo "no time left for $name"; return 1; }
  stamp "$name (up to $t s)"
  timeout -s INT -k 60 "$t" python3 cli.py tune --op vllm_fused_moe "$@" --db "$DB" >> "$R/tune_$name.log" 2>&1
  local rc=$?; echo "$name exit $rc"; tail -4 "$R/tune_$name.log"
  [ $rc = 0 ] && touch "$Q/$name"
}

if [ ! -f $Q/tests ]; then
  { python3 -c "import vllm, torch, triton; print('vllm', vllm.__version__, 'torch', torch.__version__, 'triton', triton.__version__)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    ls /tmp/vsite/vllm/model_executor/layers/fused_moe/configs | grep -c H200 | sed 's/^/vLLM shipped H200 config files: /'; } \
    > "$R/env.txt" 2>&1; cat "$R/env.txt"
  stamp "pytest -m gpu (vLLM's fused MoE)"
  timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests/kernels/test_vllm_fused_moe.py \
      tests/tuner/inject/test_vllm_moe.py > "$R/gpu_tests.log" 2>&1
  echo "pytest exit $?"; grep -E "passed|failed|Error" "$R/gpu_tests.log" | tail -8; touch $Q/tests
fi
[ -f $Q/bf16 ] || tune bf16 --shapes moe-bench --dtype bf16 --trials "${TRIALS:-30}" --timeout "${KEY_TIMEOUT:-25}" --seed 0
[ -f $Q/bf16 ] && { [ -f $Q/fp8 ] || tune fp8 --shapes moe-bench --dtype fp8_w8a8 --trials "${TRIALS:-30}" \
    --timeout "${KEY_TIMEOUT:-25}" --seed 0; }
[ -f $Q/fp8 ] && { [ -f $Q/serve ] || tune serve --shapes qwen3-30b-a3b-serve --dtype bf16 --trials "${TRIALS:-30}" \
    --timeout "${KEY_TIMEOUT:-25}" --seed 0; }
# MODES (native,tuned), WARM (2 warm batches), OUT_TOKENS (128), PROFILE=0 and TAG (a suffix of the result
# files) repeat the bench differently, e.g. tuned first with more batches: SKIP="tests bf16 fp8 serve"
TAG=${TAG:-}
if [ -f $Q/serve ] && [ ! -f $Q/bench ] && [ "$(left)" -gt 400 ]; then
  [ -f "$CK/config.json" ] || { stamp "checkpoint ($CK)"; python3 cli.py checkpoint "$CK" --model qwen3-moe --layers "${LAYERS:-8}" || exit 1; }
  stamp "bench ${MODES:-native,tuned}"
  PROF=(--profile --profile-concurrency 64); [ "${PROFILE:-1}" = 1 ] || PROF=()
  python3 cli.py bench "$CK" --modes "${MODES:-native,tuned}" --concurrency 1,64 --max-tokens 8192 --db "$DB" "${PROF[@]}" \
      --warm-repeats "${WARM:-2}" --output-tokens "${OUT_TOKENS:-128}" --timeout "${MODE_TIMEOUT:-420}" \
      --out-dir /tmp/moe_bench --json > "$R/bench_qwen3_moe$TAG.json" 2> "$R/bench_qwen3_moe$TAG.log"
  echo "bench exit $?"; tail -5 "$R/bench_qwen3_moe$TAG.log"
  # native: vLLM's shipped file for this GPU (or its default); tuned: the runtime folder's file
  grep -rH --include=*.log -e "for MoE layer" -e "default MoE config" /tmp/moe_bench | cut -c1-300 | tee "$R/moe_config_used$TAG.txt"
  for m in native tuned; do
    [ "${PROFILE:-1}" = 1 ] || break
    timeout 180 python3 -m tuner.profiling.engine_trace /tmp/moe_bench/$m/trace 64 /tmp/moe_bench/$m/profile.json \
        /tmp/moe_bench/$m/result.json > "$R/profile_$m.txt" 2>&1; tail -3 "$R/profile_$m.txt"
  done
  tar -czf "$R/logs_bench$TAG.tar.gz" -C /tmp/moe_bench --exclude='*.pt.trace.json*' .
  rm -rf /tmp/moe_bench; touch $Q/bench
fi

stamp "report"
python3 cli.py db show --op vllm_fused_moe --db "$DB" --json > "$R/db_show.json" 2>/dev/null
python3 -m tuner.benchmarks.report_vllm_moe "$R/moe.db" > "$R/REPORT.md" 2>&1; tail -12 "$R/REPORT.md"
echo "steps done: $(ls $Q | tr '\n' ' ')"
cp "$R/REPORT.md" "$OUT/" 2>/dev/null; cp "$R/bench_qwen3_moe.json" "$OUT/" 2>/dev/null
tar -czf "$OUT/moe_res.tar.gz" -C "$R" .
stamp "done"
