"""Serving-shaped requests for MiniCPM-o 2.6, as named, re-runnable steps.

Each Step owns its inputs (made once, seeded) and rebuilds any KV cache it extends, so running
it twice does the same work twice: the profiler warms up with one call and measures the next.
Inputs of later stages (resampler, audio projector) are random tensors of the earlier stage's
output shape, so every step can be timed on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

import torch
from transformers import DynamicCache

from .errors import WorkloadError
from .model import MiniCPMO

WORKLOADS = ("text", "image", "audio", "speech")


@dataclass(frozen=True)
class RequestOptions:
    prompt_tokens: int = 512  # S: text prefill length, and the decode steps' context length
    prefill_batch: int = 1
    decode_batches: tuple[int, ...] = (1, 8, 32)
    decode_steps: int = 16
    image_slices: int = 10  # 1344x1344 -> 9 slices + 1 thumbnail
    audio_seconds: float = 30.0  # Whisper sees 30 s windows (3000 mel frames at scale 1)
    speech_prompt_tokens: int = 12  # one TTS prefill chunk
    speech_tokens: int = 47  # audio tokens decoded, about one second of speech
    speech_context: int = 303  # TTS context the decode steps attend to

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
            if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in values):
                raise WorkloadError(f"request option {f.name} must be positive, got {value!r}.")


@dataclass(frozen=True)
class Step:
    name: str  # e.g. "text.prefill[b=1,S=512]"; the profiler labels time with it
    workload: str
    run: Callable[[], torch.Tensor]


def _step(name: str, workload: str, fn: Callable[[], torch.Tensor]) -> Step:
    def run() -> torch.Tensor:
        with torch.inference_mode():
            return fn()
    return Step(name, workload, run)


def _random_cache(config, batch: int, kv_heads: int, head_dim: int, length: int, layers: int,
                  dtype: torch.dtype, device: torch.device) -> Callable[[], DynamicCache]:
    """A factory for a cache holding `length` past tokens (random K/V made once, reused)."""
    shape = (batch, kv_heads, length, head_dim)
    kv = [(torch.randn(shape, dtype=dtype, device=device), torch.randn(shape, dtype=dtype, device=device))
          for _ in range(layers)]

    def make() -> DynamicCache:
        cache = DynamicCache(config=config)
        for i, (k, v) in enumerate(kv):
            cache.update(k, v, i)
        return cache
    return make


def _text(model: MiniCPMO, o: RequestOptions, dtype, device) -> list[Step]:
    model.require("llm")
    llm, d = model.llm, model.dims.llm
    ids = torch.randint(d.vocab, (o.prefill_batch, o.prompt_tokens), device=device)
    # logits_to_keep=1: a server computes lm_head for the last position only
    steps = [_step(f"text.prefill[b={o.prefill_batch},S={o.prompt_tokens}]", "text",
                   lambda: llm(input_ids=ids, use_cache=True, logits_to_keep=1).logits)]
    for b in o.decode_batches:
        make_cache = _random_cache(llm.config, b, d.kv_heads, d.head_dim, o.prompt_tokens,
                                   d.layers, dtype, device)
        first = torch.randint(d.vocab, (b, 1), device=device)

        def decode(make_cache=make_cache, first=first) -> torch.Tensor:
            cache, tok = make_cache(), first
            for _ in range(o.decode_steps):
                logits = llm(input_ids=tok, cache=cache, use_cache=True).logits
                tok = logits[:, -1].argmax(-1, keepdim=True)  # greedy: sampling cost is not the point
            return tok
        steps.append(_step(f"text.decode[b={b},ctx={o.prompt_tokens},steps={o.decode_steps}]", "text", decode))
    return steps


def _image(model: MiniCPMO, o: RequestOptions, dtype, device) -> list[Step]:
    model.require("vision")
    v, n = model.dims.vision, o.image_slices
    g = v.slice_grid
    pixels = torch.randn(n, 3, v.slice_pixels, v.slice_pixels, dtype=dtype, device=device)
    patches = torch.randn(n, g * g, v.hidden, dtype=dtype, device=device)
    sizes = [(g, g)] * n
    return [
        _step(f"image.vision[slices={n},patches={g * g}]", "image",
              lambda: model.vpm(pixel_values=pixels).last_hidden_state),
        _step(f"image.resampler[slices={n},queries={model.dims.resampler.queries}]", "image",
              lambda: model.resampler(patches, sizes)),
    ]


def _audio(model: MiniCPMO, o: RequestOptions, dtype, device) -> list[Step]:
    model.require("audio")
    a = model.dims.audio
    windows = math.ceil(o.audio_seconds / 30)  # shorter audio is padded to a full window
    mel = torch.randn(windows, a.mels, a.window_frames, dtype=dtype, device=device)
    hidden = torch.randn(windows, a.positions, a.d_model, dtype=dtype, device=device)

    def project() -> torch.Tensor:
        x = model.audio_projection_layer(hidden)
        return model.audio_avg_pooler(x.transpose(1, 2)).transpose(1, 2)
    return [
        _step(f"audio.whisper[windows={windows},frames={a.window_frames}]", "audio",
              lambda: model.apm(mel).last_hidden_state),
        _step(f"audio.projector[M={windows * a.positions}]", "audio", project),
    ]


def _speech(model: MiniCPMO, o: RequestOptions, dtype, device) -> list[Step]:
    model.require("tts")
    tts, t = model.tts, model.dims.tts
    n = o.speech_prompt_tokens
    text_ids = torch.randint(t.text_vocab, (1, n), device=device)
    condition = torch.randn(1, n, t.llm_hidden, dtype=dtype, device=device)  # LLM hidden states

    def prefill() -> torch.Tensor:
        emb = tts.emb_text(text_ids) + tts.projector(condition)
        cache = DynamicCache(config=tts.model.config)
        h = tts.model(inputs_embeds=emb, cache=cache, use_cache=True).last_hidden_state
        return tts.code_logits(h[:, -1:])

    make_cache = _random_cache(tts.model.config, 1, t.heads, t.head_dim, o.speech_context,
                               t.layers, dtype, device)
    first = torch.randint(t.audio_tokens, (1, 1, t.codebooks), device=device)

    def decode() -> torch.Tensor:
        cache, codes = make_cache(), first
        for _ in range(o.speech_tokens):
            h = tts.model(inputs_embeds=tts.embed_codes(codes), cache=cache, use_cache=True).last_hidden_state
            codes = tts.code_logits(h).argmax(-1)
        return codes
    return [
        _step(f"speech.prefill[T={n}]", "speech", prefill),
        _step(f"speech.decode[ctx={o.speech_context},steps={o.speech_tokens}]", "speech", decode),
    ]


_BUILDERS = {"text": _text, "image": _image, "audio": _audio, "speech": _speech}
_NEEDS = {"text": "llm", "image": "vision", "audio": "audio", "speech": "tts"}


def resolve_workloads(workloads: str | Iterable[str]) -> list[str]:
    """Workload names in order without repeats, "all" expanded; WorkloadError for unknown ones."""
    names = [workloads] if isinstance(workloads, str) else list(workloads)
    if "all" in names:
        names = [n for n in names if n != "all"] + list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or not names:
        raise WorkloadError(f"unknown workload {unknown[0] if unknown else '(none)'!r}; choose from "
                            f"{', '.join(WORKLOADS)} or all.")
    return list(dict.fromkeys(names))


def components_for(workloads: str | Iterable[str]) -> list[str]:
    """The model components `workloads` need, so a profile builds only those."""
    return list(dict.fromkeys(_NEEDS[n] for n in resolve_workloads(workloads)))


def build_requests(model: MiniCPMO, workloads: str | Iterable[str] = "all",
                   options: RequestOptions | None = None, seed: int = 0) -> list[Step]:
    """Steps for `workloads` ("text", "image", "audio", "speech", "all", or a list of them)."""
    names = resolve_workloads(workloads)
    options = options or RequestOptions()
    options.validate()
    first = next(model.parameters())
    torch.manual_seed(seed)
    steps: list[Step] = []
    for name in names:
        steps += _BUILDERS[name](model, options, first.dtype, first.device)
    return steps
