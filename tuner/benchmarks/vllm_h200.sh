#!/usr/bin/env bash
# Issue 11 on the H200: vLLM 0.26 serving the MiniCPM-o 2.6 LLM (random weights) natively, with FlagGems
# untuned and with FlagGems + tuner's routes, through `tuner bench` (each mode its own engine process,
# the environment `tuner serve` gives it), plus one profiled request per mode through vLLM's profiler.
# Steps (one device call each, back to back while the machine stays warm; vLLM staged before, see
# ../shared/scripts/vllm-offline.sh and tuner/benchmarks/vllm_stage.sh):
#   bash tuner/benchmarks/vllm_h200.sh setup        wheels, the project installed (its plugin entry point)
#                                                   from .snap/tuner.tar, a snapshot made here with
#   git archive HEAD -- . ':!tuner/benchmarks/results' > .snap/tuner.tar && tar -rf .snap/tuner.tar \
#       tuner/benchmarks/results/vllm/tune_keys/vllm_keys.db && git rev-parse HEAD > .snap/commit
#   (carried as .snap with .whl; the checkout copy may be mid-edit, the snapshot is a commit)
#   bash tuner/benchmarks/vllm_h200.sh gputests     pytest -m gpu (no vLLM needed)
#   bash tuner/benchmarks/vllm_h200.sh bench MODES  checkpoint (once), then `tuner bench --modes MODES`
#                                                   (PROFILE_CONC requests in the profiled batch, default 64;
#                                                   ROUTE_WITHIN: the tuned mode's --route-within, default 1.0;
#                                                   ROUNDS: every mode that many engines, --rounds, default 1;
#                                                   BENCH_END: epoch seconds when the bench is stopped and the
#                                                   engines that finished reported by `tuner bench-report`)
#   bash tuner/benchmarks/vllm_h200.sh serve        checkpoint (once), `tuner serve --engine vllm --use-tuned`
#                                                   in the background, one /v1/chat/completions request
#   bash tuner/benchmarks/vllm_h200.sh fs           FlagScale 0.8.0 and its config-loading packages from .fs
#                                                   (wheels as ".fs here" below says; carried as .fs)
#   bash tuner/benchmarks/vllm_h200.sh fsbench      issue 15: checkpoint (once), `tuner bench --engine
#                                                   vllm,flagscale --modes tuned` (each engine served, the same
#                                                   requests), the plugin's and FlagScale's lines in the logs
# Staging: four calls back to back, as tuner/benchmarks/vllm_stage.sh's header says (split here first).
# .fs here: pip download --no-deps (manylinux wheels, Python 3.12) flag-scale==0.8.0 hydra-core==1.3.2
# omegaconf==2.3.0 pytz tzdata, and `pip wheel --no-deps antlr4-python3-runtime==4.9.3` (an sdist only).
# The tuned mode reads $BENCH_DB (default results/vllm/tune_keys/vllm_keys.db (this GPU model, tune_vllm_keys.sh). The
# exclude list is the H100 consistency check's (results/profile): no check has run on the H200.
# Outputs under $OUT (at most 8 files come back): env.txt, <step>.log, and for bench: bench_MODES.json
# (the report), bench_MODES.png, profiles_MODES.json (engine profile of each mode: top 15 kernels,
# Triton share, idle per decode step), logs_MODES.tar.gz (each mode's engine log and raw result),
# trace_sample_MODES.json.gz (an excerpt of the tuned trace, test data), traces_MODES.tar (every mode's
# full trace, <mode>.json.gz, when together under 15 MB).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); stamp() { echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
export PYTHONPATH=/tmp/tuner:/tmp/vsite:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_USE_FLASHINFER_SAMPLER=0
EXCL=${EXCL:-arange_start,layer_norm,mul,weight_norm_interface}
case "${1:?usage: vllm_h200.sh setup|gputests|bench MODES|serve|fs|fsbench}" in
fs)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .fs/*.whl || exit 1
  python3 -c "import flag_scale, hydra, omegaconf; print('flag_scale', getattr(flag_scale, '__version__', '?'), 'at', flag_scale.__path__[0])" \
      | tee -a "$OUT/env.txt" ;;
fsbench)
  cd /tmp/tuner || exit 1
  [ -f /tmp/ck/config.json ] || { stamp "checkpoint"; python3 cli.py checkpoint /tmp/ck || exit 1; }
  cp "${BENCH_DB:-tuner/benchmarks/results/vllm/tune_keys/vllm_keys.db}" /tmp/fsbench.db 2>/dev/null || true
  stamp "bench --engine vllm,flagscale --modes ${FS_MODES:-tuned}"
  python3 cli.py bench /tmp/ck --engine vllm,flagscale --modes "${FS_MODES:-tuned}" --db /tmp/fsbench.db \
      --out-dir /tmp/fsbench --exclude "$EXCL" --max-tokens 4096 --timeout "${MODE_TIMEOUT:-400}" --json > "$OUT/fsbench.json"
  echo "bench exit $?"
  python3 - <<'PY'
import json, os
from tuner.serving.bench_report import agreement_lines, bench_table
from rich.console import Console
rep = json.load(open(f"{os.environ['OUT']}/fsbench.json"))
Console(width=80).print(bench_table(rep)); print("\n".join(agreement_lines(rep)))
PY
  # the plugin's lines (routes, exclude list) and FlagScale's own in every engine log
  grep -rn --include=*.log -e "tuner" -e "USE_FLAGGEMS" -e "flag_gems" /tmp/fsbench | cut -c1-240 | head -60 | tee "$OUT/fsbench_lines.txt"
  cp /tmp/fsbench/bench.png "$OUT/fsbench.png" 2>/dev/null
  tar -czf "$OUT/logs_fsbench.tar.gz" -C /tmp/fsbench --exclude='*.pt.trace.json*' . ;;
setup)
  [ -f .snap/tuner.tar ] || { echo "no .snap/tuner.tar: carry .snap (see this header)"; exit 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  rm -rf /tmp/tuner && mkdir -p /tmp/tuner && tar -xf .snap/tuner.tar -C /tmp/tuner || exit 1
  (cd /tmp/tuner && python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/site . ) || exit 1
  { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
    python3 -m pip list 2>/dev/null | grep -iE "^(flag.gems|optuna|sqlalchemy|numpy|transformers) "
    echo "tuner commit $(cat .snap/commit 2>/dev/null)"; } > "$OUT/env.txt" 2>&1
  cat "$OUT/env.txt" ;;
gputests)
  cd /tmp/tuner || exit 1
  # one pytest process per group: the mm tests set TRITON_INTERPRET, fused_moe and attention must run alone
  TEST_GROUPS=${GPU_TESTS:-"tests/gpu/test_mm_gpu.py tests/gpu/test_persistent_mm_gpu.py tests/tuner/inject|tests/kernels/test_fused_moe.py|tests/gpu/test_attention_gpu.py|tests/gpu/test_addmm_gpu.py tests/gpu/test_bmm_gpu.py|tests/gpu/test_parallel_gpu.py"}
  IFS='|' read -ra GS <<< "$TEST_GROUPS"
  for f in "${GS[@]}"; do
    stamp "pytest -m gpu $f"
    timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider $f > /tmp/gputest.log 2>&1
    cat /tmp/gputest.log >> "$OUT/gputests_full.log"; tail -15 /tmp/gputest.log
  done ;;
bench)
  MODES=${2:-native,tuned}; TAG=${MODES//,/_}
  W=${ROUTE_WITHIN:-1.0}; [ "$W" = 1.0 ] || TAG=${TAG}_w$W  # the tuned mode's --route-within
  [ "${ROUNDS:-1}" = 1 ] || TAG=${TAG}_r$ROUNDS  # ROUNDS: every mode that many times (bench --rounds)
  cd /tmp/tuner || exit 1
  [ -f /tmp/ck/config.json ] || { stamp "checkpoint"; python3 cli.py checkpoint /tmp/ck || exit 1; }
  cp "${BENCH_DB:-tuner/benchmarks/results/vllm/tune_keys/vllm_keys.db}" /tmp/bench.db 2>/dev/null || true
  stamp "bench $MODES"
  # the time to BENCH_END, counted after the checkpoint (42-47 s on a fresh machine); timeout signals
  # its whole process group, so the in-process engine the bench started goes with it
  LIMIT_S=100000; [ -n "${BENCH_END:-}" ] && LIMIT_S=$(( BENCH_END - $(date +%s) ))
  [ "$LIMIT_S" -gt 60 ] || { echo "bench: only $LIMIT_S s left before BENCH_END: not started"; exit 1; }
  timeout -k 15 "$LIMIT_S" python3 cli.py bench /tmp/ck --modes "$MODES" --profile \
      --profile-concurrency "${PROFILE_CONC:-64}" --db /tmp/bench.db --out-dir /tmp/bench_$TAG \
      --exclude "$EXCL" --max-tokens 4096 --timeout "${MODE_TIMEOUT:-400}" --route-within "$W" \
      --rounds "${ROUNDS:-1}" --json > "$OUT/bench_$TAG.json"
  rc=$?; echo "bench exit $rc"
  if [ ! -s "$OUT/bench_$TAG.json" ]; then  # stopped at BENCH_END (timeout: 124) or failed before its report
    echo "no report from the bench: the engines that finished, as tuner bench-report reads them"
    python3 cli.py bench-report /tmp/bench_$TAG --json > "$OUT/bench_$TAG.json" || echo "bench-report exit $?"
  fi
  [ -s "$OUT/bench_$TAG.json" ] && python3 - "$TAG" <<'PY'
import json, os, sys
from tuner.serving.bench_report import agreement_lines, bench_table
from rich.console import Console
rep = json.load(open(f"{os.environ['OUT']}/bench_{sys.argv[1]}.json"))
Console(width=80).print(bench_table(rep)); print("\n".join(agreement_lines(rep)))
PY
  cp /tmp/bench_$TAG/bench.png "$OUT/bench_$TAG.png" 2>/dev/null
  for m in ${MODES//,/ }; do
    timeout 180 python3 -m tuner.profiling.engine_trace /tmp/bench_$TAG/$m/trace 64 /tmp/bench_$TAG/$m/profile.json \
        /tmp/bench_$TAG/$m/result.json 2>&1 | tail -2
    T=$(ls -t /tmp/bench_$TAG/$m/trace/*.pt.trace.json* 2>/dev/null | head -1)  # the raw trace, when it fits
    mkdir -p /tmp/bench_$TAG/traces
    [ -n "$T" ] && case "$T" in *.gz) cp "$T" "/tmp/bench_$TAG/traces/$m.json.gz";; esac
  done
  # every mode's trace in one file: one a mode was a file too many (the tool returns 8; session 13 lost
  # the tuned engine's trace that way), and under the 16 MiB a file returns
  [ "$(du -cb /tmp/bench_$TAG/traces/* 2>/dev/null | tail -1 | cut -f1)" -lt 15000000 ] \
      && tar -cf "$OUT/traces_$TAG.tar" -C /tmp/bench_$TAG/traces .
  python3 - "$TAG" "$MODES" <<'PY'
import json, os, sys
tag, modes = sys.argv[1], sys.argv[2].split(",")
out = {}
for m in modes:
    p = f"/tmp/bench_{tag}/{m}/profile.json"
    out[m] = json.load(open(p)) if os.path.exists(p) else None
    if out[m]:
        print(m, "kernel ms %.1f" % out[m]["kernel_ms"], "triton share %.1f%%" % (100 * out[m]["triton_share"]),
              "idle/step %.0f us" % out[m]["idle_us_per_step"])
        for k in out[m]["top_kernels"][:15]:
            print("   %-60.60s %-16s %6d %9.2f ms" % (k["name"], k["class"], k["calls"], k["gpu_ms"]))
        for c in out[m].get("idle_causes", [])[:8]:  # where the GPU waited, by the op launching next
            print("   idle %-50.50s %5d gaps %8.2f ms (late launch %.2f ms)" % (c["op"], c["gaps"], c["idle_ms"], c["late_ms"]))
json.dump(out, open(f"{os.environ['OUT']}/profiles_{tag}.json", "w"), indent=1)
PY
  T=$(ls -t /tmp/bench_$TAG/tuned/trace/*.pt.trace.json* 2>/dev/null | head -1)
  [ -n "$T" ] && python3 -c "from tuner.profiling.engine_trace import sample_trace; import sys; sample_trace(sys.argv[1], sys.argv[2])" \
      "$T" "$OUT/trace_sample_$TAG.json.gz"
  tar -czf "$OUT/logs_$TAG.tar.gz" -C /tmp/bench_$TAG --exclude='*.pt.trace.json*' --exclude=./traces . ;;
serve)
  cd /tmp/tuner || exit 1
  [ -f /tmp/ck/config.json ] || { stamp "checkpoint"; python3 cli.py checkpoint /tmp/ck || exit 1; }
  cp tuner/benchmarks/results/vllm/tune_keys/vllm_keys.db /tmp/serve.db
  stamp "tuner serve --engine vllm --use-tuned"
  python3 cli.py serve /tmp/ck --engine vllm --use-tuned --db /tmp/serve.db --exclude "$EXCL" --max-tokens 4096 \
      --port 8011 --runtime-dir /tmp/serve_rt -- --gpu-memory-utilization 0.6 --max-model-len 4096 \
      --max-num-seqs 64 > "$OUT/serve_tuned.log" 2>&1 &
  export SPID=$!
  python3 - <<'PY' > "$OUT/serve_chat.json"
import json, os, time, urllib.request
t0, ready, t1 = time.time(), None, time.time()
while time.time() - t0 < 300 and ready is None:
    try:
        os.kill(int(os.environ["SPID"]), 0)  # tuner serve still running
    except ProcessLookupError:
        break
    try:
        urllib.request.urlopen("http://127.0.0.1:8011/health", timeout=2)
        ready = time.time() - t0
    except Exception:
        time.sleep(2)
body = {"model": "/tmp/ck", "messages": [{"role": "user", "content": "Hello, who are you?"}],
        "max_tokens": 16, "temperature": 0}
req = urllib.request.Request("http://127.0.0.1:8011/v1/chat/completions", data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
try:
    t1 = time.time()
    answer, err = json.loads(urllib.request.urlopen(req, timeout=120).read()), None
except Exception as e:
    answer, err = None, repr(e)
print(json.dumps({"ready_s": ready, "answer_s": time.time() - t1, "response": answer, "error": err}, indent=1))
PY
  cat "$OUT/serve_chat.json"
  kill -INT $SPID; for i in $(seq 40); do kill -0 $SPID 2>/dev/null || break; sleep 1; done
  kill -9 $SPID 2>/dev/null; pkill -9 -f vllm.entrypoints; pkill -9 -f EngineCore; sleep 3
  echo "serve exit: $(wait $SPID; echo $?)"; grep -n "tuner" "$OUT/serve_tuned.log" | head -20 ;;
esac
stamp "done"
