#!/usr/bin/env bash
# A lease's GPU work (issues 12, 13, 17) as a queue that outlives the 10-minute call limit: each call
# runs the steps not yet done (a marker per step in /tmp/q) until LIMIT seconds, a tune stopped at
# the limit (SIGINT: it stores what it measured) is resumed by the next call, whose studies go on
# where they stopped. Everything the steps write lands in /tmp/res and comes back packed, as
# $OUT/res.tar.gz (logs, reports, gemm.db) and $OUT/dbs.tar.gz (the issue 13/17 study databases):
# the tool returns at most 8 files. Call it back to back while the machine stays warm (/tmp is lost
# when cold): run(carry=[".whl", ".snap"], command="LIMIT=560 bash tuner/benchmarks/gpu_queue.sh").
# Steps, in order:
#   setup   wheels + the project snapshot (vllm_h200.sh setup), both GPUs in env.txt
#   launch  issue 12: host time per eager call as tuner's kernels launch now (kernels/direct_launch.py)
#           and through Triton's dispatch, cProfile of both; the direct launches' GPU tests, then the
#           persistent, bmm and addmm kernels' (not stream-K's)
#   probe   GPU 0: copy bandwidth and host cost alone, then stream-K tests (150 s: its programs spin
#           on flags) and ws_probe while the other GPU tests (persistent, split-K bias, bmm router,
#           addmm, parallel, mm, inject) run on GPU 1 (on GPU 0 when there is one GPU)
#   descprobe   issue 12: tuner's persistent kernel with device- vs host-built TMA descriptors on the
#           small addmm keys, cuBLAS beside (tuner/benchmarks/desc_probe.py, ~1 min)
#   skprobe issue 12: stream-K (each SK_TAIL_ONLY, each descriptor form) vs the persistent kernel vs
#           cuBLAS on the partial-wave keys, each against its iterations' share of the persistent
#           time (tuner/benchmarks/streamk_probe.py, ~2 min), then host_cost.py if the run has none
#   waveprobe   issue 12: the persistent kernel's time per wave, whole and partial (12-264 tiles at M=512,
#           K=3584), stream-K on the same shapes (tuner/benchmarks/wave_probe.py, ~1 min)
#   fusedprobe  issue 12: split-K with its reduction in the same launch vs the two-kernel split-K vs
#           cuBLAS on the decode keys, weight-read bandwidth beside (tuner/benchmarks/fused_probe.py)
#   clockprobe  issue 12: the search's kind of timing (after the GPU idled) vs the finalists' pass (back
#           to back) on the M=4096 prefill keys and a decode key, SM clock / power / temperature sampled
#           during each, and search-like timings after 250 and 1000 ms of warm-up (clock_probe.py, gemm.db's
#           configs when there is one, ~2-3 min)
#   l2probe issue 12: the M=4096 keys' cuBLAS and tuned kernels timed as tuner times them and after a
#           copy into their activation (as the engine's norm writes it: in L2) or into a scratch buffer,
#           back to back (tuner/benchmarks/l2_probe.py, ~1-2 min). It times gemm.db's configs, so give
#           SEED_DB (e.g. results/vllm/h200_run11/bench_gemm.db.xz, what run 11's engine served): on a
#           fresh machine without it there is no gemm.db yet and only cuBLAS is timed
#   decode  issue 12, only when mm is skipped (SKIP=mm: its gemm.db put at /tmp/res/gemm.db): o and
#           down (mm) and qkv (addmm) at M = 1, 8, 32 tuned again into it, the search now trying
#           split-K's FUSED_REDUCE (~4 min); the copy bandwidth measured first if the run has none.
#           The engine benches wait for it (SKIP="decode_mm decode_addmm" benches the gemm.db as it is)
#   mm      issue 12: the 24 LLM mm keys and the resampler's 4, tuned by every GPU (--gpus 0,1 on two, 0 on one)
#   addmm   issue 12: the 14 addmm keys (q/k/v with bias, SigLIP, the resampler's out_proj, Whisper), likewise
#   bmm     issue 12: the resampler's q and k/v projections as bmm and transformers' prefill lm_head
#           (bmm's preset minicpmo, ~2 min; results/gemm_h200/session12/bmm)
#   runs    issues 13/17: TPE, same seed and trials, on 3 decode keys: w1 (1 worker, GPU 0),
#           w4 (4 workers sharing GPU 0), g2 (1 worker on each of GPUs 0 and 1; two GPUs only)
#   grid    issue 13's reference: --sampler grid on the same keys, 4 workers per GPU
#   vbench, vbenchw, fsbench   only with vLLM staged (and FlagScale for fsbench, vllm_h200.sh fs), before
#           runs: vllm_h200.sh bench native,tuned, the same with --route-within $VBENCH_WITHIN (1.02: near-ties
#           to Triton, for the Triton share), vbenchj: that tuned engine alone with TUNER_DIRECT_LAUNCH=0
#           (every launch through Triton's dispatch), and fsbench, with this run's gemm.db as the tuned routes
#           (ROUNDS=n: every bench's modes n times, each a fresh engine: `tuner bench --rounds n`. Session 16
#           (runs 10a/10b): the checkpoint 42-47 s, round 1's engines 122-151 s each (first load, profile),
#           later ones 73-80 s: ROUNDS=2 ~470 s, ROUNDS=3 ~620 s, over one call; both runs were killed in
#           their last engine. The bench now stops 90 s before the call's end (BENCH_END), and
#           `tuner bench-report` reports the engines that finished (vllm_h200.sh))
#   fp8tests, fp8   issue 12 item 3: the fp8 GEMM's GPU tests (240 s at most), then scaled_mm tuned
#           on vLLM's fp8 layers (qkv, o, gate_up, down) at 5 M, into gemm.db beside mm and addmm
# and after them, in every call: the GEMM report and the workers report of what exists so far.
# SKIP="probe runs grid" marks steps done before starting (e.g. a lease that only re-tunes), for every
# later call of the machine too; RERUN="vbenchj" clears such marks (a step skipped or done before); the
# stream-K and fused split-K GPU tests (step streamk, 150 s at most) still run before the tunes that
# time them, unless SKIP names streamk.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); END=$(( T0 + ${LIMIT:-560} ))
stamp() { echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
left() { echo $(( END - $(date +%s) )); }
export PYTHONPATH=/tmp/tuner:/tmp/site PYTHONUNBUFFERED=1
Q=/tmp/q R=/tmp/res; mkdir -p "$Q" "$R"
for s in ${SKIP:-}; do touch "$Q/$s"; done
for s in ${RERUN:-}; do rm -f "$Q/$s"; done  # steps an earlier call of this machine skipped or ran, to run now
KEYS=${KEYS:-"16,4608,3584 16,3584,3584 16,3584,18944"}  # issue 13's three decode keys (results/search)
MM=(); for nk in 3584,3584 37888,3584 3584,18944 151744,3584; do for m in 1 8 32 64 512 4096; do MM+=(--shape "$m,$nk"); done; done
MM+=(--shapes minicpmo-resampler)  # kv_proj, proj and the folded q, k/v of one image (kernels/mm.py RESAMPLER_MM)
ADDMM=(); for m in 1 8 32 64 512 4096; do ADDMM+=(--shape "$m,4608,3584"); done
for s in 10240,1152,1152 10240,4304,1152 10240,1152,4304 640,3584,3584 1500,1024,1024 1500,4096,1024 1500,1024,4096 \
    1500,3584,1024; do ADDMM+=(--shape "$s"); done
WK=(); for s in $KEYS; do WK+=(--shape "$s"); done
# a lease that re-tunes only some keys into an earlier run's database (e.g. the partial-wave keys after a
# kernel change): MM_KEYS / ADDMM_KEYS replace the sets above, SEED_DB (an .xz in the snapshot) is the start
[ -n "${MM_KEYS:-}" ] && { MM=(); for s in $MM_KEYS; do MM+=(--shape "$s"); done; }
[ -n "${ADDMM_KEYS:-}" ] && { ADDMM=(); for s in $ADDMM_KEYS; do ADDMM+=(--shape "$s"); done; }
DEC_MM=(); for nk in 3584,3584 3584,18944; do for m in 1 8 32; do DEC_MM+=(--shape "$m,$nk"); done; done
DEC_ADDMM=(); for m in 1 8 32; do DEC_ADDMM+=(--shape "$m,4608,3584"); done
FP8=(); for nk in 4608,3584 3584,3584 37888,3584 3584,18944; do for m in 1 8 64 512 4096; do FP8+=(--shape "$m,$nk"); done; done
NG=$(nvidia-smi -L 2>/dev/null | grep -c GPU); ALL=$(seq -s, 0 $(( NG > 0 ? NG - 1 : 0 )))  # 0 or 0,1
OTHER=$(( NG > 1 ? 1 : 0 ))  # where the correctness tests run beside GPU 0's timings (the same GPU on one)

# tune NAME LOG ARGS...: `tuner tune` stopped by SIGINT 60 s before the call's end (a parallel tune's
# children need that long to queue their configs again); done (marker) only when it ended by itself
tune() {
  local name=$1 log=$2; shift 2
  local t=$(( $(left) - 60 )); [ "$t" -gt 30 ] || { echo "no time left for $name"; return 1; }
  stamp "$name (up to $t s)"
  (cd /tmp/tuner && timeout -s INT -k 120 "$t" python3 cli.py tune "$@") >> "$R/$log" 2>&1
  local rc=$?; echo "$name exit $rc"; tail -4 "$R/$log"
  [ $rc = 0 ] && touch "$Q/$name"
}

gpu1_tests() {  # one pytest process per group: the mm tests set TRITON_INTERPRET in their process
  local g
  echo "=== GPU $OTHER: pytest -m gpu tests/gpu/test_persistent_mm_gpu.py -k 'not streamk'"
  (cd /tmp/tuner && CUDA_VISIBLE_DEVICES=$OTHER timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider \
      -k "not streamk" tests/gpu/test_persistent_mm_gpu.py 2>&1 | tail -25)
  for g in "tests/gpu/test_addmm_gpu.py tests/gpu/test_bmm_gpu.py" \
      "tests/gpu/test_mm_gpu.py tests/gpu/test_clock_probe_gpu.py tests/gpu/test_l2_probe_gpu.py tests/tuner/inject"; do
    echo "=== GPU $OTHER: pytest -m gpu $g"
    (cd /tmp/tuner && CUDA_VISIBLE_DEVICES=$OTHER timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider $g 2>&1 | tail -25)
  done
  echo "=== all GPUs: pytest -m gpu tests/gpu/test_parallel_gpu.py"
  (cd /tmp/tuner && timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/gpu/test_parallel_gpu.py 2>&1 | tail -25)
}

if [ ! -f $Q/setup ]; then
  stamp "setup"
  if [ -d .whl ] && [ -f .snap/tuner.tar ]; then  # (a .whl kept from an earlier call without .snap: keep what is installed)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    rm -rf /tmp/tuner && mkdir -p /tmp/tuner && tar -xf .snap/tuner.tar -C /tmp/tuner || exit 1
    (cd /tmp/tuner && python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/site .) || exit 1
  elif [ ! -f /tmp/tuner/cli.py ]; then  # staged by vllm_h200.sh setup in an earlier call, or nothing
    echo "nothing to set up from: carry .whl and .snap (or run vllm_h200.sh setup first)"; exit 1
  fi
  { nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.max.sm --format=csv; nvidia-smi topo -m
    python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpus', torch.cuda.device_count())"
    python3 -m pip list 2>/dev/null | grep -iE "^(flag.gems|optuna|sqlalchemy|numpy) "; nproc
    echo "tuner commit $(cat .snap/commit 2>/dev/null || echo '(snapshot installed earlier)')"; } > "$R/env.txt" 2>&1
  cat "$R/env.txt"; touch $Q/setup
fi

[ -n "${SEED_DB:-}" ] && [ ! -f "$R/gemm.db" ] && { xz -dc "/tmp/tuner/$SEED_DB" > "$R/gemm.db" || exit 1; }  # (after setup: it unpacks the snapshot)
if [ ! -f $Q/probe ]; then
  cd /tmp/tuner || exit 1
  export CUDA_VISIBLE_DEVICES=0
  # the timings first, with nothing else on the machine; then the tests beside the rest
  stamp "copy bandwidth"; timeout 60 python3 -m tuner.benchmarks.copy_bw | tee "$R/copy_bw.json"
  stamp "host cost per call"; timeout 120 python3 -m tuner.benchmarks.host_cost | tee "$R/host_cost.json"
  # where the persistent kernel's host time goes (47 us a call in session 5, 106 in session 12)
  timeout 120 python3 -m tuner.benchmarks.host_cost --profile persistent_us persistent_host_desc_us \
      > "$R/host_cost_profile.txt" 2>&1; grep -A 14 "^--- cProfile" "$R/host_cost_profile.txt" | cut -c1-160
  gpu1_tests > "$R/gputests_other.log" 2>&1 & BG=$!
  stamp "pytest -m gpu stream-K (GPU 0)"
  timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider -k streamk tests/gpu/test_persistent_mm_gpu.py > "$R/probe_streamk.log" 2>&1
  echo "pytest exit $?"; grep -E "passed|failed|Error|error:" "$R/probe_streamk.log" | tail -12
  stamp "warp specialisation"; timeout 120 python3 -m tuner.benchmarks.ws_probe | tee "$R/ws_probe.jsonl"
  unset CUDA_VISIBLE_DEVICES; cd - > /dev/null
  stamp "waiting for the other GPU tests"; wait $BG
  grep -E "^===|passed|failed|error" "$R/gputests_other.log" | tail -20
  touch $Q/probe $Q/streamk
fi

if [ ! -f $Q/launch ]; then  # issue 12: tuner's kernels launched past Triton's dispatch (kernels/direct_launch.py)
  cd /tmp/tuner || exit 1
  export CUDA_VISIBLE_DEVICES=0
  stamp "host cost per call, as launched and through Triton's dispatch, then cProfile of both"
  timeout 200 python3 -m tuner.benchmarks.host_cost --profile persistent_us persistent_host_desc_us splitk_us \
      > "$R/host_cost_profile.txt" 2>&1; head -1 "$R/host_cost_profile.txt" | tee "$R/host_cost.json"
  grep -A 12 "^--- cProfile" "$R/host_cost_profile.txt" | cut -c1-160
  stamp "pytest -m gpu direct launches (150 s at most), then the kernels' own GPU tests (240 s)"
  timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/gpu/test_direct_launch_gpu.py \
      > "$R/launch_tests.log" 2>&1
  echo "pytest exit $?"; grep -E "passed|failed|Error|error:" "$R/launch_tests.log" | tail -12
  timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider -k "not streamk" tests/gpu/test_persistent_mm_gpu.py \
      tests/gpu/test_bmm_gpu.py tests/gpu/test_addmm_gpu.py > "$R/kernel_tests.log" 2>&1
  echo "pytest exit $?"; grep -E "passed|failed|Error|error:" "$R/kernel_tests.log" | tail -12
  unset CUDA_VISIBLE_DEVICES; cd - > /dev/null; touch $Q/launch
fi

if [ ! -f $Q/streamk ]; then  # in probe too; on its own when probe is skipped (SKIP=streamk: not at all)
  # with the fused split-K's tests (both hand partials between programs through flags / counts) and
  # the host-descriptor persistent kernel's (new since session 9's lease)
  stamp "pytest -m gpu stream-K and fused split-K (spinning programs: 150 s at most)"
  (cd /tmp/tuner && CUDA_VISIBLE_DEVICES=0 timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider \
      -k "streamk or fused or host_desc" tests/gpu/test_persistent_mm_gpu.py) > "$R/streamk_tests.log" 2>&1
  echo "pytest exit $?"; grep -E "passed|failed|Error|error:" "$R/streamk_tests.log" | tail -12; touch $Q/streamk
fi
# probe STEP MODULE SECONDS NEED WHAT [ARGS...]: an issue-12 experiment on GPU 0, its JSON lines in
# $R/<module>.jsonl, run when NEED seconds are left
probe() {
  [ ! -f "$Q/$1" ] && [ "$(left)" -gt "$4" ] || return 1
  stamp "$5 ($3 s at most)"
  local step=$1 module=$2 secs=$3 rc; shift 5
  (cd /tmp/tuner && CUDA_VISIBLE_DEVICES=0 timeout "$secs" python3 -m "tuner.benchmarks.$module" "$@") \
      > "$R/$module.jsonl" 2>&1
  rc=$?; echo "$module exit $rc"; cut -c1-300 "$R/$module.jsonl"; touch "$Q/$step"
}
probe descprobe desc_probe 120 300 "descriptor probe"  # device- vs host-built TMA descriptors
if probe skprobe streamk_probe 150 300 "stream-K probe"; then  # where stream-K loses the partial waves
  # the eager host time of every own kernel again, the host-descriptor forms new since session 5's
  [ -s "$R/host_cost.json" ] || (cd /tmp/tuner && CUDA_VISIBLE_DEVICES=0 timeout 60 python3 -m tuner.benchmarks.host_cost \
      > "$R/host_cost.json" 2>&1); cat "$R/host_cost.json"
fi
probe waveprobe wave_probe 150 240 "wave probe"  # a wave's cost, whole and partial; stream-K's split tiles
probe fusedprobe fused_probe 120 240 "fused split-K probe"  # split-K's second launch at decode
CLOCK_DB=(); [ -f "$R/gemm.db" ] && CLOCK_DB=(--db "sqlite:///$R/gemm.db")
probe clockprobe clock_probe 300 360 "clock probe" ${CLOCK_DB[@]+"${CLOCK_DB[@]}"}  # search vs pass: clocks
probe l2probe l2_probe 200 260 "L2 probe" ${CLOCK_DB[@]+"${CLOCK_DB[@]}"}  # the engine's A in L2: the ratios?
if [ -f $Q/mm ] && [ ! -f $Q/decode_addmm ]; then  # the decode keys again, split-K's reduction fused or not
  [ -s "$R/copy_bw.json" ] || (cd /tmp/tuner && timeout 60 python3 -m tuner.benchmarks.copy_bw > "$R/copy_bw.json")
  [ -f $Q/decode_mm ] || tune decode_mm tune_decode.log --op mm "${DEC_MM[@]}" --trials "${TRIALS:-40}" \
      --timeout "${KEY_TIMEOUT:-12}" --seed 0 --gpus "$ALL" --db "sqlite:///$R/gemm.db"
  [ -f $Q/decode_mm ] && tune decode_addmm tune_decode.log --op addmm "${DEC_ADDMM[@]}" --trials "${TRIALS:-40}" \
      --timeout "${KEY_TIMEOUT:-12}" --seed 0 --gpus "$ALL" --db "sqlite:///$R/gemm.db"
fi
# a whole mm tune covers the decode keys (marked done with it); the report needs this run's copy
# bandwidth (the probe step measures it; SKIP=probe does not)
[ -f $Q/mm ] || [ -s "$R/copy_bw.json" ] || (cd /tmp/tuner && timeout 60 python3 -m tuner.benchmarks.copy_bw > "$R/copy_bw.json")
[ -f $Q/mm ] || { tune mm tune_mm.log --op mm "${MM[@]}" --trials "${TRIALS:-40}" --timeout "${KEY_TIMEOUT:-12}" \
    --seed 0 --gpus "$ALL" --db "sqlite:///$R/gemm.db" && touch $Q/decode_mm $Q/decode_addmm; }
[ -f $Q/mm ] && { [ -f $Q/addmm ] || tune addmm tune_addmm.log --op addmm "${ADDMM[@]}" --trials "${TRIALS:-40}" \
    --timeout "${KEY_TIMEOUT:-12}" --seed 0 --gpus "$ALL" --db "sqlite:///$R/gemm.db"; }
[ -f $Q/addmm ] && { [ -f $Q/bmm ] || tune bmm tune_bmm.log --op bmm --shapes minicpmo --trials "${TRIALS:-40}" \
    --timeout "${KEY_TIMEOUT:-12}" --seed 0 --gpus "$ALL" --db "sqlite:///$R/gemm.db"; }
# with vLLM staged (vllm_h200.sh's header): the engine benches, each at the start of a call of its own
# (two engines with the checkpoint take most of one), tuned = the routes of the GEMM set just tuned
WAIT_FOR_CALL=0
if [ -f $Q/addmm ] && [ -f $Q/decode_addmm ] && [ -d /tmp/vsite/vllm ]; then
  for step in vbench vbenchw vbenchj fsbench; do
    [ -f $Q/$step ] && continue
    [ $step = fsbench ] && [ ! -d /tmp/site/flag_scale ] && continue  # FlagScale not staged (vllm_h200.sh fs)
    if [ "$(left)" -lt "${BENCH_S:-500}" ]; then echo "$step needs a call of its own: it runs first in the next one"
      WAIT_FOR_CALL=1; break; fi
    stamp "$step"
    export BENCH_END=$(( END - 90 ))  # (epoch s) the bench stops there, leaving the reports 90 s
    case $step in
      vbench) BENCH_DB=$R/gemm.db bash tuner/benchmarks/vllm_h200.sh bench native,tuned ;;
      vbenchw) BENCH_DB=$R/gemm.db ROUTE_WITHIN=${VBENCH_WITHIN:-1.02} bash tuner/benchmarks/vllm_h200.sh bench native,tuned ;;
      vbenchj) TUNER_DIRECT_LAUNCH=0 BENCH_DB=$R/gemm.db ROUTE_WITHIN=${VBENCH_WITHIN:-1.02} \
          bash tuner/benchmarks/vllm_h200.sh bench tuned ;;
      fsbench) BENCH_DB=$R/gemm.db bash tuner/benchmarks/vllm_h200.sh fsbench ;;
    esac
    touch "$Q/$step"
  done
fi
if [ -f $Q/addmm ] && [ $WAIT_FOR_CALL = 0 ] && [ ! -f $Q/fp8tests ]; then
  stamp "pytest -m gpu fp8 GEMM (240 s at most)"
  (cd /tmp/tuner && CUDA_VISIBLE_DEVICES=0 timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider \
      tests/gpu/test_scaled_mm_gpu.py) > "$R/fp8_tests.log" 2>&1
  echo "pytest exit $?"; grep -E "passed|failed|Error|error:" "$R/fp8_tests.log" | tail -12; touch $Q/fp8tests
fi
[ -f $Q/fp8tests ] && [ $WAIT_FOR_CALL = 0 ] && { [ -f $Q/fp8 ] || tune fp8 tune_fp8.log --op scaled_mm "${FP8[@]}" \
    --trials "${TRIALS:-40}" --timeout "${KEY_TIMEOUT:-12}" --seed 0 --gpus "$ALL" --db "sqlite:///$R/gemm.db"; }
if [ -f $Q/addmm ] && [ $WAIT_FOR_CALL = 0 ] && [ ! -f $Q/runs ]; then  # SKIP=runs: none of w1, w4, g2
  mkdir -p "$R/dbs"
  RUNS_TODO=("w1 --gpus 0 --workers 1" "w4 --gpus 0 --workers 4"); [ "$NG" -gt 1 ] && RUNS_TODO+=("g2 --gpus 0,1 --workers 1")
  for run in "${RUNS_TODO[@]}"; do
    set -- $run; name=$1; shift
    [ -f "$Q/$name" ] || tune "$name" "$name.log" --op mm "${WK[@]}" --trials "${RUN_TRIALS:-60}" --seed 0 "$@" \
        --db "sqlite:///$R/dbs/$name.db" || break
  done
  [ -f $Q/w4 ] && { [ "$NG" -lt 2 ] || [ -f $Q/g2 ]; } && { [ -f $Q/grid ] || tune grid grid.log --op mm "${WK[@]}" \
      --sampler grid --trials 100000 --gpus "$ALL" --workers 4 --db "sqlite:///$R/dbs/grid.db"; }
fi

stamp "reports"
cd /tmp/tuner || exit 1
if [ -f "$R/gemm.db" ]; then
  python3 cli.py db show --db "sqlite:///$R/gemm.db" --json > "$R/db_show.json" 2>/dev/null
  if [ -s "$R/copy_bw.json" ]; then  # (a lease that only benches engines measures no copy bandwidth)
    python3 -m tuner.benchmarks.report_mm --copy-bw "$R/copy_bw.json" --ops mm,addmm,scaled_mm,bmm "$R/gemm.db" \
        > "$R/REPORT.md" 2>&1
    tail -8 "$R/REPORT.md"
  else echo "no GEMM report: no copy bandwidth measured in this run (probe and mm skipped)"; fi
  python3 -m tuner.benchmarks.variant_bests "$R/gemm.db" --ops mm,addmm,scaled_mm,bmm > "$R/VARIANTS.md" 2>&1
fi
RUNS=(); for n in w1 w4 g2; do [ -f "$R/dbs/$n.db" ] && RUNS+=("$n=$R/dbs/$n.db"); done
if [ ${#RUNS[@]} -gt 0 ]; then
  GRID=(); [ -f $Q/grid ] && GRID=(--grid "$R/dbs/grid.db")
  python3 -m tuner.benchmarks.workers_bench "${GRID[@]}" "${RUNS[@]}" > "$R/workers.jsonl" 2>&1; cat "$R/workers.jsonl"
fi
ls $Q | tr '\n' ' ' > "$R/steps_done.txt"; echo "steps done: $(cat $R/steps_done.txt)"
tar -czf "$OUT/res.tar.gz" -C "$R" --exclude=dbs . && { [ -z "$(ls -A "$R/dbs" 2>/dev/null)" ] \
    || tar -czf "$OUT/dbs.tar.gz" -C "$R" dbs; }  # (no empty one: the tool returns 8 files, vbench makes 6)
stamp "done"
