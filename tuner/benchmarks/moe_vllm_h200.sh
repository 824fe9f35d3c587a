#!/usr/bin/env bash
# Issue 16 on the H200 (GPU only; written on a CPU host, not yet run): tune fused MoE in vLLM's own
# kernel for the bench shapes (E=128 top-8 K=2048 N=768/384, E=8 top-2 K=4096 N=14336/7168; M in
# 1,16,64,256,1024,4096), bf16 and fp8_w8a8, with vLLM's shipped H200 config, its default config and
# FlagGems' default timed side by side in the same worker (baselines untuned / vllm_shipped /
# vllm_default / flaggems_default of each stored record); then the M that cover every batch of a
# served Qwen3-30B-A3B (max_num_batched_tokens 8192); then issue 16 step 2: a random-weight Qwen3-MoE
# with Qwen3-30B-A3B's dimensions (LAYERS=8 of 48 by default: 11.2 GB in bf16; every layer has the
# real shapes, so the fused-MoE key E=128,N=768,K=2048,top_k=8 is the served model's), benched in
# issue 7's modes (native / untuned / tuned), the config file each mode's MoE layers read (vLLM's
# "Using configuration from ... for MoE layer." line), and the engine profile. Staging: MOE=1 ../shared/scripts/vllm-offline.sh
# .vllm (vLLM's MoE CUDA ops), the stage.sh calls it prints, export PYTHONPATH=/tmp/vsite:$PYTHONPATH.
set -euo pipefail
out=${1:-tuner/benchmarks/results/moe_vllm}
mkdir -p "$out"
db="sqlite:///$(realpath "$out")/moe_vllm.db"
trials=${TRIALS:-60}
pytest -q -m gpu tests/kernels/test_vllm_fused_moe.py 2>&1 | tee "$out/gpu_tests.log"
for dtype in bf16 fp8_w8a8; do
  tuner tune --op vllm_fused_moe --shapes moe-bench --dtype "$dtype" --trials "$trials" --timeout 120 \
    --db "$db" --json > "$out/bench_$dtype.json"
done
tuner tune --op vllm_fused_moe --shapes qwen3-30b-a3b-serve --trials "$trials" --timeout 120 --db "$db" \
  --json > "$out/serve_bf16.json"
tuner db show --op vllm_fused_moe --db "$db" --json > "$out/db_show.json"
python -c "import vllm, torch, triton; print(vllm.__version__, torch.__version__, triton.__version__)" > "$out/env.txt"
nvidia-smi >> "$out/env.txt"
# issue 16 step 2: serve the MoE model with the tuned JSON active through the plugin
ck=${CK:-/tmp/qwen3-moe-${LAYERS:-8}l}
[ -f "$ck/config.json" ] || tuner checkpoint "$ck" --model qwen3-moe --layers "${LAYERS:-8}"
tuner bench "$ck" --modes native,untuned,tuned --concurrency 1,64 --max-tokens 8192 --db "$db" \
  --out-dir "$out/bench_qwen3_moe" --json > "$out/bench_qwen3_moe.json" || echo "bench: exit $?" >&2
# native/untuned: vLLM's shipped configs/E=128,N=768,device_name=NVIDIA_H200.json (or "Using default MoE
# config"); tuned: the file in the runtime folder's VLLM_TUNED_CONFIG_FOLDER
grep -rH --include=engine.log -e "for MoE layer" -e "default MoE config" "$out/bench_qwen3_moe" \
  | tee "$out/moe_config_used.txt" || true
tuner profile --engine vllm --model "$ck" --modes native,tuned --concurrency 64 --db "$db" \
  --out-dir "$out/engine_profile_qwen3_moe" --json > "$out/engine_profile_qwen3_moe.json" || echo "profile: exit $?" >&2
grep -rH --include=*.log -e "for MoE layer" -e "default MoE config" "$out/engine_profile_qwen3_moe" \
  | tee -a "$out/moe_config_used.txt" || true
