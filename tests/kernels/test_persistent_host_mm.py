"""The persistent GEMM on host-built descriptors (kernels/persistent_host_mm.py, HOST_DESC=1) under
the interpreter: persistent_mm's result bit for bit, through the kernel it names; its identity and
where the knob is (mm, addmm) and is not (bmm's batched kernel, the fp8 kernel)."""

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import get_kernel  # noqa: E402
from kernels.mm import OWN_MODULES, PERSISTENT_HOST_MODULE, own_module  # noqa: E402
from kernels.persistent_mm import Unsupported, persistent_mm  # noqa: E402
from tests.kernels.launch_spy import count_launches  # noqa: E402


@pytest.fixture
def launches(monkeypatch):
    """Launches of each persistent kernel: both give the same bits, so only this tells them apart."""
    import kernels.persistent_host_mm as host_mod
    import kernels.persistent_mm as device_mod

    return count_launches(monkeypatch, {"host": (host_mod, "persistent_host_mm_direct"),
                                        "device": (device_mod, "persistent_mm_direct")})


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("M,N,K,bt", [(1, 96, 200, True), (33, 80, 96, True), (70, 48, 40, False)])
@pytest.mark.parametrize("knobs", [dict(GROUP_M=2), dict(GROUP_M=1, FLATTEN=1, EPILOGUE_SUBTILE=1, WARP_SPECIALIZE=1)])
def test_equals_the_device_descriptor_kernel_bit_for_bit(dtype, M, N, K, bt, knobs, launches):
    """3 programs walk several tiles each; partial edge tiles in M, N and K; both weight layouts."""
    g = torch.Generator().manual_seed(M * N + K)
    a = torch.randn(M, K, generator=g).to(dtype)
    b = (torch.randn(N, K, generator=g).t() if bt else torch.randn(K, N, generator=g)).to(dtype)
    bias = torch.randn(N, generator=g).to(dtype)
    config = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=2, **knobs)
    for with_bias in (None, bias):
        device = persistent_mm(a, b, config, bias=with_bias)
        assert launches == {"host": 0, "device": 1}
        host = torch.full((M, N), float("nan"), dtype=dtype)  # an element never stored stays NaN
        assert persistent_mm(a, b, config | {"HOST_DESC": 1}, out=host, bias=with_bias) is host
        assert launches == {"host": 1, "device": 1}
        assert torch.equal(host, device)
        launches.update(host=0, device=0)
    ref = a.double() @ b.double() + bias.double()
    assert ((host.double() - ref).norm() / ref.norm()).item() < (1e-3 if dtype == torch.float16 else 1e-5)


def test_refuses_what_tma_cannot_read_and_empty_operands():
    cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "HOST_DESC": 1}
    with pytest.raises(Unsupported, match="persistent_host_mm"):
        persistent_mm(torch.randn(8, 63, dtype=torch.float16)[:, 1:], torch.randn(62, 32, dtype=torch.float16), cfg)
    with pytest.raises(Unsupported, match="non-empty"):  # not TensorDescriptor's AssertionError
        persistent_mm(torch.randn(0, 64, dtype=torch.float16), torch.randn(64, 32, dtype=torch.float16), cfg)


def test_warp_specialised_host_descriptors_only_on_64_row_tiles():
    """Triton 3.6 for sm_90 (results/aot_sm90/host_desc_ws.jsonl): 128- and 256-row tiles fail its
    warp-specialisation pass on host descriptors, not on device ones; 64-row tiles compile."""
    mm, key = get_kernel("mm"), (1500, 1024, 1024, 1)
    ws = dict(variant="persistent", BLOCK_N=128, BLOCK_K=64, GROUP_M=8, SPLIT_K=1, num_warps=4, num_stages=4,
              OCCUPANCY=1, WARP_SPECIALIZE=1, FLATTEN=0, EPILOGUE_SUBTILE=0)
    assert "host-built" in mm.invalid_reason(key, ws | dict(BLOCK_M=128, HOST_DESC=1), "bf16", "cuda")
    assert mm.invalid_reason(key, ws | dict(BLOCK_M=128, HOST_DESC=0), "bf16", "cuda") is None
    assert mm.invalid_reason(key, ws | dict(BLOCK_M=64, HOST_DESC=1), "bf16", "cuda") is None
    assert mm.invalid_reason(key, ws | dict(BLOCK_M=128, HOST_DESC=1, WARP_SPECIALIZE=0), "bf16", "cuda") is None


def test_the_knob_is_an_identity_of_its_own_in_mm_and_addmm_and_pinned_elsewhere():
    mm, addmm = get_kernel("mm"), get_kernel("addmm")
    pers = dict(variant="persistent", BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, SPLIT_K=1, num_warps=4,
                num_stages=3, OCCUPANCY=1, WARP_SPECIALIZE=0, FLATTEN=0, EPILOGUE_SUBTILE=0)
    assert own_module(pers | {"HOST_DESC": 1}) == PERSISTENT_HOST_MODULE
    assert own_module(pers) == own_module(pers | {"HOST_DESC": 0}) == OWN_MODULES["persistent"]  # stored before it
    host_hash = mm.source_hash(pers | {"HOST_DESC": 1})
    assert host_hash != mm.source_hash(pers) == addmm.source_hash({"variant": "persistent"})
    assert addmm.source_hash({"variant": "persistent", "HOST_DESC": 1}) == host_hash
    key = (512, 3584, 3584, 1)
    assert "HOST_DESC" in mm.space(key, "bf16", "cuda") and "HOST_DESC" in addmm.space(key, "bf16", "cuda")
    assert "HOST_DESC" not in get_kernel("bmm").space((28, 512, 64, 128, 0), "bf16", "cuda")
    assert "HOST_DESC" not in get_kernel("scaled_mm").space((512, 3584, 3584), "fp8", "cuda")
    assert mm.canonical(key, pers | {"HOST_DESC": 1})["HOST_DESC"] == 1
    # stream-K's one kernel takes the host's descriptors or builds its own (session 10): one identity
    streamk = mm.canonical(key, pers | {"variant": "streamk", "HOST_DESC": 1})
    assert streamk["HOST_DESC"] == 1 and mm.source_hash(streamk) == mm.source_hash(streamk | {"HOST_DESC": 0})
    assert mm.canonical(key, pers | {"variant": "splitk", "HOST_DESC": 1})["HOST_DESC"] == 0
    assert mm.canonical(key, pers) == pers  # a record without the knob keeps its identity


@pytest.mark.parametrize("op,key", [("mm", (512, 3584, 3584, 1)), ("addmm", (1500, 1024, 1024, 1))])
def test_each_persistent_warm_start_runs_on_both_descriptors(op, key):
    kernel = get_kernel(op)
    starts = [c for c in kernel.starting_configs(key, "bf16", "cuda") if c["variant"] == "persistent"]
    assert starts and len(starts) % 2 == 0
    on = [{k: v for k, v in c.items() if k != "HOST_DESC"} for c in starts if c["HOST_DESC"] == 1]
    off = [{k: v for k, v in c.items() if k != "HOST_DESC"} for c in starts if c["HOST_DESC"] == 0]
    assert on == off
    for c in starts:
        assert kernel.invalid_reason(key, c, "bf16", "cuda") is None and kernel.canonical(key, c) == c


@pytest.mark.parametrize("op,config", [
    ("mm", dict(variant="persistent", BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=4, SPLIT_K=1, num_warps=4,
                num_stages=5, OCCUPANCY=1, WARP_SPECIALIZE=0, FLATTEN=1, EPILOGUE_SUBTILE=0)),
    ("addmm", dict(variant="persistent", BLOCK_SIZE_M=128, BLOCK_SIZE_N=128, BLOCK_SIZE_K=64, GROUP_M=4,
                   num_warps=4, num_stages=5, OCCUPANCY=1, WARP_SPECIALIZE=0, FLATTEN=1, EPILOGUE_SUBTILE=0)),
])
def test_a_persistent_winner_stored_before_the_knob_still_warm_starts(op, config):
    """Session 7's persistent winners lack HOST_DESC; projected onto today's space (a warm start)
    they are the device-descriptor config, not one the space refuses."""
    import optuna

    from tuner.tuning.candidates import Candidates

    kernel, key = get_kernel(op), (4096, 3584, 3584, 1) if op == "mm" else (1500, 1024, 1024, 1)
    study = optuna.create_study()
    cands = Candidates(study, kernel, key, "bf16", "cuda", 9)
    assert cands.project(config)["HOST_DESC"] == 0
    cands.enqueue_warm([config])
    (queued,) = study.get_trials(deepcopy=False)
    assert queued.system_attrs["fixed_params"]["HOST_DESC"] == 0
