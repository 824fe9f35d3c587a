"""`tuner checkpoint --model qwen3-moe`: a tiny checkpoint (same structure, tiny sizes) written by the
CLI and loaded by transformers' real Qwen3MoeForCausalLM; the real dimensions' fused-MoE key is a
key of the qwen3-30b-a3b-serve preset; bad input exits 2 and writes nothing."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from cli import app
from kernels import get_kernel
from tests.conftest import needs_vllm
from tuner.serving import checkpoint_moe as moe

runner = CliRunner()


def _write(folder, *extra):
    return runner.invoke(app, ["checkpoint", str(folder), "--model", "qwen3-moe", *extra])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("moe") / "ck"
    res = _write(folder, "--layers", "2", "--tiny", "--dtype", "fp32", "--seed", "3")
    assert res.exit_code == 0, res.output
    return folder


def _tensor(folder, name):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    with safe_open(str(folder / index["weight_map"][name]), "pt") as f:
        return f.get_tensor(name)


def test_tiny_loads_in_transformers_and_runs(tiny):
    from transformers import AutoTokenizer, Qwen3MoeForCausalLM

    model, info = Qwen3MoeForCausalLM.from_pretrained(tiny, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    c = model.config
    assert (c.num_hidden_layers, c.num_experts, c.num_experts_per_tok, c.hidden_size, c.moe_intermediate_size,
            c.vocab_size, c.head_dim) == (2, 8, 2, 64, 32, 2048, 16)
    assert c.norm_topk_prob and not c.tie_word_embeddings and c.model_type == "qwen3_moe"
    assert c.rope_parameters["rope_theta"] == 1e6 and c.eos_token_id is None  # rope_theta read as written
    # the per-expert hub names landed where transformers wants them (its loader fuses the experts)
    experts = model.model.layers[1].mlp.experts
    down = _tensor(tiny, "model.layers.1.mlp.experts.5.down_proj.weight")
    assert torch.equal(experts.down_proj[5], down)
    gate, up = (_tensor(tiny, f"model.layers.1.mlp.experts.5.{p}_proj.weight") for p in ("gate", "up"))
    assert torch.equal(experts.gate_up_proj[5], torch.cat([gate, up]))
    assert torch.equal(model.lm_head.weight, _tensor(tiny, "lm_head.weight"))

    tok = AutoTokenizer.from_pretrained(tiny)
    text = tok.apply_chat_template([{"role": "user", "content": "Hello! How can I help you today?"}],
                                   tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == text
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 2048) and torch.isfinite(logits).all()
    assert len(tok) <= c.vocab_size  # every token the bench sends (ids < 2048) has an embedding row


def test_tiny_files_match_the_written_config(tiny):
    config = json.loads((tiny / "config.json").read_text())
    assert config["architectures"] == ["Qwen3MoeForCausalLM"] and config["num_hidden_layers"] == 2
    index = json.loads((tiny / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)}
    assert index["metadata"]["total_size"] == moe.checkpoint_bytes(config, "fp32")
    # vLLM: E, _, N = w2.shape, w2 = the experts' down_proj stacked
    w2 = torch.stack([_tensor(tiny, f"model.layers.0.mlp.experts.{e}.down_proj.weight")
                      for e in range(config["num_experts"])])
    E, K, N = w2.shape
    assert (E, N, K, config["num_experts_per_tok"]) == moe.fused_moe_key(config) == (8, 32, 64, 2)
    note = (tiny / "TUNER_CHECKPOINT.txt").read_text()
    assert "RANDOM" in note and "TINY" in note


def test_real_dims_key_is_the_serve_preset(tmp_path):
    """The default checkpoint's config, read back by transformers, gives the fused-MoE key (E, N at
    TP 1, K, top_k) that `--shapes qwen3-30b-a3b-serve` tunes at every M."""
    from transformers import AutoConfig

    (tmp_path / "config.json").write_text(json.dumps(moe.hf_config(moe.DEFAULT_LAYERS)))
    c = AutoConfig.from_pretrained(tmp_path)
    assert type(c).__name__ == "Qwen3MoeConfig" and c.num_hidden_layers == moe.DEFAULT_LAYERS
    config = {k: getattr(c, k) for k in ("num_experts", "moe_intermediate_size", "hidden_size", "num_experts_per_tok")}
    key = moe.fused_moe_key(config)
    assert key == (128, 768, 2048, 8)
    down = dict(moe.layer_shapes(moe.hf_config(moe.DEFAULT_LAYERS), 0))["model.layers.0.mlp.experts.0.down_proj.weight"]
    assert (key[2], key[1]) == down  # w2 = (E, K, N)
    preset = get_kernel("vllm_fused_moe").presets()["qwen3-30b-a3b-serve"]
    assert {tuple(k[:4]) for k in preset} == {key} and len(preset) > 1
    assert moe.fused_moe_key(config, tp=2) in {tuple(k[:4]) for k in get_kernel("vllm_fused_moe").presets()["moe-bench"]}


def test_default_checkpoint_size():
    """8 layers: 11.2 GB in bf16; all 48 (the real model) 61 GB."""
    assert round(moe.checkpoint_bytes(moe.hf_config(8)) / 1e9, 1) == 11.2
    assert round(moe.checkpoint_bytes(moe.hf_config(48)) / 1e9) == 61


@pytest.mark.parametrize("args, words", [
    (["--model", "qwen4"], "unknown model"),
    (["--model", "qwen3-moe", "--layers", "0"], "--layers must be 1 to 48"),
    (["--model", "qwen3-moe", "--layers", "-2"], "--layers must be 1 to 48"),
    (["--model", "qwen3-moe", "--layers", "49"], "--layers must be 1 to 48"),
    (["--model", "qwen3-moe", "--dtype", "int4"], "unknown dtype"),
    (["--model", "qwen3-moe", "--scale", "0.5"], "--scale is for"),
    (["--layers", "2"], "--layers and --tiny are for"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, words):
    res = runner.invoke(app, ["checkpoint", str(tmp_path / "ck"), *args])
    assert res.exit_code == 2, res.output
    assert words in res.output and res.output.strip().count("\n") == 0
    assert list(tmp_path.iterdir()) == []


def test_non_empty_folder_exits_2_and_is_left_alone(tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    res = _write(folder, "--tiny", "--layers", "1")
    assert res.exit_code == 2 and "not an empty folder" in res.output
    assert [p.name for p in folder.iterdir()] == ["keep.txt"] and [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_empty_folder_is_filled(tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    res = _write(folder, "--tiny", "--layers", "1")
    assert res.exit_code == 0, res.output
    assert (folder / "config.json").is_file() and [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_minicpmo_llm_still_written(tmp_path):
    """The default model through the same atomic writer (shrunk with --scale)."""
    from transformers import AutoConfig

    res = runner.invoke(app, ["checkpoint", str(tmp_path / "ck"), "--scale", "0.02"])
    assert res.exit_code == 0, res.output
    c = AutoConfig.from_pretrained(tmp_path / "ck")
    assert c.model_type == "qwen2" and c.eos_token_id is None
    assert "MiniCPM-o" in (tmp_path / "ck" / "TUNER_CHECKPOINT.txt").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    again = runner.invoke(app, ["checkpoint", str(tmp_path / "ck"), "--scale", "0.02"])
    assert again.exit_code == 2 and "not an empty folder" in again.output


@needs_vllm
def test_vllm_model_config_reads_the_tiny_checkpoint(tiny):
    """vLLM's own ModelConfig (what the engine builds first): the architecture it resolves and the
    MoE fields its Qwen3MoeForCausalLM reads from hf_text_config."""
    from vllm.config import ModelConfig

    mc = ModelConfig(model=str(tiny), dtype="bfloat16")
    assert mc.architectures == ["Qwen3MoeForCausalLM"]
    info, arch = mc.registry.inspect_model_cls(mc.architectures, mc)
    assert arch == "Qwen3MoeForCausalLM" and info.is_text_generation_model and not mc.trust_remote_code
    t = mc.hf_text_config
    assert moe.fused_moe_key({k: getattr(t, k) for k in ("num_experts", "moe_intermediate_size", "hidden_size",
                                                         "num_experts_per_tok")}) == (8, 32, 64, 2)
    assert (t.num_hidden_layers, t.decoder_sparse_step, t.mlp_only_layers, t.norm_topk_prob) == (2, 1, [], True)
