"""One mode of `tuner bench --engine vllm`, in its own process: `python -m tuner.serving.bench_engine`.

The parent (tuner.serving.bench) sets the environment exactly as `tuner serve` would for the mode
(nothing for native, the runtime folder of `tuner serve` / `tuner serve --use-tuned` otherwise), so
vLLM's plugin loader applies tuner's plugin in the engine core as it does when serving. This process
builds the offline `vllm.LLM`, times its start, runs the same token-id requests at each concurrency
(cold: the first batch after start; warm: repeats), reads vLLM's per-request stats (TTFT, TPOT),
records teacher-forced prompt logprobs for the agreement check, optionally writes a torch.profiler
trace of one request through vLLM's own profiler hooks, and prints one JSON object.

vLLM spawns its engine core (tuner's plugin asks for it, and the bench sets it for every mode), so
everything runs under the `__main__` guard.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


PROFILE_OUTPUT_TOKENS = 64  # the profiled request's decode steps (tuner.profiling.engine_flow divides by them)
# Teacher-forced prompts short enough that one engine step holds one of them: the GEMMs then run at
# M = the prompt length, the decode / CUDA-graph sizes where the router sends keys to tuned kernels
# (the 512-token prompts run at M = 511, which it keeps on cuBLAS: they never test a routed key).
SMALL_M_PROMPTS = (8, 16, 24, 32, 48, 64, 96, 128)


@dataclass
class Workload:
    prompt_tokens: int = 512
    output_tokens: int = 128
    concurrencies: tuple[int, ...] = (1, 64)
    warm_repeats: int = 2
    logprob_prompts: int = 8
    vocab: int = 2048  # ids the locally trained tokenizer knows: every prompt decodes to text
    seed: int = 0


@dataclass
class Batch:
    concurrency: int
    phase: str  # cold | warm
    wall_s: float
    output_tokens: int
    ttft_ms: list[float] = field(default_factory=list)
    tpot_ms: list[float] = field(default_factory=list)

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else 0.0


def token_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """The same token ids in every mode (and no shared prefix, so prefix caching cannot help)."""
    import random

    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(length)] for _ in range(n)]


def _request_stats(out) -> tuple[float | None, float | None]:
    """(TTFT ms, TPOT ms) from vLLM's RequestStateStats, when the engine kept them."""
    m = getattr(out, "metrics", None)
    if m is None:
        return None, None
    ttft = getattr(m, "first_token_latency", 0.0) or None
    n = getattr(m, "num_generation_tokens", 0)
    first, last = getattr(m, "first_token_ts", 0.0), getattr(m, "last_token_ts", 0.0)
    tpot = (last - first) / (n - 1) if n > 1 and last > first else None
    return (ttft * 1e3 if ttft else None), (tpot * 1e3 if tpot else None)


def run_batch(llm, prompts: list[list[int]], params, phase: str) -> Batch:
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    wall = time.perf_counter() - t0
    b = Batch(len(prompts), phase, wall, sum(len(o.outputs[0].token_ids) for o in outs))
    for o in outs:
        ttft, tpot = _request_stats(o)
        if ttft is not None:
            b.ttft_ms.append(ttft)
        if tpot is not None:
            b.tpot_ms.append(tpot)
    return b


def prompt_logprobs(llm, prompts: list[list[int]], one_per_step: bool = False) -> list[dict]:
    """Teacher-forced: for every prompt position the engine's top-1 token and the logprob it gives
    the actual next token, so modes compare on the same inputs whatever they would generate.
    one_per_step: each prompt its own generate call, so one engine step runs it alone (M = its length)."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
    batches = [[p] for p in prompts] if one_per_step else [prompts]
    outs = [o for b in batches for o in llm.generate([{"prompt_token_ids": p} for p in b], params, use_tqdm=False)]
    rows = []
    for o in outs:
        top1, actual = [], []
        for pos, lp in enumerate(o.prompt_logprobs or []):
            if lp is None:  # the first position has no prediction
                continue
            tok = o.prompt_token_ids[pos]
            best = max(lp.items(), key=lambda kv: kv[1].logprob)[0]
            top1.append(int(best))
            actual.append(float(lp[tok].logprob) if tok in lp else None)
        rows.append({"top1": top1, "actual_logprob": actual})
    return rows


def build_llm(model: str, max_batched: int, max_seqs: int, profile_dir: str | None):
    from vllm import LLM

    kwargs = dict(model=model, dtype="bfloat16", seed=0, max_model_len=4096,
                  max_num_batched_tokens=max_batched, max_num_seqs=max_seqs,
                  gpu_memory_utilization=0.85, enable_prefix_caching=False, disable_log_stats=False)
    if not profile_dir:
        return LLM(**kwargs)
    base = {"profiler": "torch", "torch_profiler_dir": profile_dir}
    # shapes give the GEMM keys of eager launches; stacks would make the trace ~10x larger
    full = {**base, "torch_profiler_record_shapes": True, "torch_profiler_with_stack": False}
    try:
        return LLM(**kwargs, profiler_config=full)
    except (TypeError, ValueError) as e:  # an engine version without these fields
        if "torch_profiler_" not in str(e):
            raise
        print(f"bench_engine: profiler options not taken ({e}); profiling with defaults", file=sys.stderr)
        return LLM(**kwargs, profiler_config=base)


def engine_config(llm) -> dict:
    """What decides the M values the engine's GEMMs meet: CUDA-graph capture sizes (decode and small
    batches replay graphs captured at these M), the graph mode, and the largest batch of tokens."""
    cfg = getattr(getattr(llm, "llm_engine", None), "vllm_config", None)
    cc, sched = getattr(cfg, "compilation_config", None), getattr(cfg, "scheduler_config", None)
    sizes, mode = getattr(cc, "cudagraph_capture_sizes", None), getattr(cc, "cudagraph_mode", None)
    return {"capture_sizes": sorted(int(x) for x in sizes) if sizes else None,
            "cudagraph_mode": None if mode is None else str(mode),
            "max_num_batched_tokens": getattr(sched, "max_num_batched_tokens", None)}


def run(args: argparse.Namespace) -> dict:
    from vllm import SamplingParams

    w = Workload(prompt_tokens=args.prompt_tokens, output_tokens=args.output_tokens,
                 concurrencies=tuple(args.concurrency), warm_repeats=args.warm_repeats)
    t0 = time.perf_counter()
    max_seqs = max(*w.concurrencies, args.profile_concurrency if args.profile_dir else 1)
    llm = build_llm(args.model, args.max_batched_tokens, max_seqs, args.profile_dir)
    start_s = time.perf_counter() - t0
    params = SamplingParams(max_tokens=w.output_tokens, temperature=0.0, ignore_eos=True)
    batches: list[Batch] = []
    for c in w.concurrencies:  # cold: the first requests of this size after start
        batches.append(run_batch(llm, token_prompts(c, w.prompt_tokens, w.vocab, w.seed + c), params, "cold"))
    for rep in range(w.warm_repeats):
        for c in w.concurrencies:
            prompts = token_prompts(c, w.prompt_tokens, w.vocab, w.seed + 1000 * (rep + 1) + c)
            batches.append(run_batch(llm, prompts, params, "warm"))
    agreement = prompt_logprobs(llm, token_prompts(w.logprob_prompts, w.prompt_tokens, w.vocab, 7))
    small = prompt_logprobs(llm, [token_prompts(1, n, w.vocab, 70 + n)[0] for n in SMALL_M_PROMPTS],
                            one_per_step=True)
    if args.profile_dir:  # c requests of 512 prompt + 64 output tokens, through vLLM's profiler
        llm.start_profile()
        run_batch(llm, token_prompts(args.profile_concurrency, w.prompt_tokens, w.vocab, 99),
                  SamplingParams(max_tokens=PROFILE_OUTPUT_TOKENS, temperature=0.0, ignore_eos=True), "profile")
        llm.stop_profile()
    return {"mode": args.mode, "start_s": start_s, "workload": asdict(w), "engine": engine_config(llm),
            "batches": [{**asdict(b), "output_tok_s": b.output_tok_s} for b in batches],
            "prompt_logprobs": agreement, "small_m_logprobs": small,
            "profile_concurrency": args.profile_concurrency if args.profile_dir else None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tuner.serving.bench_engine")
    p.add_argument("--mode", required=True, choices=("native", "untuned", "tuned"))
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="JSON result file")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--output-tokens", type=int, default=128)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    p.add_argument("--warm-repeats", type=int, default=2)
    p.add_argument("--max-batched-tokens", type=int, default=4096)
    p.add_argument("--profile-dir", default=None)
    p.add_argument("--profile-concurrency", type=int, default=1)
    return p.parse_args(argv)


if __name__ == "__main__":
    a = parse_args()
    result = run(a)
    Path(a.out).write_text(json.dumps(result))
    print(f"bench_engine: {a.mode} done, start {result['start_s']:.1f} s", file=sys.stderr)
    # vLLM's engine core and its atexit hooks can hang a spawned interpreter at exit
    sys.stdout.flush()
    sys.stderr.flush()
