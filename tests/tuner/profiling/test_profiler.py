import gzip
import json
import math
from pathlib import Path

import pytest
import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent

from tuner.profiling.profiler import (
    GEMM_FORMS, ROW_FORMS, UNATTRIBUTED, HotOp, KernelSample, aggregate, attention_key, measure_overhead,
    mm_key, profile_steps, rank, row_form, samples_from_events, tunable_kernel,
)
from tuner.profiling.workload import RequestOptions, build_model, build_requests

# --- pure functions --------------------------------------------------------------------------


@pytest.mark.parametrize("op, kernel", [
    ("aten::mm", "mm"), ("aten::addmm", "addmm"), ("aten::linear", "mm"), ("aten::matmul", "mm"),
    ("aten::bmm", "bmm"), ("aten::baddbmm", "mm"),
    ("vllm::fused_moe", "vllm_fused_moe"), ("_moe_C::topk_softmax", "vllm_fused_moe"),
    ("vllm::outplace_fused_experts", "vllm_fused_moe"), ("flag_gems::fused_moe", "fused_moe"),
    ("aten::_scaled_dot_product_flash_attention", "attention"),
    ("aten::_scaled_dot_product_efficient_attention", "attention"),
    ("aten::_flash_attention_forward", "attention"), ("aten::scaled_dot_product_attention", "attention"),
    ("aten::softmax", "not tunable"), ("aten::copy_", "not tunable"), ("aten::mm_out_typo", "not tunable"),
])
def test_tunable_kernel(op, kernel):
    assert tunable_kernel(op) == kernel


def test_every_declared_aten_op_has_a_known_operand_form():
    from kernels import coverages

    declared = {aten: (op, form) for op, cov in coverages().items() for aten, form in cov.aten_ops.items()}
    assert declared and all(form in ROW_FORMS for _, form in declared.values())
    assert all(tunable_kernel(aten) == op and row_form(aten) == form for aten, (op, form) in declared.items())
    assert sum(len(cov.aten_ops) for cov in coverages().values()) == len(declared)  # no aten op twice


@pytest.mark.parametrize("op, shapes, key", [
    ("aten::mm", ((4, 3584), (3584, 151700)), (4, 151700, 3584, 1, False)),
    ("aten::addmm", ((4608,), (512, 3584), (3584, 4608), (), ()), (512, 4608, 3584, 1, True)),
    ("aten::addmm", ((), (7, 5), (5, 9), (), ()), (7, 9, 5, 1, False)),
    ("aten::linear", ((2, 512, 3584), (18944, 3584), ()), (1024, 18944, 3584, 1, False)),
    ("aten::linear", ((2, 512, 3584), (512, 3584), (512,)), (1024, 512, 3584, 1, True)),
    ("aten::linear", ((1500, 1024), (3584, 1024)), (1500, 3584, 1024, 1, False)),
    ("aten::matmul", ((10, 1024, 1152), (1152, 4304)), (10240, 4304, 1152, 1, False)),
    ("aten::matmul", ((2, 28, 64, 128), (2, 28, 128, 1024)), (64, 1024, 128, 56, False)),
    ("aten::matmul", ((3, 1, 8, 16), (4, 16, 5)), (8, 5, 16, 12, False)),  # broadcast batch
    ("aten::bmm", ((280, 64, 128), (280, 128, 1024)), (64, 1024, 128, 280, False)),
    ("aten::baddbmm", ((280, 64, 1024), (280, 64, 128), (280, 128, 1024), (), ()), (64, 1024, 128, 280, True)),
])
def test_mm_key(op, shapes, key):
    k = mm_key(op, shapes)
    assert (k["M"], k["N"], k["K"], k["batch"], k["bias"]) == key


@pytest.mark.parametrize("op, shapes", [("aten::mm", ()), ("aten::mm", ((4,),)), ("aten::softmax", ((4, 4),)),
                                        ("aten::bmm", ((2, 3), (2, 3)))])
def test_mm_key_unusable_shapes(op, shapes):
    assert mm_key(op, shapes) is None


def test_attention_key_layouts():
    bhld = attention_key("aten::_scaled_dot_product_flash_attention", ((10, 16, 1024, 72), (10, 16, 1024, 72), (10, 16, 1024, 72)))
    blhd = attention_key("aten::_flash_attention_forward", ((1, 512, 28, 128), (1, 512, 4, 128), (1, 512, 4, 128)))
    assert bhld == {"batch": 10, "heads": 16, "kv_heads": 16, "q_len": 1024, "kv_len": 1024, "head_dim": 72}
    assert blhd == {"batch": 1, "heads": 28, "kv_heads": 4, "q_len": 512, "kv_len": 512, "head_dim": 128}
    assert attention_key("aten::mm", ((1, 2), (2, 3))) is None
    assert attention_key("aten::scaled_dot_product_attention", ((1, 2),)) is None


def _fixed_samples():
    mm_shapes = ((4, 3584), (3584, 151700))
    return [
        # call 1 launched the same kernel twice: still one call
        KernelSample("aten::mm", mm_shapes, "bfloat16", "sm90_gemm", 15.0, call=1, step="decode"),
        KernelSample("aten::mm", mm_shapes, "bfloat16", "sm90_gemm", 15.0, call=1, step="decode"),
        KernelSample("aten::mm", mm_shapes, "bfloat16", "sm90_gemm", 30.0, call=2, step="decode"),
        KernelSample("aten::mm", mm_shapes, "bfloat16", "splitk_reduce", 5.0, call=2, step="decode"),
        KernelSample("aten::mm", mm_shapes, "float16", "sm90_gemm", 10.0, call=3, step="prefill"),
        KernelSample("aten::softmax", ((8, 8),), "bfloat16", "softmax_warp", 25.0, call=4, step="prefill"),
        KernelSample("aten::softmax", ((8, 8),), "bfloat16", "softmax_warp", 0.0, call=5, step="decode"),
    ]


def test_aggregate_groups_by_op_shapes_dtype_kernel():
    rows = aggregate(_fixed_samples())
    assert [(r.op, r.dtype, r.kernel, r.calls, r.total_us) for r in rows] == [
        ("aten::mm", "bfloat16", "sm90_gemm", 2, 60.0),
        ("aten::softmax", "bfloat16", "softmax_warp", 2, 25.0),
        ("aten::mm", "float16", "sm90_gemm", 1, 10.0),
        ("aten::mm", "bfloat16", "splitk_reduce", 1, 5.0),
    ]
    assert [r.share for r in rows] == [0.6, 0.25, 0.1, 0.05]
    top = rows[0]
    assert (top.tunable, top.m, top.n, top.k) == ("mm", 4, 151700, 3584)
    assert top.shapes == "[[4, 3584], [3584, 151700]]" and json.loads(top.shapes) == [[4, 3584], [3584, 151700]]
    assert top.steps == ("decode",) and rows[1].steps == ("prefill", "decode")
    assert (rows[1].tunable, rows[1].m, rows[1].key) == ("not tunable", None, None)


def test_aggregate_of_nothing():
    assert aggregate([]) == []


def test_rank_is_ordered_cut_and_pure():
    rows = aggregate(_fixed_samples())
    shuffled = [rows[2], rows[0], rows[3], rows[1]]
    assert rank(shuffled) == rows
    assert rank(shuffled, 2) == rows[:2] and rank(shuffled, 0) == [] and rank(shuffled, 99) == rows
    assert shuffled == [rows[2], rows[0], rows[3], rows[1]]  # input untouched
    tie_a = HotOp("aten::b", "[]", "f", "k", 1, 5.0, 0.5, "not tunable")
    tie_b = HotOp("aten::a", "[]", "f", "k", 1, 5.0, 0.5, "not tunable")
    assert rank([tie_a, tie_b]) == [tie_b, tie_a]
    with pytest.raises(ValueError):
        rank(rows, -1)


# --- kernel attribution on real torch FunctionEvent objects (the CUDA path, runnable on CPU) --

def _event(name, start, end, *, parent=None, shapes=None, dtypes=None, device=DeviceType.CPU, annotation=False):
    e = FunctionEvent(id=0, name=name, thread=1, start_us=start, end_us=end, input_shapes=shapes or [],
                      input_dtypes=dtypes or [], device_type=device, is_user_annotation=annotation,
                      use_device="cuda")
    if parent is not None:
        e.set_cpu_parent(parent)
        parent.append_cpu_child(e)
    return e


def test_cuda_kernels_are_charged_to_their_launching_op():
    step = _event("text.decode[b=4]", 0, 100, annotation=True)
    linear = _event("aten::linear", 1, 40, parent=step, shapes=[[4, 1, 3584], [4608, 3584], [4608]])
    bf = ["c10::BFloat16"] * 3 + ["Scalar", "Scalar"]
    addmm1 = _event("aten::addmm", 2, 20, parent=linear, shapes=[[4608], [4, 3584], [3584, 4608], [], []], dtypes=bf)
    addmm2 = _event("aten::addmm", 21, 39, parent=linear, shapes=[[4608], [4, 3584], [3584, 4608], [], []], dtypes=bf)
    addmm1.append_kernel("sm90_xmma_gemm_bf16", 0, 15.0)
    addmm1.append_kernel("sm90_xmma_gemm_bf16", 0, 15.0)
    addmm2.append_kernel("sm90_xmma_gemm_bf16", 0, 30.0)
    flash = _event("aten::_flash_attention_forward", 41, 60, parent=step,
                   shapes=[[4, 1, 28, 128], [4, 513, 4, 128], [4, 513, 4, 128]], dtypes=["c10::BFloat16"] * 3)
    flash.append_kernel("flash_fwd_splitkv_kernel", 0, 20.0)
    step.append_kernel("triton_red_fused_0", 0, 5.0)  # launched with no aten op around it
    # a Triton kernel launched under a record_function inside the aten op it implements
    mm = _event("aten::mm", 61, 80, parent=step, shapes=[[4, 3584], [3584, 3584]], dtypes=["c10::BFloat16"] * 2)
    gems = _event("gems.mm", 62, 79, parent=mm, annotation=True)
    gems.append_kernel("mm_kernel_triton", 0, 10.0)
    device = [_event(n, 0, d, device=DeviceType.CUDA) for n, d in
              [("sm90_xmma_gemm_bf16", 15), ("sm90_xmma_gemm_bf16", 15), ("sm90_xmma_gemm_bf16", 30),
               ("flash_fwd_splitkv_kernel", 20), ("triton_red_fused_0", 5), ("mm_kernel_triton", 10),
               ("ncclKernel_unlinked", 5)]]
    # kineto's GPU-side copies of record_function ranges span whole steps: never kernel time,
    # whichever way torch marks them (flag, activity type, or only the annotation's name)
    gpu_ranges = [_event("text.decode[b=4]", 0, 100, device=DeviceType.CUDA, annotation=True),
                  _event("gems.mm", 62, 79, device=DeviceType.CUDA),
                  _event("other_range", 0, 300, device=DeviceType.CUDA)]
    gpu_ranges[2].activity_type = "gpu_user_annotation"
    events = [step, linear, addmm1, addmm2, flash, mm, gems, *device, *gpu_ranges]

    samples = samples_from_events(events, "cuda", ["text.decode[b=4]"])
    rows = aggregate(samples)
    got = [(r.op, r.kernel, r.calls, r.total_us, r.share, r.tunable, r.dtype) for r in rows]
    assert got == [
        ("aten::addmm", "sm90_xmma_gemm_bf16", 2, 60.0, 0.6, "addmm", "bfloat16"),
        ("aten::_flash_attention_forward", "flash_fwd_splitkv_kernel", 1, 20.0, 0.2, "attention", "bfloat16"),
        ("aten::mm", "mm_kernel_triton", 1, 10.0, 0.1, "mm", "bfloat16"),
        (UNATTRIBUTED, "ncclKernel_unlinked", 1, 5.0, 0.05, "not tunable", "-"),
        ("text.decode[b=4]", "triton_red_fused_0", 1, 5.0, 0.05, "not tunable", "-"),
    ]
    assert (rows[2].m, rows[2].n, rows[2].k) == (4, 3584, 3584)
    assert (rows[0].m, rows[0].n, rows[0].k, rows[0].key["bias"]) == (4, 4608, 3584, True)
    assert rows[0].steps == ("text.decode[b=4]",)
    assert rows[1].key["kv_len"] == 513 and rows[1].key["kv_heads"] == 4


def test_samples_reject_unknown_time_source():
    with pytest.raises(ValueError):
        samples_from_events([], "tpu")


# --- a real profiled run of the scaled model ---------------------------------------------------

OPTIONS = RequestOptions(prompt_tokens=16, prefill_batch=2, decode_batches=(3,), decode_steps=2,
                         image_slices=2, audio_seconds=30, speech_prompt_tokens=5, speech_tokens=3,
                         speech_context=7)


@pytest.fixture(scope="module")
def model():
    return build_model(0.05, torch.float32, device="cpu")


@pytest.fixture(scope="module")
def profiled(model, tmp_path_factory):
    steps = build_requests(model, "all", OPTIONS)
    trace = tmp_path_factory.mktemp("prof") / "sub" / "trace.json"
    return steps, profile_steps(steps, trace, warmup=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU time source")
def test_profiled_run_ranks_cpu_time(profiled):
    steps, result = profiled
    assert result.time_source == "cpu" and result.total_us > 0
    rows = result.rows
    assert rows == rank(rows) and len(rows) > 20
    assert math.isclose(sum(r.share for r in rows), 1.0, rel_tol=1e-9)
    assert math.isclose(sum(r.total_us for r in rows), result.total_us, rel_tol=1e-9)
    assert {r.kernel for r in rows} == {"cpu"}
    assert set(result.step_wall_us) == {s.name for s in steps}
    names = {s.name for s in steps}
    assert all(set(r.steps) <= names for r in rows)
    assert {st for r in rows for st in r.steps} == names  # every step's ops were seen
    assert len({(r.op, r.shapes, r.dtype, r.kernel) for r in rows}) == len(rows)


def _mm_rows(rows, step_prefix):
    return {(r.op, r.m, r.n, r.k) for r in rows
            if row_form(r.op) in GEMM_FORMS and any(s.startswith(step_prefix) for s in r.steps)}


def test_profiled_run_finds_the_model_gemms(profiled, model):
    _, result = profiled
    d = model.dims
    decode = _mm_rows(result.rows, "text.decode[b=3")
    # lm_head and down_proj of a 3-sequence decode step
    assert any(m == 3 and (n, k) == (d.llm.vocab, d.llm.hidden) for _, m, n, k in decode)
    assert any(m == 3 and (n, k) == (d.llm.hidden, d.llm.intermediate) for _, m, n, k in decode)
    prefill = _mm_rows(result.rows, "text.prefill")
    assert any(m == 2 * 16 and (n, k) == (d.llm.intermediate, d.llm.hidden) for _, m, n, k in prefill)
    vision = _mm_rows(result.rows, "image.vision")
    patches = 2 * d.vision.slice_grid ** 2
    assert ("aten::addmm", patches, d.vision.intermediate, d.vision.hidden) in vision  # fc1 with bias
    whisper = _mm_rows(result.rows, "audio.whisper")
    assert any(m == d.audio.positions and (n, k) == (d.audio.ffn, d.audio.d_model) for _, m, n, k in whisper)
    projector = _mm_rows(result.rows, "audio.projector")
    assert ("aten::addmm", d.audio.positions, d.llm.hidden, d.audio.d_model) in projector


def test_profiled_run_finds_attention_and_resampler_bmm(profiled, model):
    _, result = profiled
    d = model.dims
    attn = [r.key for r in result.rows if r.tunable == "attention" and "image.vision[slices=2,patches=49]" in r.steps]
    g2 = d.vision.slice_grid ** 2
    assert {"batch": 2, "heads": d.vision.heads, "kv_heads": d.vision.heads, "q_len": g2, "kv_len": g2,
            "head_dim": d.vision.head_dim} in attn
    decode_attn = [r.key for r in result.rows if r.tunable == "attention" and any(s.startswith("text.decode") for s in r.steps)]
    assert {(k["q_len"], k["kv_len"], k["heads"], k["kv_heads"]) for k in decode_attn} >= {
        (1, 17, d.llm.heads, d.llm.kv_heads), (1, 18, d.llm.heads, d.llm.kv_heads)}
    # the resampler's need_weights attention: scores = q @ k^T per (slice, head), masked -> baddbmm
    scores = [r.key for r in result.rows if r.op in ("aten::baddbmm", "aten::bmm")
              and "image.resampler[slices=2,queries=4]" in r.steps]
    r = d.resampler
    assert {"M": r.queries, "N": g2, "K": r.embed // r.heads, "batch": 2 * r.heads} in [
        {k: v for k, v in key.items() if k != "bias"} for key in scores]


def test_trace_is_chrome_json(profiled):
    steps, result = profiled
    with open(result.trace_path) as f:
        trace = json.load(f)
    events = trace["traceEvents"]
    assert isinstance(events, list) and len(events) > 100
    names = {e.get("name") for e in events}
    assert {s.name for s in steps} <= names and "aten::addmm" in names
    leftovers = [p.name for p in Path(result.trace_path).parent.iterdir() if p.name.startswith(".trace-")]
    assert leftovers == []


def test_gzipped_trace(model, tmp_path):
    result = profile_steps(build_requests(model, "audio", OPTIONS), tmp_path / "trace.json.gz", warmup=0)
    with gzip.open(result.trace_path, "rt") as f:
        assert json.load(f)["traceEvents"]


def test_measure_overhead(model):
    steps = build_requests(model, "audio", OPTIONS)
    o = measure_overhead(steps, repeats=2)
    assert o.plain_s > 0 and o.profiled_s > 0 and o.analysis_s > 0
    assert math.isfinite(o.ratio) and o.ratio == o.profiled_s / o.plain_s
    with pytest.raises(ValueError):
        measure_overhead(steps, repeats=0)


def test_profile_argument_errors(model, tmp_path):
    with pytest.raises(ValueError, match="no steps"):
        profile_steps([], tmp_path / "t.json")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            profile_steps(build_requests(model, "audio", OPTIONS), tmp_path / "t.json", time_source="cuda")
    assert not (tmp_path / "t.json").exists()


def test_run_profile_builds_only_what_it_needs(tmp_path):
    from tuner.profiling.profiler import run_profile
    result = run_profile(tmp_path / "t.json", ["audio", "speech"], scale=0.02, dtype=torch.float32,
                         device="cpu", options=OPTIONS, warmup=0)
    assert result.model["components"] == ["audio", "tts"] and result.model["scale"] == 0.02
    assert result.model["weights"] == "random" and result.options["speech_tokens"] == 3
    assert {s.split(".")[0] for r in result.rows for s in r.steps} == {"audio", "speech"}
    as_json = json.loads(json.dumps(result.to_dict()))
    assert as_json["rows"][0]["op"] == result.rows[0].op and as_json["time_source"] == result.time_source


def test_run_profile_rejects_mistakes_before_profiling(tmp_path):
    from tuner.profiling.profiler import run_profile
    from tuner.profiling.workload import WorkloadError
    with pytest.raises(WorkloadError, match="unknown workload"):
        run_profile(tmp_path / "t.json", "video", scale=0.02)
    with pytest.raises(WorkloadError, match="does not exist"):
        run_profile(tmp_path / "t.json", "audio", scale=0.02, dtype=torch.float32, weights=tmp_path / "none")
    assert not (tmp_path / "t.json").exists()
