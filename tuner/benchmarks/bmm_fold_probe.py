"""Where does the resampler's bmm time go? An experiment for issue 12 (H200).

MiniCPM-o's resampler projects its keys and values with F.linear on a sequence-first input, which
reaches aten::bmm as 1024 products of 1-10 rows on one expanded weight (kernels/bmm.py, layout
linear). The same numbers are one GEMM of 1024 x slices rows. Timed side by side on the tuner's
input sets (rotated over 3x the L2, CUDA-graph replays):
- `bmm`: torch.bmm as PyTorch runs it (cuBLAS, batched);
- `mm_folded`: cuBLAS's mm on the rows as they lie in memory, then copied into bmm's output
  layout (what folding costs with cuBLAS), and `mm_folded_gemm` that GEMM alone, into a buffer of
  its own (the copy's share is the difference);
- `persistent`: tuner's batched persistent kernel (kernels/persistent_bmm.py), which walks such a
  key as slices x 1024 rows and stores straight into bmm's layout, with `config`.

usage: python -m tuner.benchmarks.bmm_fold_probe   (on the GPU host; one JSON line per key)
"""

from __future__ import annotations

import json

import torch
import triton

KEYS = [(1024, s, 3584, 3584, 1) for s in (1, 4, 10)]  # kernels/bmm.py's resampler preset
CONFIG = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4)


def folded_rows(a: torch.Tensor) -> torch.Tensor:
    """A [BATCH, M, K] that is X [M, BATCH, K].permute(1, 0, 2) as X's M x BATCH rows (a view)."""
    batch, M, K = a.shape
    return a.transpose(0, 1).reshape(M * batch, K)


def runs(config: dict, key: tuple, device: str, dtype: torch.dtype = torch.bfloat16) -> dict:
    """name -> run(args, out) for args = (A, B expanded over the batch), out [BATCH, M, N]."""
    from kernels.persistent_bmm import persistent_bmm

    batch, M, N, _, _ = key
    y = torch.empty(M * batch, N, device=device, dtype=dtype)  # the folded GEMM's own output

    def gemm(args):
        return torch.mm(folded_rows(args[0]), args[1][0], out=y)

    def folded(args, out):
        out.copy_(gemm(args).view(M, batch, N).transpose(0, 1))

    return {"bmm": lambda args, out: torch.bmm(args[0], args[1], out=out),
            "mm_folded": folded,
            "mm_folded_gemm": lambda args, out: gemm(args),
            "persistent": lambda args, out: persistent_bmm(args[0], args[1], config, out=out)}


def probe(key: tuple, config: dict) -> dict:
    from kernels.bmm import BMM
    from tuner.benchmarks.side_by_side import rel_error
    from tuner.tuning.measure import n_sets_for, time_runner

    bmm = BMM()
    n = n_sets_for(bmm, key, "bf16", "cuda", torch.cuda.get_device_properties(0).L2_cache_size)
    inputs = bmm.make_inputs(key, "bf16", "cuda", n, seed=0)
    row: dict = {"key": list(key), "config": config, "input_sets": n}
    outs = {}
    for name, run in runs(config, key, "cuda").items():
        for out in inputs.outs:
            out.fill_(float("nan"))  # a run that wrote nothing is not judged on the one before's output
        us, method = time_runner(run, inputs, "cuda")
        row[f"{name}_us"], row["timing"] = round(us, 2), method
        outs[name] = inputs.outs[0].clone()
    batch, M, N, K, _ = key
    row["tflops_persistent"] = round(2 * batch * M * N * K / row["persistent_us"] / 1e6, 1)
    row["rel_error_vs_bmm"] = {n: rel_error(outs[n], outs["bmm"]) for n in ("mm_folded", "persistent")}
    return row


def main() -> None:
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}))
    for key in KEYS:
        try:
            row = probe(key, CONFIG)
        except Exception as e:  # noqa: BLE001 — a key that fails is reported, the others still run
            row = {"key": list(key), "error": f"{type(e).__name__}: {e}"[:400]}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
