"""The vLLM entry point, found and run by vLLM's own plugin loader (real vllm + flag_gems)."""
import json
import os

import pytest

from tests.conftest import needs_flag_gems, needs_vllm, result, run_py
from tests.tuner.inject.conftest import env_of, moe_record
from tuner.inject import ForeignResultError
from kernels.vllm_fused_moe import ms_to_tune
from tuner.errors import UserError
from tuner.inject.plugin import FLAGGEMS_DB, MOE_FOLDER, apply_state, runtime_env, write_runtime_dir
from tuner.inject.vllm_moe import FLAGGEMS_SUBFOLDER

ENTRY_POINT = "tuner = tuner.inject.plugin:register"


def mm_record(M, variant="fg_tma", gpu="NVIDIA H100 80GB HBM3"):
    return {"kernel": "mm", "key": {"M": M, "N": 4608, "K": 3584}, "dtype": "bf16",
            "config": {"variant": variant, "BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8,
                       "SPLIT_K": 1, "num_warps": 4, "num_stages": 3},
            "environment": env_of(gpu), "kernel_source_hash": "not-this-flaggems"}


def addmm_record(M, gpu="NVIDIA H100 80GB HBM3"):
    return {"kernel": "addmm", "key": {"M": M, "N": 512, "K": 3584, "BT": 1}, "dtype": "bf16",
            "config": {"variant": "fg_addmm", "BLOCK_SIZE_M": 32, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 32,
                       "num_warps": 2, "num_stages": 5},
            "environment": env_of(gpu), "kernel_source_hash": "not-this-flaggems"}


def bmm_record(M, gpu="NVIDIA H100 80GB HBM3"):
    return {"kernel": "bmm", "key": {"BATCH": 1024, "M": M, "N": 3584, "K": 3584, "LAYOUT": 1}, "dtype": "bf16",
            "config": {"variant": "fg_bmm", "TILE_M": 16, "TILE_N": 128, "TILE_K": 64, "GROUP_M": 1,
                       "num_warps": 4, "num_stages": 4},
            "environment": env_of(gpu), "kernel_source_hash": "not-this-flaggems"}


def attention_record(gpu="NVIDIA H100 80GB HBM3"):
    key = {"batch": 1, "heads": 28, "kv_heads": 4, "q_len": 2048, "kv_len": 2048, "head_dim": 128, "causal": 1}
    return {"kernel": "attention", "key": key, "dtype": "bf16",
            "config": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
            "environment": env_of(gpu), "kernel_source_hash": "not-this-flaggems"}


def test_write_runtime_dir_replaces_atomically(tmp_path):
    run = {"gpu_name": "NVIDIA H100 80GB HBM3", "triton": env_of()["triton"]}
    folder = tmp_path / "rt"
    write_runtime_dir(folder, [moe_record(1)], ["softmax"], running=run)
    (folder / "stale").write_text("x")
    # timed in vLLM's kernel at M covering 1..512 (no fallback to vLLM's own config needed), and
    # one timed in FlagGems' kernel
    vllm_recs = [moe_record(m, bm, kernel="vllm_fused_moe") for m, bm in zip(ms_to_tune(512), (16, 16, 16, 64, 128))]
    write_runtime_dir(folder, [*vllm_recs, moe_record(64, 32), mm_record(16)], ["mm", "softmax", "mm"],
                      max_tokens=512, running=run)
    state = json.loads((folder / "state.json").read_text())
    assert state["exclude_ops"] == ["mm", "softmax"] and state["max_tokens"] == 512
    name = "E=128,N=768,device_name=NVIDIA_H100_80GB_HBM3.json"
    assert len(state["records"]) == 7 and state["moe_files"] == [name]
    vllm_file = json.loads((folder / MOE_FOLDER / name).read_text())
    # runs of one config written as their end points: 1..32 (M 1, 4 and 16: one config), 33..128
    # (M 64), 129..512 (M 256); only vLLM-timed configs in vLLM's folder
    assert [int(m) for m in vllm_file if m.isdigit()] == [1, 32, 33, 128, 129, 512]
    assert [vllm_file[m]["BLOCK_SIZE_M"] for m in ("1", "32", "33", "128", "129", "512")] == [16, 16, 64, 64, 128, 128]
    flaggems_file = json.loads((folder / MOE_FOLDER / FLAGGEMS_SUBFOLDER / name).read_text())
    assert [m for m in flaggems_file if m.isdigit()] == ["64"] and flaggems_file["64"]["BLOCK_SIZE_M"] == 32
    assert sorted(p.name for p in folder.iterdir()) == ["state.json", MOE_FOLDER]  # old content gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rt"]  # no staging folder left
    with pytest.raises(ForeignResultError):  # checked before anything is written
        write_runtime_dir(folder, [mm_record(1, gpu="NVIDIA A100-SXM4-80GB")], [], running=run)
    assert json.loads((folder / "state.json").read_text()) == state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rt"]


def test_write_runtime_dir_refuses_a_folder_tuner_did_not_write(tmp_path):
    """`serve --runtime-dir ~/project` swapped the project out and deleted it (exit 0, with
    --dry-run too): a file, or a non-empty folder without state.json, is refused untouched."""
    run = {"gpu_name": "NVIDIA H100 80GB HBM3", "triton": env_of()["triton"]}
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    afile = tmp_path / "afile"
    afile.write_text("mine too")
    for path in (project, afile):
        with pytest.raises(UserError, match="tuner did not write|is a file"):
            write_runtime_dir(path, [moe_record(1)], [], running=run)
    assert (project / "notes.txt").read_text() == "mine" and afile.read_text() == "mine too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "project"]  # no staging folder left
    (tmp_path / "empty").mkdir()
    assert (write_runtime_dir(tmp_path / "empty", [], [], running=run) / "state.json").is_file()


def test_engine_process_refuses_results_from_another_gpu(tmp_path):
    # Prepared for an H100 (as `tuner serve` on that host would); this process has no GPU.
    run = {"gpu_name": "NVIDIA H100 80GB HBM3", "triton": env_of()["triton"]}
    write_runtime_dir(tmp_path / "rt", [moe_record(64)], [], enable_flaggems=False, running=run)
    with pytest.raises(ForeignResultError, match="gpu_name"):
        apply_state(tmp_path / "rt")


def test_register_without_runtime_dir_is_a_logged_noop():
    out = run_py("""
        import sys
        from tuner.inject.plugin import register
        register()
        print("RESULT", "flag_gems" in sys.modules)
    """)
    lines = [line for line in out.splitlines() if "tuner plugin:" in line]
    assert len(lines) == 1 and lines[0].endswith(
        "tuner plugin: TUNER_RUNTIME_DIR is unset; no tuned configs injected"), out[-2000:]
    assert "RESULT False" in out  # flag_gems was not even imported


@needs_vllm
@needs_flag_gems
def plugin_site(tmp_path):
    """A throwaway dist-info declaring the entry point that pyproject.toml declares."""
    site = tmp_path / "site"
    dist = site / "tuner_plugin_test-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tuner-plugin-test\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(f"[vllm.general_plugins]\n{ENTRY_POINT}\n")
    return site


def test_vllm_loader_runs_entry_point(tmp_path, fg_env):
    site = plugin_site(tmp_path)
    rt = tmp_path / "rt"
    # Measured "elsewhere" (this host has no GPU): allowed, so the loud path runs too.
    with pytest.warns(RuntimeWarning, match="FOREIGN"):
        vllm_recs = [moe_record(m, kernel="vllm_fused_moe") for m in ms_to_tune(64)]  # 1, 4, 16, 64
        write_runtime_dir(rt, [*vllm_recs, moe_record(64), mm_record(1), mm_record(256), addmm_record(16),
                               bmm_record(10), attention_record()],
                          ["softmax", "mm"],
                          max_tokens=64, allow_foreign=True)
    code = """
        import os, json
        from vllm.plugins import load_general_plugins, load_plugins_by_group
        assert list(load_plugins_by_group("vllm.general_plugins")) == ["tuner"]
        load_general_plugins()
        import flag_gems, flag_gems.fused.fused_moe as fm
        import importlib
        from flag_gems.utils.libentry import libcache
        libentry = importlib.import_module("flag_gems.utils.libentry")  # flag_gems.utils.libentry is also a function
        from tuner.inject.flaggems_cache import locate_mm_tuners, locate_mm_module, _runtime_args
        t = locate_mm_tuners()["fg_tma"]
        key = t.get_key(_runtime_args(locate_mm_module(), "fg_tma", 3, 4608, 3584, "bf16", "col"))
        from tuner.inject.flaggems_addmm import addmm_key, locate_addmm_tuner
        ta = locate_addmm_tuner()
        addmm_hit = ta.cache.get(addmm_key(ta, 512, 3584, "bf16", 40))
        from tuner.inject.flaggems_bmm import bmm_key, locate_bmm_tuner
        tb = locate_bmm_tuner()
        bmm_hit = tb.cache.get(bmm_key(tb, 1024, 3584, 3584, 1, "bf16", 9))
        from kernels.attention import as_space_config, autotuner, runtime_key
        attn_hit = autotuner().cache.get(runtime_key(128, "bf16"))
        print("RESULT", json.dumps({
            "moe_folder": os.environ.get("VLLM_TUNED_CONFIG_FOLDER"), "db": libcache.db_url,
            "registered_mm": "mm" in flag_gems.current_work_registrar.get_all_ops(),
            "registered_mm_out": "mm_out" in flag_gems.current_work_registrar.get_all_ops(),
            "seeded": key in t.cache,
            "seeded_addmm": addmm_hit.kwargs["BLOCK_SIZE_M"] if addmm_hit else None,
            "seeded_bmm": bmm_hit.kwargs["TILE_M"] if bmm_hit else None,
            "seeded_attention": as_space_config(attn_hit) if attn_hit else None,
            "memo": libentry.ConfigCache.get.__module__,
            "moe_hooked": hasattr(fm.try_get_optimal_moe_config, "__tuner_original__")}))
    """
    fg_env.pop("FLAGGEMS_DB_URL")  # the plugin points FlagGems at the runtime folder's DB
    env = {**fg_env, "PYTHONPATH": f"{site}:{run_py.__globals__['REPO']}",
           "VLLM_PLUGINS": "tuner", "TUNER_RUNTIME_DIR": str(rt), "VLLM_TARGET_DEVICE": "cpu",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # this process is the engine: the plugin applies here
    out = run_py(code, env)
    lines = [line for line in out.splitlines() if "tuner plugin:" in line]
    assert len(lines) == 1, out[-3000:]
    assert ("tuner plugin: 9 tuned configs active (fused_moe 4, mm via FlagGems cache 2, "
            "addmm via FlagGems cache 1, bmm via FlagGems cache 1, attention via FlagGems autotuner 1, "
            "GEMM keys routed to a tuned kernel 0); FlagGems excluded ops: mm, softmax; FlagGems config cache "
            "read from memory; GEMM keys: FlagGems 0, split-K 0, persistent 0, stream-K 0, native 4") in lines[0]
    assert "USING FOREIGN TUNED RESULT for fused_moe" in out and "USING FOREIGN TUNED RESULT for mm" in out
    # the vLLM-timed records' kernel hash is checked against the installed vLLM's fused_moe_kernel
    vllm_lines = [line for line in out.splitlines() if "USING FOREIGN TUNED RESULT for vllm_fused_moe" in line]
    assert any("kernel_source_hash: record 'moe-src'" in line for line in vllm_lines), out[-3000:]
    assert "USING FOREIGN TUNED RESULT for addmm" in out and "USING FOREIGN TUNED RESULT for bmm" in out
    assert "USING FOREIGN TUNED RESULT for attention" in out
    r = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    # "mm" excluded leaves out both overloads (FlagGems' mm and mm_out): vLLM's compiled graphs call mm.out
    assert r == {"moe_folder": str(rt / MOE_FOLDER), "registered_mm": False, "registered_mm_out": False,
                 "seeded": True, "seeded_addmm": 32, "seeded_bmm": 16,
                 "seeded_attention": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
                 "moe_hooked": True, "db": runtime_env(rt)["FLAGGEMS_DB_URL"],
                 "memo": "tuner.inject.flaggems_memo"}
    assert (rt / FLAGGEMS_DB).exists()


@needs_flag_gems
@needs_vllm
def test_vllm_front_end_process_applies_nothing(tmp_path, fg_env):
    """The process that starts vLLM's engine core in a child (V1 multiprocessing) runs no kernel:
    the plugin neither imports flag_gems nor initialises CUDA there, and says so in one line."""
    site = plugin_site(tmp_path)
    rt = tmp_path / "rt"
    write_runtime_dir(rt, [], ["mul"], max_tokens=64, running={"gpu_name": None, "triton": None})
    code = """
        import json, sys
        from vllm.plugins import load_general_plugins
        load_general_plugins()
        import torch
        import os
        print("RESULT", json.dumps({"flag_gems": "flag_gems" in sys.modules,
                                    "cuda_initialised": torch.cuda.is_initialized(),
                                    "start_method": os.environ.get("VLLM_WORKER_MULTIPROC_METHOD")}))
    """
    env = {**fg_env, "PYTHONPATH": f"{site}:{run_py.__globals__['REPO']}", "VLLM_PLUGINS": "tuner",
           "TUNER_RUNTIME_DIR": str(rt), "VLLM_TARGET_DEVICE": "cpu"}
    out = run_py(code, env)
    # spawn: a forked engine core inherits vLLM's "plugins loaded" and would never apply the state
    assert result(out) == {"flag_gems": False, "cuda_initialised": False, "start_method": "spawn"}
    lines = [line for line in out.splitlines() if "tuner plugin:" in line]
    assert len(lines) == 1 and "vLLM front-end process" in lines[0], out[-2000:]


@pytest.mark.gpu
@needs_flag_gems
@needs_vllm
def test_vllm_moe_ops_keep_vllms_schemas_beside_flaggems(tmp_path, fg_env):
    """flag_gems 5.0.2 defines `_moe_C::topk_softmax` with 4 arguments when `import vllm._moe_C`
    fails, and vLLM 0.26 names that library `_moe_C_stable_libtorch`: with FlagGems first, vLLM's
    6-argument op failed to register and a served MoE model died at its first call (H200). The plugin
    imports vLLM's kernels before anything imports flag_gems."""
    import importlib.util

    if importlib.util.find_spec("vllm._moe_C_stable_libtorch") is None:
        pytest.skip("vLLM's MoE ops are not installed (on the GPU host: .vllm/moe staged)")
    site = plugin_site(tmp_path)
    rt = tmp_path / "rt"
    write_runtime_dir(rt, [], [], max_tokens=64)
    code = """
        import json, torch
        from vllm.plugins import load_general_plugins
        load_general_plugins()
        import flag_gems
        ops = ("topk_softmax", "moe_sum", "moe_align_block_size", "grouped_topk")
        print("RESULT", json.dumps({op: str(getattr(torch.ops._moe_C, op).default._schema) for op in ops}))
    """
    # the GPU host's vllm and flag_gems are on PYTHONPATH (tuner/benchmarks/vllm_h200.sh), not in site-packages
    path = ":".join(p for p in (str(site), str(run_py.__globals__["REPO"]), os.environ.get("PYTHONPATH")) if p)
    env = {**fg_env, "PYTHONPATH": path, "VLLM_PLUGINS": "tuner",
           "TUNER_RUNTIME_DIR": str(rt), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # this process is the engine
    out = run_py(code, env, timeout=300)
    schemas = result(out)
    assert "bool renormalize" in schemas["topk_softmax"], out[-3000:]  # vLLM's, not FlagGems' 4 arguments
    assert "expert_map" in schemas["moe_sum"] and "Tensor scores" in schemas["grouped_topk"], schemas
