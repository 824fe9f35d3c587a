"""Our vLLM fused-MoE files are named and read exactly as vLLM 0.33 does it.

vLLM runs with VLLM_TARGET_DEVICE=cpu (its real CPU platform, device name "cpu"), so
the lookup is vLLM's own code end to end. For GPU names the only stand-in is the
platform's device-name query (there is no GPU here); the naming code is vLLM's.
"""
import json
import warnings

import pytest

from tests.conftest import H100, needs_vllm, result, run_py
from tests.tuner.inject.conftest import env_of, moe_record
from tuner.inject import ForeignResultError
from tuner.inject.vllm_moe import FLAGGEMS_OP, config_file_name, export_moe_configs, moe_tables

VLLM_CPU = {"VLLM_TARGET_DEVICE": "cpu"}


@needs_vllm
def test_file_name_equals_vllms():
    cases = [(128, 768, None, None), (64, 1408, "float32", None), (8, 14336, "fp8_w8a8", [128, 128]),
             (8, 14336, "fp8_w8a8", [0, 128])]
    out = run_py(f"""
        import json
        from vllm.platforms.cpu import CpuPlatform
        from vllm.utils.platform_utils import get_device_name_as_file_name
        from vllm.model_executor.layers.fused_moe.fused_moe import get_config_file_name
        got = {{}}
        for dev in ["cpu", "{H100}", "NVIDIA H200 NVL", "NVIDIA A100-SXM4-80GB", "a / b  c"]:
            if dev != "cpu":  # no GPU here: only the device-name query is replaced
                CpuPlatform.get_device_name = classmethod(lambda cls, device_id=0, d=dev: d)
                get_device_name_as_file_name.cache_clear()  # vLLM caches the name
            got[dev] = [get_config_file_name(E, N, dt, bs) for E, N, dt, bs in {cases!r}]
        print("RESULT", json.dumps(got))
    """, VLLM_CPU)
    got = result(out)
    assert got["cpu"][0] == "E=128,N=768,device_name=cpu.json"
    assert got["NVIDIA H200 NVL"][0] == "E=128,N=768,device_name=NVIDIA_H200.json"
    for dev, names in got.items():
        assert names == [config_file_name(E, N, dt, dev, bs) for E, N, dt, bs in cases], dev


def _export(tmp_path, records, **kw):
    kw.setdefault("running", {"gpu_name": "cpu", "triton": env_of()["triton"]})
    return export_moe_configs(records, tmp_path / "moe", **kw)


def vllm_record(*a, **kw):
    return moe_record(*a, kernel="vllm_fused_moe", **kw)


def test_export_content_sorted_int_keys(tmp_path):
    recs = [vllm_record(m, bm, gpu="cpu") for m, bm in [(256, 128), (1, 16), (64, 64)]]
    [path] = _export(tmp_path, recs)
    assert path.name == "E=128,N=768,device_name=cpu.json"
    data = json.loads(path.read_text())
    assert list(data) == ["1", "64", "256", "triton_version"]
    assert data["1"] == {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 64,
                         "GROUP_SIZE_M": 8, "num_warps": 4, "num_stages": 3}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_conflicting_records_raise():
    with pytest.raises(ValueError, match="two different vllm_fused_moe configs"):
        moe_tables([vllm_record(64, 16), vllm_record(64, 32)])
    with pytest.raises(ValueError, match="two different fused_moe configs"):
        moe_tables([moe_record(64, 16), moe_record(64, 32)], op=FLAGGEMS_OP)
    with pytest.raises(ValueError, match="two shapes"):  # vLLM's file name carries neither K nor top_k
        moe_tables([vllm_record(64, 16), vllm_record(16, 16, K=4096)])


def test_only_records_timed_in_vllms_kernel_reach_vllms_folder(tmp_path):
    """A config timed in FlagGems' port is no evidence for vLLM's kernel: vLLM's folder gets the
    vllm_fused_moe records only; fused_moe records are exported for FlagGems' hook on request."""
    recs = [moe_record(64, 32, gpu="cpu"), vllm_record(16, 16, gpu="cpu")]
    [path] = _export(tmp_path, recs)
    assert [m for m in json.loads(path.read_text()) if m.isdigit()] == ["16"]
    assert _export(tmp_path, [moe_record(64, 32, gpu="cpu")]) == []
    [fg] = export_moe_configs(recs, tmp_path / "fg", op=FLAGGEMS_OP,
                              running={"gpu_name": "cpu", "triton": env_of()["triton"]})
    assert fg.name == path.name and json.loads(fg.read_text())["64"]["BLOCK_SIZE_M"] == 32


def test_foreign_records_refused_unless_allowed(tmp_path):
    recs = [vllm_record(64)]  # measured on an H100; this host has no GPU
    with pytest.raises(ForeignResultError, match="gpu_name"):
        export_moe_configs(recs, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        [p] = export_moe_configs(recs, tmp_path / "b", allow_foreign=True)
    assert any("FOREIGN" in str(x.message) for x in w)
    assert p.name == "E=128,N=768,device_name=NVIDIA_H100_80GB_HBM3.json"


@needs_vllm
def test_vllm_lookup_returns_tuned_config(tmp_path):
    recs = [vllm_record(m, bm, gpu="cpu") for m, bm in [(1, 16), (64, 64), (256, 128)]]
    recs.append(vllm_record(8, 32, dtype="fp32", gpu="cpu"))
    _export(tmp_path, recs)
    out = run_py("""
        import json
        from vllm.model_executor.layers.fused_moe.fused_moe import (
            get_moe_configs, try_get_optimal_moe_config)
        E, N, K, top_k = 128, 768, 2048, 8
        pick = lambda M, dt=None: try_get_optimal_moe_config(
            (E, 2 * N, K), (E, K, N), top_k, dt, M)["BLOCK_SIZE_M"]
        print("RESULT", json.dumps({
            "keys": sorted(get_moe_configs(E, N, None)),
            "exact": pick(64), "near": [pick(2), pick(150), pick(170), pick(4096)],
            "fp32": pick(1000, "float32"), "other_E": get_moe_configs(64, N, None)}))
    """, {**VLLM_CPU, "VLLM_TUNED_CONFIG_FOLDER": str(tmp_path / "moe")})
    r = result(out)
    assert r["keys"] == [1, 64, 256]
    assert r["exact"] == 64
    # vLLM's nearest is by absolute distance: 2->1, 150->64 (86 < 106), 170->256, 4096->256
    assert r["near"] == [16, 64, 128, 128]
    assert r["fp32"] == 32
    assert r["other_E"] is None


@needs_vllm
@pytest.mark.gpu
def test_file_name_on_this_gpu_equals_vllms():
    out = run_py("""
        import json, torch
        from vllm.model_executor.layers.fused_moe.fused_moe import get_config_file_name
        print("RESULT", json.dumps([torch.cuda.get_device_name(0), get_config_file_name(128, 768, None)]))
    """)
    dev, name = result(out)
    assert name == config_file_name(128, 768, None, dev)


# ---- coverage: every M up to max_num_batched_tokens lands on its tuned config -------------------
COVERAGE_CHECK = """
    import json, os
    from vllm.platforms.cpu import CpuPlatform
    from vllm.utils.platform_utils import get_device_name_as_file_name
    import vllm.model_executor.layers.fused_moe.fused_moe as fm
    from kernels.vllm_fused_moe import covering
    from tuner.inject.vllm_moe import export_moe_configs
    from tests.tuner.inject.conftest import env_of, moe_record
    GPU, FOLDER, MAX = {gpu!r}, {folder!r}, {max_tokens}
    if GPU != "cpu":  # no GPU here: only vLLM's device-name query is replaced (its naming is vLLM's)
        CpuPlatform.get_device_name = classmethod(lambda cls, device_id=0: GPU)
        get_device_name_as_file_name.cache_clear()
    E, N, K, top_k = 128, 768, 2048, 8
    pick = lambda M: fm.try_get_optimal_moe_config((E, 2 * N, K), (E, K, N), top_k, None, M)
    ms = list(range(1, MAX + 300))
    without = [pick(M) for M in ms]  # vLLM's own choice: its shipped file for GPU, or its default
    tuned = {{m: {{"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1,
                 "num_warps": 4, "num_stages": 7 + i}} for i, m in enumerate({tuned_ms})}}
    recs = [moe_record(m, kernel="vllm_fused_moe", gpu=GPU) | {{"config": c}} for m, c in tuned.items()]
    [path] = export_moe_configs(recs, FOLDER, running={{"gpu_name": GPU, "triton": env_of()["triton"]}},
                                max_tokens=MAX)
    os.environ["VLLM_TUNED_CONFIG_FOLDER"] = FOLDER
    fm.get_moe_configs.cache_clear()
    bad = []
    for M, own in zip(ms, without):
        t = covering(min(M, MAX), list(tuned))
        want = tuned[t] if t is not None else {{k: own[k] for k in tuned[next(iter(tuned))]}}
        got = {{k: pick(M)[k] for k in want}}
        if got != want:
            bad.append([M, t, got, want])
    keys = [int(k) for k in json.load(open(path)) if k.isdigit()]
    print("RESULT", json.dumps({{"name": path.name, "keys": keys, "bad": bad[:5], "n_bad": len(bad),
                                "tuned_seen": sum(1 for M in ms if covering(min(M, MAX), list(tuned)) is not None)}}))
"""


@needs_vllm
@pytest.mark.parametrize("gpu, tuned_ms, max_tokens", [
    ("cpu", (1, 16, 64, 256, 1024, 4096), 8192),  # issue 16's bench M: 3..7 uncovered -> vLLM's default
    ("NVIDIA H200", (1, 16, 64, 256, 1024, 4096), 8192),  # uncovered M -> vLLM's shipped H200 file
    ("cpu", (1, 4, 16, 64, 256, 1024, 4096), 8192),  # ms_to_tune(8192): every M tuned
    ("NVIDIA H200", (64,), 2048),  # one tuned M: 32..128 tuned, the rest vLLM's own
])
def test_vllm_lookup_gives_every_m_its_tuned_config_or_vllms_own(tmp_path, gpu, tuned_ms, max_tokens):
    """vLLM's own lookup (nearest key of the exported file) over every M from 1 to past
    max_num_batched_tokens: the config tuned for the M covering it, and where none covers it,
    exactly what vLLM picked before the file existed (its shipped H200 file, or its default)."""
    out = run_py(COVERAGE_CHECK.format(gpu=gpu, folder=str(tmp_path / "moe"), max_tokens=max_tokens,
                                       tuned_ms=list(tuned_ms)), VLLM_CPU, timeout=600)
    r = result(out)
    assert r["n_bad"] == 0, r["bad"]
    assert r["name"] == config_file_name(128, 768, None, gpu)
    assert r["tuned_seen"] > 0 and len(r["keys"]) < 64  # a few run end points, not one key per M
    if tuned_ms == (1, 4, 16, 64, 256, 1024, 4096):
        assert r["tuned_seen"] == max_tokens + 299  # every M, including those past max_tokens


# ---- provenance: vLLM-timed records carry vLLM's kernel hash, checked in the engine ------------
@needs_vllm
def test_engine_stage_checks_vllms_kernel_source(tmp_path, monkeypatch):
    import logging

    from tuner.inject.registry import Context
    from tuner.inject.vllm_moe import point_vllm_at_moe_folder, vllm_moe_source_hash

    monkeypatch.delenv("VLLM_TUNED_CONFIG_FOLDER", raising=False)
    ctx = Context(folder=tmp_path, exclude=[], max_tokens=64, allow_foreign=False, enable_flaggems=False,
                  moe_dir=tmp_path / "moe", log=logging.getLogger("t"))
    good = [vllm_record(m) | {"kernel_source_hash": vllm_moe_source_hash()} for m in (1, 16)]
    flaggems_timed = moe_record(64)  # FlagGems' hash: not this stage's to check
    assert point_vllm_at_moe_folder([*good, flaggems_timed], ctx) == 2
    stale = vllm_record(64)  # tuned on another vLLM's kernel source
    with pytest.raises(ForeignResultError, match="kernel_source_hash"):
        point_vllm_at_moe_folder([*good, stale], ctx)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ctx_foreign = Context(**{**ctx.__dict__, "allow_foreign": True})
        assert point_vllm_at_moe_folder([*good, stale], ctx_foreign) == 3
    assert any("vllm_fused_moe" in str(x.message) for x in w)
