#!/usr/bin/env bash
# Issue 16 on the H200 (GPU only; written on a CPU host, not yet run): tune fused MoE in vLLM's own
# kernel for the bench shapes (E=128 top-8 K=2048 N=768/384, E=8 top-2 K=4096 N=14336/7168; M in
# 1,16,64,256,1024,4096), bf16 and fp8_w8a8, with vLLM's shipped H200 config, its default config and
# FlagGems' default timed side by side in the same worker (baselines untuned / vllm_shipped /
# vllm_default / flaggems_default of each stored record); then the M that cover every batch of a
# served Qwen3-30B-A3B (max_num_batched_tokens 8192). Staging: MOE=1 ../shared/scripts/vllm-offline.sh
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
