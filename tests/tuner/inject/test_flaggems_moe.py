"""FlagGems' fused MoE picks up the tuned configs through the replaced lookup (real flag_gems)."""
import pytest

from tests.conftest import needs_flag_gems, result, run_py
from tests.tuner.inject.conftest import moe_record
from tuner.inject.vllm_moe import FLAGGEMS_OP, export_moe_configs


@needs_flag_gems
def test_hook_returns_tuned_and_falls_back(tmp_path, fg_env):
    recs = [moe_record(m, bm, gpu="cpu") for m, bm in [(1, 16), (64, 64), (256, 128)]]
    export_moe_configs(recs, tmp_path / "moe", op=FLAGGEMS_OP,
                       running={"gpu_name": "cpu", "triton": recs[0]["environment"]["triton"]})
    out = run_py(f"""
        import json
        import flag_gems.fused.fused_moe as fm
        from tuner.inject.flaggems_moe import install_flaggems_moe_hook
        original = fm.try_get_optimal_moe_config
        E, N, K, top_k = 128, 768, 2048, 8
        args = lambda E, M: ((E, 2 * N, K), (E, K, N), top_k, None, M, E)
        def outcome(f, *a):  # FlagGems' own lookup needs a GPU for the device name
            try:
                return f(*a)
            except Exception as e:
                return f"{{type(e).__name__}}: {{e}}"
        untuned = outcome(original, *args(64, 64))
        restore = install_flaggems_moe_hook({str(tmp_path / 'moe')!r}, device_name="cpu")
        hooked = fm.try_get_optimal_moe_config
        # fused_experts_impl resolves the name in the module globals at call time
        seen = fm.fused_experts_impl.__globals__["try_get_optimal_moe_config"] is hooked
        r = {{"seen": seen, "tuned": [hooked(*args(E, M))["BLOCK_SIZE_M"] for M in (1, 64, 150, 170, 9999)],
              "fallback_same": outcome(hooked, *args(64, 64)) == untuned, "untuned": str(untuned)}}
        restore()
        r["restored"] = fm.try_get_optimal_moe_config is original
        print("RESULT", json.dumps(r))
    """, fg_env)
    r = result(out)
    assert r["seen"]
    assert r["tuned"] == [16, 64, 64, 128, 128]  # nearest M by absolute distance, as vLLM/FlagGems
    # unknown E -> FlagGems' own function (on CPU both end in the same "no GPU" error)
    assert r["fallback_same"], r["untuned"]
    assert r["restored"]


@needs_flag_gems
@pytest.mark.gpu
def test_hook_on_gpu_matches_flaggems_fallback(tmp_path):
    out = run_py(f"""
        import json, torch
        import flag_gems.fused.fused_moe as fm
        from tuner.inject.flaggems_moe import install_flaggems_moe_hook
        from tuner.inject.vllm_moe import FLAGGEMS_OP, export_moe_configs
        from tests.tuner.inject.conftest import moe_record
        gpu = torch.cuda.get_device_name(0)
        export_moe_configs([moe_record(64, 32, gpu=gpu)], {str(tmp_path / 'moe')!r}, op=FLAGGEMS_OP)
        original = fm.try_get_optimal_moe_config
        install_flaggems_moe_hook({str(tmp_path / 'moe')!r})
        a = lambda E, M: ((E, 1536, 2048), (E, 2048, 768), 8, None, M, E)
        print("RESULT", json.dumps([fm.try_get_optimal_moe_config(*a(128, 60))["BLOCK_SIZE_M"],
                                    fm.try_get_optimal_moe_config(*a(64, 60)) == original(*a(64, 60))]))
    """)
    assert result(out) == [32, True]


@needs_flag_gems
def test_a_record_of_another_kernel_source_is_refused(fg_env):
    """Both MoE injectors (vLLM's folder, FlagGems' hook) check the record's kernel_source_hash
    against FlagGems' running fused_moe_kernel, as the mm injectors do."""
    # the records built here: tests.conftest would set TRITON_INTERPRET, and FlagGems breaks under it
    fresh, stale = moe_record(64), moe_record(1)
    out = run_py(f"""
        import json
        from kernels.fused_moe import FusedMoE
        from tuner.inject import ForeignResultError
        from tuner.inject.vllm_moe import check_moe_sources, moe_source_hash
        fresh, stale = {fresh!r}, {stale!r}
        fresh["kernel_source_hash"] = moe_source_hash()
        stale["kernel_source_hash"] = "0123456789abcdef" * 4
        r = {{"same": moe_source_hash() == FusedMoE().source_hash(), "fresh": check_moe_sources([fresh], False)}}
        try:
            check_moe_sources([fresh, stale], False)
        except ForeignResultError as e:
            r["refused"] = str(e)
        print("RESULT", json.dumps(r))
    """, fg_env)
    r = result(out)
    assert r["same"] and r["fresh"] == 1
    assert "kernel's source changed" in r["refused"] and "'0123456789ab'" in r["refused"]
