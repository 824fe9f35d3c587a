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
from tuner.inject.vllm_moe import config_file_name, export_moe_configs, moe_tables

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


def test_export_content_sorted_int_keys(tmp_path):
    recs = [moe_record(m, bm, gpu="cpu") for m, bm in [(256, 128), (1, 16), (64, 64)]]
    [path] = _export(tmp_path, recs)
    assert path.name == "E=128,N=768,device_name=cpu.json"
    data = json.loads(path.read_text())
    assert list(data) == ["1", "64", "256", "triton_version"]
    assert data["1"] == {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 64,
                         "GROUP_SIZE_M": 8, "num_warps": 4, "num_stages": 3}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_conflicting_records_raise():
    with pytest.raises(ValueError, match="two different fused_moe configs"):
        moe_tables([moe_record(64, 16), moe_record(64, 32)])


def test_foreign_records_refused_unless_allowed(tmp_path):
    recs = [moe_record(64)]  # measured on an H100; this host has no GPU
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
    recs = [moe_record(m, bm, gpu="cpu") for m, bm in [(1, 16), (64, 64), (256, 128)]]
    recs.append(moe_record(8, 32, dtype="fp32", gpu="cpu"))
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
