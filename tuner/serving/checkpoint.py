"""A servable checkpoint with random weights and a locally built tokenizer: the MiniCPM-o 2.6 LLM, or
a Qwen3-MoE with Qwen3-30B-A3B's dimensions (tuner.serving.checkpoint_moe); nothing can be
downloaded, so `tuner serve` writes what it serves. A real checkpoint
folder (config.json, *.safetensors, tokenizer files) can be served instead by passing its path."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tuner.devices import DTYPES, torch_dtype
from tuner.errors import UserError

# enough text for a byte-level BPE to learn common merges; the model's weights are random, so the
# tokenizer only has to round-trip text
_CORPUS = [
    "You are a helpful assistant. The quick brown fox jumps over the lazy dog.",
    "MiniCPM-o 2.6 is a multimodal model with vision, audio and speech built on a Qwen2.5-7B LLM.",
    "Hello! How can I help you today? Please describe the image and transcribe the audio.",
    "FlagGems replaces PyTorch operators with Triton kernels; tuner injects tuned configs.",
] * 8
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


MODELS = ("minicpmo-llm", "qwen3-moe")


def _check_folder(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"{folder} exists and is not an empty folder; choose a new folder for the checkpoint")


def _write_atomically(folder: Path, fill) -> Path:
    """fill(tmp) writes the files into a temporary sibling folder, renamed to folder when done."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        fill(tmp)
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def write_checkpoint(folder: str | Path, model: str = "minicpmo-llm", scale: float = 1.0, layers: int | None = None,
                     dtype: str = "bf16", seed: int = 0, tiny: bool = False) -> Path:
    """`tuner checkpoint`: every input checked before anything is written."""
    if model not in MODELS:
        raise UserError(f"unknown model {model!r}; use {' or '.join(MODELS)}")
    if model == "minicpmo-llm":
        if layers is not None or tiny:
            raise UserError("--layers and --tiny are for --model qwen3-moe; shrink minicpmo-llm with --scale")
        return write_llm_checkpoint(folder, scale=scale, dtype=dtype, seed=seed)
    from tuner.serving import checkpoint_moe

    if scale != 1.0:
        raise UserError("--scale is for --model minicpmo-llm; give qwen3-moe fewer layers with --layers")
    layers = checkpoint_moe.DEFAULT_LAYERS if layers is None else layers
    checkpoint_moe.validate(layers, dtype)
    folder = Path(folder)
    _check_folder(folder)

    def fill(tmp: Path) -> None:
        import torch

        # random init of ~5.6 B parameters (8 layers) is minutes on a CPU and seconds on a GPU
        device = "cuda" if torch.cuda.is_available() else "cpu"
        checkpoint_moe.write_files(tmp, layers, dtype, seed, tiny, device)
        build_tokenizer().save_pretrained(tmp)

    return _write_atomically(folder, fill)


def write_llm_checkpoint(folder: str | Path, scale: float = 1.0, dtype: str = "bf16", seed: int = 0) -> Path:
    """Write config.json, model safetensors and tokenizer files; atomically (temp dir + rename)."""
    import torch

    from tuner.profiling.workload import WorkloadError, build_model

    folder = Path(folder)
    _check_folder(folder)
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use bf16, fp16 or fp32")
    tdt = torch_dtype(dtype)
    try:
        # random init of 7.6 B parameters is minutes on a CPU and seconds on a GPU
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = build_model(scale=scale, dtype=tdt, device=device, components=("llm",), seed=seed)
    except WorkloadError as e:
        raise UserError(str(e)) from None

    def fill(tmp: Path) -> None:
        llm = model.llm
        llm.config.dtype = tdt
        llm.config.eos_token_id = None
        llm.generation_config.eos_token_id = None
        llm.save_pretrained(tmp, safe_serialization=True)
        build_tokenizer().save_pretrained(tmp)
        (tmp / "TUNER_CHECKPOINT.txt").write_text(
            f"MiniCPM-o 2.6 LLM (Qwen2) with RANDOM weights, scale={scale}, dtype={dtype}, seed={seed}; "
            "tokenizer trained locally. Written by `tuner checkpoint`.\n")

    return _write_atomically(folder, fill)
