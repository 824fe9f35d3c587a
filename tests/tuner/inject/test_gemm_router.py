"""The GEMM router: routes from stored timings (pure) and the routing kernels on the CPU key (the
same registration path as CUDA), with ATen's real kernels as the native route."""
import pytest

from tuner.inject import gemm_router as gr
from tuner.serving import bench_stats


def rec(M, N=37888, K=3584, *, tuned=10.0, native=11.0, variant="fg_tma", kernel="mm", bt=1, dtype="bf16", bm=16):
    cfg = {"variant": variant, "BLOCK_M": bm, "BLOCK_N": 32, "BLOCK_K": 128, "GROUP_M": 8,
           "SPLIT_K": 4 if variant == "splitk" else 1, "num_warps": 4, "num_stages": 4}
    return {"kernel": kernel, "key": {"M": M, "N": N, "K": K, "BT": bt}, "dtype": dtype,
            "config": cfg, "time_us": tuned, "native_us": native}


def test_record_target_needs_a_measured_win_over_native():
    assert gr.record_target(rec(16, tuned=10, native=11)) == gr.FLAGGEMS
    assert gr.record_target(rec(16, tuned=11, native=11)) == gr.NATIVE  # a tie stays native
    assert gr.record_target(rec(16, tuned=12, native=11)) == gr.NATIVE
    assert gr.record_target(rec(16, native=None)) == gr.NATIVE  # no native timing: nothing proven
    assert gr.record_target(rec(16, variant="splitk")) == gr.SPLITK
    assert gr.record_target(rec(16, kernel="addmm", variant="fg_addmm")) == gr.FLAGGEMS
    assert gr.record_target(rec(16, variant="persistent")) == gr.PERSISTENT
    assert gr.record_target(rec(16, kernel="addmm", variant="persistent")) == gr.PERSISTENT
    assert gr.record_target(rec(16, kernel="addmm", variant="splitk")) == gr.SPLITK
    assert gr.record_target(rec(512, variant="streamk")) == gr.STREAMK
    assert gr.record_target(rec(512, kernel="addmm", variant="streamk")) == gr.STREAMK


def test_route_within_keeps_near_ties_in_triton_or_asks_a_margin():
    """--route-within: the H200's prefill gate_up at M=4096, persistent 1618.1 us vs cuBLAS 1610.3
    (results/gemm_h200/session7): native by default, routed within 1.01, not within 1.004."""
    gate_up = rec(4096, variant="persistent", tuned=1618.1, native=1610.3, bm=128)
    assert gr.record_target(gate_up) == gr.NATIVE
    assert gr.record_target(gate_up, 1.01) == gr.PERSISTENT
    assert gr.record_target(gate_up, 1.004) == gr.NATIVE
    assert gr.eager_worthwhile(gate_up, 1.01)  # a slower kernel pays eagerly only by hiding its launch
    assert not gr.eager_worthwhile(rec(64, variant="persistent", tuned=101.0, native=100.0), 1.02)
    win = rec(16, tuned=10.0, native=10.1)
    assert gr.record_target(win) == gr.FLAGGEMS and gr.record_target(win, 0.98) == gr.NATIVE  # 1% < 2%
    assert gr.route_counts([gate_up, win], 1.01) == {gr.NATIVE: 0, gr.FLAGGEMS: 1, gr.SPLITK: 0,
                                                     gr.PERSISTENT: 1, gr.STREAMK: 0}
    assert gr.plan_routes([gate_up], max_tokens=4096) == {}
    (lo, hi, route), = gr.plan_routes([gate_up], max_tokens=4096, within=1.01)[("mm", 37888, 3584, "bf16")]
    assert (lo, hi, route.target, route.tuned_m) == (4096, 4096, gr.PERSISTENT, 4096)  # its own M only


def test_prefill_records_route_their_own_m_only():
    """vLLM on the H200 (run 10b): the partial prefill chunk M = 3305 ran the M = 4096 persistent
    configs 1.046-1.163x cuBLAS's time; a record from PREFILL_M on serves its own M, and the
    decode records keep their reach (M = 32..64 from the M = 64 record)."""
    recs = [rec(4096, variant="persistent", tuned=1617.5, native=1631.0, bm=128),
            rec(512, variant="persistent", tuned=190.0, native=204.0, bm=128),
            rec(64, tuned=69.6, native=72.0, bm=64)]
    runs = gr.plan_routes(recs, max_tokens=4096)[("mm", 37888, 3584, "bf16")]
    assert [(lo, hi, r.tuned_m) for lo, hi, r in runs] == [(32, 64, 64), (512, 512, 512), (4096, 4096, 4096)]
    table = gr.build_table(gr.plan_routes(recs, max_tokens=4096))
    assert gr.lookup(table, "mm", 3305, 37888, 3584, "bf16") is None  # native
    assert gr.lookup(table, "mm", 4096, 37888, 3584, "bf16").target == gr.PERSISTENT


def test_plan_routes_near_winning_ms_only():
    # the H200's decode picture for gate_up (its configs' BLOCK_M): M=1 loses, M=16 and M=64 win
    recs = [rec(1, tuned=75.0, native=71.7, bm=32), rec(16, tuned=68.1, native=74.1, bm=16),
            rec(64, tuned=72.1, native=74.2, bm=32)]
    plan = gr.plan_routes(recs, max_tokens=4096)
    runs = plan[("mm", 37888, 3584, "bf16")]
    # nearest: M=8..32 -> 16 (M=4: 4/1 == 16/4, a tie goes to the smaller, which is native), but
    # only M <= 16 fits the M=16 config's one BLOCK_M tile; 33..128 -> 64, but only M <= 64 fits its
    # two tiles; nothing above (a decode win says nothing about prefill)
    assert [(lo, hi, r.tuned_m, r.target) for lo, hi, r in runs] == [(8, 16, 16, gr.FLAGGEMS),
                                                                      (33, 64, 64, gr.FLAGGEMS)]


def test_eager_threshold_is_the_target_s_own_host_cost():
    gain = gr.EAGER_HOST_US[gr.PERSISTENT] + 1  # pays tuner's kernel's launch, not FlagGems'
    short = 2 * gr.HOST_US[gr.FLAGGEMS]  # too short to hide either launch
    assert gr.eager_worthwhile(rec(4096, variant="persistent", tuned=short, native=short + gain))
    assert not gr.eager_worthwhile(rec(4096, variant="fg_tma", tuned=short, native=short + gain))
    assert not gr.eager_worthwhile(rec(4096, variant="persistent", tuned=short, native=short + gain - 2))
    # vLLM's eager prefill: gate_up at M=4096, 1601 µs persistent vs 1623 cuBLAS on the H200
    assert gr.eager_worthwhile(rec(4096, variant="persistent", tuned=1601.1, native=1623.0))
    # the H200's eager lm_head at M=64 (FlagGems 256 vs 264 µs): a win, but not worth the launch
    assert not gr.eager_worthwhile(rec(64, variant="fg_tma", tuned=256.0, native=264.0))
    assert not gr.eager_worthwhile(rec(4096, variant="persistent", tuned=1700.0, native=1623.0))  # a loss


def test_more_tiles_than_measured_stay_native():
    assert not gr.more_tiles(16, 16, {"BLOCK_M": 16}) and gr.more_tiles(17, 16, {"BLOCK_M": 16})
    assert not gr.more_tiles(40, 64, {"BLOCK_M": 64}) and not gr.more_tiles(3, 1, {"BLOCK_M": 16})
    assert not gr.more_tiles(30, 16, {})  # a config without BLOCK_M: only the factor-of-two reach


def _fp8_rec(M):
    """A scaled_mm winner (fp8, no injector yet): faster than cuBLAS, and never the router's."""
    r = rec(M, variant="persistent", kernel="scaled_mm", dtype="fp8_w8a8")
    del r["key"]["BT"]
    return r


def test_plan_skips_groups_with_no_win_and_other_layouts():
    recs = [rec(16, tuned=12, native=11), rec(16, N=3584, bt=0), rec(16, kernel="fused_moe"),
            _bmm_rec(8, 4, 64, 32, 1) | {"time_us": 3.0}, _fp8_rec(16)]
    assert gr.plan_routes(recs, max_tokens=64) == {}


def test_conflicting_winners_raise():
    with pytest.raises(ValueError, match="two different mm winners"):
        gr.plan_routes([rec(16), rec(16, variant="splitk")], max_tokens=64)


def test_route_counts_say_where_stored_keys_go():
    recs = [rec(1, tuned=12), rec(16), rec(64, variant="splitk"), rec(16, kernel="addmm", tuned=20),
            rec(16, kernel="fused_moe"), rec(16, N=512, bt=0),  # a K x N weight: never routed, not counted
            _fp8_rec(16)]
    assert gr.route_counts(recs) == {gr.NATIVE: 2, gr.FLAGGEMS: 1, gr.SPLITK: 1, gr.PERSISTENT: 0, gr.STREAMK: 0}


def test_lookup_by_op_shape_dtype_and_m():
    table = gr.build_table(gr.plan_routes([rec(16)], max_tokens=64))
    assert gr.lookup(table, "mm", 8, 37888, 3584, "bf16").target == gr.FLAGGEMS
    assert gr.lookup(table, "mm", 7, 37888, 3584, "bf16") is None
    assert gr.lookup(table, "mm", 33, 37888, 3584, "bf16") is None
    assert gr.lookup(table, "addmm", 16, 37888, 3584, "bf16") is None
    assert gr.lookup(table, "mm", 16, 37888, 3584, "fp16") is None


def test_installed_router_routes_mm_and_mm_out_and_falls_back_to_aten():
    # The CPU dispatch key stands in for CUDA; FlagGems' function is replaced by a recorder, the
    # native route is ATen's real CPU kernel captured before the router registered.
    import torch

    calls = []

    def fg_mm(a, b, out=None):
        calls.append(("fg", a.shape[0], out is not None))
        res = (a[:, :, None] * b[None]).sum(1)  # not a GEMM: the router is installed for mm
        return res if out is None else out.copy_(res)

    plan = gr.plan_routes([rec(16, N=64, K=32, dtype="fp32")], max_tokens=64)
    # as inside a CUDA-graph capture, where the routes apply
    router = gr.install_router(plan, gr.Targets(flaggems_mm=fg_mm), dispatch_key="CPU", capturing=lambda: True)
    try:
        w = torch.randn(64, 32)
        a16, a4 = torch.randn(16, 32), torch.randn(4, 32)
        ref16 = (a16.double() @ w.double().t()).float()
        assert torch.allclose(torch.mm(a16, w.t()), ref16, atol=1e-4)  # routed: FlagGems
        buf = torch.empty(16, 64)
        torch.mm(a16, w.t(), out=buf)  # the overload Inductor's extern kernels call
        assert torch.allclose(buf, ref16, atol=1e-4)
        y4 = torch.mm(a4, w.t())  # M=4 is not near M=16: native ATen
        assert torch.allclose(y4, (a4.double() @ w.double().t()).float(), atol=1e-4)
        assert calls == [("fg", 16, False), ("fg", 16, True)]
        # native: M=4 and the float64 references, which pass through the router too
        assert router.hits[gr.FLAGGEMS] == 2 and router.hits[gr.SPLITK] == 0 and router.hits[gr.NATIVE] >= 1
        assert router.ops == ["mm"]
    finally:
        router.uninstall()
    calls.clear()
    torch.mm(torch.randn(16, 32), torch.randn(32, 64))
    assert calls == []  # uninstalled: ATen again


def test_installed_router_routes_addmm_out_with_bias():
    import torch

    calls = []

    def fg_addmm(bias, a, b, *, beta=1, alpha=1, out=None):
        calls.append(("fg_addmm", a.shape[0], out is not None))
        res = beta * bias + alpha * (a[:, :, None] * b[None]).sum(1)
        return res if out is None else out.copy_(res)

    recs = [rec(16, N=48, K=32, kernel="addmm", variant="fg_addmm", dtype="fp32")]
    router = gr.install_router(gr.plan_routes(recs, 64), gr.Targets(flaggems_addmm=fg_addmm), dispatch_key="CPU",
                               capturing=lambda: True)
    try:
        bias, a, w = torch.randn(48), torch.randn(16, 32), torch.randn(48, 32)
        out = torch.empty(16, 48)
        torch.addmm(bias, a, w.t(), out=out)
        assert torch.allclose(out, (bias.double() + a.double() @ w.double().t()).float(), atol=1e-4)
        y = torch.nn.functional.linear(torch.randn(2, 32), w, bias)  # M=2: native
        assert y.shape == (2, 48)
        assert calls == [("fg_addmm", 16, True)]
        assert router.hits[gr.FLAGGEMS] == 1 and router.hits[gr.NATIVE] >= 1
    finally:
        router.uninstall()


def test_no_plan_installs_nothing():
    r = gr.install_router({}, gr.Targets(), dispatch_key="CPU")
    assert r.libs == [] and r.ops == []


def test_eager_calls_go_native_unless_the_win_pays_flaggems_host_cost():
    """Outside a capture a route applies only when its GPU gain per call is at least EAGER_HOST_US
    (the H200's lm_head: an 8 µs win against ~260 µs more host time): per place, not per key only."""
    import torch

    calls = []

    def fg_mm(a, b, out=None):
        calls.append(a.shape[0])
        return (a[:, :, None] * b[None]).sum(1)

    small = rec(16, N=64, K=32, dtype="fp32", tuned=256.0, native=264.0)
    big = rec(64, N=64, K=32, dtype="fp32", tuned=100.0, native=100.0 + gr.EAGER_HOST_US[gr.FLAGGEMS])
    plan = gr.plan_routes([small, big], max_tokens=64)
    assert [r.eager for _, _, r in plan[("mm", 64, 32, "fp32")]] == [False, True]
    capturing = [False]
    router = gr.install_router(plan, gr.Targets(flaggems_mm=fg_mm), dispatch_key="CPU",
                               capturing=lambda: capturing[0])
    try:
        w = torch.randn(64, 32)
        torch.mm(torch.randn(16, 32), w.t())  # eager, small win: native
        torch.mm(torch.randn(64, 32), w.t())  # eager, win > host cost: FlagGems
        capturing[0] = True
        torch.mm(torch.randn(16, 32), w.t())  # inside a capture: FlagGems
        capturing[0] = False
        router.warming = True
        torch.mm(torch.randn(16, 32), w.t())  # the warm-up compiles every route
        assert calls == [64, 16, 16] and router.eager_native == 1
    finally:
        router.uninstall()


def test_hits_line_reports_what_ran():
    r = gr.Router(hits={gr.NATIVE: 7, gr.FLAGGEMS: 2, gr.SPLITK: 0, gr.PERSISTENT: 5, gr.STREAMK: 4}, eager_native=3,
                  refused=1)
    assert gr.hits_line(r) == ("tuner router: GEMM calls dispatched since start: FlagGems 2, split-K 0, persistent 5, "
                               "stream-K 4, native 7 (of which routed keys kept native on the eager path: 3, refused "
                               "by tuner's kernel: 1)")
    assert bench_stats.log_events([gr.hits_line(r)])["router_calls"] == {
        "flaggems": 2, "splitk": 0, "persistent": 5, "streamk": 4, "native": 7, "eager_native": 3, "refused": 1}
    before = ("tuner router: GEMM calls dispatched since start: FlagGems 2, split-K 0, persistent 5, stream-K 4, "
              "native 7 (of which routed keys kept native on the eager path: 3)")  # logs before the refused count
    assert bench_stats.log_events([before])["router_calls"] == {
        "flaggems": 2, "splitk": 0, "persistent": 5, "streamk": 4, "native": 7, "eager_native": 3}
    older = ("tuner router: GEMM calls dispatched since start: FlagGems 2, split-K 0, persistent 5, native 7 "
             "(of which routed keys kept native on the eager path: 3)")  # logs before stream-K still read
    assert bench_stats.log_events([older])["router_calls"] == {"flaggems": 2, "splitk": 0, "persistent": 5,
                                                               "native": 7, "eager_native": 3}


def test_warm_up_covers_every_m_class_triton_compiles():
    assert gr.warm_up_ms(1, 2) == [1, 2]
    assert gr.warm_up_ms(8, 32) == [8, 16]
    assert gr.warm_up_ms(33, 128) == [33, 48]
    assert gr.warm_up_ms(16, 16) == [16]
    assert gr.warm_up_ms(17, 17) == [17]


def test_out_buffers_a_route_cannot_write_as_is_go_native():
    import torch

    calls = []

    def fg_mm(a, b, out=None):
        calls.append(out is not None)
        res = (a[:, :, None] * b[None]).sum(1)
        return res if out is None else out.copy_(res)

    plan = gr.plan_routes([rec(16, N=64, K=32, dtype="fp32")], max_tokens=64)
    # as inside a CUDA-graph capture, where the routes apply
    router = gr.install_router(plan, gr.Targets(flaggems_mm=fg_mm), dispatch_key="CPU", capturing=lambda: True)
    try:
        a, w = torch.randn(16, 32), torch.randn(64, 32)
        empty = torch.empty(0)
        torch.mm(a, w.t(), out=empty)  # ATen resizes an empty out: native
        assert empty.shape == (16, 64) and calls == []
        transposed = torch.empty(64, 16).t()  # (16, 64) with column-major rows
        torch.mm(a, w.t(), out=transposed)
        assert calls == [] and torch.allclose(transposed, (a.double() @ w.double().t()).float(), atol=1e-4)
    finally:
        router.uninstall()


def test_plan_uses_the_same_nearest_m_as_the_other_injectors():
    import random

    from tuner.inject._select import nearest_m

    rng = random.Random(3)
    for _ in range(40):
        tuned = sorted(rng.sample(range(1, 600), rng.randint(1, 6)))
        bm = rng.choice([16, 32, 64, 128])
        recs = [rec(m, tuned=1.0, native=2.0, bm=bm) for m in tuned]  # every record wins: every reachable M routed
        plan = gr.plan_routes(recs, max_tokens=1200)
        table = gr.build_table(plan)
        for m in range(1, 1201):
            t = nearest_m(tuned, m)
            hit = gr.lookup(table, "mm", m, 37888, 3584, "bf16")
            reach = t <= 2 * m and m <= 2 * t and (m + bm - 1) // bm <= (t + bm - 1) // bm \
                and (t < gr.PREFILL_M or m == t)
            assert (hit is not None and hit.tuned_m == t) if reach else hit is None, (tuned, m)


@pytest.mark.parametrize("host_desc", [0, 1])
def test_persistent_routes_run_tuner_kernel_with_the_bias_and_refuse_misaligned_tensors(host_desc, monkeypatch,
                                                                                        caplog):
    """tuner's persistent TMA GEMM (real, under the Triton interpreter) behind mm, mm.out and
    addmm.out; addmm records name their tiles BLOCK_SIZE_*, the route carries mm's names, and
    HOST_DESC with them (the kernel that ran is counted: both give the same bits)."""
    import torch

    import kernels.persistent_host_mm as host_mod
    import kernels.persistent_mm as device_mod
    from kernels.persistent_mm import Unsupported, persistent_mm  # under the interpreter (tests/conftest.py)
    from tests.kernels.launch_spy import count_launches

    launches = count_launches(monkeypatch, {"host": (host_mod, "persistent_host_mm_direct"),
                                            "device": (device_mod, "persistent_mm_direct")})
    knobs = {"OCCUPANCY": 1, "WARP_SPECIALIZE": 0, "FLATTEN": 1, "EPILOGUE_SUBTILE": 0, "HOST_DESC": host_desc}
    mm_rec = rec(16, N=64, K=32, dtype="fp16", variant="persistent")
    mm_rec["config"] |= knobs | {"BLOCK_K": 32, "GROUP_M": 1}
    addmm_rec = rec(16, N=48, K=32, dtype="fp16", kernel="addmm")
    addmm_rec["config"] = {"variant": "persistent", "BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32,
                           "num_warps": 4, "num_stages": 2, "GROUP_M": 1, **knobs}
    plan = gr.plan_routes([mm_rec, addmm_rec], max_tokens=64)
    assert plan[("addmm", 48, 32, "fp16")][0][2].config["BLOCK_M"] == 16  # mm's names: the tile check reads them
    assert [(lo, hi) for lo, hi, _ in plan[("addmm", 48, 32, "fp16")]] == [(8, 16)]
    targets = gr.Targets(persistent_mm=persistent_mm, unsupported=Unsupported)
    a, w, w48, bias = (torch.randn(*s).half() for s in [(16, 32), (64, 32), (48, 32), (48,)])
    ref, ref48 = a.double() @ w.double().t(), a.double() @ w48.double().t() + bias.double()  # before the router
    router = gr.install_router(plan, targets, dispatch_key="CPU", capturing=lambda: True)
    try:
        assert ((torch.mm(a, w.t()).double() - ref).abs().max()) < 1e-2
        out = torch.empty(16, 64, dtype=torch.half)
        torch.mm(a, w.t(), out=out)
        assert ((out.double() - ref).abs().max()) < 1e-2
        out48 = torch.empty(16, 48, dtype=torch.half)
        torch.addmm(bias, a, w48.t(), out=out48)
        assert ((out48.double() - ref48).abs().max()) < 1e-2
        assert router.hits[gr.PERSISTENT] == 3 and router.hits[gr.NATIVE] == 0
        assert launches == ({"host": 3, "device": 0} if host_desc else {"host": 0, "device": 3})
        torch.addmm(bias, a, w48.t(), beta=2)  # beta != 1: not the bias epilogue, native
        # a slice whose rows start off a 16-byte boundary: TMA cannot read it, native serves it, said once
        wide = torch.randn(16, 33).half()
        with caplog.at_level("WARNING", logger=gr.__name__):
            torch.mm(wide[:, 1:], w.t())
            torch.mm(wide[:, 1:], w.t())
        assert router.hits[gr.PERSISTENT] == 3 and router.hits[gr.NATIVE] == 3 and router.refused == 2
        said = [r.getMessage() for r in caplog.records if "native serves it" in r.getMessage()]
        assert len(said) == 1 and "aligned" in said[0], said
    finally:
        router.uninstall()


@pytest.mark.parametrize("fused", [0, 1])
def test_splitk_addmm_routes_run_tuner_kernel_with_the_bias(fused, monkeypatch):
    """An addmm record won by split-K (decode q/k/v) routes addmm and addmm.out to the split-K
    kernel (real, under the interpreter; FUSED_REDUCE: its reduction in the same launch, the
    reduce kernel never launched) with the bias added once; beta != 1 goes native."""
    import torch

    import kernels.triton_mm as two_kernel
    from kernels.triton_mm import splitk_mm

    if fused:
        class NoReduce:
            def __getitem__(self, grid):
                raise AssertionError("the fused route launched the reduce kernel")

        monkeypatch.setattr(two_kernel, "splitk_reduce_direct", NoReduce())

    addmm_rec = rec(4, N=48, K=64, dtype="fp16", kernel="addmm")
    addmm_rec["config"] = {"variant": "splitk", "BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 16,
                           "num_warps": 4, "num_stages": 2, "GROUP_M": 1, "SPLIT_K": 4, "FUSED_REDUCE": fused}
    plan = gr.plan_routes([addmm_rec], max_tokens=16)
    route = plan[("addmm", 48, 64, "fp16")][0][2]
    assert route.target == gr.SPLITK and route.config["SPLIT_K"] == 4 and route.config["BLOCK_K"] == 16
    assert route.config["FUSED_REDUCE"] == fused
    a, w, bias = torch.randn(4, 64).half(), torch.randn(48, 64).half(), (torch.randn(48) + 8).half()
    ref = a.double() @ w.double().t() + bias.double()
    router = gr.install_router(plan, gr.Targets(splitk_mm=splitk_mm), dispatch_key="CPU", capturing=lambda: True)
    try:
        assert ((torch.addmm(bias, a, w.t()).double() - ref).abs().max()) < 2e-2
        out = torch.empty(4, 48, dtype=torch.half)
        torch.addmm(bias, a, w.t(), out=out)
        assert ((out.double() - ref).abs().max()) < 2e-2
        assert router.hits[gr.SPLITK] == 2 and router.hits[gr.NATIVE] == 0
        torch.addmm(bias, a, w.t(), alpha=2)
        assert router.hits[gr.SPLITK] == 2 and router.hits[gr.NATIVE] == 1
    finally:
        router.uninstall()


def test_streamk_routes_run_tuner_kernel_with_the_bias():
    """Stream-K records (prefill M whose tiles leave a partial wave) route mm and addmm to the
    stream-K kernel (real, under the interpreter: 3 programs share the K iterations)."""
    import torch

    from kernels.persistent_mm import Unsupported
    from kernels.streamk_mm import streamk_mm

    mm_rec = rec(40, N=64, K=96, dtype="fp16", variant="streamk", bm=16)
    mm_rec["config"] |= {"BLOCK_K": 32, "GROUP_M": 2, "OCCUPANCY": 1}
    addmm_rec = rec(40, N=48, K=96, dtype="fp16", kernel="addmm")
    addmm_rec["config"] = {"variant": "streamk", "BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32,
                           "num_warps": 4, "num_stages": 2, "GROUP_M": 2, "OCCUPANCY": 1}
    plan = gr.plan_routes([mm_rec, addmm_rec], max_tokens=64)
    targets = gr.Targets(streamk_mm=streamk_mm, unsupported=Unsupported)
    a, w, w48, bias = (torch.randn(*s).half() for s in [(40, 96), (64, 96), (48, 96), (48,)])
    ref, ref48 = a.double() @ w.double().t(), a.double() @ w48.double().t() + bias.double()
    router = gr.install_router(plan, targets, dispatch_key="CPU", capturing=lambda: True)
    try:
        assert ((torch.mm(a, w.t()).double() - ref).abs().max()) < 2e-2
        assert ((torch.addmm(bias, a, w48.t()).double() - ref48).abs().max()) < 2e-2
        assert router.hits[gr.STREAMK] == 2 and router.hits[gr.NATIVE] == 0
    finally:
        router.uninstall()


def _bmm_rec(batch, M, N, K, layout, variant="persistent"):
    cfg = {"variant": variant, "TILE_M": 16, "TILE_N": 32, "TILE_K": 32, "GROUP_M": 1, "num_warps": 4,
           "num_stages": 2, "OCCUPANCY": 1, "WARP_SPECIALIZE": 0, "FLATTEN": 0}
    return {"kernel": "bmm", "key": {"BATCH": batch, "M": M, "N": N, "K": K, "LAYOUT": layout}, "dtype": "fp16",
            "config": cfg, "time_us": 1.0, "native_us": 2.0}


def test_bmm_routes_by_batch_and_layout_to_the_batched_persistent_kernel():
    """A bmm record (the resampler's F.linear on a sequence-first input: one weight expanded over
    the batch, LAYOUT 1) routes bmm and bmm.out calls of its batch and layout near its M to
    tuner's batched persistent GEMM (real, under the interpreter); another batch, the other layout
    or an M out of reach stays native."""
    import torch

    from kernels.persistent_bmm import persistent_bmm
    from kernels.persistent_mm import Unsupported

    plan = gr.plan_routes([_bmm_rec(8, 4, 64, 32, 1)], max_tokens=16)
    assert list(plan) == [("bmm", 64, 32, "fp16", 8, 1)] and plan[("bmm", 64, 32, "fp16", 8, 1)][0][:2] == (2, 8)
    assert plan[("bmm", 64, 32, "fp16", 8, 1)][0][2].config["BLOCK_M"] == 16  # mm's names from TILE_*
    assert gr.route_counts([_bmm_rec(8, 4, 64, 32, 1)])[gr.PERSISTENT] == 1
    targets = gr.Targets(persistent_bmm=persistent_bmm, unsupported=Unsupported)
    w = torch.randn(64, 32).half()
    x = torch.randn(4, 8, 32).half()  # sequence-first: [M, BATCH, K]
    a, b = x.permute(1, 0, 2), w.t().expand(8, 32, 64)  # what matmul passes to bmm for F.linear
    ref = torch.einsum("bmk,nk->bmn", a.double(), w.double())
    router = gr.install_router(plan, targets, dispatch_key="CPU", capturing=lambda: True)
    try:
        assert ((torch.bmm(a, b).double() - ref).abs().max()) < 2e-2
        out = torch.empty(8, 4, 64, dtype=torch.half)
        torch.bmm(a, b, out=out)
        assert ((out.double() - ref).abs().max()) < 2e-2
        assert router.hits[gr.PERSISTENT] == 2 and router.hits[gr.NATIVE] == 0
        torch.bmm(a.contiguous(), b.contiguous())  # layout 0: no record
        torch.bmm(a[:4], b[:4])  # batch 4: no record
        torch.bmm(torch.randn(8, 16, 32).half(), b)  # M = 16: beyond 2x of the tuned 4
        assert router.hits[gr.PERSISTENT] == 2 and router.hits[gr.NATIVE] == 3
    finally:
        router.uninstall()


def test_records_of_edited_own_kernels_are_refused():
    """A split-K or persistent record carries the hash of the Triton functions it was timed with;
    after a kernel edit the router refuses it (a FlagGems record is checked where its cache is seeded)."""
    from kernels import get_kernel

    from tuner.inject.foreign import ForeignResultError

    mm = get_kernel("mm")
    good = rec(16, variant="persistent") | {"kernel_source_hash": mm.source_hash({"variant": "persistent"})}
    split = rec(16, variant="splitk") | {"kernel_source_hash": mm.source_hash({"variant": "splitk"})}
    addmm_split = rec(16, kernel="addmm", variant="splitk") | {"kernel_source_hash": split["kernel_source_hash"]}
    gr.check_own_kernels([good, split, addmm_split, rec(16, variant="fg_tma")], allow_foreign=False)
    # split-K with its reduction in the same launch runs another kernel: the two-kernel hash is not its
    fused = split | {"config": split["config"] | {"FUSED_REDUCE": 1}}
    with pytest.raises(ForeignResultError, match="kernel_source_hash"):
        gr.check_own_kernels([fused], allow_foreign=False)
    gr.check_own_kernels([fused | {"kernel_source_hash": mm.source_hash(fused["config"])}], allow_foreign=False)
    stale = good | {"kernel_source_hash": "0" * 64}
    with pytest.raises(ForeignResultError, match="kernel_source_hash"):
        gr.check_own_kernels([stale], allow_foreign=False)
    with pytest.raises(ForeignResultError, match="kernel_source_hash"):  # the persistent kernel's hash
        gr.check_own_kernels([addmm_split | {"kernel_source_hash": good["kernel_source_hash"]}], allow_foreign=False)
    bmm_rec = _bmm_rec(8, 4, 64, 32, 1)  # the batched kernel's own hash, not the 2-D one's
    gr.check_own_kernels([bmm_rec | {"kernel_source_hash": get_kernel("bmm").source_hash({"variant": "persistent"})}],
                         allow_foreign=False)
    with pytest.raises(ForeignResultError, match="kernel_source_hash"):
        gr.check_own_kernels([bmm_rec | {"kernel_source_hash": good["kernel_source_hash"]}], allow_foreign=False)
    with pytest.warns(RuntimeWarning, match="FOREIGN"):
        gr.check_own_kernels([stale], allow_foreign=True)
    gr.check_own_kernels([stale | {"native_us": 1.0}], allow_foreign=False)  # a loser is never routed: unchecked
