"""MiniCPM-o 2.6 component dimensions, exact at scale 1.0 and shrunk for CPU runs.

The full values are those of /work/shared/facts/minicpmo-2.6.md. Scaling keeps the structure
(GQA group size, head_dim a multiple of 8, at least one layer) so a scaled model runs the same
ops as the real one, only on smaller shapes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .errors import WorkloadError


@dataclass(frozen=True)
class LLMDims:
    hidden: int = 3584
    layers: int = 28
    heads: int = 28
    kv_heads: int = 4
    head_dim: int = 128
    intermediate: int = 18944
    vocab: int = 151700
    rope_theta: float = 1e6
    rms_eps: float = 1e-6


@dataclass(frozen=True)
class VisionDims:
    hidden: int = 1152
    layers: int = 27
    heads: int = 16
    head_dim: int = 72
    intermediate: int = 4304
    patch: int = 14
    slice_grid: int = 32  # patches per side of one 448x448 slice
    pos_grid: int = 70  # position table side (980 / 14), as in the checkpoint's navit embedding
    eps: float = 1e-6

    @property
    def slice_pixels(self) -> int:
        return self.slice_grid * self.patch


@dataclass(frozen=True)
class ResamplerDims:
    queries: int = 64
    embed: int = 3584  # = LLM hidden
    heads: int = 28
    kv_dim: int = 1152  # = vision hidden
    pos_grid: int = 70


@dataclass(frozen=True)
class AudioDims:
    d_model: int = 1024
    layers: int = 24
    heads: int = 16
    ffn: int = 4096
    mels: int = 80
    positions: int = 1500  # encoder positions of one 30 s window
    pool: int = 2  # AvgPool1d after the projector
    llm_hidden: int = 3584

    @property
    def window_frames(self) -> int:
        # two stride-1/stride-2 convs: frames = 2 x positions (3000 for 30 s)
        return 2 * self.positions


@dataclass(frozen=True)
class TTSDims:
    hidden: int = 768
    layers: int = 20
    heads: int = 12
    head_dim: int = 64
    intermediate: int = 3072
    codebooks: int = 4
    audio_tokens: int = 626
    text_vocab: int = 21178
    llm_hidden: int = 3584


@dataclass(frozen=True)
class ModelDims:
    scale: float
    llm: LLMDims
    vision: VisionDims
    resampler: ResamplerDims
    audio: AudioDims
    tts: TTSDims

    def as_dict(self) -> dict:
        return asdict(self)


def _count(n: int, factor: float, minimum: int = 1) -> int:
    return max(minimum, round(n * factor))


def _mult8(n: int, factor: float) -> int:
    # widths stay multiples of 8 so head splits, rotary halves and sin-cos quarters stay exact
    return max(8, 8 * round(n * factor / 8))


def model_dims(scale: float = 1.0) -> ModelDims:
    """Dimensions at `scale` (0 < scale <= 1); 1.0 gives the real model's exact values.

    Widths shrink by `scale` overall: head count and head_dim each by sqrt(scale); intermediate
    sizes, layer counts, vocabularies and token counts (patches, audio positions) by `scale`.
    """
    if not isinstance(scale, (int, float)) or not (0 < scale <= 1) or math.isnan(scale):
        raise WorkloadError(f"scale must be a number in (0, 1], got {scale!r}.")
    s, r = float(scale), math.sqrt(scale)

    kv = _count(4, r)
    llm = LLMDims(
        kv_heads=kv,
        heads=kv * 7,  # keep the 7:1 GQA grouping
        head_dim=_mult8(128, r),
        layers=_count(28, s),
        intermediate=_mult8(18944, s),
        vocab=_count(151700, s, 64),
    )
    llm = LLMDims(**{**asdict(llm), "hidden": llm.heads * llm.head_dim})

    vh, vd = _count(16, r), _mult8(72, r)
    grid = _count(32, r, 2)
    vision = VisionDims(
        hidden=vh * vd, layers=_count(27, s), heads=vh, head_dim=vd,
        intermediate=_mult8(4304, s), slice_grid=grid, pos_grid=max(grid, _count(70, r)),
    )
    resampler = ResamplerDims(
        queries=_count(64, s, 4), embed=llm.hidden, heads=llm.heads, kv_dim=vision.hidden,
        pos_grid=vision.pos_grid,
    )
    ah, ad = _count(16, r), _mult8(64, r)
    audio = AudioDims(
        d_model=ah * ad, layers=_count(24, s), heads=ah, ffn=_mult8(4096, s),
        positions=_count(1500, s, 4), llm_hidden=llm.hidden,
    )
    th, td = _count(12, r), _mult8(64, r)
    tts = TTSDims(
        hidden=th * td, layers=_count(20, s), heads=th, head_dim=td,
        intermediate=_mult8(3072, s), audio_tokens=_count(626, s, 8),
        text_vocab=_count(21178, s, 64), llm_hidden=llm.hidden,
    )
    return ModelDims(s, llm, vision, resampler, audio, tts)
