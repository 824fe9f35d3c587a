"""A servable Qwen3-MoE checkpoint with random weights and Qwen3-30B-A3B's dimensions (128 experts,
top-8, hidden 2048, expert intermediate 768, 32 query / 4 KV heads of 128, vocab 151936), in the
Hugging Face hub layout of Qwen/Qwen3-30B-A3B: its config.json fields, one safetensors shard per
decoder layer with per-expert weight names (`model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight`)
and model.safetensors.index.json. vLLM serves it as Qwen3MoeForCausalLM (no remote code); its
fused-MoE layers meet the keys of the `qwen3-30b-a3b-serve` preset (see `fused_moe_key`).

Layers: the real model has 48 (~61 GB in bf16, more than the single-H200 host's 64 GiB disk holds
beside anything else); DEFAULT_LAYERS keeps every layer's shapes, so every fused-MoE launch is the
served model's, with a checkpoint that writes and loads in seconds and leaves the GPU's memory to
the KV cache."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path

from tuner.devices import DTYPES, torch_dtype
from tuner.errors import UserError

NAME = "qwen3-moe"
FULL_LAYERS = 48  # Qwen3-30B-A3B's num_hidden_layers
DEFAULT_LAYERS = 8
# Qwen/Qwen3-30B-A3B's config.json, minus num_hidden_layers (chosen) and the token ids (the tokenizer
# is tuner's own; no EOS in the config, so generation runs to max_tokens as with the MiniCPM-o one)
QWEN3_30B_A3B = {
    "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144, "num_attention_heads": 32,
    "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
    "moe_intermediate_size": 768, "max_position_embeddings": 40960, "rope_theta": 1000000.0,
}
# CPU tests only (`tuner checkpoint --model qwen3-moe --tiny`, hidden): the same structure, tiny sizes
TINY = {
    "vocab_size": 2048, "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "num_experts": 8, "num_experts_per_tok": 2,
    "moe_intermediate_size": 32, "max_position_embeddings": 4096, "rope_theta": 1000000.0,
}


def hf_config(layers: int, dims: Mapping[str, object] = QWEN3_30B_A3B, dtype: str = "bf16") -> dict:
    """config.json: the hub file's fields (transformers 4.5x reads num_experts / rope_theta as
    written; 5.x maps them to num_local_experts / rope_parameters)."""
    return {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "attention_bias": False, "attention_dropout": 0.0, "decoder_sparse_step": 1, "hidden_act": "silu",
        "initializer_range": 0.02, "max_window_layers": layers, "mlp_only_layers": [], "norm_topk_prob": True,
        "output_router_logits": False, "rms_norm_eps": 1e-06, "rope_scaling": None,
        "router_aux_loss_coef": 0.001, "sliding_window": None, "tie_word_embeddings": False,
        "torch_dtype": {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype],
        "use_cache": True, "use_sliding_window": False, "bos_token_id": None, "eos_token_id": None,
        **dims, "num_hidden_layers": layers,
    }


def fused_moe_key(config: Mapping[str, object], tp: int = 1) -> tuple[int, int, int, int]:
    """(E, N, K, top_k) of the fused-MoE launches vLLM makes for this config at tensor parallel tp:
    vLLM names its config file by `E, _, N = w2.shape`, w2 being the experts' down_proj stacked
    to (E, hidden, intermediate / tp); K is the hidden size (w1's input)."""
    inter = int(config["moe_intermediate_size"])
    if inter % tp:
        raise UserError(f"moe_intermediate_size {inter} does not split over tensor parallel {tp}")
    return int(config["num_experts"]), inter // tp, int(config["hidden_size"]), int(config["num_experts_per_tok"])


def layer_shapes(config: Mapping[str, object], layer: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of one decoder layer's weights, the hub checkpoint's names."""
    H, hd = int(config["hidden_size"]), int(config["head_dim"])
    q, kv = int(config["num_attention_heads"]) * hd, int(config["num_key_value_heads"]) * hd
    E, inter = int(config["num_experts"]), int(config["moe_intermediate_size"])
    p = f"model.layers.{layer}."
    yield p + "input_layernorm.weight", (H,)
    yield p + "post_attention_layernorm.weight", (H,)
    yield p + "self_attn.q_proj.weight", (q, H)
    yield p + "self_attn.k_proj.weight", (kv, H)
    yield p + "self_attn.v_proj.weight", (kv, H)
    yield p + "self_attn.o_proj.weight", (H, q)
    yield p + "self_attn.q_norm.weight", (hd,)
    yield p + "self_attn.k_norm.weight", (hd,)
    yield p + "mlp.gate.weight", (E, H)
    for e in range(E):
        yield p + f"mlp.experts.{e}.gate_proj.weight", (inter, H)
        yield p + f"mlp.experts.{e}.up_proj.weight", (inter, H)
        yield p + f"mlp.experts.{e}.down_proj.weight", (H, inter)


def outer_shapes(config: Mapping[str, object]) -> Iterator[tuple[str, tuple[int, ...]]]:
    V, H = int(config["vocab_size"]), int(config["hidden_size"])
    yield "model.embed_tokens.weight", (V, H)
    yield "model.norm.weight", (H,)
    yield "lm_head.weight", (V, H)


def checkpoint_bytes(config: Mapping[str, object], dtype: str = "bf16") -> int:
    """Bytes of the weights (what the shards hold, less their small headers)."""
    size = {"bf16": 2, "fp16": 2, "fp32": 4}[dtype]
    shapes = [s for _, s in outer_shapes(config)]
    shapes += [s for i in range(int(config["num_hidden_layers"])) for _, s in layer_shapes(config, i)]
    return size * sum(math.prod(s) for s in shapes)


def validate(layers: int, dtype: str) -> None:
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use bf16, fp16 or fp32")
    if not 1 <= layers <= FULL_LAYERS:
        raise UserError(f"--layers must be 1 to {FULL_LAYERS} (Qwen3-30B-A3B has {FULL_LAYERS}), got {layers}")


def write_weights(tmp: Path, config: Mapping[str, object], dtype: str, seed: int, device: str) -> int:
    """One shard per decoder layer plus one for embeddings, final norm and lm_head; the index.
    Linear weights ~ N(0, initializer_range), norms 1 (the router's logits stay small, so tokens
    spread over the experts as in a trained model). Returns the bytes written as weights."""
    import torch
    from safetensors.torch import save_file

    tdt, std = torch_dtype(dtype), float(config["initializer_range"])
    gen = torch.Generator(device=device).manual_seed(seed)
    layers = int(config["num_hidden_layers"])
    groups = [list(outer_shapes(config))] + [list(layer_shapes(config, i)) for i in range(layers)]
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        tensors = {}
        for name, shape in group:
            if len(shape) == 1:
                t = torch.ones(shape, dtype=tdt)
            else:
                t = torch.empty(shape, device=device, dtype=torch.float32).normal_(0.0, std, generator=gen)
                t = t.to(tdt).cpu()
            tensors[name] = t
            total += t.numel() * t.element_size()
        shard = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file(tensors, str(tmp / shard), metadata={"format": "pt"})
        weight_map.update((name, shard) for name in tensors)
        del tensors
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return total


def write_files(tmp: Path, layers: int, dtype: str, seed: int, tiny: bool, device: str) -> dict:
    """Everything but the tokenizer into the (empty, temporary) folder tmp; returns the config."""
    config = hf_config(layers, TINY if tiny else QWEN3_30B_A3B, dtype)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    total = write_weights(tmp, config, dtype, seed, device)
    E, N, K, top_k = fused_moe_key(config)
    (tmp / "TUNER_CHECKPOINT.txt").write_text(
        f"Qwen3-MoE with RANDOM weights, {'TINY test dimensions' if tiny else 'Qwen3-30B-A3B dimensions'}, "
        f"{layers} of {FULL_LAYERS} layers, dtype={dtype}, seed={seed}, {total / 1e9:.2f} GB of weights; "
        f"fused-MoE key at TP 1: E={E} N={N} K={K} top_k={top_k}; tokenizer trained locally. "
        "Written by `tuner checkpoint --model qwen3-moe`.\n")
    return config
