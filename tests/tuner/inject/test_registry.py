"""The injector registry the plugin loops over: order, counts and the plugin's one log line."""
import os

import pytest

from tuner.inject import plugin, registry
from tuner.inject.plugin import active_line, apply_state, write_runtime_dir

# the plugin's line as it was written out by hand before the registry (issue 10): kept byte for byte
OLD_LINE = ("tuner plugin: %d tuned configs active (fused_moe %d, mm via FlagGems cache %d, "
            "addmm via FlagGems cache %d, bmm via FlagGems cache %d, attention via FlagGems autotuner %d, "
            "mm split-K %d); FlagGems excluded ops: %s%s")


def test_injectors_run_and_count_in_the_plugins_order():
    assert [(i.name, i.stage) for i in registry.injectors()] == [
        ("fused_moe", "engine"), ("mm_flaggems", "flaggems"), ("addmm_flaggems", "flaggems"),
        ("bmm_flaggems", "flaggems"), ("attention_flaggems", "flaggems"),
        ("fused_moe_flaggems_hook", "flaggems"), ("mm_splitk", "override")]
    assert [i.label for i in registry.counted()] == [
        "fused_moe", "mm via FlagGems cache", "addmm via FlagGems cache", "bmm via FlagGems cache",
        "attention via FlagGems autotuner", "mm split-K"]
    assert [i.name for i in registry.injectors() if i.claims] == ["mm_splitk"]


@pytest.mark.parametrize("counts", [
    {"fused_moe": 1, "mm_flaggems": 2, "addmm_flaggems": 1, "bmm_flaggems": 1, "attention_flaggems": 1,
     "mm_splitk": 0, "config_memo": True, "exclude_ops": ["mm", "softmax"]},
    {"fused_moe": 0, "mm_flaggems": 0, "addmm_flaggems": 0, "bmm_flaggems": 0, "attention_flaggems": 0,
     "mm_splitk": 12, "config_memo": False, "exclude_ops": []},
])
def test_log_line_is_unchanged(counts):
    c = counts
    want = OLD_LINE % (c["fused_moe"] + c["mm_flaggems"] + c["addmm_flaggems"] + c["bmm_flaggems"]
                       + c["attention_flaggems"] + c["mm_splitk"], c["fused_moe"], c["mm_flaggems"],
                       c["addmm_flaggems"], c["bmm_flaggems"], c["attention_flaggems"], c["mm_splitk"],
                       ", ".join(c["exclude_ops"]) or "none",
                       "; FlagGems config cache read from memory" if c["config_memo"] else "")
    assert active_line(counts) == want


def test_apply_state_without_flaggems_counts_every_injector(tmp_path, monkeypatch):
    monkeypatch.delenv("VLLM_TUNED_CONFIG_FOLDER", raising=False)
    write_runtime_dir(tmp_path / "rt", [], ["softmax"], enable_flaggems=False, running={})
    counts = apply_state(tmp_path / "rt")
    assert list(counts.items()) == [
        ("fused_moe", 0), ("mm_flaggems", 0), ("addmm_flaggems", 0), ("bmm_flaggems", 0),
        ("attention_flaggems", 0), ("mm_splitk", 0), ("config_memo", False), ("exclude_ops", ["softmax"])]
    assert os.environ["VLLM_TUNED_CONFIG_FOLDER"] == str(tmp_path / "rt" / plugin.MOE_FOLDER)


def test_registration_is_checked():
    with pytest.raises(ValueError, match="unknown stage"):
        registry.injector("x", label=None, stage="later")
    with pytest.raises(ValueError, match="MODULES does not list"):
        registry.injector("x", label=None, stage=registry.ENGINE)(lambda records, ctx: 0)
    assert "x" not in [i.name for i in registry.injectors()]
