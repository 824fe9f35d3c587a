# Source on the H100 host (the device tool's machine): installs the carried wheels and puts the
# checkout on PYTHONPATH. Usage: source tuner/benchmarks/gpu_env.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# vLLM is not installed on the GPU host: its shipped fused-MoE configs travel as a copied folder
# (made here with: cp -r <vllm>/model_executor/layers/fused_moe/configs .whl/vllm_moe_configs)
[ -d .whl/vllm_moe_configs ] && export TUNER_VLLM_SHIPPED_CONFIGS=$PWD/.whl/vllm_moe_configs
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee -a ${OUT:-/tmp}/env.txt
python3 -c "import torch, triton, flag_gems; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'flag_gems', flag_gems.__version__ if hasattr(flag_gems, '__version__') else '?')" 2>&1 | tail -1 | tee -a ${OUT:-/tmp}/env.txt
