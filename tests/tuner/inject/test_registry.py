"""The injector registry the plugin loops over: order, counts and the plugin's one log line."""
import os

import pytest

from tuner.inject import plugin, registry
from tuner.inject.plugin import active_line, apply_state, write_runtime_dir

# the plugin's line as it was written out by hand before the registry (issue 10), with the GEMM
# router's count where split-K's was (issue 11: the router serves split-K winners too)
OLD_LINE = ("tuner plugin: %d tuned configs active (fused_moe %d, mm via FlagGems cache %d, "
            "addmm via FlagGems cache %d, bmm via FlagGems cache %d, attention via FlagGems autotuner %d, "
            "GEMM keys routed to a tuned kernel %d); FlagGems excluded ops: %s%s")


def test_injectors_run_and_count_in_the_plugins_order():
    assert [(i.name, i.stage) for i in registry.injectors()] == [
        ("fused_moe", "engine"), ("mm_flaggems", "flaggems"), ("addmm_flaggems", "flaggems"),
        ("bmm_flaggems", "flaggems"), ("attention_flaggems", "flaggems"),
        ("fused_moe_flaggems_hook", "flaggems"), ("gemm_routes", "override")]
    assert [i.label for i in registry.counted()] == [
        "fused_moe", "mm via FlagGems cache", "addmm via FlagGems cache", "bmm via FlagGems cache",
        "attention via FlagGems autotuner", "GEMM keys routed to a tuned kernel"]
    assert [i.name for i in registry.injectors() if i.claims] == ["gemm_routes"]


@pytest.mark.parametrize("counts", [
    {"fused_moe": 1, "mm_flaggems": 2, "addmm_flaggems": 1, "bmm_flaggems": 1, "attention_flaggems": 1,
     "gemm_routes": 0, "config_memo": True, "exclude_ops": ["mm", "softmax"]},
    {"fused_moe": 0, "mm_flaggems": 0, "addmm_flaggems": 0, "bmm_flaggems": 0, "attention_flaggems": 0,
     "gemm_routes": 12, "config_memo": False, "exclude_ops": []},
])
def test_log_line_is_unchanged(counts):
    c = counts
    want = OLD_LINE % (c["fused_moe"] + c["mm_flaggems"] + c["addmm_flaggems"] + c["bmm_flaggems"]
                       + c["attention_flaggems"] + c["gemm_routes"], c["fused_moe"], c["mm_flaggems"],
                       c["addmm_flaggems"], c["bmm_flaggems"], c["attention_flaggems"], c["gemm_routes"],
                       ", ".join(c["exclude_ops"]) or "none",
                       "; FlagGems config cache read from memory" if c["config_memo"] else "")
    assert active_line(counts) == want


def test_apply_state_without_flaggems_counts_every_injector(tmp_path, monkeypatch):
    monkeypatch.delenv("VLLM_TUNED_CONFIG_FOLDER", raising=False)
    write_runtime_dir(tmp_path / "rt", [], ["softmax"], enable_flaggems=False, running={})
    counts = apply_state(tmp_path / "rt")
    assert list(counts.items()) == [
        ("fused_moe", 0), ("mm_flaggems", 0), ("addmm_flaggems", 0), ("bmm_flaggems", 0),
        ("attention_flaggems", 0), ("gemm_routes", 0), ("config_memo", False), ("exclude_ops", ["softmax"]),
        ("routes", {"native": 0, "flaggems": 0, "splitk": 0, "persistent": 0, "streamk": 0}),
        ("route_within", 1.0), ("flaggems_ops", "none")]
    assert os.environ["VLLM_TUNED_CONFIG_FOLDER"] == str(tmp_path / "rt" / plugin.MOE_FOLDER)


def test_registration_is_checked():
    with pytest.raises(ValueError, match="unknown stage"):
        registry.injector("x", label=None, stage="later")
    with pytest.raises(ValueError, match="MODULES does not list"):
        registry.injector("x", label=None, stage=registry.ENGINE)(lambda records, ctx: 0)
    assert "x" not in [i.name for i in registry.injectors()]


def test_log_line_says_where_gemm_keys_go_and_what_flaggems_registers():
    counts = {"fused_moe": 0, "mm_flaggems": 12, "addmm_flaggems": 0, "bmm_flaggems": 0, "attention_flaggems": 0,
              "gemm_routes": 4, "config_memo": True, "exclude_ops": ["mul"],
              "routes": {"native": 8, "flaggems": 4, "splitk": 0}, "flaggems_ops": "routed"}
    line = active_line(counts)
    assert line.endswith("; GEMM keys: FlagGems 4, split-K 0, persistent 0, stream-K 0, native 8; "
                         "FlagGems registers no aten op (only routed GEMM keys reach its kernels)")
    assert line.startswith("tuner plugin: 16 tuned configs active (")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # a hand-made record: foreign by design
def test_route_within_travels_from_the_state_to_the_engine(tmp_path):
    """What `tuner serve --route-within 1.01` writes, the engine process reads: the H200's prefill
    gate_up key (1.005x cuBLAS) counts as routed to the persistent kernel."""
    gate_up = {"kernel": "mm", "key": {"M": 4096, "N": 37888, "K": 3584, "BT": 1}, "dtype": "bf16",
               "config": {"variant": "persistent", "BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64},
               "time_us": 1618.1, "native_us": 1610.3}
    for within, routed in ((1.0, 0), (1.01, 1)):
        rt = tmp_path / f"rt{within}"
        write_runtime_dir(rt, [gate_up], [], enable_flaggems=False, running={}, allow_foreign=True,
                          route_within=within)
        assert plugin.read_state(rt)["route_within"] == within
        counts = apply_state(rt)
        assert counts["route_within"] == within and counts["routes"]["persistent"] == routed


def test_log_line_says_when_routes_take_near_ties():
    counts = {"fused_moe": 0, "mm_flaggems": 0, "addmm_flaggems": 0, "bmm_flaggems": 0, "attention_flaggems": 0,
              "gemm_routes": 1, "exclude_ops": [], "routes": {"native": 0, "persistent": 1}, "route_within": 1.02}
    assert active_line(counts).endswith("; GEMM keys: FlagGems 0, split-K 0, persistent 1, stream-K 0, native 0 "
                                        "(routed where under 1.02x cuBLAS's time)")
    assert "within" not in active_line({**counts, "route_within": 1.0})


def test_flaggems_unused_names_every_overload_of_an_excluded_op():
    assert plugin.flaggems_unused(["addmm", "mul", "mm_out"]) == [
        "addmm", "addmm_out", "addmm_", "mul", "mul_out", "mul_", "mm", "mm_out", "mm_"]
