#!/usr/bin/env bash
# Tune the GEMM keys vLLM 0.26 meets serving the MiniCPM-o 2.6 LLM (Qwen2.5-7B) on this GPU, at the
# decode sizes where FlagGems' tuned kernels can beat cuBLAS (H200 facts: gate_up and lm_head at
# M <= 64), so the router has measured evidence for each: o 3584x3584, gate_up 37888x3584 (vLLM
# fuses gate and up), down 3584x18944, lm_head 151744x3584 (vLLM pads the 151700-token vocab to a
# multiple of 64), at M = 1, 16, 64. q/k/v carry a bias (addmm, 1.47-1.73x cuBLAS even tuned on the
# H200) and prefill sizes are left untuned: without a record the router keeps them native.
# Usage (repo root, wheels installed, $OUT set): bash tuner/benchmarks/tune_vllm_keys.sh DB
set -u
DB=${1:?usage: tune_vllm_keys.sh DB}
OUT=${OUT:-/tmp/out}
S=""
for nk in 3584,3584 37888,3584 3584,18944 151744,3584; do
  for m in 1 16 64; do S="$S --shape $m,$nk"; done
done
timeout -s INT -k 20 "${TUNE_CAP:-420}" python3 cli.py tune --op mm $S --trials "${TRIALS:-6}" --timeout 8 \
    --seed 0 --db "$DB" --json > "$OUT/tune_vllm_keys.json" 2> "$OUT/tune_vllm_keys.log"
echo "tune exit $?"
python3 cli.py db show --op mm --db "$DB" > "$OUT/db_show.txt" 2>&1
python3 cli.py db show --op mm --db "$DB" --json > "$OUT/records.json" 2>> "$OUT/db_show.txt"
cat "$OUT/db_show.txt"
