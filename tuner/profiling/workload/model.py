"""Shape-faithful MiniCPM-o 2.6 with random weights, built straight on the target device.

Attribute names follow the released checkpoint (llm., vpm., resampler., apm.,
audio_projection_layer., tts.) so `load_weights` can read real safetensors files.
Not modelled: the TTS DVAE and Vocos vocoder (fp32 convolutions after the TTS decode).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from transformers import LlamaConfig, LlamaModel, Qwen2Config, Qwen2ForCausalLM, WhisperConfig
from transformers.models.idefics2.configuration_idefics2 import Idefics2VisionConfig
from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionTransformer
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .dims import AudioDims, LLMDims, ModelDims, TTSDims, VisionDims, model_dims
from .errors import WorkloadError
from .resampler import Resampler

COMPONENTS = ("llm", "vision", "audio", "tts")


class MultiModalProjector(nn.Module):
    """Linear -> ReLU -> Linear, MiniCPM-o's projector for audio (and TTS conditioning)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(in_dim, out_dim)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.relu(self.linear1(x)))


class ConditionalChatTTS(nn.Module):
    """ChatTTS decoder: Llama backbone fed embeddings, 4 weight-normed codebook heads."""

    def __init__(self, d: TTSDims):
        super().__init__()
        self.projector = MultiModalProjector(d.llm_hidden, d.hidden)
        self.emb_code = nn.ModuleList(nn.Embedding(d.audio_tokens, d.hidden) for _ in range(d.codebooks))
        self.emb_text = nn.Embedding(d.text_vocab, d.hidden)
        self.head_code = nn.ModuleList(
            weight_norm(nn.Linear(d.hidden, d.audio_tokens, bias=False), name="weight")
            for _ in range(d.codebooks)
        )
        cfg = LlamaConfig(
            hidden_size=d.hidden, intermediate_size=d.intermediate, num_hidden_layers=d.layers,
            num_attention_heads=d.heads, num_key_value_heads=d.heads, head_dim=d.head_dim,
            max_position_embeddings=4096, attn_implementation="sdpa",
        )
        self.model = LlamaModel(cfg)
        del self.model.embed_tokens  # ChatTTS feeds inputs_embeds; the checkpoint has no table

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) -> (B, T, codebooks, audio_tokens)."""
        return torch.stack([head(hidden) for head in self.head_code], dim=2)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T, codebooks) token ids -> summed (B, T, hidden) embedding."""
        return torch.stack([emb(codes[..., i]) for i, emb in enumerate(self.emb_code)], 2).sum(2)


def _llm(d: LLMDims) -> Qwen2ForCausalLM:
    cfg = Qwen2Config(
        vocab_size=d.vocab, hidden_size=d.hidden, intermediate_size=d.intermediate,
        num_hidden_layers=d.layers, num_attention_heads=d.heads, num_key_value_heads=d.kv_heads,
        max_position_embeddings=32768, rope_theta=d.rope_theta, rms_norm_eps=d.rms_eps,
        tie_word_embeddings=False, use_sliding_window=False, attn_implementation="sdpa",
    )
    return Qwen2ForCausalLM(cfg)


def _vision(d: VisionDims) -> Idefics2VisionTransformer:
    # Idefics2's vision tower is the same SigLIP "navit" variant MiniCPM uses (bucketed positions)
    cfg = Idefics2VisionConfig(
        hidden_size=d.hidden, intermediate_size=d.intermediate, num_hidden_layers=d.layers,
        num_attention_heads=d.heads, image_size=d.pos_grid * d.patch, patch_size=d.patch,
        hidden_act="gelu_pytorch_tanh", layer_norm_eps=d.eps, attn_implementation="sdpa",
    )
    return Idefics2VisionTransformer(cfg)


def _whisper(d: AudioDims) -> WhisperEncoder:
    cfg = WhisperConfig(
        d_model=d.d_model, encoder_layers=d.layers, encoder_attention_heads=d.heads,
        encoder_ffn_dim=d.ffn, num_mel_bins=d.mels, max_source_positions=d.positions,
        activation_function="gelu", attn_implementation="sdpa",
    )
    return WhisperEncoder(cfg)


class MiniCPMO(nn.Module):
    """The parts of MiniCPM-o 2.6 that run on the GPU; absent components are None."""

    def __init__(self, dims: ModelDims, components: Iterable[str]):
        super().__init__()
        self.dims = dims
        self.components = tuple(c for c in COMPONENTS if c in set(components))
        self.llm = _llm(dims.llm) if "llm" in self.components else None
        self.vpm = self.resampler = None
        if "vision" in self.components:
            self.vpm = _vision(dims.vision)
            r = dims.resampler
            self.resampler = Resampler(r.queries, r.embed, r.heads, r.kv_dim, r.pos_grid)
        self.apm = self.audio_projection_layer = self.audio_avg_pooler = None
        if "audio" in self.components:
            self.apm = _whisper(dims.audio)
            self.audio_projection_layer = MultiModalProjector(dims.audio.d_model, dims.audio.llm_hidden)
            self.audio_avg_pooler = nn.AvgPool1d(dims.audio.pool, stride=dims.audio.pool)
        self.tts = ConditionalChatTTS(dims.tts) if "tts" in self.components else None

    def require(self, component: str) -> None:
        if component not in self.components:
            raise WorkloadError(f"this workload needs the '{component}' component, which was not built.")


@contextmanager
def _building_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    # Allocating in the target dtype/device avoids an fp32 copy of 8.7 B parameters on the host.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_model(scale: float = 1.0, dtype: torch.dtype = torch.bfloat16,
                device: str | torch.device | None = None,
                components: Iterable[str] = COMPONENTS, seed: int = 0) -> MiniCPMO:
    """MiniCPM-o 2.6 with random weights (seeded), in eval mode, on `device` (default: cuda if present)."""
    dims = model_dims(scale)
    components = tuple(components)
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown or not components:
        raise WorkloadError(f"components must be a non-empty subset of {', '.join(COMPONENTS)}, got {list(components)}.")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise WorkloadError(f"dtype must be a floating torch dtype, got {dtype!r}.")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    with _building_on(device, dtype):
        model = MiniCPMO(dims, components)
    return model.eval().requires_grad_(False)


def describe(model: MiniCPMO) -> dict:
    """Plain-data label for outputs: scale, dtype, device, components, dims, parameter count."""
    first = next(model.parameters())
    return {
        "model": "MiniCPM-o 2.6",
        "scale": model.dims.scale,
        "exact_shapes": model.dims.scale == 1.0,
        "dtype": str(first.dtype).removeprefix("torch."),
        "device": str(first.device),
        "components": list(model.components),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dims": model.dims.as_dict(),
    }
