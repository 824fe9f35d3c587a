"""kernels/direct_launch.py on the CPU host: what its key tells apart (every integer exactly,
tensors by dtype and 16-byte alignment, host descriptors by everything Triton's specialisation
reads) and that under the interpreter every launch takes Triton's own path with the same result.
The direct path itself needs a compiled kernel: tests/gpu/test_direct_launch_gpu.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.direct_launch import DirectLaunch, _arg_key, hooked  # noqa: E402


def test_integers_are_keyed_by_value():
    """Triton specialises integers on == 1, divisibility by 16 and 32 vs 64 bits: the exact value
    covers all three, and a bool is not the int it equals."""
    assert _arg_key(16) != _arg_key(32) != _arg_key(1)
    assert _arg_key(2**31) != _arg_key(2**31 - 16)
    assert _arg_key(True) != _arg_key(1)
    assert _arg_key(None) == _arg_key(None)


def test_tensors_are_keyed_by_dtype_and_alignment_not_address():
    buf = torch.zeros(64, dtype=torch.float16)
    aligned, also_aligned, off_by_two_bytes = buf[:16], buf[8:24], buf[1:17]
    assert _arg_key(aligned) == _arg_key(also_aligned)  # 16 bytes apart: the same binary serves both
    assert _arg_key(aligned) != _arg_key(off_by_two_bytes)
    assert _arg_key(aligned) != _arg_key(buf.float()[:16])


def test_host_descriptors_are_keyed_by_block_shape_and_layout():
    from triton.tools.tensor_descriptor import TensorDescriptor

    a = torch.zeros(64, 64, dtype=torch.bfloat16)
    one = _arg_key(TensorDescriptor.from_tensor(a, [16, 32]))
    assert one == _arg_key(TensorDescriptor.from_tensor(a.clone(), [16, 32]))
    assert one != _arg_key(TensorDescriptor.from_tensor(a, [32, 32]))
    assert one != _arg_key(TensorDescriptor.from_tensor(a[:32], [16, 32]))


def test_an_argument_of_unknown_kind_has_no_key():
    with pytest.raises(TypeError, match="no launch key"):
        _arg_key(object())


def test_a_launch_hook_is_set_only_when_one_is_added():
    """Triton 3.6's knobs hold an empty HookChain where 3.3 held None: an empty chain is no hook
    (the first GPU run took it for one and never launched directly)."""
    from triton.knobs import HookChain

    chain = HookChain()
    assert not hooked(None) and not hooked(chain)
    chain.add(print)
    assert hooked(chain) and hooked(print)


def test_the_interpreter_takes_tritons_path_with_the_same_result():
    """Under TRITON_INTERPRET the kernel is no compiled binary: every call goes through Triton."""
    import kernels.persistent_mm as pm

    assert isinstance(pm.persistent_mm_direct, DirectLaunch) and not pm.persistent_mm_direct._usable
    g = torch.Generator().manual_seed(3)
    a, w = torch.randn(33, 64, generator=g).half(), torch.randn(48, 64, generator=g).half()
    config = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=1, num_warps=4, num_stages=2)
    before = pm.persistent_mm_direct.direct_calls
    for _ in range(2):
        out = pm.persistent_mm(a, w.t(), config)
        torch.testing.assert_close(out.float(), a.float() @ w.float().t(), rtol=2e-3, atol=2e-2)
    assert pm.persistent_mm_direct.direct_calls == before and not pm.persistent_mm_direct.compiled


@pytest.mark.parametrize("value,enabled", [("0", False), ("1", True), (None, True)])
def test_the_environment_turns_it_off(value, enabled):
    env = {k: v for k, v in os.environ.items() if k != "TUNER_DIRECT_LAUNCH"}
    if value is not None:
        env["TUNER_DIRECT_LAUNCH"] = value
    proc = subprocess.run([sys.executable, "-c", "import kernels.direct_launch as d; print(d.ENABLED)"], env=env,
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == str(enabled)
